"""The run writer: streams frames, frame metadata and localizations into a store.

Threads
-------
``append_frame`` (any thread, usually acquisition) validates the frame, copies it
into a free buffer of a preallocated pool and queues it. The *frame thread* hands
each queued frame to a small pool of I/O threads that encode it and write its chunk
(atomically: temporary file, then rename), and every ``commit_interval_s`` asks the
*committer thread* to commit: write the metadata rows of the frames that are on
disk (contiguously), then the committed frame count ``n_frames`` in the root
attributes. The *table thread* collects localization batches and writes them in
whole batches, then commits ``n_rows``. A reader that reads a count first and only
that many frames or rows never sees anything half written.

The pieces, one module each: :mod:`~axialtrack.store.options` (options, frame
metadata, statistics), :mod:`~axialtrack.store._pool` (the frame buffers),
:mod:`~axialtrack.store._threads` (the thread roles),
:mod:`~axialtrack.store._commit` (atomic creation, the commit protocol, close),
:mod:`~axialtrack.store._schema` (checking tables and provenance),
:mod:`~axialtrack.store._location` (where a store may be created),
:mod:`~axialtrack.store._registry` (open writers, closed at exit; is a writer
alive), :mod:`~axialtrack.store._sinks` (chunk and shard files).

Memory is bounded: the frame pool holds ``queue_mb`` of frames. When it is full,
``append_frame`` waits up to ``block_timeout_s`` for a buffer (``on_full="block"``)
or fails at once (``on_full="raise"``); either way it raises
:class:`~axialtrack.store.errors.WriterTooSlowError` rather than drop a frame.

An error in a writer thread (disk full, read-only file system) is raised by the
next ``append_frame``, ``append_localizations`` or ``close`` call as a
:class:`~axialtrack.store.errors.StoreWriteError` that says how many frames and rows
are safe.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from pydantic import BaseModel

from axialtrack.store import _commit, _threads
from axialtrack.store._location import (
    check_location,
    prepare_path,
    warn_hidden_copies,
)
from axialtrack.store._pool import make_frame_pool
from axialtrack.store._registry import OPEN_WRITERS, pid_alive, writer_alive
from axialtrack.store._schema import check_dtype, json_dict, now_iso, to_columns
from axialtrack.store._sinks import FrameSink
from axialtrack.store._tables import ColumnTable
from axialtrack.store._threads import _ANALYZED, _FRAME, _ROWS, _STOP, _TICK
from axialtrack.store.errors import (
    InvalidFrameError,
    InvalidTableError,
    StoreClosedError,
    StoreError,
    WriterTooSlowError,
    write_error,
)
from axialtrack.store.layout import (
    COMPRESSIONS,
    FORMAT_VERSION,
    KINDS,
    LOCALIZATION_COLUMNS,
    LOCALIZATION_DEFAULTS,
    Compression,
    Kind,
    units_of,
)
from axialtrack.store.options import (
    _ANALYZED_COL,
    _HOST_T,
    _META_FIELDS,
    FrameMeta,
    WriterOptions,
    WriterStats,
    astuple_meta,
)

__all__ = ["FrameMeta", "RunWriter", "WriterOptions", "WriterStats", "writer_alive"]

# the names other modules imported from here before the writer was split
_pid_alive = pid_alive
_check_dtype = check_dtype
_to_columns = to_columns

_RESERVED_ATTRS = frozenset(
    {"format", "kind", "created", "state", "n_frames", "updated", "closed", "writer"}
)


def _checked_args(
    kind: Any,
    plane_shape: Any,
    pixel_size_um: float,
    compression: Any,
    frame_interval_s: float | None,
) -> tuple[int, int]:
    """Validate :class:`RunWriter`'s arguments; return ``(H, W)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        h, w = (int(v) for v in plane_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"plane_shape must be (H, W) of one focal plane, got {plane_shape!r}"
        ) from None
    if h <= 0 or w <= 0:
        raise ValueError(f"plane_shape must be positive, got {plane_shape!r}")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um!r}")
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be None or one of {COMPRESSIONS}, got {compression!r}"
        )
    if frame_interval_s is not None and not frame_interval_s > 0:
        raise ValueError(f"frame_interval_s must be > 0, got {frame_interval_s!r}")
    return h, w


def _extra_columns(columns: Mapping[str, Any] | None) -> dict[str, np.dtype]:
    """Declared extra localization columns and their dtypes (new names,
    numeric or bool)."""
    out: dict[str, np.dtype] = {}
    for name, dt in (columns or {}).items():
        dtype = np.dtype(dt)
        if name in LOCALIZATION_COLUMNS or dtype.kind not in "biuf":
            raise ValueError(
                f"localization_columns[{name!r}]: extra columns must be new "
                f"names with a numeric or bool dtype, got {dtype}"
            )
        out[name] = dtype
    return out


class RunWriter:
    """Create a run store and stream a run into it.

    Parameters
    ----------
    path
        The store directory to create, conventionally ``<name>.zarr``.
    kind
        ``"calibration"`` (bead Z-stacks) or ``"live"``.
    plane_shape
        ``(H, W)`` of one focal plane; frames are ``(2, H, W)`` uint16.
    pixel_size_um
        Pixel size in the sample, micrometres.
    rig, splitter, model
        Provenance (JSON-compatible dicts or pydantic models): the hardware
        config, the splitter geometry, the model bundle used live.
    compression
        ``None`` (raw, fastest), ``"blosc-lz4"`` (fast, about 2x on camera
        noise), ``"blosc-zstd"`` or ``"zstd"`` (smaller, more CPU).
    overwrite
        Replace an existing store at ``path``.
    frame_interval_s
        Nominal time between frames, for the OME-Zarr time scale. If ``None`` it
        is measured from the frames' ``t_s`` at close.
    localization_columns
        Extra localization columns and their dtypes, beyond the standard ones. If
        not given, extra columns in the first batch define them.
    options
        Threading, memory and commit tuning, see :class:`WriterOptions`.

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is False.
    UnwritableStoreError, DiskFullError, StoreWriteError
        The store cannot be created at ``path``.

    Examples
    --------
    >>> with RunWriter("run.zarr", kind="live", plane_shape=(64, 64),
    ...                pixel_size_um=0.1) as w:                     # doctest: +SKIP
    ...     i = w.append_frame(frame, FrameMeta(t_s=0.0, stage_z_um=10.0))
    ...     w.append_localizations(table)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: Kind,
        plane_shape: tuple[int, int],
        pixel_size_um: float,
        rig: Mapping[str, Any] | BaseModel | None = None,
        splitter: Mapping[str, Any] | BaseModel | None = None,
        model: Mapping[str, Any] | BaseModel | None = None,
        compression: Compression | None = None,
        overwrite: bool = False,
        frame_interval_s: float | None = None,
        localization_columns: Mapping[str, Any] | None = None,
        options: WriterOptions | None = None,
    ) -> None:
        self.path = Path(path).expanduser().absolute()
        opts = options or WriterOptions()
        self.options = opts
        h, w = _checked_args(
            kind, plane_shape, pixel_size_um, compression, frame_interval_s
        )
        self.kind = kind
        # calibration runs hold frames only: no localization or track groups
        self._has_tables = kind != "calibration"
        self.frame_shape: tuple[int, int, int] = (2, h, w)
        self.pixel_size_um = float(pixel_size_um)
        self.compression = compression
        self._frame_interval_s = frame_interval_s
        self._attrs: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "created": now_iso(),
            "rig": json_dict(rig, "rig"),
            "splitter": json_dict(splitter, "splitter"),
            "model": json_dict(model, "model"),
            "state": "open",
            "n_frames": 0,
            "plane_shape": [h, w],
            "pixel_size_um": self.pixel_size_um,
            "frame_interval_s": frame_interval_s,
            "compression": compression,
            "writer": self._writer_record(),
        }
        extra_cols = _extra_columns(localization_columns)
        # state shared between threads
        self._lock = threading.Lock()  # attrs, schema
        self._append_lock = threading.Lock()  # frame order, closing
        self._stats_lock = threading.Lock()
        self._closed = False
        # held by the close() that writes; a concurrent close() waits on it
        self._close_lock = threading.RLock()
        self._failure: tuple[BaseException, str] | None = None
        self._n_appended = 0
        self._n_written = 0
        self._committed_frames = 0
        self._rows_appended = 0
        self._committed_rows = 0
        self._bytes_written = 0
        self._write_times: deque[float] = deque(maxlen=4096)
        self._latencies: deque[float] = deque(maxlen=4096)
        self._t0 = time.perf_counter()
        self._attrs_dirty = False
        self._tracks: dict[str, np.ndarray] | None = None
        # the OME metadata: display windows sampled from frames as they are
        # written, the time scale once known; rewritten at commits when changed
        self._window_samples: list[np.ndarray] = []
        self._windows: list[tuple[float, float, float, float]] | None = None
        self._ome_dirty = False
        self._ome_written_at = -math.inf
        self._ome_dt: float | None = frame_interval_s

        check_location(self.path)
        replacing = prepare_path(self.path, overwrite)
        warn_hidden_copies(self.path)
        self._create_atomically(extra_cols, replacing)

        self._pool, self._free = make_frame_pool(self.frame_shape, opts.queue_mb)
        self._n_slots = len(self._pool)
        self._frame_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._table_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._rows_cv = threading.Condition()
        # held while checking that the writer is open and queueing a flag or
        # attribute change, and by close() while it marks the writer closed:
        # nothing is queued after the threads were told to stop
        self._put_lock = threading.Lock()
        self._finished = False
        self._pending_rows = 0
        self._table_stopped = False
        self._late_flags: list[tuple[int, np.ndarray, bool]] = []

        self._start_threads()
        OPEN_WRITERS.add(self)

    def _start_threads(self) -> None:
        """The I/O pool, the committer, the frame and the table threads."""
        self._io = ThreadPoolExecutor(
            self.options.io_threads, thread_name_prefix="run-io"
        )
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="run-commit")
        self._frame_thread = threading.Thread(
            target=self._guarded(self._frame_loop, "dispatching frames"),
            name="run-frames",
            daemon=True,
        )
        self._table_thread = threading.Thread(
            target=self._guarded(self._table_loop, "writing tables"),
            name="run-tables",
            daemon=True,
        )
        self._frame_thread.start()
        self._table_thread.start()

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _writer_record() -> dict[str, Any]:
        from axialtrack import __version__

        return {
            "software": f"axialtrack {__version__}",
            "zarr": zarr.__version__,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    def _create_atomically(
        self, extra_cols: Mapping[str, np.dtype], replacing: bool
    ) -> None:
        _commit.create_atomically(self, extra_cols, replacing)

    def _bind(self, path: Path) -> None:
        _commit.bind(self, path)

    def _create(self, directory: Path, extra_cols: Mapping[str, np.dtype]) -> None:
        _commit.create(self, directory, extra_cols)

    def _frames_ome(self) -> dict[str, Any]:
        return _commit.frames_ome(self)

    def _root_ome(self) -> dict[str, Any]:
        return _commit.root_ome(self)

    @staticmethod
    def _table_attrs(table: ColumnTable) -> dict[str, Any]:
        return {
            "n_rows": table.n,
            "columns": table.columns,
            "dtypes": [table.dtypes[c].str for c in table.columns],
            "units": units_of(table.columns),
        }

    # ------------------------------------------------------------- public API

    @property
    def frames_appended(self) -> int:
        """Frames accepted by :meth:`append_frame`."""
        return self._n_appended

    @property
    def frames_committed(self) -> int:
        """Frames visible to readers (and kept by a crash)."""
        return self._committed_frames

    @property
    def t0(self) -> float:
        """``time.perf_counter()`` when the writer was opened: the origin of
        ``host_t_s`` (and of ``t_s`` where a frame has none)."""
        return self._t0

    @property
    def rows_committed(self) -> int:
        """Localization rows visible to readers (and kept by a crash)."""
        return self._committed_rows

    @property
    def queue_depth(self) -> int:
        """Frames accepted but not yet on disk."""
        return self._n_slots - self._free.qsize()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def stats(self) -> WriterStats:
        """Progress and throughput, for the CLI, the GUI and the run's attributes."""
        elapsed = time.perf_counter() - self._t0
        with self._stats_lock:
            wt = np.array(self._write_times, dtype=float) * 1e3
            lat = np.array(self._latencies, dtype=float) * 1e3
            bytes_written = self._bytes_written

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if a.size else math.nan

        raw = self._n_written * int(np.prod(self.frame_shape)) * 2
        return WriterStats(
            frames_appended=self._n_appended,
            frames_written=self._n_written,
            frames_committed=self._committed_frames,
            queue_depth=self.queue_depth,
            queue_capacity=self._n_slots,
            bytes_written=bytes_written,
            elapsed_s=elapsed,
            write_mb_s=raw / 1e6 / elapsed if elapsed > 0 else 0.0,
            write_ms_p50=pct(wt, 50),
            write_ms_p99=pct(wt, 99),
            latency_ms_p50=pct(lat, 50),
            latency_ms_p99=pct(lat, 99),
            rows_appended=self._rows_appended,
            rows_committed=self._committed_rows,
        )

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            exc, doing = self._failure
            raise write_error(
                exc,
                path=self.path,
                frames_safe=self._committed_frames,
                rows_safe=self._committed_rows,
                doing=doing,
            ) from exc

    def _check_tables(self, what: str) -> None:
        if not self._has_tables:
            raise InvalidTableError(
                f"{what}: a calibration run holds frames only, no localizations "
                "or tracks; write them to a live run (kind='live')."
            )

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreClosedError(
                f"{what} after the run store {self.path} was closed; open a new "
                "RunWriter to record another run."
            )
        self._raise_if_failed()

    def append_frame(
        self,
        frame: np.ndarray,
        meta: FrameMeta | Mapping[str, Any] | None = None,
    ) -> int:
        """Queue one dual-plane frame for writing; return its index along t.

        The frame is copied, so the caller may reuse its buffer at once.

        Parameters
        ----------
        frame
            ``(2, H, W)`` uint16: plane 0, plane 1 (split and registered).
        meta
            A :class:`FrameMeta`, or a dict with some of its fields.

        Raises
        ------
        InvalidFrameError
            Wrong shape or dtype, or unknown metadata fields.
        WriterTooSlowError
            The frame pool stayed full (storage slower than the camera); this
            frame was not stored.
        StoreWriteError
            A write failed earlier (disk full, ...); see its ``frames_safe``.
        StoreClosedError
            The writer is closed.
        """
        self._check_open("append_frame")
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape:
            raise InvalidFrameError(
                f"append_frame on {self.path}: frame shape {arr.shape} does not "
                f"match the run's (2, H, W) = {self.frame_shape}. Pass both focal "
                "planes stacked, split and registered (axialtrack.geometry."
                "split_frame)."
            )
        if arr.dtype.kind != "u" or arr.dtype.itemsize != 2:
            raise InvalidFrameError(
                f"append_frame on {self.path}: frame dtype {arr.dtype}; the store "
                "holds raw uint16 camera counts. Pass the camera image without "
                "converting it (frame.astype(np.uint16) if it was widened)."
            )
        row = self._meta_row(meta)
        t_in = time.perf_counter()
        if row[0] is None:
            row = (t_in - self._t0, *row[1:])
        if row[_HOST_T] is None:
            row = (*row[:_HOST_T], t_in - self._t0, *row[_HOST_T + 1 :])
        flag = row[_ANALYZED_COL]
        if flag:
            # made durable like set_analyzed: after the rows appended before
            row = (*row[:_ANALYZED_COL], False, *row[_ANALYZED_COL + 1 :])
        opts = self.options
        with self._append_lock:
            self._check_open("append_frame")
            try:
                if opts.on_full == "raise":
                    slot = self._free.get_nowait()
                else:
                    slot = self._free.get(timeout=opts.block_timeout_s)
            except queue.Empty:
                raise self._too_slow() from None
            if self._failure is not None:
                # the writer failed while this call waited for a buffer: the
                # frame would be dropped, so it is refused (frames_safe says
                # what is stored)
                self._free.put(slot)
                self._raise_if_failed()
            np.copyto(self._pool[slot], arr, casting="unsafe")
            index = self._n_appended
            self._n_appended += 1
            self._frame_q.put((_FRAME, index, slot, row, t_in))
            if flag:
                self._frame_q.put(
                    (_ANALYZED, np.array([index]), True, self._rows_appended)
                )
        return index

    def _too_slow(self) -> WriterTooSlowError:
        st = self.stats
        return WriterTooSlowError(
            f"Run store {self.path}: storage cannot keep up. All {self._n_slots} "
            f"frame buffers ({self.options.queue_mb:g} MB) are still waiting to be "
            f"written (written so far at {st.write_mb_s:.0f} MB/s). Frame "
            f"{self._n_appended} was NOT stored; {self._committed_frames} frames "
            "are safely stored and the queued ones will be. Stop the run, or lower "
            "the frame rate, enable compression or record to faster storage.",
            path=self.path,
            frames_safe=self._committed_frames,
            rows_safe=self._committed_rows,
        )

    def _meta_row(self, meta: FrameMeta | Mapping[str, Any] | None) -> tuple:
        if meta is None:
            return astuple_meta(FrameMeta())
        if isinstance(meta, FrameMeta):
            return astuple_meta(meta)
        if not isinstance(meta, Mapping):
            raise InvalidFrameError(
                f"append_frame on {self.path}: meta must be a FrameMeta or a dict, "
                f"got {type(meta).__name__}"
            )
        unknown = set(meta) - set(_META_FIELDS)
        if unknown:
            raise InvalidFrameError(
                f"append_frame on {self.path}: unknown frame metadata field(s) "
                f"{sorted(unknown)}; known fields: {list(_META_FIELDS)}."
            )
        try:
            return astuple_meta(FrameMeta(**meta))
        except (TypeError, ValueError) as exc:
            raise InvalidFrameError(
                f"append_frame on {self.path}: bad frame metadata: {exc}"
            ) from None

    def set_analyzed(
        self, frame_indices: Sequence[int] | np.ndarray, value: bool
    ) -> None:
        """Set the ``analyzed`` flag of frames already appended.

        Parameters
        ----------
        frame_indices
            Indices along t (as returned by :meth:`append_frame`).
        value
            The flag.
        """
        self._check_open("set_analyzed")
        idx = np.atleast_1d(np.asarray(frame_indices)).astype(np.int64, copy=True)
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self._n_appended:
            raise IndexError(
                f"set_analyzed on {self.path}: frame indices must be in "
                f"[0, {self._n_appended}), got {idx.min()}..{idx.max()}"
            )
        with self._put_lock:
            self._check_open("set_analyzed")
            # durable only once the rows appended so far are committed
            self._frame_q.put((_ANALYZED, idx, bool(value), self._rows_appended))

    def set_attrs(self, **values: Any) -> None:
        """Add or replace entries of the run's ``axialtrack`` attributes.

        For provenance known only later (e.g. ``model=...``) or live metrics.
        Written with the next commit.
        """
        self._check_open("set_attrs")
        bad = _RESERVED_ATTRS & set(values)
        if bad:
            raise ValueError(f"set_attrs: {sorted(bad)} are managed by the writer")
        new = {k: json_dict({k: v}, k)[k] for k, v in values.items()}
        with self._put_lock:
            self._check_open("set_attrs")
            with self._lock:
                self._attrs.update(new)
                self._attrs_dirty = True
            self._frame_q.put((_TICK,))

    def append_localizations(self, table: Any) -> int:
        """Queue a batch of localizations; return the rows appended so far.

        A batch becomes visible to readers whole, within about
        ``table_flush_interval_s``.

        Parameters
        ----------
        table
            A pandas DataFrame, a dict of equal-length 1-D arrays or a structured
            array with the localization columns: ``frame`` (int64), ``t_s``,
            ``x_um``, ``y_um``, ``z_um``, ``dz_um``, ``photons``, ``background``
            (float64), optionally ``sigma_z_um`` (NaN if missing) and
            ``track_id`` (int64, -1 if missing), plus numeric extra columns.

        Raises
        ------
        InvalidTableError
            Missing columns, unequal lengths, or dtypes that do not fit.
        """
        self._check_open("append_localizations")
        what = f"append_localizations on {self.path}"
        self._check_tables(what)
        cols = to_columns(table, what)
        lengths = {k: v.shape for k, v in cols.items()}
        if any(len(s) != 1 for s in lengths.values()):
            raise InvalidTableError(f"{what}: every column must be 1-D, got {lengths}")
        ns = {s[0] for s in lengths.values()}
        if len(ns) > 1:
            raise InvalidTableError(f"{what}: columns differ in length: {lengths}")
        k = ns.pop() if ns else 0
        missing = [
            c
            for c in LOCALIZATION_COLUMNS
            if c not in cols and c not in LOCALIZATION_DEFAULTS
        ]
        if missing:
            raise InvalidTableError(
                f"{what}: missing column(s) {missing}; the localization table needs "
                f"{list(LOCALIZATION_COLUMNS)} (sigma_z_um and track_id optional)."
            )
        with self._lock:
            extras = [c for c in cols if c not in self._loc_schema]
            if extras:
                if self._loc_schema_fixed:
                    raise InvalidTableError(
                        f"{what}: unknown column(s) {extras}. Extra columns must be "
                        "in the first batch or declared with localization_columns=."
                    )
                for c in extras:
                    if cols[c].dtype.kind not in "biuf":
                        raise InvalidTableError(
                            f"{what}: extra column {c!r} has dtype {cols[c].dtype}; "
                            "only numeric and bool columns are stored."
                        )
                    self._loc_schema[c] = cols[c].dtype.newbyteorder("=")
            self._loc_schema_fixed = True
            schema = dict(self._loc_schema)
        out: dict[str, np.ndarray] = {}
        for name, dtype in schema.items():
            if name in cols:
                out[name] = check_dtype(name, cols[name], dtype, what)
            elif name in LOCALIZATION_DEFAULTS:
                out[name] = np.full(k, LOCALIZATION_DEFAULTS[name], dtype=dtype)
            else:
                raise InvalidTableError(
                    f"{what}: missing column {name!r} (it was in earlier batches)."
                )
        if k == 0:
            return self._rows_appended
        opts = self.options
        with self._rows_cv:
            if self._pending_rows + k > opts.max_pending_rows:
                timeout = 0.0 if opts.on_full == "raise" else opts.block_timeout_s
                ok = self._rows_cv.wait_for(
                    lambda: (
                        self._pending_rows + k <= opts.max_pending_rows
                        or self._failure is not None
                    ),
                    timeout=timeout,
                )
                if not ok:
                    raise WriterTooSlowError(
                        f"Run store {self.path}: {self._pending_rows} localization "
                        "rows are waiting to be written; this batch was NOT stored. "
                        "Storage cannot keep up: stop the run or record to faster "
                        "storage.",
                        path=self.path,
                        frames_safe=self._committed_frames,
                        rows_safe=self._committed_rows,
                    )
            self._raise_if_failed()
            self._check_open("append_localizations")  # closed while waiting?
            self._pending_rows += k
            self._rows_appended += k
            n = self._rows_appended
            last = int(out["frame"].max()) if k else -1
            self._table_q.put((_ROWS, out, k, last))
        return n

    def write_tracks(self, table: Any) -> None:
        """Set the per-track summary table, written when the run closes.

        Parameters
        ----------
        table
            A DataFrame or dict of equal-length numeric 1-D arrays, one row per
            track (e.g. ``track_id``, ``n_localizations``, ``t_start_s``, ...).
            A later call replaces an earlier one.
        """
        self._check_open("write_tracks")
        what = f"write_tracks on {self.path}"
        self._check_tables(what)
        cols = to_columns(table, what)
        lens = {v.shape for v in cols.values()}
        if any(len(s) != 1 for s in lens) or len(lens) > 1:
            raise InvalidTableError(
                f"{what}: columns must be 1-D and of equal length, got "
                f"{ {k: v.shape for k, v in cols.items()} }"
            )
        for k, v in cols.items():
            if v.dtype.kind not in "biuf":
                raise InvalidTableError(
                    f"{what}: column {k!r} has dtype {v.dtype}; only numeric and "
                    "bool columns are stored."
                )
        self._tracks = {
            k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("="))
            for k, v in cols.items()
        }

    def close(self) -> None:
        """Write everything queued, the tracks, and mark the run closed.

        Idempotent. Waits for the queues to drain.

        Raises
        ------
        StoreWriteError
            A write failed; the store keeps what was committed and stays
            ``state: "open"`` (see :func:`axialtrack.store.recover`).
        """
        with self._append_lock, self._put_lock, self._rows_cv:
            first = not self._closed
            self._closed = True
            if first:
                self._frame_q.put(_STOP)
        # one close at a time, and none returns while another still writes:
        # a caller that deletes the store once close() returned (an
        # --overwrite that puts the old run back) must not race the last
        # attribute writes of a close running on another thread
        with self._close_lock:
            if not self._finished:
                self._close_locked()

    def _close_locked(self) -> None:
        # a close interrupted here (Ctrl-C while a slow disk drains the pool)
        # is done again by the next close() or at exit
        self._frame_thread.join()
        # the rows after the last frame commit: every batch whose frames are
        # committed (all of them, unless the writer failed)
        if not self._table_stopped:
            self._table_stopped = True
            self._table_q.put(_STOP)
        self._table_thread.join()
        late, self._late_flags = self._late_flags, []
        if self._failure is None:
            updates = [(i, v) for wm, i, v in late if wm <= self._committed_rows]
            if updates:
                # flags that waited for the last rows
                fut = self._committer.submit(
                    self._commit, self._committed_frames, [], updates, 0
                )
                try:
                    fut.result()
                except BaseException as exc:
                    self._fail(exc, "committing analyzed flags")
        self._io.shutdown(wait=True)
        self._committer.shutdown(wait=True)
        self._sink.close()
        self._finished = True
        OPEN_WRITERS.discard(self)
        self._raise_if_failed()
        try:
            self._finalize()
        except OSError as exc:
            self._failure = (exc, "closing the run")
            self._raise_if_failed()

    def _finalize(self) -> None:
        _commit.finalize(self)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except StoreError as close_exc:
            if exc is None:
                raise
            if hasattr(exc, "add_note"):
                exc.add_note(f"and closing the run store failed: {close_exc}")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<RunWriter {self.path} {self.kind} {state}: "
            f"{self._committed_frames}/{self._n_appended} frames committed>"
        )

    # ---------------------------------------------------------- frame thread

    # set when the store is created and bound (see _commit)
    _root: zarr.Group
    _frames_group: zarr.Group
    _frames_arr: zarr.Array
    _tracks_group: zarr.Group
    _sink: FrameSink
    _capacity: int
    _meta: ColumnTable
    _locs: ColumnTable
    _loc_schema: dict[str, np.dtype]
    _loc_schema_fixed: bool
    _t_first: float | None = None
    _t_last: float = math.nan

    def _fail(self, exc: BaseException, doing: str) -> None:
        _threads.fail(self, exc, doing)

    def _guarded(self, loop: Callable[[], None], doing: str) -> Callable[[], None]:
        return _threads.guarded(self, loop, doing)

    def _write_job(self, index: int, slot: int, t_in: float) -> None:
        _threads.write_job(self, index, slot, t_in)

    def _frame_loop(self) -> None:
        _threads.frame_loop(self)

    def _grow_frames(self, need: int) -> None:
        _threads.grow_frames(self, need)

    def _commit(
        self,
        n: int,
        rows: list[tuple],
        updates: list[tuple[np.ndarray, bool]],
        base: int = 0,
    ) -> None:
        _commit.commit(self, n, rows, updates, base)

    def _update_ome(self, n: int, final: bool = False) -> bool:
        return _commit.update_ome(self, n, final)

    # ---------------------------------------------------------- table thread

    def _table_loop(self) -> None:
        _threads.table_loop(self)

    def _flush_rows(
        self, batches: Sequence[tuple[dict[str, np.ndarray], int, int]], k: int
    ) -> None:
        _threads.flush_rows(self, batches, k)

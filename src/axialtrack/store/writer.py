"""The run writer: streams frames, frame metadata and localizations into a store.

Threads
-------
``append_frame`` (any thread, usually acquisition) validates the frame, copies it
into a free buffer of a preallocated pool and queues it. The *frame thread* hands
each queued frame to a small pool of I/O threads that encode it and write its chunk
(atomically: temporary file, then rename), and every ``commit_interval_s`` asks the
*committer thread* to commit: write the metadata rows of the frames that are on
disk (contiguously), then the committed frame count ``n_frames`` in the root
attributes. The committer also grows the arrays ahead of the frames. The *table
thread* collects localization batches and writes them in whole batches, then
commits ``n_rows``. A reader that reads a count first and only that many frames or
rows never sees anything half written.

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

import atexit
import contextlib
import json
import math
import os
import queue
import socket
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, model_validator
from zarr.storage import LocalStore

from axialtrack.store._sinks import (
    DIRECT_ALIGN,
    MAX_SHARD_FRAMES,
    Backend,
    FrameSink,
    make_sink,
)
from axialtrack.store._tables import ColumnTable, round_up, shrink
from axialtrack.store.errors import (
    InvalidFrameError,
    InvalidTableError,
    StoreClosedError,
    StoreError,
    StoreExistsError,
    StoreInUseError,
    UnwritableStoreError,
    WriterTooSlowError,
    write_error,
)
from axialtrack.store.layout import (
    ATTRS_KEY,
    CHUNK_KEY_ENCODING,
    COMPRESSIONS,
    FORMAT_VERSION,
    FRAME_ARRAY,
    FRAME_META,
    FRAME_META_COLUMNS,
    FRAMES,
    KINDS,
    LOCALIZATION_COLUMNS,
    LOCALIZATION_DEFAULTS,
    LOCALIZATIONS,
    TRACKS,
    Compression,
    Kind,
    chunk_encoder,
    frame_codecs,
    frame_window_sample,
    merge_windows,
    ome_image_attrs,
    read_json,
    units_of,
)

__all__ = ["FrameMeta", "RunWriter", "WriterOptions", "WriterStats"]

_RESERVED_ATTRS = frozenset(
    {"format", "kind", "created", "state", "n_frames", "updated", "closed", "writer"}
)


class WriterOptions(BaseModel):
    """Tuning of a :class:`RunWriter`; the defaults suit a live camera.

    Parameters
    ----------
    backend
        How frame chunks are written: ``"direct"`` (encode with numcodecs, one
        ``write`` per chunk file; fastest, the default), ``"zarr"`` (zarr-python's
        ``array[t] = frame``) or ``"tensorstore"`` (needs the ``tensorstore``
        package). All three produce the same store.
    queue_mb
        Memory of the frame pool: frames accepted but not yet on disk.
    on_full
        What ``append_frame`` does when every pool buffer is still queued:
        ``"block"`` waits up to ``block_timeout_s`` for one, ``"raise"`` raises at
        once. Both raise :class:`WriterTooSlowError` instead of dropping a frame.
    block_timeout_s
        Longest wait for a free buffer (or for room in the localization queue).
    io_threads
        Threads that encode and write frame chunks concurrently.
    commit_interval_s
        Longest time between commits while frames arrive: frames written to disk
        become visible to readers (and survive a crash) within about this time.
    compression_level
        Level of the frame compressor (default: zstd 1, blosc-lz4 5, blosc-zstd 1).
    time_block
        Frames added to the frame array at each resize.
    shard_frames
        Frames per file: the frame array is a zarr v3 sharded array with one
        shard of ``shard_frames`` frames per file (2 to 255; the ``"direct"``
        backend only). ``None``: one file per frame.
    meta_chunk
        Frames per chunk of the ``frame_meta`` arrays.
    table_chunk
        Rows per chunk of the localization and track arrays.
    table_flush_interval_s
        Longest time localization batches wait in memory before being written.
    max_pending_rows
        Localization rows that may wait in memory; beyond, ``append_localizations``
        waits (or raises) like ``append_frame`` does.
    direct_io
        Write uncompressed frame chunks whose size is a multiple of 4 KiB with
        ``O_DIRECT`` (``"direct"`` backend, where the OS and file system allow
        it): straight from the frame pool to the disk, without a copy into the
        page cache. Compressed chunks, other sizes, file systems other than
        local-disk ones (ext4, XFS, btrfs, ...; not network file systems) and
        file systems that refuse it go through the page cache as before.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = "direct"
    queue_mb: float = Field(256.0, gt=0)
    on_full: Literal["block", "raise"] = "block"
    block_timeout_s: float = Field(5.0, ge=0)
    io_threads: int = Field(2, ge=1, le=32)
    commit_interval_s: float = Field(0.1, gt=0)
    compression_level: int | None = None
    time_block: int = Field(256, ge=1)
    shard_frames: int | None = Field(None, ge=2, le=MAX_SHARD_FRAMES)
    meta_chunk: int = Field(4096, ge=1)
    table_chunk: int = Field(16384, ge=1)
    table_flush_interval_s: float = Field(0.25, gt=0)
    max_pending_rows: int = Field(2_000_000, ge=1)
    direct_io: bool = True

    @model_validator(mode="after")
    def _shards_need_direct(self) -> WriterOptions:
        if self.shard_frames and self.backend != "direct":
            raise ValueError(
                f"shard_frames needs backend='direct', got backend={self.backend!r}"
            )
        return self


@dataclass(frozen=True)
class FrameMeta:
    """Metadata of one dual-plane frame (one row of ``frame_meta``).

    Parameters
    ----------
    t_s
        Acquisition time (camera timestamp) in seconds. ``None`` records the
        frame's arrival time, in seconds since the writer was opened.
    stage_z_um, stage_x_um, stage_y_um
        Stage positions when the frame was exposed (NaN if unknown).
    image_number
        The camera's image counter (-1 if unknown).
    position_index
        Index of the stage position (field) in a multi-position run.
    analyzed
        Whether the live pipeline analyzed this frame. ``True`` here is made
        durable only after every localization row appended before this frame
        (as :meth:`RunWriter.set_analyzed` is).
    host_t_s
        When the frame reached the host, in seconds on the host's monotonic
        clock since the writer was opened. ``None`` records the time
        ``append_frame`` received it. Unlike ``t_s`` (the camera's clock, which
        a simulated camera may run at its nominal rate), this measures the rate
        the run really had.
    """

    t_s: float | None = None
    stage_z_um: float = math.nan
    stage_x_um: float = math.nan
    stage_y_um: float = math.nan
    image_number: int = -1
    position_index: int = 0
    analyzed: bool = False
    host_t_s: float | None = None


_META_FIELDS = tuple(f.name for f in fields(FrameMeta))
_META_DTYPE = np.dtype([(k, FRAME_META_COLUMNS[k]) for k in _META_FIELDS])
_ANALYZED_COL = _META_FIELDS.index("analyzed")
_HOST_T = _META_FIELDS.index("host_t_s")


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of a :class:`RunWriter`'s progress.

    Attributes
    ----------
    frames_appended
        Frames accepted by ``append_frame``.
    frames_written
        Frames whose chunk is on disk.
    frames_committed
        Frames a reader sees (and a crash keeps).
    queue_depth, queue_capacity
        Frames accepted but not on disk, and the pool size.
    bytes_written
        Bytes of frame chunks written (after compression).
    elapsed_s
        Seconds since the writer was opened.
    write_mb_s
        Raw frame megabytes (1e6 bytes) written per second since opening.
    write_ms_p50, write_ms_p99
        Time to encode and write one frame chunk (recent frames).
    latency_ms_p50, latency_ms_p99
        Time from ``append_frame`` to the chunk being on disk (recent frames).
    rows_appended, rows_committed
        Localization rows accepted and committed.
    """

    frames_appended: int
    frames_written: int
    frames_committed: int
    queue_depth: int
    queue_capacity: int
    bytes_written: int
    elapsed_s: float
    write_mb_s: float
    write_ms_p50: float
    write_ms_p99: float
    latency_ms_p50: float
    latency_ms_p99: float
    rows_appended: int
    rows_committed: int


_STOP = object()
_DONE = 1
_FRAME = 2
_ANALYZED = 3
_TICK = 4
_ROWS = 5

_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()

#: frames sampled for the display window: 0, 1, 2, 4, ... and then every N-th
_WINDOW_EVERY = 256
#: least time between two rewrites of the OME metadata while a run is written
_OME_EVERY_S = 1.0


def _close_open_writers() -> None:  # pragma: no cover - interpreter exit
    for writer in list(_OPEN_WRITERS):
        with contextlib.suppress(Exception):
            writer.close()


# Writers left open are closed (their queues written) when the interpreter exits.
# This must run before thread pools refuse new work at exit (zarr and the I/O
# threads need them), hence the hook ``concurrent.futures`` itself uses.
_register_exit = getattr(threading, "_register_atexit", atexit.register)
try:
    _register_exit(_close_open_writers)
except RuntimeError:  # pragma: no cover - registered while shutting down
    atexit.register(_close_open_writers)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json_dict(value: Any, field: str) -> dict[str, Any]:
    """A JSON-compatible dict from a dict or pydantic model; clear error if not."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{field} must be a dict (or a pydantic model), got {type(value).__name__}"
        )
    try:
        out = json.loads(json.dumps(dict(value), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{field} must be JSON-serializable (str, numbers, lists, dicts): {exc}"
        ) from None
    return dict(out)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    if os.name == "nt":  # pragma: no cover - Windows: os.kill(pid, 0) kills it
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    win: Any = ctypes  # WinDLL and get_last_error exist on Windows only
    kernel32 = win.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
    if not handle:
        return bool(win.get_last_error() == 5)  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def writer_alive(attrs: Mapping[str, Any], path: Path) -> bool | None:
    """Whether a run store at ``path`` (with these attrs) is still being written.

    True if the writing process runs (in this process: if a :class:`RunWriter`
    for ``path`` is open); ``None`` when it cannot be told (another host, or no
    writer record).
    """
    w = attrs.get("writer") or {}
    pid, host = w.get("pid"), w.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    if pid == os.getpid():
        target = Path(path).expanduser().absolute()
        return any(wr.path == target for wr in list(_OPEN_WRITERS))
    return _pid_alive(pid)


def _prepare_path(path: Path, overwrite: bool) -> bool:
    """Check that a store may be created at ``path``; return whether something
    (a run store of ours, or an empty directory) is there to be replaced.

    Nothing is deleted here: the new store is built beside it and swapped in.
    """
    from axialtrack.store.replace import is_run_store, refusal

    why = refusal(path, overwrite, "store")
    if why is not None:
        raise StoreExistsError(why.replace("--overwrite", "overwrite=True"))
    if not (path.exists() or path.is_symlink()):
        return False
    if is_run_store(path):
        try:
            attrs = read_json(path / "zarr.json")["attributes"][ATTRS_KEY]
        except (OSError, ValueError, KeyError, TypeError):
            attrs = {}
        if (
            isinstance(attrs, dict)
            and attrs.get("state") == "open"
            and writer_alive(attrs, path)
        ):
            raise StoreInUseError(
                f"{path} is being written by process "
                f"{attrs['writer']['pid']}; stop that run before overwriting it."
            )
    return True


def _warn_hidden_copies(path: Path) -> None:
    """Warn about a previous store an interrupted ``--overwrite`` hid beside
    ``path``: it is kept, and must not be forgotten."""
    from axialtrack.store.replace import find_leftovers_beside

    for left in find_leftovers_beside(path):
        if left.what == "replaced" and not left.alive:
            warnings.warn(
                f"{left.path} holds a previous {path.name}, set aside by an "
                f"--overwrite that was interrupted (process {left.pid}); it is "
                f"kept. Run `axialtrack recover {path}` to restore or delete it.",
                stacklevel=4,
            )


def _check_location(path: Path) -> None:
    """Fail early, and clearly, when ``path`` cannot be created."""
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UnwritableStoreError(
            f"Cannot create run store {path}: {anc} is a file, not a directory. "
            "Choose an output path inside a directory.",
            path=path,
            frames_safe=0,
            rows_safe=0,
        )
    if not os.access(anc, os.W_OK):
        raise UnwritableStoreError(
            f"Cannot create run store {path}: {anc} is not writable (permissions "
            "or a read-only mount). Choose a writable location.",
            path=path,
            frames_safe=0,
            rows_safe=0,
        )


def _to_columns(table: Any, what: str) -> dict[str, np.ndarray]:
    """Columns of a DataFrame, a mapping of arrays or a structured array."""
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {k: np.asarray(table[k]) for k in table.dtype.names}
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):
        return {str(k): np.asarray(table[k].to_numpy()) for k in table.columns}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    raise InvalidTableError(
        f"{what}: expected a pandas DataFrame, a dict of 1-D arrays or a structured "
        f"array, got {type(table).__name__}"
    )


def _check_dtype(name: str, col: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if col.dtype.kind not in "biuf" or not np.can_cast(
        col.dtype, dtype, casting="same_kind"
    ):
        raise InvalidTableError(
            f"{what}: column {name!r} has dtype {col.dtype}, which cannot be stored "
            f"as {dtype} without losing information; convert it to {dtype}."
        )
    return np.ascontiguousarray(col, dtype=dtype)


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
                f"compression must be None or one of {COMPRESSIONS}, "
                f"got {compression!r}"
            )
        if frame_interval_s is not None and not frame_interval_s > 0:
            raise ValueError(f"frame_interval_s must be > 0, got {frame_interval_s!r}")
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
            "created": _now_iso(),
            "rig": _json_dict(rig, "rig"),
            "splitter": _json_dict(splitter, "splitter"),
            "model": _json_dict(model, "model"),
            "state": "open",
            "n_frames": 0,
            "plane_shape": [h, w],
            "pixel_size_um": self.pixel_size_um,
            "frame_interval_s": frame_interval_s,
            "compression": compression,
            "writer": self._writer_record(),
        }
        extra_cols: dict[str, np.dtype] = {}
        for name, dt in (localization_columns or {}).items():
            dtype = np.dtype(dt)
            if name in LOCALIZATION_COLUMNS or dtype.kind not in "biuf":
                raise ValueError(
                    f"localization_columns[{name!r}]: extra columns must be new "
                    f"names with a numeric or bool dtype, got {dtype}"
                )
            extra_cols[name] = dtype

        # state shared between threads
        self._lock = threading.Lock()  # attrs, schema
        self._append_lock = threading.Lock()  # frame order, closing
        self._stats_lock = threading.Lock()
        self._closed = False
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

        _check_location(self.path)
        replacing = _prepare_path(self.path, overwrite)
        _warn_hidden_copies(self.path)
        self._create_atomically(extra_cols, replacing)

        frame_bytes = int(np.prod(self.frame_shape)) * 2
        n_slots = max(2, int(opts.queue_mb * 1e6 // frame_bytes))
        # page-aligned, so that whole frames can go to disk with direct I/O
        raw = np.empty(n_slots * frame_bytes + DIRECT_ALIGN, dtype=np.uint8)
        off = -raw.ctypes.data % DIRECT_ALIGN
        self._pool = (
            raw[off : off + n_slots * frame_bytes]
            .view("<u2")
            .reshape(n_slots, *self.frame_shape)
        )
        # LIFO: the most recently written buffer is reused first, so a writer that
        # keeps up touches (and page-faults) only a few buffers of the pool.
        self._free: queue.LifoQueue[int] = queue.LifoQueue()
        for i in reversed(range(n_slots)):
            self._free.put(i)
        self._n_slots = n_slots
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

        self._io = ThreadPoolExecutor(opts.io_threads, thread_name_prefix="run-io")
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
        _OPEN_WRITERS.add(self)

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
        """Build the empty store beside ``path`` and rename it into place.

        A reader (or a crash) sees no store or a complete one, with every group
        and table; a failure leaves nothing at ``path`` (a kill leaves the hidden
        ``.NAME.creating-PID``, which ``info`` and ``recover`` report and
        remove). A replaced store is renamed aside first and deleted after.
        """
        from axialtrack.store.replace import hidden_name, remove_path

        path = self.path
        tmp = hidden_name(path, "creating")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists() or tmp.is_symlink():
                remove_path(tmp)
            self._create(tmp, extra_cols)
            if replacing:
                if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                    path.rmdir()
                else:
                    aside = hidden_name(path, "replaced")
                    if aside.exists() or aside.is_symlink():
                        remove_path(aside)
                    os.replace(path, aside)
                    os.replace(tmp, path)
                    remove_path(aside)
            if not path.exists():
                os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                remove_path(tmp)
            raise write_error(
                exc, path=path, frames_safe=0, rows_safe=0, doing="creating it"
            ) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                remove_path(tmp)
            raise
        self._bind(path)

    def _bind(self, path: Path) -> None:
        """Open the created store at its final place for writing."""
        opts = self.options
        root = zarr.open_group(LocalStore(path), mode="r+")
        self._root = root
        frames = root[FRAMES]
        arr = root[f"{FRAMES}/{FRAME_ARRAY}"]
        assert isinstance(frames, zarr.Group)
        assert isinstance(arr, zarr.Array)
        self._frames_group = frames
        self._frames_arr = arr
        if self._has_tables:
            tracks = root[TRACKS]
            assert isinstance(tracks, zarr.Group)
            self._tracks_group = tracks
        direct = opts.backend != "zarr"
        bound = [(self._meta, FRAME_META)]
        if self._has_tables:
            bound.append((self._locs, LOCALIZATIONS))
        for table, name in bound:
            group = root[name]
            assert isinstance(group, zarr.Group)
            table.rebind(group, path / name if direct else None)
        self._sink: FrameSink = make_sink(
            opts.backend,
            self._frames_arr,
            path / FRAMES / FRAME_ARRAY,
            chunk_encoder(self.compression, opts.compression_level),
            direct_io=opts.direct_io,
            shard_frames=opts.shard_frames,
        )

    def _create(self, directory: Path, extra_cols: Mapping[str, np.dtype]) -> None:
        """Create the empty store (every group, array and table) in
        ``directory``."""
        opts = self.options
        store = LocalStore(directory)
        root = zarr.open_group(store, mode="w-", zarr_format=3)
        root.update_attributes({ATTRS_KEY: self._attrs, "ome": self._root_ome()})

        frames = root.create_group(
            FRAMES,
            attributes={
                "ome": ome_image_attrs(
                    pixel_size_um=self.pixel_size_um,
                    frame_interval_s=self._frame_interval_s,
                )
            },
        )
        serializer, compressors = frame_codecs(self.compression, opts.compression_level)
        chunks: tuple[int, ...] = (1, *self.frame_shape)
        if opts.shard_frames:
            from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

            # one file per shard of frames; the index first, so that it stays
            # in place while frames are appended after it
            serializer = ShardingCodec(
                chunk_shape=chunks,
                codecs=[serializer, *compressors],
                index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
                index_location="start",
            )
            compressors = ()
            chunks = (opts.shard_frames, *self.frame_shape)
        frames.create_array(
            FRAME_ARRAY,
            shape=(0, *self.frame_shape),
            chunks=chunks,
            dtype="uint16",
            fill_value=0,
            serializer=serializer,
            compressors=compressors,
            dimension_names=["t", "c", "y", "x"],
            chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
            config={"write_empty_chunks": True},
        )
        self._capacity = 0

        meta_group = root.create_group(
            FRAME_META, attributes={"units": units_of(FRAME_META_COLUMNS)}
        )
        self._meta = ColumnTable(meta_group, chunk=opts.meta_chunk)
        for name, dtype in FRAME_META_COLUMNS.items():
            self._meta.add_column(name, dtype)

        # a calibration run's (empty) localization table lives in memory only
        loc_group = (
            root.create_group(LOCALIZATIONS)
            if self._has_tables
            else zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        )
        self._locs = ColumnTable(loc_group, chunk=opts.table_chunk)
        for name, dtype in {**LOCALIZATION_COLUMNS, **extra_cols}.items():
            self._locs.add_column(name, dtype)
        self._loc_schema: dict[str, np.dtype] = dict(self._locs.dtypes)
        self._loc_schema_fixed = bool(extra_cols)
        loc_group.update_attributes(self._table_attrs(self._locs))

        if self._has_tables:
            tracks = root.create_group(TRACKS)
            tracks.update_attributes({"n_rows": 0, "columns": [], "dtypes": []})

    def _frames_ome(self) -> dict[str, Any]:
        """The ``ome`` attribute of ``frames`` (the image, dataset ``"0"``)."""
        return ome_image_attrs(
            pixel_size_um=self.pixel_size_um,
            frame_interval_s=self._ome_dt,
            windows=self._windows,
        )

    def _root_ome(self) -> dict[str, Any]:
        """The ``ome`` attribute of the root: the same image (dataset
        ``"frames/0"``), so that OME-Zarr readers given the store's own path
        open it."""
        return ome_image_attrs(
            pixel_size_um=self.pixel_size_um,
            frame_interval_s=self._ome_dt,
            name=self.path.stem,
            path=f"{FRAMES}/{FRAME_ARRAY}",
            windows=self._windows,
        )

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
        new = {k: _json_dict({k: v}, k)[k] for k, v in values.items()}
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
        cols = _to_columns(table, what)
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
                out[name] = _check_dtype(name, cols[name], dtype, what)
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
        cols = _to_columns(table, what)
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
        if self._finished:
            return
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
        _OPEN_WRITERS.discard(self)
        self._raise_if_failed()
        try:
            self._finalize()
        except OSError as exc:
            self._failure = (exc, "closing the run")
            self._raise_if_failed()

    def _finalize(self) -> None:
        if self._tracks is not None and self._has_tables:
            cols = self._tracks
            n = len(next(iter(cols.values()))) if cols else 0
            table = ColumnTable(self._tracks_group, chunk=self.options.table_chunk)
            for name, arr in cols.items():
                table.add_column(name, arr.dtype)
            table.append(cols, n)
            table.truncate()
            self._tracks_group.update_attributes(self._table_attrs(table))
        n = self._committed_frames
        # every frame written is committed: no chunk lies past n
        shrink(self._frames_arr, (n, *self.frame_shape))
        self._meta.truncate()
        self._locs.truncate()
        dt = self._frame_interval_s
        if dt is None and n > 1 and self._t_first is not None:
            span = self._t_last - self._t_first
            dt = span / (n - 1) if span > 0 else None
        self._ome_dt = dt
        self._update_ome(n, final=True)
        self._ome_dt = dt  # exactly the measured interval, not the last within 1 %
        self._frames_group.update_attributes({"ome": self._frames_ome()})
        st = self.stats
        with self._lock:
            self._attrs.update(
                state="closed",
                n_frames=n,
                closed=_now_iso(),
                updated=_now_iso(),
                frame_interval_s=dt,
                stats={
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in asdict(st).items()
                },
            )
            attrs = dict(self._attrs)
        self._root.update_attributes({ATTRS_KEY: attrs, "ome": self._root_ome()})

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

    _t_first: float | None = None
    _t_last: float = math.nan

    def _fail(self, exc: BaseException, doing: str) -> None:
        with self._rows_cv:
            if self._failure is None:  # the first failure is the one reported
                self._failure = (exc, doing)
            self._rows_cv.notify_all()

    def _guarded(self, loop: Callable[[], None], doing: str) -> Callable[[], None]:
        """``loop`` for a writer thread: an error it does not handle itself is
        the writer's failure (reported by the next call and by close()), not a
        thread that ends in silence."""

        def run() -> None:
            try:
                loop()
            except BaseException as exc:
                self._fail(exc, doing)

        return run

    def _write_job(self, index: int, slot: int, t_in: float) -> None:
        t0 = time.perf_counter()
        try:
            if self._failure is None:
                nbytes = self._sink.write(index, self._pool[slot])
                t1 = time.perf_counter()
                if index & (index - 1) == 0 or index % _WINDOW_EVERY == 0:
                    # frames 0, 1, 2, 4, 8, ... then every _WINDOW_EVERY-th
                    sample = frame_window_sample(self._pool[slot])
                    with self._stats_lock:
                        self._window_samples.append(sample)
                        self._ome_dirty = True
                with self._stats_lock:
                    self._write_times.append(t1 - t0)
                    self._latencies.append(t1 - t_in)
                    self._bytes_written += nbytes
                err: BaseException | None = None
            else:
                err = None
                index = -1
        except BaseException as exc:  # reported through the frame thread
            err = exc
            # and recorded before the buffer is free again, so a frame that
            # waited for it is refused, not accepted and then dropped
            self._fail(exc, f"writing frame {index}")
        finally:
            self._free.put(slot)
        self._frame_q.put((_DONE, index, err))

    def _frame_loop(self) -> None:
        """Dispatch frames to the I/O threads; schedule commits on the committer.

        Commits run on their own thread so that a slow metadata write (a file
        system stall) never holds up frames on their way to the I/O threads.
        Frame metadata rows stay here (``pending``, starting at frame
        ``pending_base``) until the commit that writes them has succeeded.
        """
        interval = self.options.commit_interval_s
        pending: list[tuple] = []
        pending_base = 0
        done: set[int] = set()
        next_done = 0  # frames [0, next_done) are on disk
        inflight = 0
        stopping = False
        last_commit = time.perf_counter()
        deferred: list[tuple[np.ndarray, bool]] = []  # flags of rows past pending
        commit_fut: Future[None] | None = None
        commit_k = 0
        commit_updates: list[tuple[np.ndarray, bool]] = []
        grow_fut: Future[None] | None = None
        block = self.options.time_block
        # flag changes waiting for the rows appended before them to be committed
        waiting: deque[tuple[int, np.ndarray, bool]] = deque()

        def apply_flags(idx: np.ndarray, value: bool) -> None:
            # rows of a commit in flight are written already: change them
            # with the next commit, like older rows
            first_free = pending_base + (commit_k if commit_fut else 0)
            rel = idx - pending_base
            mine = (idx >= first_free) & (rel < len(pending))
            for r in rel[mine]:
                row = pending[r]
                pending[r] = (*row[:_ANALYZED_COL], value, *row[_ANALYZED_COL + 1 :])
            if (~mine).any():
                deferred.append((idx[~mine], value))

        def release_flags() -> None:
            # in order, so that later changes of a frame win
            rows = self._committed_rows
            while waiting and waiting[0][0] <= rows:
                _, idx, value = waiting.popleft()
                apply_flags(idx, value)

        def settle(wait: bool) -> bool:
            """Account for the commit in flight; True if none is in flight now."""
            nonlocal commit_fut, pending_base, deferred
            if commit_fut is None:
                return True
            if not wait and not commit_fut.done():
                return False
            exc = commit_fut.exception()
            commit_fut = None
            if exc is not None:
                self._fail(exc, "committing frames")
                # its rows stay pending and its flag changes deferred: the last
                # (best-effort) commit writes what this one did not, once
                deferred = commit_updates + deferred
                return True
            del pending[:commit_k]
            pending_base += commit_k
            return True

        def schedule() -> None:
            nonlocal commit_fut, commit_k, deferred, commit_updates
            k = next_done - pending_base
            if k <= 0 and not deferred and not self._attrs_dirty:
                return
            commit_k = max(k, 0)
            rows = pending[:commit_k]
            commit_updates, deferred = deferred, []
            commit_fut = self._committer.submit(
                self._commit, next_done, rows, commit_updates, pending_base
            )
            # wake this loop when the commit is done
            commit_fut.add_done_callback(lambda _: self._frame_q.put((_TICK,)))

        while True:
            if commit_fut is not None:
                settle(wait=False)
            uncommitted = (
                self._failure is None
                and commit_fut is None
                and (
                    next_done > self._committed_frames
                    or bool(deferred)
                    or self._attrs_dirty
                )
            )
            timeout = None  # a commit in flight wakes the loop when done
            if uncommitted:
                timeout = max(0.0, last_commit + interval - time.perf_counter())
            try:
                item = self._frame_q.get(timeout=timeout)
            except queue.Empty:
                item = (_TICK,)
            if item is _STOP:
                stopping = True
            elif item[0] == _FRAME:
                _, index, slot, row, t_in = item
                if self._failure is not None:
                    self._free.put(slot)
                    continue
                try:
                    # grow ahead, on the committer thread, so that a slow
                    # metadata write does not hold up frames
                    if grow_fut is None and index >= self._capacity - block // 2:
                        grow_fut = self._committer.submit(
                            self._grow_frames, self._capacity + 1
                        )
                    if index >= self._capacity and grow_fut is not None:
                        grow_fut.result()
                    if grow_fut is not None and grow_fut.done():
                        grow_fut.result()
                        grow_fut = None
                    if index >= self._capacity:
                        self._grow_frames(index + 1)
                except BaseException as exc:
                    grow_fut = None
                    self._fail(exc, f"growing the frame array to frame {index}")
                    self._free.put(slot)
                    continue
                pending.append(row)
                inflight += 1
                self._io.submit(self._write_job, index, slot, t_in)
            elif item[0] == _DONE:
                inflight -= 1
                _, index, err = item
                if err is not None:
                    self._fail(err, f"writing frame {index}")
                elif index >= 0:
                    done.add(index)
                    self._n_written += 1
                    while next_done in done:
                        done.discard(next_done)
                        next_done += 1
            elif item[0] == _ANALYZED:
                waiting.append((item[3], item[1], item[2]))
            release_flags()
            now = time.perf_counter()
            drained = stopping and inflight == 0 and self._frame_q.empty()
            if drained:
                # flags still waiting for their rows: close() commits them after
                # the last rows (or never, if those are not written)
                self._late_flags = list(waiting)
                # the last commit: after a failure too (best effort) for the
                # frames fully written before it; a failed commit changes nothing
                settle(wait=True)
                failed = self._failure is not None
                schedule()
                if commit_fut is not None:
                    if failed:
                        with contextlib.suppress(BaseException):
                            commit_fut.result()
                        commit_fut = None
                    else:
                        settle(wait=True)
                break
            if (
                self._failure is None
                and now - last_commit >= interval
                and settle(wait=False)
            ):
                schedule()
                last_commit = now

    def _grow_frames(self, need: int) -> None:
        block = self.options.time_block
        new = round_up(max(need, self._capacity + block), block)
        # the sink's handle grows; the shape on disk stays the committed one
        # (set by _commit), so that readers never see uncommitted frames
        self._sink.resized(new)
        self._capacity = new

    def _commit(
        self,
        n: int,
        rows: list[tuple],
        updates: list[tuple[np.ndarray, bool]],
        base: int = 0,
    ) -> None:
        """On the committer thread: write metadata rows, then ``n_frames = n``.

        ``rows`` are those of frames ``base, base + 1, ...``; those already
        appended (by an earlier commit whose attribute write then failed) are
        not appended again.
        """
        # sharded frames: their shards' indices name them now
        self._sink.commit(n)
        meta = self._meta
        old_n = meta.n
        if old_n < base:  # pragma: no cover - rows are committed in order
            raise RuntimeError(f"metadata holds {old_n} rows, expected >= {base}")
        rows = rows[old_n - base :]
        k = len(rows)
        # flag changes of rows appended before: made now, written with the rows
        for idx, value in updates:
            idx = np.asarray(idx)
            meta.set_values("analyzed", idx[idx < old_n], value)
        if k:
            table = np.array(rows, dtype=_META_DTYPE)
            meta.append({name: table[name] for name in _META_FIELDS}, k)
            t = table["t_s"]
            if self._t_first is None:
                self._t_first = float(t[0])
            self._t_last = float(t[-1])
            # flag changes of these rows (this retries a failed commit)
            for idx, value in updates:
                idx = np.asarray(idx)
                late = idx[(idx >= old_n) & (idx < meta.n)]
                if late.size:
                    meta.set_values("analyzed", late, value)
        if meta.dirty:
            meta.append({}, 0)
        if n != self._frames_arr.shape[0]:
            # the frames are on disk: the array's shape may cover them now
            shrink(self._frames_arr, (n, *self.frame_shape))
        root_attrs: dict[str, Any] = {}
        if self._update_ome(n):
            ome = self._frames_ome()
            self._frames_group.update_attributes({"ome": ome})
            root_attrs["ome"] = self._root_ome()
        with self._lock:
            self._attrs["n_frames"] = n
            self._attrs["updated"] = _now_iso()
            self._attrs_dirty = False
            attrs = dict(self._attrs)
        self._root.update_attributes({ATTRS_KEY: attrs, **root_attrs})
        self._committed_frames = n
        self._table_q.put(None)  # rows of these frames may be written now

    def _update_ome(self, n: int, final: bool = False) -> bool:
        """Take new display windows and the measured frame interval into the
        OME metadata; True if it changed and is due to be written: at once for
        the first window and the first interval, then at most every
        ``_OME_EVERY_S`` while the run is written, and at close."""
        now = time.perf_counter()
        first = self._windows is None or self._ome_dt is None
        if not (final or first) and now - self._ome_written_at < _OME_EVERY_S:
            return False
        changed = False
        if self._frame_interval_s is None and n > 1 and self._t_first is not None:
            span = self._t_last - self._t_first
            if span > 0 and math.isfinite(span):
                dt = span / (n - 1)
                # rewritten when it moves by more than 1 %
                if self._ome_dt is None or abs(dt - self._ome_dt) > 0.01 * dt:
                    self._ome_dt = dt
                    changed = True
        with self._stats_lock:
            dirty, self._ome_dirty = self._ome_dirty, False
            samples = list(self._window_samples)
        if dirty and samples:
            windows = merge_windows(np.stack(samples))
            if windows != self._windows:
                self._windows = windows
                changed = True
        if changed:
            self._ome_written_at = now
        return changed

    # ---------------------------------------------------------- table thread

    def _table_loop(self) -> None:
        """Write localization batches, in order, once their frames are committed.

        A batch is written only when every frame it refers to is committed
        (``frame < n_frames``), so a reader (or a crash) never has rows of a
        frame it cannot read. When the writer stops (after its last frame
        commit) every batch left is written; after a failure, only those of
        committed frames.
        """
        interval = self.options.table_flush_interval_s
        batches: deque[tuple[dict[str, np.ndarray], int, int]] = deque()
        last_flush = time.perf_counter()
        stopping = False

        def ready() -> int:
            """How many of the first batches may be written now."""
            n_frames = self._committed_frames
            count = 0
            for _, _, last in batches:
                if last >= n_frames and not (stopping and self._failure is None):
                    break
                count += 1
            return count

        while True:
            n_ready = ready()
            timeout = None  # woken by new batches, frame commits and the stop
            if n_ready and self._failure is None:
                timeout = max(0.0, last_flush + interval - time.perf_counter())
            try:
                item = self._table_q.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                batches.append((item[1], item[2], item[3]))
            n_ready = ready()
            now = time.perf_counter()
            rows_ready = sum(batches[i][1] for i in range(n_ready))
            due = now - last_flush >= interval or rows_ready >= self.options.table_chunk
            if n_ready and (due or stopping):
                out = [batches.popleft() for _ in range(n_ready)]
                k = sum(b[1] for b in out)
                if self._failure is None:
                    try:
                        self._flush_rows(out, k)
                    except BaseException as exc:
                        self._fail(exc, "writing localizations")
                else:
                    # best effort, as for frames (a failed flush changes nothing)
                    with contextlib.suppress(BaseException):
                        self._flush_rows(out, k)
                with self._rows_cv:
                    self._pending_rows -= k
                    self._rows_cv.notify_all()
                last_flush = now
                self._frame_q.put((_TICK,))  # flags waiting for these rows
            if stopping and self._table_q.empty() and not ready():
                # what is left belongs to frames that were never committed
                # (the writer failed): it is not written
                k = sum(b[1] for b in batches)
                batches.clear()
                with self._rows_cv:
                    self._pending_rows -= k
                    self._rows_cv.notify_all()
                break

    def _flush_rows(
        self, batches: Sequence[tuple[dict[str, np.ndarray], int, int]], k: int
    ) -> None:
        locs = self._locs
        for name in self._loc_schema:
            if name not in locs.arrays:
                locs.add_column(name, self._loc_schema[name])
        cols = {
            name: np.concatenate([b[name] for b, _, _ in batches])
            for name in locs.columns
        }
        locs.append(cols, k)
        locs.group.update_attributes(self._table_attrs(locs))
        self._committed_rows = locs.n


def astuple_meta(meta: FrameMeta) -> tuple:
    """The fields of a :class:`FrameMeta` as a tuple in ``frame_meta`` order."""
    return (
        None if meta.t_s is None else float(meta.t_s),
        float(meta.stage_z_um),
        float(meta.stage_x_um),
        float(meta.stage_y_um),
        int(meta.image_number),
        int(meta.position_index),
        bool(meta.analyzed),
        None if meta.host_t_s is None else float(meta.host_t_s),
    )

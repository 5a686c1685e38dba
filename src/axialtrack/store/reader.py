"""Reading run stores, while they are written, after a crash, or closed.

A reader takes the committed counts first (``n_frames`` in the root attributes,
``n_rows`` of each table), then opens the arrays, which are at least that long,
and reads only that many frames and rows. So a reader never sees a frame or a
batch that is not fully written, whether the writer is still running, was killed,
or closed cleanly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from axialtrack.store._columns import read_columns
from axialtrack.store._registry import writer_alive
from axialtrack.store.errors import (
    NotARunStoreError,
    StoreError,
    StoreInUseError,
    UnsupportedFormatError,
    write_error,
)
from axialtrack.store.layout import (
    ATTRS_KEY,
    FORMAT_VERSION,
    FRAME_ARRAY,
    FRAME_META,
    FRAMES,
    LOCALIZATION_COLUMNS,
    LOCALIZATIONS,
    TRACKS,
    ome_image_attrs,
    read_json,
    with_time_scale,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FrameArray", "RecoveryReport", "Run", "open_run", "read_attrs", "recover"]

#: Reads of a frame whose shard index fails its checksum before it is called
#: damage (a read racing the writer's index rewrite fails once; see
#: :meth:`FrameArray._read`).
CHECKSUM_RETRIES = 20

#: Suffixes of temporary files a writer leaves behind when it is killed mid-write.
TEMP_SUFFIXES = (".partial", ".__lock")


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that ``path`` is a run store this axialtrack reads; return its attrs.

    Raises
    ------
    NotARunStoreError
        Missing path, a file, not zarr v3, or no ``axialtrack`` attributes.
    UnsupportedFormatError
        A format version other than 1.
    """
    p = Path(path)
    hint = "Pass the path of a run store (a <name>.zarr directory axialtrack wrote)."
    if not p.exists():
        raise NotARunStoreError(f"{p} does not exist. {hint}")
    if not p.is_dir():
        raise NotARunStoreError(f"{p} is a file, not a run store directory. {hint}")
    zj = p / "zarr.json"
    if not zj.is_file():
        what = (
            "a zarr v2 store (run stores are zarr v3)"
            if (p / ".zgroup").exists() or (p / ".zarray").exists()
            else "not a zarr v3 store (no zarr.json)"
        )
        raise NotARunStoreError(f"{p} is {what}. {hint}")
    try:
        meta = read_json(zj)
    except (OSError, ValueError) as exc:
        raise NotARunStoreError(
            f"{zj} cannot be read as JSON ({exc}). {hint}"
        ) from None
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise NotARunStoreError(f"{p} is not a zarr v3 store. {hint}")
    if meta.get("node_type") != "group":
        raise NotARunStoreError(f"{p} is a zarr array, not a run store group. {hint}")
    attrs = (meta.get("attributes") or {}).get(ATTRS_KEY)
    if not isinstance(attrs, dict):
        raise NotARunStoreError(
            f"{p} is a zarr group without 'axialtrack' attributes: it was not "
            f"written by axialtrack. {hint}"
        )
    fmt = attrs.get("format")
    if fmt != FORMAT_VERSION:
        if isinstance(fmt, int) and fmt > FORMAT_VERSION:
            fix = "Upgrade axialtrack (pip install -U axialtrack) to read it."
        else:
            fix = "Its 'format' attribute is missing or damaged."
        raise UnsupportedFormatError(
            f"{p} is run store format {fmt!r}; this axialtrack reads format "
            f"{FORMAT_VERSION}. {fix}"
        )
    return attrs


def _group(root: zarr.Group, name: str, optional: bool) -> Any:
    """``root[name]``, or None where it may be missing and is."""
    if optional and name not in root:
        return None
    return root[name]


def _key_tuple(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (ndim - len(key) + 1)
        key = key[:i] + fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a {ndim}-d array: {len(key)}")
    return key + (slice(None),) * (ndim - len(key))


class FrameArray:
    """The committed frames, ``(T, 2, H, W)`` uint16, read lazily on indexing.

    Supports integers, slices (any step), ``...`` and integer arrays (on each
    axis separately, as ``numpy``'s ``ix_``/zarr's ``oindex``). ``np.asarray``
    reads everything.
    """

    def __init__(self, array: zarr.Array, n_frames: int) -> None:
        self._array = array
        self._n = int(n_frames)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(T, 2, H, W)`` with ``T`` the committed frame count."""
        return (self._n, *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """``uint16``."""
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        """4."""
        return 4

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of the committed frames."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def zarr_array(self) -> zarr.Array:
        """The underlying zarr array (may be longer than :attr:`shape` while open)."""
        return self._array

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self._n):
            yield self[i]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _key_tuple(key, 4)
        k0 = key[0]
        flip = False
        if isinstance(k0, (int, np.integer)):
            i = int(k0)
            if not -self._n <= i < self._n:
                raise IndexError(
                    f"frame index {i} is out of range for {self._n} committed frames"
                )
            k0 = i % self._n
        elif isinstance(k0, slice):
            start, stop, step = k0.indices(self._n)
            if step < 0:
                idx = np.arange(start, stop, step)
                k0 = slice(0, 0) if idx.size == 0 else slice(idx[-1], idx[0] + 1, -step)
                flip = idx.size > 0
            else:
                k0 = slice(start, max(start, stop), step)
        else:
            idx = np.asarray(k0)
            if idx.dtype == bool:
                if idx.shape != (self._n,):
                    raise IndexError(
                        f"boolean frame index must have length {self._n}, "
                        f"got {idx.shape}"
                    )
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64)
            if idx.ndim != 1:
                raise IndexError("frame index arrays must be 1-D")
            if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
                raise IndexError(
                    f"frame indices out of range for {self._n} committed frames"
                )
            k0 = idx % self._n if self._n else idx
        out = self._read((k0, *key[1:]))
        return out[::-1] if flip else out

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        """``key`` of the array, read again where a shard index failed its
        checksum: a writer rewrites a growing shard's index in place at each
        commit, and a read that meets that write can see a mix of the two
        indexes (CRC32C mismatch). The write takes microseconds; the next read
        sees the whole index. A checksum that fails :data:`CHECKSUM_RETRIES`
        reads in a row is damage, reported as such."""
        orthogonal = any(not isinstance(k, (int, np.integer, slice)) for k in key)
        for attempt in range(CHECKSUM_RETRIES):
            try:
                if orthogonal:
                    return np.asarray(self._array.get_orthogonal_selection(key))
                return np.asarray(self._array[key])
            except ValueError as exc:
                if "checksum" not in str(exc):
                    raise
                if attempt == CHECKSUM_RETRIES - 1:
                    raise StoreError(
                        f"{self._array.store_path}: a shard index fails its "
                        f"checksum on {CHECKSUM_RETRIES} reads in a row ({exc}); "
                        "the frames are damaged. If no writer runs, run "
                        "`axialtrack recover` on the store."
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<FrameArray shape={self.shape} dtype={self.dtype}>"


class Run:
    """A run store opened for reading (see :func:`open_run`).

    Attributes
    ----------
    path
        The store directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._cache: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the committed counts: see what a running writer added since.

        The localization count is read before the frame count: a writer
        commits rows only for frames it has committed, so every row read
        belongs to a frame this reader can read.
        """
        try:
            loc_meta = read_json(self.path / LOCALIZATIONS / "zarr.json")
            first_loc_attrs = dict(loc_meta.get("attributes") or {})
        except (OSError, ValueError, AttributeError, TypeError):
            first_loc_attrs = None
        attrs = read_attrs(self.path)
        try:
            root = zarr.open_group(LocalStore(self.path, read_only=True), mode="r")
            frames = root[f"{FRAMES}/{FRAME_ARRAY}"]
            meta_group = root[FRAME_META]
            # calibration runs hold no localization or track groups (stores
            # written before that hold empty ones)
            optional = attrs.get("kind") == "calibration"
            loc_group = _group(root, LOCALIZATIONS, optional)
            tracks_group = _group(root, TRACKS, optional)
            for g in (meta_group, loc_group, tracks_group):
                if g is not None and not isinstance(g, zarr.Group):
                    raise ValueError(g.path)
            loc_attrs: dict[str, Any] = (
                {}
                if loc_group is None
                else dict(loc_group.attrs)
                if first_loc_attrs is None
                else first_loc_attrs
            )
            tracks_attrs: dict[str, Any] = (
                {} if tracks_group is None else dict(tracks_group.attrs)
            )
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise NotARunStoreError(
                f"{self.path} is an incomplete run store (missing {exc}); it was "
                "probably interrupted while being created."
            ) from None
        if not isinstance(frames, zarr.Array) or frames.ndim != 4:
            raise NotARunStoreError(f"{self.path}/frames/0 is not a (t, c, y, x) array")
        n = int(attrs.get("n_frames", 0))
        if frames.shape[0] < n:
            raise StoreError(
                f"{self.path} is damaged: n_frames={n} but frames/0 holds only "
                f"{frames.shape[0]} frames."
            )
        self._attrs = attrs
        self._root = root
        self._frames = FrameArray(frames, n)
        assert isinstance(meta_group, zarr.Group)
        self._meta_group = meta_group
        self._loc_group = loc_group
        self._loc_attrs = loc_attrs
        self._tracks_group = tracks_group
        self._tracks_attrs = tracks_attrs
        self._cache = {}

    @property
    def attrs(self) -> dict[str, Any]:
        """The ``axialtrack`` attributes: format, kind, created, rig, splitter, ..."""
        return self._attrs

    @property
    def kind(self) -> str:
        """``"calibration"`` or ``"live"``."""
        return str(self._attrs.get("kind"))

    @property
    def state(self) -> str:
        """``"closed"``, or ``"open"``: being written, or not cleanly closed."""
        return str(self._attrs.get("state"))

    @property
    def writer_alive(self) -> bool | None:
        """Whether the writing process still runs (``None``: cannot tell)."""
        return writer_alive(self._attrs, self.path)

    @property
    def n_frames(self) -> int:
        """Committed frames."""
        return len(self._frames)

    @property
    def n_localizations(self) -> int:
        """Committed localization rows."""
        return int(self._loc_attrs.get("n_rows", 0))

    @property
    def pixel_size_um(self) -> float:
        """Pixel size in the sample, micrometres."""
        return float(self._attrs.get("pixel_size_um", float("nan")))

    @property
    def frames(self) -> FrameArray:
        """The committed frames ``(T, 2, H, W)`` uint16, read lazily."""
        return self._frames

    def _table(
        self, group: zarr.Group | None, attrs: dict[str, Any], n: int
    ) -> pd.DataFrame:
        import pandas as pd

        if group is None:  # a calibration run: no table
            return pd.DataFrame(
                {
                    c: np.zeros(0, d)
                    for c, d in (
                        LOCALIZATION_COLUMNS.items() if attrs is self._loc_attrs else ()
                    )
                }
            )
        try:
            data = read_columns(
                group, self.path / group.path, list(attrs.get("columns", [])), n
            )
        except ValueError as exc:
            raise StoreError(
                f"{self.path}/{group.path}/{exc} is shorter than the "
                f"committed {n} rows; the store is damaged."
            ) from None
        return pd.DataFrame(data, copy=False)

    @property
    def frame_meta(self) -> pd.DataFrame:
        """One row per committed frame (index = frame), columns of ``frame_meta``."""
        if "meta" not in self._cache:
            import pandas as pd

            from axialtrack.store.layout import FRAME_META_COLUMNS, FRAME_META_FILLS

            n = self.n_frames
            group = self._meta_group
            present = [c for c in FRAME_META_COLUMNS if c in group]
            got = read_columns(group, self.path / group.path, present, n)
            data = {
                # a column later versions added (host_t_s) reads as its fill
                name: got[name]
                if name in got
                else np.full(n, FRAME_META_FILLS[name], dtype=dtype)
                for name, dtype in FRAME_META_COLUMNS.items()
            }
            df = pd.DataFrame(data, copy=False)
            df.index.name = "frame"
            self._cache["meta"] = df
        return self._cache["meta"]

    @property
    def localization_columns(self) -> list[str]:
        """The names of the stored localization columns."""
        return [str(c) for c in self._loc_attrs.get("columns", [])]

    def read_localizations(self, columns: Sequence[str]) -> pd.DataFrame:
        """The committed localizations, only ``columns`` (those stored; in
        that order): a reader that needs a few columns of a long run reads
        only those."""
        if "locs" in self._cache or self._loc_group is None:
            full = self.localizations  # read already, or no table (calibration)
            return full[[c for c in columns if c in full.columns]]
        stored = set(self.localization_columns)
        return self._table(
            self._loc_group,
            {"columns": [c for c in columns if c in stored]},
            self.n_localizations,
        )

    @property
    def localizations(self) -> pd.DataFrame:
        """The committed localizations, one column per stored column."""
        if "locs" not in self._cache:
            self._cache["locs"] = self._table(
                self._loc_group, self._loc_attrs, self.n_localizations
            )
        return self._cache["locs"]

    @property
    def tracks(self) -> pd.DataFrame:
        """The per-track summary (empty until the run is closed)."""
        if "tracks" not in self._cache:
            self._cache["tracks"] = self._table(
                self._tracks_group,
                self._tracks_attrs,
                int(self._tracks_attrs.get("n_rows", 0)),
            )
        return self._cache["tracks"]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cache.clear()

    def __repr__(self) -> str:
        return (
            f"<Run {self.path} {self.kind} {self.state}: {self.n_frames} frames, "
            f"{self.n_localizations} localizations>"
        )


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a run store for reading.

    Works on closed runs, on runs being written (a consistent prefix; call
    :meth:`Run.refresh` to follow) and on runs whose writer was killed (everything
    committed before). Reading needs only zarr and pandas.

    Raises
    ------
    NotARunStoreError, UnsupportedFormatError
        ``path`` is not a run store this axialtrack reads.
    """
    return Run(path)


@dataclass
class Leftovers:
    """What a writer left beyond the committed counts (not part of the run)."""

    frame_chunks: int = 0
    temp_files: list[str] = field(default_factory=list)
    #: the chunk files (or, for nested keys, the ``c/<t>`` directories) past
    #: ``n_frames``; the array's shape may not cover them (it is the committed
    #: shape), so removing them is not left to zarr's resize
    chunk_paths: list[str] = field(default_factory=list)


def shard_frames_of(array_dir: Path) -> int:
    """Frames per file of a frame array: its shard size if it is sharded
    (``sharding_indexed``), else 1."""
    try:
        meta = read_json(array_dir / "zarr.json")
        codecs = meta.get("codecs") or []
        if codecs and codecs[0].get("name") == "sharding_indexed":
            return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        pass
    return 1


def find_leftovers(path: Path, n_frames: int) -> Leftovers:
    """Frame chunks (or shards) past ``n_frames`` and temporary files under
    ``path``."""
    out = Leftovers()
    array_dir = path / FRAMES / FRAME_ARRAY
    per_file = shard_frames_of(array_dir)
    # chunk keys "c.<t>.0.0.0" (this writer) or "c/<t>/0/0/0" (other writers)
    for d, nested in ((array_dir, False), (array_dir / "c", True)):
        if not d.is_dir():
            continue
        with os.scandir(d) as it:
            for entry in it:
                parts = [entry.name] if nested else entry.name.split(".")
                if not nested and (len(parts) != 5 or parts[0] != "c"):
                    continue
                t = parts[0] if nested else parts[1]
                if t.isdigit() and int(t) * per_file >= n_frames:
                    out.frame_chunks += 1
                    out.chunk_paths.append(entry.path)
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(TEMP_SUFFIXES):
                out.temp_files.append(os.path.join(dirpath, name))
    return out


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` kept and removed.

    Attributes
    ----------
    path
        The run store.
    was_open
        False if the run was already closed (nothing was changed).
    frames, localization_rows, track_rows
        What the recovered run holds (every committed frame and row).
    dropped_frame_chunks
        Frame chunks written after the last commit (no metadata), removed.
    removed_temp_files
        Temporary files of interrupted writes, removed.
    """

    path: Path
    was_open: bool
    frames: int
    localization_rows: int
    track_rows: int
    dropped_frame_chunks: int
    removed_temp_files: int


def recover(path: str | os.PathLike[str]) -> RecoveryReport:
    """Tidy a run whose writer stopped without closing it, and mark it closed.

    Keeps every committed frame and localization batch, trims the arrays to the
    committed counts (so any zarr or OME-Zarr reader sees exactly the run),
    removes temporary files of interrupted writes, and records ``recovery`` in
    the run's attributes. A closed run is left untouched.

    Raises
    ------
    StoreInUseError
        The writing process is still running.
    NotARunStoreError, UnsupportedFormatError, StoreWriteError
    """
    p = Path(path).expanduser().absolute()
    attrs = read_attrs(p)
    run = Run(p)
    if attrs.get("state") != "open":
        return RecoveryReport(
            p,
            False,
            run.n_frames,
            run.n_localizations,
            len(run.tracks),
            0,
            0,
        )
    w = attrs.get("writer") or {}
    if writer_alive(attrs, p):
        raise StoreInUseError(
            f"{p} is still being written by process {w.get('pid')}; recover it "
            "only after that process has stopped."
        )
    n = run.n_frames
    n_rows = run.n_localizations
    left = find_leftovers(p, n)
    try:
        for f in left.temp_files:
            Path(f).unlink(missing_ok=True)
        for f in left.chunk_paths:
            if os.path.isdir(f):
                shutil.rmtree(f, ignore_errors=True)
            else:
                Path(f).unlink(missing_ok=True)
        array_dir = p / FRAMES / FRAME_ARRAY
        per_file = shard_frames_of(array_dir)
        if per_file > 1:
            from axialtrack.store._sinks import recover_shards

            frames_arr = zarr.open_array(LocalStore(array_dir), mode="r")
            recover_shards(array_dir, frames_arr.metadata.encode_chunk_key, per_file, n)
        root = zarr.open_group(LocalStore(p), mode="r+")
        frames = root[f"{FRAMES}/{FRAME_ARRAY}"]
        assert isinstance(frames, zarr.Array)
        frames.resize((n, *frames.shape[1:]))
        for name, rows in ((FRAME_META, n), (LOCALIZATIONS, n_rows)):
            if name not in root:  # a calibration run: no localizations
                continue
            group = root[name]
            assert isinstance(group, zarr.Group)
            for _, arr in group.arrays():
                arr.resize((rows,))
        meta = run.frame_meta
        dt = attrs.get("frame_interval_s")
        if not dt and n > 1:
            t = meta["t_s"].to_numpy()
            span = float(t[-1] - t[0])
            dt = span / (n - 1) if span > 0 else None
        frames_group = root[FRAMES]
        if dt:
            ome = frames_group.attrs.get("ome")
            if isinstance(ome, dict):
                frames_group.update_attributes({"ome": with_time_scale(ome, dt)})
            else:
                frames_group.update_attributes(
                    {
                        "ome": ome_image_attrs(
                            pixel_size_um=float(attrs["pixel_size_um"]),
                            frame_interval_s=dt,
                        )
                    }
                )
            root_ome = root.attrs.get("ome")
            if isinstance(root_ome, dict):
                root.update_attributes({"ome": with_time_scale(root_ome, dt)})
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        report = RecoveryReport(
            p, True, n, n_rows, len(run.tracks), left.frame_chunks, len(left.temp_files)
        )
        new = dict(attrs)
        new.update(
            state="closed",
            frame_interval_s=dt,
            recovery={
                "at": now,
                "last_commit": attrs.get("updated"),
                "frames": n,
                "localization_rows": n_rows,
                "dropped_frame_chunks": left.frame_chunks,
                "removed_temp_files": len(left.temp_files),
            },
        )
        root.update_attributes({ATTRS_KEY: new})
    except OSError as exc:
        raise write_error(
            exc, path=p, frames_safe=n, rows_safe=n_rows, doing="recovering it"
        ) from exc
    return report

"""The commit protocol: create a store atomically, commit frames (metadata rows,
shard indices, the array's shape, then ``n_frames``), keep the OME metadata, and
finalize a run at close. Functions of a
:class:`~axialtrack.store.writer.RunWriter`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from axialtrack.store._schema import now_iso
from axialtrack.store._sinks import make_sink
from axialtrack.store._tables import ColumnTable, shrink
from axialtrack.store.errors import write_error
from axialtrack.store.layout import (
    ATTRS_KEY,
    CHUNK_KEY_ENCODING,
    FRAME_ARRAY,
    FRAME_META,
    FRAME_META_COLUMNS,
    FRAMES,
    LOCALIZATION_COLUMNS,
    LOCALIZATIONS,
    TRACKS,
    chunk_encoder,
    frame_codecs,
    merge_windows,
    ome_image_attrs,
    units_of,
)
from axialtrack.store.options import (
    _META_DTYPE,
    _META_FIELDS,
)
from axialtrack.store.replace import hidden_name, remove_path

if TYPE_CHECKING:
    from axialtrack.store.writer import RunWriter

#: least time between two rewrites of the OME metadata while a run is written
_OME_EVERY_S = 1.0


def create_atomically(
    w: RunWriter, extra_cols: Mapping[str, np.dtype], replacing: bool
) -> None:
    """Build the empty store beside ``path`` and rename it into place.

    A reader (or a crash) sees no store or a complete one, with every group
    and table; a failure leaves nothing at ``path`` (a kill leaves the hidden
    ``.NAME.creating-PID``, which ``info`` and ``recover`` report and
    remove). A replaced store is renamed aside first and deleted after.
    """
    path = w.path
    tmp = hidden_name(path, "creating")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists() or tmp.is_symlink():
            remove_path(tmp)
        w._create(tmp, extra_cols)
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
    w._bind(path)


def bind(w: RunWriter, path: Path) -> None:
    """Open the created store at its final place for writing."""
    opts = w.options
    root = zarr.open_group(LocalStore(path), mode="r+")
    w._root = root
    frames = root[FRAMES]
    arr = root[f"{FRAMES}/{FRAME_ARRAY}"]
    assert isinstance(frames, zarr.Group)
    assert isinstance(arr, zarr.Array)
    w._frames_group = frames
    w._frames_arr = arr
    if w._has_tables:
        tracks = root[TRACKS]
        assert isinstance(tracks, zarr.Group)
        w._tracks_group = tracks
    direct = opts.backend != "zarr"
    bound = [(w._meta, FRAME_META)]
    if w._has_tables:
        bound.append((w._locs, LOCALIZATIONS))
    for table, name in bound:
        group = root[name]
        assert isinstance(group, zarr.Group)
        table.rebind(group, path / name if direct else None)
    w._sink = make_sink(
        opts.backend,
        w._frames_arr,
        path / FRAMES / FRAME_ARRAY,
        chunk_encoder(w.compression, opts.compression_level),
        direct_io=opts.direct_io,
        shard_frames=opts.shard_frames,
    )


def create(w: RunWriter, directory: Path, extra_cols: Mapping[str, np.dtype]) -> None:
    """Create the empty store (every group, array and table) in
    ``directory``."""
    opts = w.options
    store = LocalStore(directory)
    root = zarr.open_group(store, mode="w-", zarr_format=3)
    root.update_attributes({ATTRS_KEY: w._attrs, "ome": w._root_ome()})

    frames = root.create_group(
        FRAMES,
        attributes={
            "ome": ome_image_attrs(
                pixel_size_um=w.pixel_size_um,
                frame_interval_s=w._frame_interval_s,
            )
        },
    )
    serializer, compressors = frame_codecs(w.compression, opts.compression_level)
    chunks: tuple[int, ...] = (1, *w.frame_shape)
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
        chunks = (opts.shard_frames, *w.frame_shape)
    frames.create_array(
        FRAME_ARRAY,
        shape=(0, *w.frame_shape),
        chunks=chunks,
        dtype="uint16",
        fill_value=0,
        serializer=serializer,
        compressors=compressors,
        dimension_names=["t", "c", "y", "x"],
        chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
        config={"write_empty_chunks": True},
    )
    w._capacity = 0

    meta_group = root.create_group(
        FRAME_META, attributes={"units": units_of(FRAME_META_COLUMNS)}
    )
    w._meta = ColumnTable(meta_group, chunk=opts.meta_chunk)
    for name, dtype in FRAME_META_COLUMNS.items():
        w._meta.add_column(name, dtype)

    # a calibration run's (empty) localization table lives in memory only
    loc_group = (
        root.create_group(LOCALIZATIONS)
        if w._has_tables
        else zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    )
    w._locs = ColumnTable(loc_group, chunk=opts.table_chunk)
    for name, dtype in {**LOCALIZATION_COLUMNS, **extra_cols}.items():
        w._locs.add_column(name, dtype)
    w._loc_schema = dict(w._locs.dtypes)
    w._loc_schema_fixed = bool(extra_cols)
    loc_group.update_attributes(w._table_attrs(w._locs))

    if w._has_tables:
        tracks = root.create_group(TRACKS)
        tracks.update_attributes({"n_rows": 0, "columns": [], "dtypes": []})


def frames_ome(w: RunWriter) -> dict[str, Any]:
    """The ``ome`` attribute of ``frames`` (the image, dataset ``"0"``)."""
    return ome_image_attrs(
        pixel_size_um=w.pixel_size_um,
        frame_interval_s=w._ome_dt,
        windows=w._windows,
    )


def root_ome(w: RunWriter) -> dict[str, Any]:
    """The ``ome`` attribute of the root: the same image (dataset
    ``"frames/0"``), so that OME-Zarr readers given the store's own path
    open it."""
    return ome_image_attrs(
        pixel_size_um=w.pixel_size_um,
        frame_interval_s=w._ome_dt,
        name=w.path.stem,
        path=f"{FRAMES}/{FRAME_ARRAY}",
        windows=w._windows,
    )


def commit(
    w: RunWriter,
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
    w._sink.commit(n)
    meta = w._meta
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
        if w._t_first is None:
            w._t_first = float(t[0])
        w._t_last = float(t[-1])
        # flag changes of these rows (this retries a failed commit)
        for idx, value in updates:
            idx = np.asarray(idx)
            late = idx[(idx >= old_n) & (idx < meta.n)]
            if late.size:
                meta.set_values("analyzed", late, value)
    if meta.dirty:
        meta.append({}, 0)
    if n != w._frames_arr.shape[0]:
        # the frames are on disk: the array's shape may cover them now
        shrink(w._frames_arr, (n, *w.frame_shape))
    root_attrs: dict[str, Any] = {}
    if w._update_ome(n):
        ome = w._frames_ome()
        w._frames_group.update_attributes({"ome": ome})
        root_attrs["ome"] = w._root_ome()
    with w._lock:
        w._attrs["n_frames"] = n
        w._attrs["updated"] = now_iso()
        w._attrs_dirty = False
        attrs = dict(w._attrs)
    w._root.update_attributes({ATTRS_KEY: attrs, **root_attrs})
    w._committed_frames = n
    w._table_q.put(None)  # rows of these frames may be written now


def update_ome(w: RunWriter, n: int, final: bool = False) -> bool:
    """Take new display windows and the measured frame interval into the
    OME metadata; True if it changed and is due to be written: at once for
    the first window and the first interval, then at most every
    ``_OME_EVERY_S`` while the run is written, and at close."""
    now = time.perf_counter()
    first = w._windows is None or w._ome_dt is None
    if not (final or first) and now - w._ome_written_at < _OME_EVERY_S:
        return False
    changed = False
    if w._frame_interval_s is None and n > 1 and w._t_first is not None:
        span = w._t_last - w._t_first
        if span > 0 and math.isfinite(span):
            dt = span / (n - 1)
            # rewritten when it moves by more than 1 %
            if w._ome_dt is None or abs(dt - w._ome_dt) > 0.01 * dt:
                w._ome_dt = dt
                changed = True
    with w._stats_lock:
        dirty, w._ome_dirty = w._ome_dirty, False
        samples = list(w._window_samples)
    if dirty and samples:
        windows = merge_windows(np.stack(samples))
        if windows != w._windows:
            w._windows = windows
            changed = True
    if changed:
        w._ome_written_at = now
    return changed


def finalize(w: RunWriter) -> None:
    if w._tracks is not None and w._has_tables:
        cols = w._tracks
        n = len(next(iter(cols.values()))) if cols else 0
        table = ColumnTable(w._tracks_group, chunk=w.options.table_chunk)
        for name, arr in cols.items():
            table.add_column(name, arr.dtype)
        table.append(cols, n)
        table.truncate()
        w._tracks_group.update_attributes(w._table_attrs(table))
    n = w._committed_frames
    # every frame written is committed: no chunk lies past n
    shrink(w._frames_arr, (n, *w.frame_shape))
    w._meta.truncate()
    w._locs.truncate()
    dt = w._frame_interval_s
    if dt is None and n > 1 and w._t_first is not None:
        span = w._t_last - w._t_first
        dt = span / (n - 1) if span > 0 else None
    w._ome_dt = dt
    w._update_ome(n, final=True)
    w._ome_dt = dt  # exactly the measured interval, not the last within 1 %
    w._frames_group.update_attributes({"ome": w._frames_ome()})
    st = w.stats
    with w._lock:
        w._attrs.update(
            state="closed",
            n_frames=n,
            closed=now_iso(),
            updated=now_iso(),
            frame_interval_s=dt,
            stats={
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(st).items()
            },
        )
        attrs = dict(w._attrs)
    w._root.update_attributes({ATTRS_KEY: attrs, "ome": w._root_ome()})

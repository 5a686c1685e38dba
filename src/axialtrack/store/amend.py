"""Add localizations to a closed run store (``axialtrack localize``).

The live pipeline may skip frames (``analyzed = false``); reprocessing the run
offline fills them in. :func:`append_localizations_to_run` keeps the store's
commit discipline:

- *Appending* (the default, when the new rows belong to frames without rows):
  the localization arrays grow first, the new rows are written as whole chunks
  (each atomically), and only then is ``n_rows`` rewritten. A reader (or a
  crash) sees the old table or the new one, never a part.
- *Replacing* (``replace=True``, or new rows for frames that already have rows):
  the complete new table is written into a sibling group, then swapped in with
  two renames. A reader sees the old or the new table; a crash between the
  two renames leaves both groups on disk (``localizations.old-*`` and the new
  one) and nothing is lost.

``analyzed`` flags are written chunk by chunk (atomically) after the rows.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from axialtrack.store._registry import pid_alive as _pid_alive
from axialtrack.store._registry import writer_alive
from axialtrack.store._schema import check_dtype as _check_dtype
from axialtrack.store._schema import to_columns as _to_columns
from axialtrack.store._sinks import ChunkFiles
from axialtrack.store._tables import ColumnTable
from axialtrack.store.errors import (
    InvalidTableError,
    NotARunStoreError,
    StoreError,
    StoreInUseError,
    write_error,
)
from axialtrack.store.layout import (
    ATTRS_KEY,
    CHUNK_KEY_ENCODING,
    FRAME_META,
    LOCALIZATION_COLUMNS,
    LOCALIZATION_DEFAULTS,
    LOCALIZATIONS,
    TRACKS,
    chunk_encoder,
    fill_for,
    units_of,
)
from axialtrack.store.reader import read_attrs

__all__ = ["amend_leftovers", "append_localizations_to_run", "settle_amend_leftovers"]

_AMEND_LEFTOVER = re.compile(
    rf"^(?P<name>{LOCALIZATIONS}|{TRACKS})\.(?P<what>amend|old)-(?P<pid>\d+)$"
)


def amend_leftovers(path: str | os.PathLike[str]) -> list[Path]:
    """Groups an interrupted amend (``axialtrack localize``) left in a run
    store: ``localizations.amend-PID`` (a new table not swapped in) and
    ``localizations.old-PID`` (the previous table, swapped out), and the same
    for ``tracks``. Those of a process still running are not listed."""
    p = Path(path)
    out = []
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        m = _AMEND_LEFTOVER.match(entry.name)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        out.append(p / entry.name)
    return out


def settle_amend_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Tidy what an interrupted amend left; return what was done, in words.

    A table swapped out but never replaced (the store lacks ``localizations``
    or ``tracks``) is put back; otherwise the swapped-out copy and any new
    table that was never swapped in are deleted (the store's own table is the
    one its counts describe).
    """
    p = Path(path)
    done = []
    for left in amend_leftovers(p):
        m = _AMEND_LEFTOVER.match(left.name)
        assert m is not None
        target = p / m["name"]
        if m["what"] == "old" and not target.exists():
            os.replace(left, target)
            done.append(f"restored {target.name} from {left.name}")
        else:
            shutil.rmtree(left, ignore_errors=False)
            kind = (
                "an amended table that was never swapped in"
                if m["what"] == "amend"
                else "the table an amend replaced"
            )
            done.append(f"removed {left.name} ({kind})")
    return done


def _gattrs(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(node.attrs)
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _read_table(group: zarr.Group) -> tuple[dict[str, np.ndarray], int]:
    attrs = _gattrs(group)
    n = int(attrs.get("n_rows", 0))
    cols = {}
    for name in attrs.get("columns", []):
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        cols[name] = np.asarray(arr[:n])
    return cols, n


def _schema(group: zarr.Group) -> dict[str, np.dtype]:
    attrs = _gattrs(group)
    names = list(attrs.get("columns", []))
    dtypes = list(attrs.get("dtypes", []))
    if len(dtypes) == len(names):
        return {n: np.dtype(d) for n, d in zip(names, dtypes, strict=True)}
    out = {}
    for n in names:
        arr = group[n]
        assert isinstance(arr, zarr.Array)
        out[n] = np.dtype(arr.dtype)
    return out


def _conform(
    table: Any, schema: dict[str, np.dtype], what: str
) -> dict[str, np.ndarray]:
    """The new rows in the store's columns and dtypes (clear errors otherwise)."""
    cols = _to_columns(table, what)
    lens = {len(v) for v in cols.values()}
    if len(lens) > 1:
        raise InvalidTableError(f"{what}: columns differ in length")
    k = lens.pop() if lens else 0
    schema = dict(schema) if schema else dict(LOCALIZATION_COLUMNS)
    for c, v in cols.items():
        if c not in schema:
            if v.dtype.kind not in "biuf":
                raise InvalidTableError(
                    f"{what}: extra column {c!r} has dtype {v.dtype}; only numeric "
                    "and bool columns are stored."
                )
            schema[c] = v.dtype.newbyteorder("=")
    out: dict[str, np.ndarray] = {}
    for name, dtype in schema.items():
        if name in cols:
            out[name] = _check_dtype(name, np.asarray(cols[name]), dtype, what)
        elif name in LOCALIZATION_DEFAULTS:
            out[name] = np.full(k, LOCALIZATION_DEFAULTS[name], dtype=dtype)
        elif name in LOCALIZATION_COLUMNS:
            raise InvalidTableError(f"{what}: missing column {name!r}")
        else:
            out[name] = np.full(k, fill_for(dtype), dtype=dtype)
    return out


def _write_group(root: zarr.Group, name: str, cols: dict[str, np.ndarray]) -> None:
    """Write a complete table as a new group ``name`` (one array per column)."""
    n = len(next(iter(cols.values()))) if cols else 0
    group = root.create_group(name, overwrite=True)
    table = ColumnTable(group, chunk=16384)
    for c, v in cols.items():
        table.add_column(c, v.dtype)
    table.append(cols, n)
    table.truncate()
    group.update_attributes(
        {
            "n_rows": table.n,
            "columns": table.columns,
            "dtypes": [table.dtypes[c].str for c in table.columns],
            "units": units_of(table.columns),
        }
    )


#: a rename that replaces a missing (or, for files, an existing) target on
#: every OS; a name of its own so that the tests can make it fail
_replace = os.replace


def _swap_group(path: Path, name: str, tmp_name: str) -> None:
    """Put the group ``tmp_name`` in place of ``name``; if that fails, the old
    ``name`` is put back (the store is never left without it)."""
    old = path / f"{name}.old-{os.getpid()}"
    moved = False
    if old.exists():  # of an earlier process with this id
        shutil.rmtree(old)
    if (path / name).exists():
        _replace(path / name, old)
        moved = True
    try:
        _replace(path / tmp_name, path / name)
    except BaseException:
        if moved:
            _replace(old, path / name)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _append_rows(
    group: zarr.Group, cols: dict[str, np.ndarray], n0: int, directory: Path
) -> None:
    """Write rows after ``n0`` in whole chunks, then commit ``n_rows``."""
    from zarr.codecs import ZstdCodec

    k = len(next(iter(cols.values()))) if cols else 0
    encode = chunk_encoder("zstd", 1)
    existing = set(_gattrs(group).get("columns", []))
    arrays: dict[str, zarr.Array] = {}
    for name, values in cols.items():
        if name not in existing:
            arr = group.create_array(
                name,
                shape=(n0,),
                chunks=(16384,),
                dtype=values.dtype,
                fill_value=fill_for(values.dtype),
                compressors=(ZstdCodec(level=1, checksum=False),),
                dimension_names=["row"],
                chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
            )
            # fresh column: earlier rows read as its fill value
            arrays[name] = arr
        else:
            node = group[name]
            assert isinstance(node, zarr.Array)
            arrays[name] = node
    # 1. grow every array (never shorter than the committed count)
    for arr in arrays.values():
        arr.resize((n0 + k,))
    # 2. the chunks holding the new rows, whole and atomically
    for name, arr in arrays.items():
        chunk = int(arr.chunks[0])
        c0 = n0 // chunk
        start = c0 * chunk
        end = -(-(n0 + k) // chunk) * chunk
        block = np.full(end - start, fill_for(arr.dtype), dtype=arr.dtype)
        if n0 > start and name in existing:
            block[: n0 - start] = np.asarray(arr[start:n0])
        block[n0 - start : n0 - start + k] = cols[name]
        zstd = _is_zstd1(arr)
        files = ChunkFiles(arr, directory / name, encode) if zstd else None
        for c in range(start, end, chunk):
            rel = c - start
            if files is not None:
                files.write((c // chunk,), block[rel : rel + chunk])
            else:
                stop = min(c + chunk, n0 + k)
                arr[c:stop] = block[rel : rel + (stop - c)]
    # 3. commit the count
    names = list(_gattrs(group).get("columns", []))
    names += [c for c in cols if c not in names]
    group.update_attributes(
        {
            "n_rows": n0 + k,
            "columns": names,
            "dtypes": [np.dtype(arrays[c].dtype).str for c in names],
            "units": units_of(names),
        }
    )


def _is_zstd1(arr: zarr.Array) -> bool:
    comps = arr.compressors
    if len(comps) != 1 or type(comps[0]).__name__ != "ZstdCodec":
        return False
    c = comps[0]
    return (
        getattr(c, "level", None) == 1
        and not getattr(c, "checksum", False)
        and not arr.filters
    )


def _set_flags(
    group: zarr.Group, frames: np.ndarray, n_frames: int, directory: Path
) -> None:
    arr = group["analyzed"]
    assert isinstance(arr, zarr.Array)
    flags = np.asarray(arr[:n_frames]).astype(bool)
    before = flags.copy()
    flags[frames] = True
    changed = np.flatnonzero(flags != before)
    if not changed.size:
        return
    chunk = int(arr.chunks[0])
    files = None
    if _is_zstd1(arr):
        files = ChunkFiles(arr, directory / "analyzed", chunk_encoder("zstd", 1))
    cap = int(arr.shape[0])
    for c in np.unique(changed // chunk):
        start = int(c) * chunk
        stop = min(start + chunk, cap)
        block = np.zeros(chunk, dtype=bool)
        block[: stop - start] = np.asarray(arr[start:stop]).astype(bool)
        hi = min(stop, n_frames)
        block[: hi - start] = flags[start:hi]
        if files is not None:
            files.write((int(c),), block)
        else:
            arr[start:stop] = block[: stop - start]


def _closed_run_frames(p: Path) -> int:
    """The frame count of the closed run at ``p``; StoreInUseError if it is
    not closed."""
    attrs = read_attrs(p)
    if attrs.get("state") != "closed":
        alive = writer_alive(attrs, p)
        hint = (
            "wait until the run is closed"
            if alive
            else f"its writer stopped without closing it; run `axialtrack recover "
            f"{p}` first"
        )
        raise StoreInUseError(f"{p} is not closed ({hint}).")
    return int(attrs.get("n_frames", 0))


def _track_columns(tracks: Any, what: str) -> dict[str, np.ndarray]:
    """A per-track summary as 1-D numeric columns of one length, or
    InvalidTableError (nothing written yet)."""
    tcols = {c: np.asarray(v) for c, v in _to_columns(tracks, what).items()}
    for c, v in tcols.items():
        if v.ndim != 1 or v.dtype.kind not in "biuf":
            raise InvalidTableError(
                f"{what}: track column {c!r} must be a 1-D numeric array; got "
                f"dtype {v.dtype}, shape {v.shape}. Nothing was changed."
            )
    lengths = {len(v) for v in tcols.values()}
    if len(lengths) > 1:
        raise InvalidTableError(
            f"{what}: the track columns differ in length ({sorted(lengths)}). "
            "Nothing was changed."
        )
    return tcols


def _merged(
    loc: zarr.Group, cols: dict[str, np.ndarray], frames: np.ndarray, old_n: int
) -> dict[str, np.ndarray]:
    """The stored rows of frames not in ``frames``, then ``cols`` (columns
    the old table lacks read as their fill value)."""
    old, _ = _read_table(loc)
    keep = ~np.isin(old["frame"], frames)
    new = {}
    for c, v in cols.items():
        prev = old.get(c)
        if prev is None:
            prev = np.full(old_n, fill_for(v.dtype), dtype=v.dtype)
        new[c] = np.concatenate([prev[keep], v])
    return new


def _record_amend(p: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the run's ``amended`` history attribute."""
    root = zarr.open_group(LocalStore(p), mode="r+")
    at: dict[str, Any] = dict(_gattrs(root)[ATTRS_KEY])
    at["amended"] = [*at.get("amended", []), entry]
    root.update_attributes({ATTRS_KEY: at})


def append_localizations_to_run(
    path: str | os.PathLike[str],
    table: Any,
    *,
    frames_analyzed: np.ndarray | Any,
    tracks: Any | None = None,
    replace: bool = False,
) -> None:
    """Add (or replace) localizations of a closed run and mark frames analyzed.

    Parameters
    ----------
    path
        A closed run store.
    table
        Localization rows (DataFrame or dict of arrays) with the run's columns;
        their ``frame`` values must be frames of the run.
    frames_analyzed
        Frames whose ``analyzed`` flag becomes true (those ``table`` covers).
    tracks
        A per-track summary that replaces the run's ``tracks`` table (None:
        unchanged).
    replace
        Replace the whole localization table with ``table``. Otherwise the rows
        are added; existing rows of frames in ``frames_analyzed`` are replaced.

    Raises
    ------
    StoreInUseError
        The run is still being written (or was not cleanly closed: run
        :func:`axialtrack.store.recover` first).
    InvalidTableError, IndexError
        Bad columns or frame indices.
    axialtrack.store.StoreWriteError
        Writing failed; the run keeps its previous table.
    """
    p = Path(path).expanduser().absolute()
    n_frames = _closed_run_frames(p)
    frames = np.unique(np.asarray(frames_analyzed, dtype=np.int64).ravel())
    if frames.size and (frames[0] < 0 or frames[-1] >= n_frames):
        raise IndexError(
            f"frames_analyzed must be in [0, {n_frames}) for {p}, got "
            f"{frames[0]}..{frames[-1]}"
        )
    what = f"append_localizations_to_run on {p}"
    root = zarr.open_group(LocalStore(p), mode="r+")
    if LOCALIZATIONS not in root:
        raise NotARunStoreError(
            f"{p} is a calibration run (frames only); localize a live run, or "
            "write the localizations to a new store with --out."
        )
    loc = root[LOCALIZATIONS]
    meta = root[FRAME_META]
    assert isinstance(loc, zarr.Group)
    assert isinstance(meta, zarr.Group)
    cols = _conform(table, _schema(loc), what)
    k = len(cols["frame"])
    if k and (cols["frame"].min() < 0 or cols["frame"].max() >= n_frames):
        raise IndexError(f"{what}: frame values must be in [0, {n_frames})")
    # the track table checked before anything is written
    tcols = None if tracks is None else _track_columns(tracks, what)
    old_n = int(_gattrs(loc).get("n_rows", 0))
    try:
        old_frames = np.asarray(loc["frame"][:old_n]) if old_n else np.zeros(0, int)  # type: ignore[index]
        overlap = bool(old_n) and bool(np.isin(old_frames, frames).any())
        if replace or overlap:
            new = cols if replace or not old_n else _merged(loc, cols, frames, old_n)
            order = np.argsort(new["frame"], kind="stable")
            new = {c: v[order] for c, v in new.items()}
            tmp = f"{LOCALIZATIONS}.amend-{os.getpid()}"
            _write_group(root, tmp, new)
            _swap_group(p, LOCALIZATIONS, tmp)
            n_rows = len(new["frame"])
        else:
            _append_rows(loc, cols, old_n, p / LOCALIZATIONS)
            n_rows = old_n + k
        _set_flags(meta, frames, n_frames, p / FRAME_META)
        if tcols is not None:
            tmp = f"{TRACKS}.amend-{os.getpid()}"
            _write_group(root, tmp, tcols)
            _swap_group(p, TRACKS, tmp)
        _record_amend(
            p,
            {
                "at": _now(),
                "rows": int(k),
                "frames": int(frames.size),
                "replace": bool(replace or overlap),
                "n_rows": int(n_rows),
            },
        )
    except OSError as exc:
        # a new table that was not swapped in (e.g. the disk filled up while it
        # was written) is not left behind
        for name in (LOCALIZATIONS, TRACKS):
            shutil.rmtree(p / f"{name}.amend-{os.getpid()}", ignore_errors=True)
        raise write_error(
            exc, path=p, frames_safe=n_frames, rows_safe=old_n, doing="amending it"
        ) from exc
    except StoreError:
        raise

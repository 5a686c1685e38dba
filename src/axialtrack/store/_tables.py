"""Equal-length 1-D zarr columns that grow in whole chunks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from axialtrack.store._sinks import ChunkFiles
from axialtrack.store.layout import CHUNK_KEY_ENCODING, chunk_encoder, fill_for

__all__ = ["ColumnTable", "round_up", "shrink"]


def shrink(array: zarr.Array, shape: tuple[int, ...]) -> None:
    """Set ``array``'s shape without deleting chunk files past it.

    For arrays whose chunks past ``shape`` were never written: zarr's own shrink
    would try to delete every chunk key between the old and the new shape.
    """
    from zarr.core.sync import sync

    sync(array.async_array.resize(shape, delete_outside_chunks=False))


def round_up(n: int, block: int) -> int:
    """Smallest multiple of ``block`` that is >= ``n``."""
    return -(-n // block) * block


class ColumnTable:
    """Columns of equal length in one zarr group, appended in whole chunks.

    The arrays are kept a whole number of chunks long (their capacity); rows past
    :attr:`n` hold the column's fill value. The values of the chunk that holds the
    next row (the tail) stay in memory, so every write covers whole chunks and
    never reads back. Committing :attr:`n` (as an attribute) is the owner's job,
    after :meth:`append` returns.

    Parameters
    ----------
    group
        The zarr group holding one array per column.
    chunk
        Rows per chunk.
    directory
        The group's directory: write chunk files directly (zstd level 1, as the
        arrays' codecs say). ``None`` writes through zarr-python.
    """

    def __init__(
        self, group: zarr.Group, *, chunk: int, directory: Path | None = None
    ) -> None:
        from zarr.codecs import ZstdCodec

        self.group = group
        self.chunk = int(chunk)
        self.compressors = (ZstdCodec(level=1, checksum=False),)
        self._directory = directory
        self._encode = chunk_encoder("zstd", 1)
        self._files: dict[str, ChunkFiles] = {}
        self.arrays: dict[str, zarr.Array] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.n = 0
        self.capacity = 0
        self._tail_start = 0
        self._tail: dict[str, np.ndarray] = {}
        self._tail_dirty = False

    def rebind(self, group: zarr.Group, directory: Path | None) -> None:
        """Use the same columns in ``group`` (the table's store was moved)."""
        self.group = group
        self._directory = directory
        self._files = {}
        for name in self.arrays:
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            self.arrays[name] = arr
            if directory is not None:
                self._files[name] = ChunkFiles(arr, directory / name, self._encode)

    @property
    def columns(self) -> list[str]:
        """Column names, in creation order."""
        return list(self.arrays)

    def add_column(self, name: str, dtype: np.dtype) -> None:
        """Create the array of a new column (earlier rows read as its fill)."""
        dtype = np.dtype(dtype)
        fill = fill_for(dtype)
        arr = self.group.create_array(
            name,
            shape=(self.capacity,),
            chunks=(self.chunk,),
            dtype=dtype,
            fill_value=fill,
            compressors=self.compressors,
            dimension_names=["row"],
            chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
        )
        self.arrays[name] = arr
        self.dtypes[name] = dtype
        if self._directory is not None:
            self._files[name] = ChunkFiles(arr, self._directory / name, self._encode)
        self._tail[name] = np.full(self.n - self._tail_start, fill, dtype=dtype)

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        step = max(self.chunk, min(self.capacity, 64 * self.chunk))
        new = round_up(max(need, self.capacity + step), self.chunk)
        for arr in self.arrays.values():
            arr.resize((new,))
        self.capacity = new

    def append(self, cols: Mapping[str, np.ndarray], k: int) -> None:
        """Write ``k`` rows after :attr:`n` (every column must be given)."""
        if k == 0:
            if self._tail_dirty:
                self._write_from(self._tail_start, {}, 0)
            return
        self._grow(self.n + k)
        self._write_from(self._tail_start, cols, k)

    def _write_from(self, start: int, cols: Mapping[str, np.ndarray], k: int) -> None:
        new_n = self.n + k
        end = round_up(new_n, self.chunk)
        new_tail_start = (new_n // self.chunk) * self.chunk
        prefix = self.n - start
        tails: dict[str, np.ndarray] = {}
        for name, arr in self.arrays.items():
            dtype = self.dtypes[name]
            block = np.full(end - start, fill_for(dtype), dtype=dtype)
            block[:prefix] = self._tail[name]
            if k:
                block[prefix : prefix + k] = cols[name]
            files = self._files.get(name)
            if files is None:
                arr[start:end] = block
            else:
                for c0 in range(start, end, self.chunk):
                    rel = c0 - start
                    files.write((c0 // self.chunk,), block[rel : rel + self.chunk])
            tails[name] = block[new_tail_start - start : new_n - start].copy()
        # only now that every chunk is written (a failure above changes nothing)
        self._tail = tails
        self.n = new_n
        self._tail_start = new_tail_start
        self._tail_dirty = False

    def set_values(self, name: str, index: np.ndarray, value: Any) -> None:
        """Change cells of rows already appended (index < :attr:`n`)."""
        index = np.asarray(index, dtype=np.int64)
        in_tail = index >= self._tail_start
        if in_tail.any():
            self._tail[name][index[in_tail] - self._tail_start] = value
            self._tail_dirty = True
        old = np.unique(index[~in_tail])
        if old.size:
            vals = np.full(old.size, value, dtype=self.dtypes[name])
            self.arrays[name].set_coordinate_selection(old, vals)

    @property
    def dirty(self) -> bool:
        """Whether :meth:`set_values` changed tail cells not yet written."""
        return self._tail_dirty

    def truncate(self) -> None:
        """Shrink every array to exactly :attr:`n` rows."""
        # chunks past n were never written: nothing to delete
        for arr in self.arrays.values():
            shrink(arr, (self.n,))
        self.capacity = self.n

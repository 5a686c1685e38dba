"""Chunk writers: how one encoded chunk becomes a file, and the frame sinks.

Writes are atomic: the chunk file is written under a temporary name and renamed,
so a reader (or a crash) sees a chunk either absent or complete, and a failed
write (disk full) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

__all__ = [
    "BACKENDS",
    "DIRECT_FILESYSTEMS",
    "MAX_SHARD_FRAMES",
    "Backend",
    "ChunkFiles",
    "FrameSink",
    "ShardSink",
    "atomic_write",
    "direct_ok",
    "filesystem_type",
    "make_sink",
    "read_shard_index",
    "recover_shards",
    "with_capacity",
]

Backend = Literal["direct", "zarr", "tensorstore"]
BACKENDS: tuple[str, ...] = ("direct", "zarr", "tensorstore")

_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


#: alignment of buffer address and size that direct I/O needs (a page; any
#: block size of common file systems divides it)
DIRECT_ALIGN = 4096

#: set to 1 to use only what every OS offers (no ``O_DIRECT``, no
#: ``/proc/self/mounts``): what Windows and macOS get, for tests on Linux
PORTABLE_ENV = "AXIALTRACK_PORTABLE_IO"


def portable_io() -> bool:
    """Whether the Linux-only fast paths are switched off (``PORTABLE_ENV``)."""
    return os.environ.get(PORTABLE_ENV, "").strip() not in ("", "0")


def o_direct() -> int:
    """The ``O_DIRECT`` open flag, or 0 where the OS lacks it (Windows, macOS)
    or the portable paths are forced; decided at each call, not at import."""
    return 0 if portable_io() else int(getattr(os, "O_DIRECT", 0))


#: file systems on local block devices, where direct I/O saves CPU without
#: slowing the writes down much (network file systems and FUSE are left to the
#: page cache: there every direct write waits for the server)
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs"})


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system holding ``path`` (Linux: from
    ``/proc/self/mounts``, the longest mount point above it), or ``None``."""
    if portable_io():
        return None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if line.strip()]
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def direct_ok(data: Any) -> bool:
    """Whether ``data`` can be written with ``O_DIRECT``: a C-contiguous numpy
    array whose address and size are multiples of :data:`DIRECT_ALIGN`."""
    return (
        o_direct() != 0
        and isinstance(data, np.ndarray)
        and data.flags.c_contiguous
        and data.nbytes > 0
        and data.ctypes.data % DIRECT_ALIGN == 0
        and data.nbytes % DIRECT_ALIGN == 0
    )


def atomic_write(path: str, data: Any, *, direct: bool = False) -> int:
    """Write ``data`` (any buffer) to ``path`` via a temporary file and a rename.

    ``direct``: open the file with ``O_DIRECT`` (the data goes from ``data``
    to the disk, not through the page cache: less CPU, no cache pages to
    reclaim later). Only for :func:`direct_ok` data; a file system that refuses
    it raises ``OSError`` (``EINVAL``) before anything is written.
    """
    tmp = path + ".partial"
    view = memoryview(data).cast("B")
    size = len(view)
    flag = o_direct() if direct else 0
    if direct and not flag:
        raise OSError(errno.EINVAL, "direct I/O is not available here")
    flags = _O_FLAGS | flag
    fd = os.open(tmp, flags, 0o666)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:  # no progress: never loop on it
                raise OSError(errno.EIO, f"writing {tmp}: the write made no progress")
            view = view[written:]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size


class ChunkFiles:
    """Write whole chunks of one zarr v3 array as files, bypassing zarr's I/O.

    The chunk key comes from the array's own metadata and ``encode`` must match
    its codecs (see :func:`axialtrack.store.layout.chunk_encoder`), so any zarr v3
    reader decodes the chunks. Safe to call from several threads for different
    chunks.

    Parameters
    ----------
    array
        The zarr array (its metadata gives the chunk keys).
    directory
        The array's directory.
    encode
        Chunk array -> bytes of the chunk file.
    direct_io
        Write chunks that :func:`direct_ok` allows with ``O_DIRECT``, on the file
        systems of :data:`DIRECT_FILESYSTEMS` (see :meth:`write`).
    """

    def __init__(
        self,
        array: zarr.Array,
        directory: Path,
        encode: Callable,
        *,
        direct_io: bool = False,
    ) -> None:
        self._key = array.metadata.encode_chunk_key
        self._dir = os.fspath(directory)
        self._encode = encode
        self._made: set[str] = set()
        self.direct_io = (
            bool(direct_io)
            and o_direct() != 0
            and filesystem_type(self._dir) in DIRECT_FILESYSTEMS
        )

    def write(self, coords: tuple[int, ...], chunk: np.ndarray) -> int:
        """Encode and write the chunk at grid position ``coords``; return its size.

        With ``direct_io``, chunks that :func:`direct_ok` allows are written with
        ``O_DIRECT``; if the file system refuses it, this and every later chunk
        are written through the page cache.
        """
        data = self._encode(chunk)
        path = os.path.join(self._dir, self._key(coords))
        parent = os.path.dirname(path)
        if parent not in self._made:
            self._mkdirs(parent)
        if self.direct_io and direct_ok(data):
            try:
                return atomic_write(path, data, direct=True)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # not on this file system
        return atomic_write(path, data)

    def _mkdirs(self, parent: str) -> None:
        # top-down from the deepest directory known to exist: one mkdir per level
        todo = []
        d = parent
        while d not in self._made and d != self._dir and d != os.path.dirname(d):
            todo.append(d)
            d = os.path.dirname(d)
        for d in reversed(todo):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d)
        if len(self._made) > 1024:
            self._made.clear()
        self._made.update(todo)


class FrameSink:
    """Writes whole frame chunks; called from several writer threads at once."""

    name: str = ""

    def write(self, index: int, frame: np.ndarray) -> int:
        """Write frame ``index``; return the number of bytes stored."""
        raise NotImplementedError

    def resized(self, capacity: int) -> None:
        """Frames ``[0, capacity)`` may be written now (the array's metadata on
        disk keeps the committed shape)."""

    def commit(self, n_frames: int) -> None:
        """Frames ``[0, n_frames)`` are written: make them readable (sinks
        whose chunks are readable once written do nothing)."""

    def close(self) -> None:
        """Release resources."""


class DirectSink(FrameSink):
    """Encode with numcodecs and write each chunk file with one ``write`` call."""

    name = "direct"

    def __init__(self, files: ChunkFiles) -> None:
        self._files = files

    def write(self, index: int, frame: np.ndarray) -> int:
        return self._files.write((index, 0, 0, 0), frame)


def with_capacity(array: zarr.Array, capacity: int) -> zarr.Array:
    """A handle on ``array``'s chunks that accepts frames ``[0, capacity)``.

    Only this handle's shape changes: the array's ``zarr.json`` on disk keeps
    the committed shape, which the writer sets at each commit, so a reader
    never sees frames past the committed ones.
    """
    from zarr.core.array import AsyncArray

    a = array.async_array
    meta = a.metadata.update_shape((int(capacity), *array.shape[1:]))
    return zarr.Array(AsyncArray(meta, a.store_path, a.config))


class ZarrSink(FrameSink):
    """Write through zarr-python's public API (``array[t] = frame``)."""

    name = "zarr"

    def __init__(self, array: zarr.Array) -> None:
        self._array = array
        self._nbytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize

    def resized(self, capacity: int) -> None:
        self._array = with_capacity(self._array, capacity)

    def write(self, index: int, frame: np.ndarray) -> int:
        self._array[index] = frame
        return self._nbytes


class TensorstoreSink(FrameSink):
    """Write through tensorstore's zarr3 driver (reopened after every resize,
    with the grown shape assumed, not read from disk)."""

    name = "tensorstore"

    def __init__(self, directory: Path) -> None:
        import json

        import tensorstore as ts

        self._ts = ts
        with open(os.path.join(directory, "zarr.json"), encoding="utf-8") as f:
            self._meta = json.load(f)
        self._spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": os.fspath(directory)},
        }
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        self._handle: Any = None

    def resized(self, capacity: int) -> None:
        skip = ("attributes", "zarr_format", "node_type", "storage_transformers")
        meta = {k: v for k, v in self._meta.items() if k not in skip}
        meta["shape"] = [int(capacity), *self._meta["shape"][1:]]
        self._handle = self._ts.open(
            {**self._spec, "metadata": meta},
            assume_metadata=True,
            context=self._context,
        ).result()

    def write(self, index: int, frame: np.ndarray) -> int:
        self._handle[index].write(frame).result()
        return int(frame.nbytes)


def make_sink(
    backend: str,
    array: zarr.Array,
    directory: Path,
    encode: Callable,
    *,
    direct_io: bool = False,
    shard_frames: int | None = None,
) -> FrameSink:
    """The frame sink of ``backend`` for ``array`` stored in ``directory``
    (``direct_io``: see :class:`ChunkFiles`; the ``"direct"`` backend only;
    ``shard_frames``: a :class:`ShardSink`, the ``"direct"`` backend only)."""
    if shard_frames:
        if backend != "direct":
            raise ValueError("shard_frames needs the 'direct' backend")
        return ShardSink(array, directory, encode, shard_frames)
    if backend == "direct":
        return DirectSink(ChunkFiles(array, directory, encode, direct_io=direct_io))
    if backend == "zarr":
        return ZarrSink(with_capacity(array, array.shape[0]))
    if backend == "tensorstore":
        return TensorstoreSink(directory)
    raise ValueError(f"unknown frame backend {backend!r}; choose one of {BACKENDS}")


#: the index entry of an inner chunk not (yet) in a shard
SHARD_MISSING = np.uint64(2**64 - 1)
#: most frames per shard: the shard's index (16 bytes per frame and a 4-byte
#: checksum, at the start of the file) then fits in one 4 KiB page, which one
#: ``write`` replaces whole even if the process is killed during it
MAX_SHARD_FRAMES = (DIRECT_ALIGN - 4) // 16


def shard_index_bytes(entries: np.ndarray) -> bytes:
    """Encode a shard index ``(N, 2)`` uint64 (offset, nbytes) as zarr's
    ``sharding_indexed`` codec reads it: little-endian, then CRC32C."""
    import google_crc32c

    raw = np.ascontiguousarray(entries, dtype="<u8").tobytes()
    return raw + int(google_crc32c.value(raw)).to_bytes(4, "little")


def read_shard_index(path: str, n: int) -> np.ndarray | None:
    """The ``(n, 2)`` index of the shard file at ``path``, or None if it is
    missing, short, or its checksum does not match."""
    import google_crc32c

    size = n * 16 + 4
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError:
        return None
    if len(head) != size:
        return None
    if int.from_bytes(head[-4:], "little") != google_crc32c.value(head[:-4]):
        return None
    return np.frombuffer(head[:-4], dtype="<u8").reshape(n, 2).copy()


def _pwrite(fd: int, data: Any, offset: int, lock: Any) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` where the OS has it;
    elsewhere seek and write under ``lock``)."""
    view = memoryview(data).cast("B")
    pwrite = getattr(os, "pwrite", None)
    if pwrite is not None and not portable_io():
        while view:
            written = pwrite(fd, view, offset)
            if written <= 0:
                raise OSError(errno.EIO, "writing a shard: the write made no progress")
            view, offset = view[written:], offset + written
        return
    with lock:
        os.lseek(fd, offset, os.SEEK_SET)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "writing a shard: the write made no progress")
            view = view[written:]


class ShardSink(FrameSink):
    """Frames into zarr v3 shards of ``shard_frames`` frames, one file each.

    A shard file starts with its index (``index_location: "start"``), then the
    frames' encoded chunks, appended as they are written (by several threads:
    each takes its place at the end of the file under a lock, then writes
    there). :meth:`commit` rewrites the index of each shard that gained frames
    below the committed count, in one ``write`` of less than a page, so the
    index on disk always names complete chunks only: a reader (or a crash)
    sees a shard's committed frames and nothing after them. A new shard file
    is created with an index that names no chunk, under a temporary name, and
    renamed into place.
    """

    name = "sharded"

    def __init__(
        self, array: zarr.Array, directory: Path, encode: Callable, shard_frames: int
    ) -> None:
        import threading

        self._key = array.metadata.encode_chunk_key
        self._dir = os.fspath(directory)
        self._encode = encode
        self._n = int(shard_frames)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # seek + write where pwrite is missing
        self._fds: dict[int, int] = {}
        self._end: dict[int, int] = {}
        self._entries: dict[int, np.ndarray] = {}
        self._indexed: dict[int, int] = {}  # frames of each shard in its index
        self.files_created = 0

    def _path(self, shard: int) -> str:
        return os.path.join(self._dir, self._key((shard, 0, 0, 0)))

    def _open(self, shard: int) -> int:
        """The shard's file descriptor; a new shard's file is created (with an
        empty index) first. Called under ``_lock``."""
        fd = self._fds.get(shard)
        if fd is not None:
            return fd
        path = self._path(shard)
        entries = np.full((self._n, 2), SHARD_MISSING, dtype=np.uint64)
        head = shard_index_bytes(entries)
        atomic_write(path, head)
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        self._fds[shard] = fd
        self._end[shard] = len(head)
        self._entries[shard] = entries
        self._indexed[shard] = 0
        self.files_created += 1
        return fd

    def write(self, index: int, frame: np.ndarray) -> int:
        data = self._encode(frame)
        size = memoryview(data).nbytes
        shard, j = divmod(index, self._n)
        with self._lock:
            fd = self._open(shard)
            offset = self._end[shard]
            self._end[shard] = offset + size
        _pwrite(fd, data, offset, self._io_lock)
        with self._lock:
            self._entries[shard][j] = (offset, size)
        return size

    def commit(self, n_frames: int) -> None:
        """Make frames ``[0, n_frames)`` (all written) readable: rewrite the
        index of each shard that gained some; close the shards now full."""
        with self._lock:
            todo = []
            for shard in sorted(self._fds):
                k = min(self._n, max(0, n_frames - shard * self._n))
                if k > self._indexed[shard]:
                    entries = self._entries[shard].copy()
                    entries[k:] = SHARD_MISSING
                    todo.append((shard, k, self._fds[shard], entries))
        for shard, k, fd, entries in todo:
            _pwrite(fd, shard_index_bytes(entries), 0, self._io_lock)
            with self._lock:
                self._indexed[shard] = k
                if k == self._n:  # full: no more writes to it
                    os.close(self._fds.pop(shard))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()


def recover_shards(
    directory: Path, key: Callable, shard_frames: int, n_frames: int
) -> tuple[int, int]:
    """Trim a sharded frame array's files to ``n_frames`` committed frames.

    Shards past the last committed frame are deleted; the shard holding it
    keeps the index entries below ``n_frames`` (rewritten without those past
    it) and is cut after its last kept chunk. Returns (shard files removed,
    bytes cut from the last shard).
    """
    n = int(shard_frames)
    removed, cut = 0, 0
    last = (n_frames - 1) // n if n_frames else -1
    d = os.fspath(directory)
    with os.scandir(d) as it:
        names = [e.name for e in it if e.is_file()]
    for name in names:
        parts = name.split(".")
        shard_key = len(parts) == 5 and parts[0] == "c" and parts[1].isdigit()
        if shard_key and int(parts[1]) > last:
            os.unlink(os.path.join(d, name))
            removed += 1
    if last < 0:
        return removed, cut
    path = os.path.join(d, key((last, 0, 0, 0)))
    entries = read_shard_index(path, n)
    if entries is None:
        return removed, cut
    k = n_frames - last * n
    entries[k:] = SHARD_MISSING
    kept = entries[:k]
    present = kept[:, 0] != SHARD_MISSING
    end = int((kept[present, 0] + kept[present, 1]).max()) if present.any() else 0
    end = max(end, n * 16 + 4)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(shard_index_bytes(entries))
        if size > end:
            f.truncate(end)
            cut = size - end
    return removed, cut

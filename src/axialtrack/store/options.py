"""Writer configuration and records: :class:`WriterOptions`, :class:`FrameMeta`,
:class:`WriterStats`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from axialtrack.store._sinks import MAX_SHARD_FRAMES, Backend
from axialtrack.store.layout import FRAME_META_COLUMNS

__all__ = ["FrameMeta", "WriterOptions", "WriterStats", "astuple_meta"]


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

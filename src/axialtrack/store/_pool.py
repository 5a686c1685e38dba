"""The writer's frame buffers: a preallocated, page-aligned pool and its free list."""

from __future__ import annotations

import queue

import numpy as np

from axialtrack.store._sinks import DIRECT_ALIGN

__all__ = ["make_frame_pool"]


def make_frame_pool(
    frame_shape: tuple[int, ...], queue_mb: float
) -> tuple[np.ndarray, queue.LifoQueue[int]]:
    """Buffers for ``queue_mb`` of uint16 frames (at least 2) and their free list.

    Returns ``(pool, free)``: ``pool[i]`` is buffer ``i`` (little-endian
    uint16, ``frame_shape``), page-aligned, so that whole frames can go to disk
    with direct I/O; ``free`` holds every buffer's index. LIFO: the most
    recently written buffer is reused first, so a writer that keeps up touches
    (and page-faults) only a few buffers of the pool.
    """
    frame_bytes = int(np.prod(frame_shape)) * 2
    n_slots = max(2, int(queue_mb * 1e6 // frame_bytes))
    raw = np.empty(n_slots * frame_bytes + DIRECT_ALIGN, dtype=np.uint8)
    off = -raw.ctypes.data % DIRECT_ALIGN
    pool = (
        raw[off : off + n_slots * frame_bytes]
        .view("<u2")
        .reshape(n_slots, *frame_shape)
    )
    free: queue.LifoQueue[int] = queue.LifoQueue()
    for i in reversed(range(n_slots)):
        free.put(i)
    return pool, free

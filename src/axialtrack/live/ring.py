"""The preallocated ring of dual-plane frames the runner fills, and
:func:`split_into`, which splits a raw frame straight into a slot."""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from axialtrack.geometry import SplitterGeometry, unmirror

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- helpers
def split_into(raw: np.ndarray, geometry: SplitterGeometry, out: np.ndarray) -> None:
    """Split a raw sensor frame into ``out`` (``(2, H, W)``) without allocating.

    Same result as :func:`axialtrack.geometry.split_frame`.

    Raises
    ------
    ValueError
        The frame does not match the layout or ``out``'s plane shape.
    """
    raw = np.asarray(raw)
    h, w = out.shape[-2:]
    if geometry.layout == "two-cameras":
        p0, p1 = raw[0], raw[1]
        shape = raw.shape
        want: tuple[int, ...] = (2, h, w)
    else:
        shape = raw.shape
        want = geometry.sensor_shape((h, w))
        if geometry.layout == "side-by-side":
            p0, p1 = raw[:, :w], raw[:, w:]
        else:
            p0, p1 = raw[:h], raw[h:]
    if tuple(shape) != tuple(want):
        raise ValueError(
            f"camera frame of shape {tuple(shape)} does not match the run: a "
            f"{geometry.layout} sensor frame of two {h} x {w} planes is "
            f"{tuple(want)}. Was the camera ROI or the splitter changed?"
        )
    out[0] = p0
    out[1] = unmirror(p1, geometry.mirror)


class _Ring:
    """Preallocated dual-plane frames with reference counts."""

    def __init__(self, n: int, frame_shape: tuple[int, int, int]) -> None:
        self.frames = np.empty((n, *frame_shape), dtype=np.uint16)
        self._refs = [0] * n
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self._free.put(i)
        self.n = n

    def acquire(self, timeout: float) -> int | None:
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def hold(self, slot: int, refs: int) -> None:
        with self._lock:
            self._refs[slot] = refs

    def release(self, slot: int) -> None:
        with self._lock:
            self._refs[slot] -= 1
            free = self._refs[slot] <= 0
        if free:
            self._free.put(slot)

    def in_use(self) -> int:
        return self.n - self._free.qsize()

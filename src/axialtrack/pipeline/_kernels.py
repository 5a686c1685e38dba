"""Compiled loops of the live analysis (numba), with the numpy code as fallback.

Detection (the detection image and its smoothing, the local-maximum test) and
the sub-pixel XY fit (a few hundred 7 x 7 windows per batch) run as whole-array
numpy expressions in many passes, each with its own call overhead and holding
the GIL between calls. These numba loops do the same arithmetic in one pass
each and release the GIL, so the two stages of the analysis process (or the
analysis and camera threads) overlap.

``numba`` is imported lazily on first use; where it is missing, fails to
compile, or ``AXIALTRACK_NO_NUMBA=1`` is set, :func:`available` is false and
callers use their numpy code (the results agree to float rounding; the tests
compare both).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

__all__ = [
    "available",
    "fit_windows",
    "local_maxima",
    "smooth_detection",
    "windows",
]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _compile() -> dict[str, Any] | None:
    """The compiled kernels, or ``None`` (numba missing or disabled)."""
    if os.environ.get("AXIALTRACK_NO_NUMBA", "") not in ("", "0"):
        return None
    # numba logs its compiler passes at DEBUG: never wanted, even where the
    # application turns DEBUG on for everything
    logging.getLogger("numba").setLevel(logging.WARNING)
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    from . import _numba_kernels as nk

    # compile (or load from the on-disk cache) now, not in the first batch
    nk.fit_windows(
        np.ones((1, 7, 7), np.float32),
        True,
        1.2,
        1,
        np.empty((1, 2)),
        np.empty(1),
        np.empty(1, dtype=bool),
    )
    planes = np.zeros((1, 2, 4, 4), np.uint16)
    one = np.zeros(1, np.int64)
    nk.gather_windows(
        planes,
        one,
        1,
        np.zeros((1, 2), np.int64),
        np.zeros(1, np.float32),
        np.empty((1, 3, 3), np.float32),
    )
    img = np.zeros((4, 4), np.uint16)
    f32 = np.zeros((4, 4), np.float32)
    nk.smooth_detection(img, img, True, 1, 0, np.ones(2, np.float32), f32)
    nk.local_maxima(f32, np.arange(4, dtype=np.int64), 1, np.empty(4, np.int64))
    return {
        "fit_windows": nk.fit_windows,
        "gather_windows": nk.gather_windows,
        "smooth_detection": nk.smooth_detection,
        "local_maxima": nk.local_maxima,
    }


def _kernels() -> dict[str, Any] | None:
    if "k" not in _STATE:
        with _LOCK:
            if "k" not in _STATE:
                try:
                    _STATE["k"] = _compile()
                except Exception as exc:  # pragma: no cover - a broken install
                    logger.warning("numba kernels unavailable (%s): numpy instead", exc)
                    _STATE["k"] = None
    return _STATE["k"]


def available() -> bool:
    """Whether the compiled kernels are in use."""
    return _kernels() is not None


def fit_windows(
    img: np.ndarray, method: str, sigma_px: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The compiled :func:`axialtrack.pipeline._xy._fit_windows`, or
    ``None`` where the kernels are unavailable (the caller uses numpy)."""
    k = _kernels()
    if k is None:
        return None
    img = np.ascontiguousarray(img, dtype=np.float32)
    n = img.shape[0]
    xy = np.empty((n, 2))
    amp = np.empty(n)
    good = np.empty(n, dtype=bool)
    k["fit_windows"](img, method == "fit", float(sigma_px), int(n_iter), xy, amp, good)
    return xy, amp, good


def windows(
    planes: np.ndarray,
    frame_index: np.ndarray,
    plane: int,
    centers: np.ndarray,
    size: int,
    background: np.ndarray,
    out: np.ndarray,
) -> bool:
    """Background-subtracted float32 ``size x size`` windows of one plane into
    ``out`` ``(N, size, size)`` (edge-clamped). ``False`` (nothing written)
    where the kernels are unavailable or ``planes`` is not a C-contiguous
    ``(F, 2, H, W)`` uint16 array."""
    k = _kernels()
    if (
        k is None
        or planes.dtype != np.uint16
        or planes.ndim != 4
        or not planes.flags.c_contiguous
        or not out.flags.c_contiguous
        or out.shape[1:] != (size, size)
    ):
        return False
    k["gather_windows"](
        planes,
        np.ascontiguousarray(frame_index, dtype=np.int64),
        int(plane),
        np.ascontiguousarray(centers, dtype=np.int64),
        np.ascontiguousarray(background, dtype=np.float32).reshape(-1),
        out,
    )
    return True


def smooth_detection(
    p0: np.ndarray,
    p1: np.ndarray | None,
    shift: tuple[int, int],
    half_kernel: np.ndarray,
    out: np.ndarray,
) -> bool:
    """The smoothed detection image into C-contiguous float32 ``out``
    ``(H, W)``: ``p0`` (``p1 is None``) or ``p0`` plus ``p1`` moved by the
    whole pixels ``shift = (sx, sy)``. ``False`` (nothing written) where the
    kernels are unavailable or the planes are not C-contiguous uint16."""
    k = _kernels()
    if k is None:
        return False
    for a in (p0,) if p1 is None else (p0, p1):
        if a.dtype != np.uint16 or a.ndim != 2 or not a.flags.c_contiguous:
            return False
    if out.dtype != np.float32 or out.shape != p0.shape or not out.flags.c_contiguous:
        return False
    k["smooth_detection"](
        p0,
        p0 if p1 is None else p1,
        p1 is not None,
        int(shift[0]),
        int(shift[1]),
        np.ascontiguousarray(half_kernel, dtype=np.float32),
        out,
    )
    return True


def local_maxima(
    image: np.ndarray, floor: float, margin: int, radius: int
) -> np.ndarray | None:
    """Flat indices (raster order) of the pixels of float32 ``image`` above
    ``floor`` that are the maximum of their ``(2 radius + 1)`` square (first in
    raster order among equals), ``margin`` px or more from the border; ``None``
    where the kernels are unavailable."""
    k = _kernels()
    if k is None or image.dtype != np.float32 or image.ndim != 2:
        return None
    h, w = image.shape
    m = int(margin)
    image = np.ascontiguousarray(image)
    if h - 2 * m <= 0 or w - 2 * m <= 0:
        return np.zeros(0, np.int64)
    cand = np.flatnonzero(image[m : h - m].ravel() > np.float32(floor)) + m * w
    if m > 0:
        col = cand % w
        cand = cand[(col >= m) & (col < w - m)]
    out = np.empty(cand.size, np.int64)
    n = k["local_maxima"](image, cand.astype(np.int64, copy=False), int(radius), out)
    return out[:n]

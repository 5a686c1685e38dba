"""Crop pairs at registered positions in both planes.

The crops are made exactly as the calibration makes its training crops
(:func:`axialtrack.calibrate.analyze`): the plane-0 window is centred on
``np.rint(xy0)``, the plane-1 window on ``np.rint(apply_affine(affine, xy0))``, both
``size x size`` with the centre pixel at index ``size // 2``. Any other rounding
would show the model inputs it was not trained on.
"""

from __future__ import annotations

import numpy as np

from axialtrack.geometry import apply_affine

__all__ = ["crop_centers", "crop_pairs"]


def crop_centers(
    xy0_px: np.ndarray, affine: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Integer window centres ``(N, 2)`` in plane 0 and plane 1 for points ``xy0``."""
    xy0 = np.asarray(xy0_px, dtype=float).reshape(-1, 2)
    a = np.eye(2, 3) if affine is None else np.asarray(affine, dtype=float)
    c0 = np.rint(xy0).astype(np.int64)
    c1 = np.rint(apply_affine(a, xy0)).astype(np.int64)
    return c0, c1


def crop_pairs(
    planes: np.ndarray,
    xy0_px: np.ndarray,
    affine: np.ndarray | None,
    size: int,
    *,
    frame_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop pairs ``(N, 2, S, S)`` at plane-0 points and their registered partners.

    Parameters
    ----------
    planes
        ``(2, H, W)`` one frame, or ``(F, 2, H, W)`` several frames (then
        ``frame_index`` says which frame each point belongs to).
    xy0_px
        ``(N, 2)`` plane-0 positions ``(x, y)`` (px).
    affine
        Plane-0 -> plane-1 affine ``(2, 3)`` (``None``: identity).
    size
        Odd crop side (px).
    frame_index
        ``(N,)`` index into the first axis of ``planes`` (``(F, 2, H, W)`` input).

    Returns
    -------
    pairs : numpy.ndarray
        ``(N, 2, S, S)`` with the dtype of ``planes`` (raw counts), plane 0 first.
    inside : numpy.ndarray
        ``(N,)`` bool: both windows lie inside their planes. Rows where it is
        ``False`` hold the nearest window that fits and must not be used.
    """
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"crop size must be odd and positive; got {size}")
    arr = np.asarray(planes)
    if arr.ndim == 3:
        arr = arr[None]
        if frame_index is not None and np.any(np.asarray(frame_index) != 0):
            raise ValueError("frame_index must be 0 for a single (2, H, W) frame")
        frame_index = None
    if arr.ndim != 4 or arr.shape[1] != 2:
        raise ValueError(
            f"planes must have shape (2, H, W) or (F, 2, H, W); got {arr.shape}"
        )
    f_count, _, h, w = arr.shape
    c0, c1 = crop_centers(xy0_px, affine)
    n = c0.shape[0]
    if frame_index is None:
        if f_count != 1:
            raise ValueError("frame_index is required for (F, 2, H, W) planes")
        fi = np.zeros(n, dtype=np.int64)
    else:
        fi = np.asarray(frame_index, dtype=np.int64).reshape(-1)
        if fi.shape[0] != n:
            raise ValueError(f"frame_index has {fi.shape[0]} entries for {n} points")
        if n and (fi.min() < 0 or fi.max() >= f_count):
            raise ValueError(f"frame_index out of range for {f_count} frame(s)")
    half = size // 2

    def inside(c: np.ndarray) -> np.ndarray:
        return (
            (c[:, 0] >= half)
            & (c[:, 0] < w - half)
            & (c[:, 1] >= half)
            & (c[:, 1] < h - half)
        )

    ok = inside(c0) & inside(c1)
    out = np.empty((n, 2, size, size), dtype=arr.dtype)
    if n == 0:
        return out, ok
    if size > h or size > w:
        out[:] = 0
        return out, np.zeros(n, dtype=bool)
    # every window of every plane as a strided view; fancy indexing then copies
    # whole rows (13x faster than a gather of single pixels)
    win = np.lib.stride_tricks.sliding_window_view(arr, (size, size), axis=(2, 3))
    for p, c in ((0, c0), (1, c1)):
        cx = np.clip(c[:, 0], half, w - 1 - half) - half
        cy = np.clip(c[:, 1], half, h - 1 - half) - half
        out[:, p] = win[fi, p, cy, cx]
    return out, ok

"""Sub-pixel XY of detections: windowed fits on both planes, combined."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from axialtrack.geometry import apply_affine, invert_affine

from . import _kernels

__all__ = ["refine_xy"]


def _windows(
    planes: np.ndarray,
    frame_index: np.ndarray,
    plane: int,
    centers: np.ndarray,
    size: int,
) -> np.ndarray:
    """``size x size`` windows ``(N, k, k)`` of one plane (edge-clamped indices)."""
    h, w = planes.shape[-2:]
    half = size // 2
    off = np.arange(-half, half + 1)
    iy = np.clip(centers[:, 1, None] + off, 0, h - 1)[:, :, None]
    ix = np.clip(centers[:, 0, None] + off, 0, w - 1)[:, None, :]
    if planes.flags.c_contiguous:
        base = ((frame_index * 2 + plane) * h)[:, None, None]
        return np.take(planes.reshape(-1), (base + iy) * w + ix)
    return planes[frame_index[:, None, None], plane, iy, ix]


def _fit_windows(
    img: np.ndarray, method: str, sigma_px: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(N, 2)`` from the window centre, amplitude and validity."""
    if method not in ("fit", "centroid"):
        raise ValueError(f"unknown xy refinement method {method!r}")
    compiled = _kernels.fit_windows(img, method, sigma_px, n_iter)
    if compiled is not None:
        return compiled
    return _fit_windows_numpy(img, method, sigma_px, n_iter)


def _fit_windows_numpy(
    img: np.ndarray, method: str, sigma_px: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_fit_windows` in numpy (without the compiled kernels)."""
    _n, k, _ = img.shape
    half = k // 2
    pos = np.arange(-half, half + 1, dtype=np.float32)
    plus = np.maximum(img, 0.0)
    tot = plus.sum(axis=(1, 2))
    good = tot > 0
    tot = np.where(good, tot, 1.0)
    cx = (plus.sum(axis=1) @ pos) / tot
    cy = (plus.sum(axis=2) @ pos) / tot
    x, y = cx, cy
    # the weight widens for spots wider than sigma_px (defocused): second moment
    r2 = (plus.sum(axis=1) @ (pos**2) + plus.sum(axis=2) @ (pos**2)) / tot - (
        cx**2 + cy**2
    )
    sig = np.clip(
        np.sqrt(np.maximum(r2, 0.0) / 2.0), sigma_px, max(half / 1.5, sigma_px)
    )
    inv2s2 = (1.0 / (2.0 * sig**2)).astype(np.float32)[:, None]
    if method == "fit":
        for _ in range(int(n_iter)):
            gx = np.exp(-((pos[None, :] - x[:, None]) ** 2) * inv2s2)  # (N, k)
            gy = np.exp(-((pos[None, :] - y[:, None]) ** 2) * inv2s2)
            col = np.einsum("nij,ni->nj", img, gy) * gx  # weighted column sums
            row = np.einsum("nij,nj->ni", img, gx) * gy
            den = col.sum(axis=1)
            ok = den > 0
            den = np.where(ok, den, 1.0)
            x = np.where(ok, col @ pos / den, x)
            y = np.where(ok, row @ pos / den, y)
        lost = (
            ~(np.isfinite(x) & np.isfinite(y)) | (np.abs(x) > half) | (np.abs(y) > half)
        )
        x = np.where(lost, cx, x)
        y = np.where(lost, cy, y)
    # least-squares amplitude of a Gaussian of sigma_px at the estimate
    gx = np.exp(-((pos[None, :] - x[:, None]) ** 2) * inv2s2)
    gy = np.exp(-((pos[None, :] - y[:, None]) ** 2) * inv2s2)
    num = np.einsum("nij,ni,nj->n", img, gy, gx)
    amp = num / np.maximum((gx**2).sum(1) * (gy**2).sum(1), 1e-12)
    xy = np.stack([np.where(good, x, 0.0), np.where(good, y, 0.0)], axis=1)
    return xy.astype(float), amp.astype(float), good


def refine_xy(
    planes: np.ndarray,
    frame_index: np.ndarray,
    peaks_px: np.ndarray,
    background_adu: np.ndarray,
    *,
    method: str = "fit",
    size: int = 7,
    sigma_px: float = 1.2,
    n_iter: int = 3,
    affine: np.ndarray | None = None,
    background1_adu: np.ndarray | None = None,
    offset_adu: float = 0.0,
) -> np.ndarray:
    """Sub-pixel plane-0 positions ``(N, 2)`` around integer peaks.

    Parameters
    ----------
    planes
        ``(F, 2, H, W)`` raw counts.
    frame_index
        ``(N,)`` frame of each peak.
    peaks_px
        ``(N, 2)`` peak pixels ``(x, y)`` in plane 0.
    background_adu
        ``(N,)`` plane-0 background per pixel (ADU, offset included).
    method
        ``"centroid"``: centroid of the positive background-subtracted counts in
        the window. ``"fit"``: starting from the centroid, ``n_iter`` iterations of
        the Gaussian-weighted centroid ``x = sum x_i I_i g_i / sum I_i g_i`` with
        ``g`` a Gaussian of ``sigma_px`` at the current estimate (the Gaussian-mask
        estimator; its fixed point is the centre of a symmetric spot, and it is
        nearly as precise as a least-squares Gaussian fit at a fraction of the
        cost). Estimates that leave the window fall back to the centroid.
    size
        Odd window side (px).
    sigma_px
        Width of the Gaussian weight.
    n_iter
        Iterations of ``"fit"``.
    affine, background1_adu
        With both given, plane 1 is fitted too (window at the registered
        position, result mapped back to plane 0) and the two estimates are
        averaged with weights ``A^2 / (A + 4 b)`` (``A``: fitted peak amplitude,
        ``b``: background per pixel), the inverse of the approximate variance of
        a Gaussian-spot position; so a particle in focus in plane 1 but not in
        plane 0 is placed by plane 1.
    offset_adu
        Camera offset, for the weights.
    """
    peaks = np.rint(np.asarray(peaks_px, dtype=float).reshape(-1, 2)).astype(np.int64)
    n = peaks.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    fi = np.asarray(frame_index, np.int64)
    bg0 = np.asarray(background_adu, np.float32)[:, None, None]
    if affine is None or background1_adu is None:
        img = np.empty((n, size, size), np.float32)
        if not _kernels.windows(planes, fi, 0, peaks, size, bg0, img):
            np.subtract(_windows(planes, fi, 0, peaks, size), bg0, out=img)
        d0, _, _ = _fit_windows(img, method, sigma_px, n_iter)
        return peaks + d0
    # both planes in one vectorized fit
    a = np.asarray(affine, dtype=float)
    c1 = np.rint(apply_affine(a, peaks)).astype(np.int64)
    bg1 = np.asarray(background1_adu, np.float32)[:, None, None]
    img = np.empty((2 * n, size, size), np.float32)
    if not (
        _kernels.windows(planes, fi, 0, peaks, size, bg0, img[:n])
        and _kernels.windows(planes, fi, 1, c1, size, bg1, img[n:])
    ):
        np.subtract(_windows(planes, fi, 0, peaks, size), bg0, out=img[:n])
        np.subtract(_windows(planes, fi, 1, c1, size), bg1, out=img[n:])
    d, amp, ok = _fit_windows(img, method, sigma_px, n_iter)
    return _combine_planes(
        peaks + d[:n],
        apply_affine(_inverse(a), c1 + d[n:]),
        amp[:n],
        amp[n:],
        ok[:n],
        ok[n:],
        np.maximum(np.asarray(background_adu, float) - offset_adu, 0.0),
        np.maximum(np.asarray(background1_adu, float) - offset_adu, 0.0),
    )


def _inverse(affine: np.ndarray) -> np.ndarray:
    """:func:`~axialtrack.geometry.invert_affine`, cached (once per run, not
    per batch)."""
    a = np.ascontiguousarray(affine, dtype=np.float64)
    return _inverse_cached(a.tobytes())


@lru_cache(maxsize=8)
def _inverse_cached(key: bytes) -> np.ndarray:
    inv = invert_affine(np.frombuffer(key, dtype=np.float64).reshape(2, 3))
    inv.setflags(write=False)
    return inv


def _window_method(method: str) -> str:
    """The window-fit method of an XY method (``"fit"`` or ``"centroid"``)."""
    return "centroid" if method == "centroid" else "fit"


def _combine_planes(
    xy0: np.ndarray,
    xy1: np.ndarray,
    a0: np.ndarray,
    a1: np.ndarray,
    ok0: np.ndarray,
    ok1: np.ndarray,
    b0: np.ndarray,
    b1: np.ndarray,
) -> np.ndarray:
    """Plane-0 and plane-1 estimates averaged with weights ``A^2 / (A + 4 b)``."""
    w0 = np.where(ok0 & (a0 > 0), a0**2 / np.maximum(a0 + 4.0 * b0, 1e-9), 0.0)
    w1 = np.where(ok1 & (a1 > 0), a1**2 / np.maximum(a1 + 4.0 * b1, 1e-9), 0.0)
    tot = w0 + w1
    use = tot > 0
    tot = np.where(use, tot, 1.0)
    comb = (w0[:, None] * xy0 + w1[:, None] * xy1) / tot[:, None]
    return np.where(use[:, None], comb, xy0)

"""Bead detection, sub-pixel localization and per-bead ROI stacks.

Pixel coordinates are ``(x, y)`` = (column, row) with the centre of the first pixel
at ``(0, 0)``, as in :mod:`axialtrack.geometry`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "band_pass",
    "crop_stack",
    "detect_peaks",
    "fit_gaussian",
    "robust_sigma",
]


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def band_pass(
    image: np.ndarray, sigma_px: float = 1.0, bg_sigma_px: float = 4.0
) -> np.ndarray:
    """Difference-of-Gaussians band-pass filter of a 2-D image (float32)."""
    img = np.asarray(image, dtype=np.float32)
    return ndimage.gaussian_filter(img, sigma_px) - ndimage.gaussian_filter(
        img, bg_sigma_px
    )


def detect_peaks(
    image: np.ndarray,
    *,
    threshold_sigma: float = 8.0,
    min_distance_px: int = 3,
    sigma_px: float = 1.0,
    bg_sigma_px: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of the band-passed image above a noise threshold.

    Parameters
    ----------
    image
        2-D image (e.g. a maximum projection over Z).
    threshold_sigma
        A peak must exceed this many robust standard deviations of the band-passed
        image.
    min_distance_px
        Half-size of the neighbourhood a peak must be the maximum of.
    sigma_px, bg_sigma_px
        Scales of the difference-of-Gaussians band-pass.

    Returns
    -------
    xy : numpy.ndarray
        ``(N, 2)`` integer peak positions ``(x, y)``, brightest first.
    height : numpy.ndarray
        ``(N,)`` band-passed peak heights.
    """
    bp = band_pass(image, sigma_px, bg_sigma_px)
    noise = robust_sigma(
        bp[:: max(1, bp.shape[0] // 128), :: max(1, bp.shape[1] // 128)]
    )
    if noise <= 0:
        noise = float(np.std(bp)) or 1.0
    size = 2 * int(min_distance_px) + 1
    peaks = (bp == ndimage.maximum_filter(bp, size=size, mode="nearest")) & (
        bp > threshold_sigma * noise
    )
    rows, cols = np.nonzero(peaks)
    height = bp[rows, cols]
    order = np.argsort(-height)
    xy = np.stack([cols[order], rows[order]], axis=1).astype(np.int64)
    return xy, height[order].astype(float)


def crop_stack(stack: np.ndarray, centers_xy: np.ndarray, size: int) -> np.ndarray:
    """Crop ``size x size`` windows centred on integer pixels from a stack.

    Parameters
    ----------
    stack
        ``(..., H, W)`` array.
    centers_xy
        ``(N, 2)`` centres ``(x, y)``; rounded to the nearest pixel. Every window
        must lie inside the image.
    size
        Odd window size.

    Returns
    -------
    numpy.ndarray
        ``(N, ..., size, size)`` crops, same dtype as ``stack``.
    """
    c = np.rint(np.asarray(centers_xy, dtype=float)).astype(np.int64).reshape(-1, 2)
    half = size // 2
    off = np.arange(-half, half + 1)
    iy = (c[:, 1, None] + off)[:, :, None]  # (N, S, 1)
    ix = (c[:, 0, None] + off)[:, None, :]  # (N, 1, S)
    h, w = stack.shape[-2:]
    if c.size and (iy.min() < 0 or ix.min() < 0 or iy.max() >= h or ix.max() >= w):
        raise ValueError("a crop window extends beyond the image")
    out = stack[..., iy, ix]  # (..., N, S, S)
    return np.moveaxis(out, -3, 0)


def fit_gaussian(
    crops: np.ndarray, *, sigma0_px: float = 1.3, n_iter: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of a symmetric 2-D Gaussian plus offset to many crops.

    Vectorized Levenberg-Marquardt over the crops.

    Parameters
    ----------
    crops
        ``(N, k, k)`` images.
    sigma0_px
        Starting Gaussian width.
    n_iter
        Iterations.

    Returns
    -------
    params : numpy.ndarray
        ``(N, 5)``: ``x, y`` (relative to the crop's first pixel), sigma,
        amplitude, offset.
    ok : numpy.ndarray
        ``(N,)`` bool: the fit converged to a sensible result (centre inside the
        crop, positive amplitude and width).
    """
    d = np.asarray(crops, dtype=float)
    n, k, _ = d.shape
    if n == 0:
        return np.zeros((0, 5)), np.zeros(0, dtype=bool)
    yy, xx = np.mgrid[0:k, 0:k].astype(float)
    xx = xx.ravel()[None]
    yy = yy.ravel()[None]
    data = d.reshape(n, -1)
    b0 = np.percentile(data, 20, axis=1)
    w = np.clip(data - b0[:, None], 0, None)
    tot = w.sum(axis=1) + 1e-12
    p = np.empty((n, 5))
    p[:, 0] = (w * xx).sum(1) / tot
    p[:, 1] = (w * yy).sum(1) / tot
    p[:, 2] = sigma0_px
    p[:, 3] = data.max(axis=1) - b0
    p[:, 4] = b0
    lam = np.full(n, 1e-3)

    def model(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = xx - q[:, 0:1]
        dy = yy - q[:, 1:2]
        s2 = q[:, 2:3] ** 2
        g = np.exp(-(dx * dx + dy * dy) / (2 * s2))
        m = q[:, 3:4] * g + q[:, 4:5]
        jac = np.stack(
            [
                q[:, 3:4] * g * dx / s2,
                q[:, 3:4] * g * dy / s2,
                q[:, 3:4] * g * (dx * dx + dy * dy) / (s2 * q[:, 2:3]),
                g,
                np.ones_like(g),
            ],
            axis=-1,
        )
        return m, jac

    m, jac = model(p)
    cost = ((data - m) ** 2).sum(1)
    eye = np.eye(5)[None]
    for _ in range(n_iter):
        r = data - m
        jtj = np.einsum("npi,npj->nij", jac, jac)
        jtr = np.einsum("npi,np->ni", jac, r)
        diag = np.einsum("nii->ni", jtj)[:, :, None] * eye
        a = jtj + lam[:, None, None] * (diag + 1e-9 * eye)
        try:
            step = np.linalg.solve(a, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(p)
        q = p + step
        q[:, 2] = np.clip(np.abs(q[:, 2]), 0.3, k)
        m_new, jac_new = model(q)
        cost_new = ((data - m_new) ** 2).sum(1)
        better = cost_new < cost
        p = np.where(better[:, None], q, p)
        m = np.where(better[:, None], m_new, m)
        jac = np.where(better[:, None, None], jac_new, jac)
        cost = np.where(better, cost_new, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0)
    ok = (
        np.all(np.isfinite(p), axis=1)
        & (p[:, 0] > -0.5)
        & (p[:, 0] < k - 0.5)
        & (p[:, 1] > -0.5)
        & (p[:, 1] < k - 0.5)
        & (p[:, 3] > 0)
    )
    return p, ok

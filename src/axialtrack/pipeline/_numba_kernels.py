"""The numba kernels behind :mod:`axialtrack.pipeline._kernels` (imported
only where numba is installed). Compiled on first use and cached on disk."""

from __future__ import annotations

import math

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True, fastmath=False)


@jit
def _gauss(
    g: np.ndarray, c: float, half: int, a: float
) -> None:  # pragma: no cover - compiled
    """``g[i] = exp(-a (i - half - c)^2)`` with three ``exp`` calls: each
    value is the previous times a ratio that itself changes by
    ``exp(-2 a)`` per pixel."""
    d = -half - c
    v = math.exp(-a * d * d)
    r = math.exp(-a * (2.0 * d + 1.0))
    q = math.exp(-2.0 * a)
    for i in range(g.shape[0]):
        g[i] = v
        v *= r
        r *= q


@jit
def fit_windows(
    img: np.ndarray,
    fit: bool,
    sigma_px: float,
    n_iter: int,
    xy: np.ndarray,
    amp: np.ndarray,
    good: np.ndarray,
) -> None:  # pragma: no cover - compiled
    n, k, _ = img.shape
    half = k // 2
    sig_max = max(half / 1.5, sigma_px)
    colsum = np.empty(k)
    rowsum = np.empty(k)
    gx = np.empty(k)
    gy = np.empty(k)
    for m in range(n):
        w = img[m]
        tot = 0.0
        for i in range(k):
            rowsum[i] = 0.0
            colsum[i] = 0.0
        for i in range(k):
            for j in range(k):
                v = w[i, j]
                if v > 0.0:
                    rowsum[i] += v
                    colsum[j] += v
        for i in range(k):
            tot += rowsum[i]
        ok_tot = tot > 0.0
        if not ok_tot:
            tot = 1.0
        cx = 0.0
        cy = 0.0
        mx2 = 0.0
        for i in range(k):
            p = i - half
            cx += colsum[i] * p
            cy += rowsum[i] * p
            mx2 += (colsum[i] + rowsum[i]) * p * p
        cx /= tot
        cy /= tot
        r2 = mx2 / tot - (cx * cx + cy * cy)
        sig = math.sqrt(max(r2, 0.0) / 2.0)
        sig = min(max(sig, sigma_px), sig_max)
        inv2s2 = 1.0 / (2.0 * sig * sig)
        x = cx
        y = cy
        if fit:
            for _ in range(n_iter):
                _gauss(gx, x, half, inv2s2)
                _gauss(gy, y, half, inv2s2)
                den = 0.0
                sx = 0.0
                sy = 0.0
                for i in range(k):
                    for j in range(k):
                        v = w[i, j] * gy[i] * gx[j]
                        den += v
                        sx += v * (j - half)
                        sy += v * (i - half)
                if den > 0.0:
                    x = sx / den
                    y = sy / den
            if (
                not (math.isfinite(x) and math.isfinite(y))
                or abs(x) > half
                or abs(y) > half
            ):
                x = cx
                y = cy
        _gauss(gx, x, half, inv2s2)
        _gauss(gy, y, half, inv2s2)
        num = 0.0
        gx2 = 0.0
        gy2 = 0.0
        for i in range(k):
            gx2 += gx[i] * gx[i]
            gy2 += gy[i] * gy[i]
            for j in range(k):
                num += w[i, j] * gy[i] * gx[j]
        amp[m] = num / max(gx2 * gy2, 1e-12)
        good[m] = ok_tot
        xy[m, 0] = x if ok_tot else 0.0
        xy[m, 1] = y if ok_tot else 0.0


@jit
def gather_windows(
    planes: np.ndarray,
    frame_index: np.ndarray,
    plane: int,
    centers: np.ndarray,
    background: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """``out[m] = planes[f_m, plane]`` around ``centers[m]`` (edge-clamped
    indices) minus ``background[m]``, as float32."""
    n, k, _ = out.shape
    h = planes.shape[2]
    w = planes.shape[3]
    half = k // 2
    for m in range(n):
        f = frame_index[m]
        cx = centers[m, 0]
        cy = centers[m, 1]
        b = background[m]
        for i in range(k):
            y = min(max(cy + i - half, 0), h - 1)
            for j in range(k):
                x = min(max(cx + j - half, 0), w - 1)
                out[m, i, j] = np.float32(planes[f, plane, y, x]) - b

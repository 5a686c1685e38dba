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
def _weighted_sums(
    w: np.ndarray, gx: np.ndarray, gy: np.ndarray, half: int
) -> tuple[float, float, float]:  # pragma: no cover - compiled
    """``sum w g``, ``sum w g x`` and ``sum w g y`` over a window, with the
    separable weight ``g[i, j] = gy[i] gx[j]`` (``x, y`` from the centre)."""
    k = w.shape[0]
    den = 0.0
    sx = 0.0
    sy = 0.0
    for i in range(k):
        for j in range(k):
            v = w[i, j] * gy[i] * gx[j]
            den += v
            sx += v * (j - half)
            sy += v * (i - half)
    return den, sx, sy


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
                den, sx, sy = _weighted_sums(w, gx, gy, half)
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
        # least-squares amplitude of the Gaussian at the estimate
        _gauss(gx, x, half, inv2s2)
        _gauss(gy, y, half, inv2s2)
        num = _weighted_sums(w, gx, gy, half)[0]
        gx2 = 0.0
        gy2 = 0.0
        for i in range(k):
            gx2 += gx[i] * gx[i]
            gy2 += gy[i] * gy[i]
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


@jit
def _detection_row(
    p0: np.ndarray,
    p1: np.ndarray,
    use_p1: bool,
    sx: int,
    sy: int,
    y: int,
    d: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Row ``y`` of the detection image into ``d``: ``p0``, or ``p0`` plus
    ``p1`` moved by the whole pixels ``(sx, sy)`` (``2 p0`` where the moved
    plane 1 does not reach)."""
    h, w = p0.shape
    a = p0[y]
    if not use_p1:
        for x in range(w):
            d[x] = np.float32(a[x])
        return
    xs = max(0, -sx)
    xe = min(w, w - sx)
    if 0 <= y + sy < h and xs < xe:
        b = p1[y + sy, xs + sx : xe + sx]
        for x in range(xs):
            d[x] = np.float32(a[x]) + np.float32(a[x])
        for x in range(xe - xs):
            d[xs + x] = np.float32(a[xs + x]) + np.float32(b[x])
        for x in range(xe, w):
            d[x] = np.float32(a[x]) + np.float32(a[x])
    else:
        for x in range(w):
            d[x] = np.float32(a[x]) + np.float32(a[x])


@jit
def smooth_detection(
    p0: np.ndarray,
    p1: np.ndarray,
    use_p1: bool,
    sx: int,
    sy: int,
    half_kernel: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The detection image smoothed with a separable Gaussian, edges replicated.

    Streams over the rows: the ``2 r + 1`` detection-image rows the vertical
    pass needs are kept in a ring (row ``j`` in slot ``j mod (2 r + 1)``; rows
    past the edges read the edge row, always in the ring), so the planes are
    read once and ``out`` written once. Each pass is an inner loop along a row
    (these vectorize); the horizontal pass reads an edge-padded copy of the
    row (``half_kernel``: taps ``0..r``).
    """
    h, w = p0.shape
    r = half_kernel.shape[0] - 1
    n = 2 * r + 1
    ring = np.empty((n, w), np.float32)
    vrow = np.empty(w, np.float32)
    buf = np.empty(w + 2 * r, np.float32)
    for j in range(min(r + 1, h)):
        _detection_row(p0, p1, use_p1, sx, sy, j, ring[j % n])
    k0 = half_kernel[0]
    for y in range(h):
        if y > 0 and y + r < h:
            _detection_row(p0, p1, use_p1, sx, sy, y + r, ring[(y + r) % n])
        c = ring[y % n]
        for x in range(w):
            vrow[x] = k0 * c[x]
        for t in range(1, r + 1):
            kt = half_kernel[t]
            lo = ring[max(y - t, 0) % n]
            hi = ring[min(y + t, h - 1) % n]
            for x in range(w):
                vrow[x] += kt * (lo[x] + hi[x])
        for x in range(w):
            buf[x + r] = vrow[x]
        for x in range(r):
            buf[x] = vrow[0]
            buf[w + r + x] = vrow[w - 1]
        o = out[y]
        for x in range(w):
            o[x] = k0 * buf[x + r]
        for t in range(1, r + 1):
            kt = half_kernel[t]
            lo = buf[r - t : r - t + w]
            hi = buf[r + t : r + t + w]
            for x in range(w):
                o[x] += kt * (lo[x] + hi[x])


@jit
def local_maxima(
    image: np.ndarray, candidates: np.ndarray, radius: int, out: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Which of the ``candidates`` (flat indices, raster order) are the maximum
    of their ``(2 radius + 1)`` square (clipped at the border; of equal pixels
    the first in raster order wins). Their flat indices go into ``out``;
    returns how many."""
    h, w = image.shape
    flat = image.ravel()
    n = 0
    for c in range(candidates.shape[0]):
        i = candidates[c]
        y = i // w
        x = i - y * w
        v = flat[i]
        # the left and right neighbours first: most candidates fail there
        if x + 1 < w and flat[i + 1] > v:
            continue
        if x > 0 and flat[i - 1] >= v:
            continue
        best = True
        for yy in range(max(y - radius, 0), min(y + radius + 1, h)):
            for xx in range(max(x - radius, 0), min(x + radius + 1, w)):
                u = image[yy, xx]
                if u > v or (u == v and (yy < y or (yy == y and xx < x))):
                    best = False
                    break
            if not best:
                break
        if best:
            out[n] = i
            n += 1
    return n

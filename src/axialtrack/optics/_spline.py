"""Compiled cubic B-spline evaluation of a sampled PSF (numba).

A plane's PSF is a 3D array of B-spline coefficients on a grid ``(z, v, u)``:
``z`` the axial position, ``v, u`` the offset of a pixel centre from the emitter
along rows and columns in steps of ``pixel / oversample``. For an emitter at a
sub-pixel position every pixel of a crop sits at the same fractional grid offset,
so one set of 4 weights per axis serves the whole crop and the evaluation is
separable: contract z, then columns, then rows (SMAP / fit3Dcspline evaluate the
same kind of spline with 64 coefficients per voxel).
"""

from __future__ import annotations

import math

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})


@jit
def bspline_weights(
    f: float, w: np.ndarray, dw: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Cubic B-spline weights of nodes ``-1, 0, 1, 2`` at fraction ``f`` and
    their derivatives with respect to ``f``."""
    g = 1.0 - f
    f2 = f * f
    f3 = f2 * f
    w[0] = g * g * g / 6.0
    w[1] = (4.0 - 6.0 * f2 + 3.0 * f3) / 6.0
    w[2] = (1.0 + 3.0 * f + 3.0 * f2 - 3.0 * f3) / 6.0
    w[3] = f3 / 6.0
    dw[0] = -0.5 * g * g
    dw[1] = 1.5 * f2 - 2.0 * f
    dw[2] = -1.5 * f2 + f + 0.5
    dw[3] = 0.5 * f2


@jit
def eval_plane(
    coef: np.ndarray,
    x: float,
    y: float,
    z: float,
    size: int,
    grid_center: float,
    os_per_px: float,
    oversample: int,
    z0: float,
    dz: float,
    h: np.ndarray,
    hx: np.ndarray,
    hy: np.ndarray,
    hz: np.ndarray,
    a: np.ndarray,
    az: np.ndarray,
    b: np.ndarray,
    bx: np.ndarray,
    bz: np.ndarray,
    w: np.ndarray,
) -> bool:  # pragma: no cover - compiled
    """PSF and its x, y, z derivatives in a ``size x size`` crop of one plane.

    Kept as one compiled function (about 130 lines) on purpose: it runs once
    per plane per iteration of every refined emitter, and the tensor-product
    B-spline evaluation shares its weights and scratch arrays across the value
    and the three derivatives; helpers would pass them all again per call.

    ``x, y`` (um): emitter offset from the centre of the crop's central pixel;
    ``z`` (um) on the grid ``z0 + k dz``. ``coef``: ``(Nz, G, G)``. Scratch:
    ``a, az`` ``(R, R)``, ``b, bx, bz`` ``(R, size)`` with
    ``R = (size - 1) * oversample + 4``; ``w`` ``(6, 4)``. Returns ``False``
    (outputs untouched) where the crop leaves the grid.
    """
    nz, ng, _ = coef.shape
    half = size // 2
    # grid coordinate of pixel 0: t = i * os + T
    tx = grid_center - half * oversample - x * os_per_px
    ty = grid_center - half * oversample - y * os_per_px
    tz = (z - z0) / dz
    ix = math.floor(tx)
    iy = math.floor(ty)
    iz = math.floor(tz)
    span = (size - 1) * oversample + 4
    if ix < 1 or iy < 1 or iz < 1:
        return False
    if ix - 1 + span > ng or iy - 1 + span > ng or iz + 3 > nz:
        return False
    wx = w[0]
    dwx = w[1]
    wy = w[2]
    dwy = w[3]
    wz = w[4]
    dwz = w[5]
    bspline_weights(tx - ix, wx, dwx)
    bspline_weights(ty - iy, wy, dwy)
    bspline_weights(tz - iz, wz, dwz)
    # contract z over the rows/columns the crop needs: each entry once from
    # the 4 planes (inner loop along contiguous memory, so it vectorizes)
    p0 = coef[iz - 1]
    p1 = coef[iz]
    p2 = coef[iz + 1]
    p3 = coef[iz + 2]
    w0 = wz[0]
    w1 = wz[1]
    w2 = wz[2]
    w3 = wz[3]
    d0 = dwz[0]
    d1 = dwz[1]
    d2 = dwz[2]
    d3 = dwz[3]
    for r in range(span):
        q0 = p0[iy - 1 + r, ix - 1 : ix - 1 + span]
        q1 = p1[iy - 1 + r, ix - 1 : ix - 1 + span]
        q2 = p2[iy - 1 + r, ix - 1 : ix - 1 + span]
        q3 = p3[iy - 1 + r, ix - 1 : ix - 1 + span]
        ar = a[r]
        azr = az[r]
        for c in range(span):
            v0 = q0[c]
            v1 = q1[c]
            v2 = q2[c]
            v3 = q3[c]
            ar[c] = v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3
            azr[c] = v0 * d0 + v1 * d1 + v2 * d2 + v3 * d3
    # contract columns
    for r in range(span):
        for j in range(size):
            c0 = j * oversample
            a0 = a[r, c0]
            a1 = a[r, c0 + 1]
            a2 = a[r, c0 + 2]
            a3 = a[r, c0 + 3]
            b[r, j] = a0 * wx[0] + a1 * wx[1] + a2 * wx[2] + a3 * wx[3]
            bx[r, j] = a0 * dwx[0] + a1 * dwx[1] + a2 * dwx[2] + a3 * dwx[3]
            bz[r, j] = (
                az[r, c0] * wx[0]
                + az[r, c0 + 1] * wx[1]
                + az[r, c0 + 2] * wx[2]
                + az[r, c0 + 3] * wx[3]
            )
    # contract rows; d/dx = d/dt * dt/dx = -os_per_px d/dt
    gx = -os_per_px
    gz = 1.0 / dz
    for i in range(size):
        r0 = i * oversample
        y0 = wy[0]
        y1 = wy[1]
        y2 = wy[2]
        y3 = wy[3]
        e0 = dwy[0] * gx
        e1 = dwy[1] * gx
        e2 = dwy[2] * gx
        e3 = dwy[3] * gx
        for j in range(size):
            b0 = b[r0, j]
            b1 = b[r0 + 1, j]
            b2 = b[r0 + 2, j]
            b3 = b[r0 + 3, j]
            h[i, j] = b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3
            hy[i, j] = b0 * e0 + b1 * e1 + b2 * e2 + b3 * e3
            hx[i, j] = gx * (
                bx[r0, j] * y0
                + bx[r0 + 1, j] * y1
                + bx[r0 + 2, j] * y2
                + bx[r0 + 3, j] * y3
            )
            hz[i, j] = gz * (
                bz[r0, j] * y0
                + bz[r0 + 1, j] * y1
                + bz[r0 + 2, j] * y2
                + bz[r0 + 3, j] * y3
            )
    return True


@jit
def eval_batch(
    coefs: np.ndarray,
    xyz: np.ndarray,
    size: int,
    grid_center: float,
    os_per_px: float,
    oversample: int,
    z0: float,
    dz: float,
    h: np.ndarray,
    dh: np.ndarray,
    ok: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """:func:`eval_plane` for ``(N, K, 3)`` positions into ``h (N, K, S, S)`` and
    ``dh (N, K, S, S, 3)``; ``ok (N,)`` false where any plane leaves the grid."""
    n, n_planes, _ = xyz.shape
    span = (size - 1) * oversample + 4
    a = np.empty((span, span))
    az = np.empty((span, span))
    b = np.empty((span, size))
    bx = np.empty((span, size))
    bz = np.empty((span, size))
    w = np.empty((6, 4))
    hx = np.empty((size, size))
    hy = np.empty((size, size))
    hz = np.empty((size, size))
    for m in range(n):
        good = True
        for p in range(n_planes):
            if not eval_plane(
                coefs[p],
                xyz[m, p, 0],
                xyz[m, p, 1],
                xyz[m, p, 2],
                size,
                grid_center,
                os_per_px,
                oversample,
                z0,
                dz,
                h[m, p],
                hx,
                hy,
                hz,
                a,
                az,
                b,
                bx,
                bz,
                w,
            ):
                good = False
                continue
            for i in range(size):
                for j in range(size):
                    dh[m, p, i, j, 0] = hx[i, j]
                    dh[m, p, i, j, 1] = hy[i, j]
                    dh[m, p, i, j, 2] = hz[i, j]
        ok[m] = good

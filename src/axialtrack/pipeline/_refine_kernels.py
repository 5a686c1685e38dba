"""Compiled Levenberg-Marquardt MLE of emitters on dual-plane crops (numba).

One emitter at a time (the loop is over emitters inside the kernel, no Python
loop), parameters ``theta = (x, y, z, N, b_0, ..., b_{K-1})``: the emitter's
offset from the centre of the plane-0 crop (um), its axial position on the PSF's
grid (um), its plane-0 photons and one background per plane (photons / pixel).
Plane ``k`` sees the emitter at ``L_k (x, y) + o_k`` from its crop centre and
``N t_k`` photons.

Noise: Poisson plus Gaussian read noise of variance ``v`` (e-^2), by the usual
shifted-Poisson approximation (Huang et al. 2013): ``d + v ~ Poisson(mu + v)``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from axialtrack.optics._spline import eval_plane

jit = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})


@jit
def _invert(a: np.ndarray, out: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Inverse of a small symmetric positive-definite matrix (Gauss-Jordan with
    partial pivoting, scaled by the diagonal); ``False`` if singular."""
    p = a.shape[0]
    s = np.empty(p)
    for i in range(p):
        if not a[i, i] > 0.0:
            return False
        s[i] = 1.0 / math.sqrt(a[i, i])
    m = np.empty((p, 2 * p))
    for i in range(p):
        for j in range(p):
            m[i, j] = a[i, j] * s[i] * s[j]
            m[i, p + j] = 1.0 if i == j else 0.0
    for c in range(p):
        piv = c
        best = abs(m[c, c])
        for r in range(c + 1, p):
            if abs(m[r, c]) > best:
                best = abs(m[r, c])
                piv = r
        if best < 1e-13:
            return False
        if piv != c:
            for j in range(2 * p):
                t = m[c, j]
                m[c, j] = m[piv, j]
                m[piv, j] = t
        d = 1.0 / m[c, c]
        for j in range(2 * p):
            m[c, j] *= d
        for r in range(p):
            if r != c:
                f = m[r, c]
                if f != 0.0:
                    for j in range(2 * p):
                        m[r, j] -= f * m[c, j]
    for i in range(p):
        for j in range(p):
            out[i, j] = m[i, p + j] * s[i] * s[j]
    return True


@jit
def _solve(a: np.ndarray, g: np.ndarray, out: np.ndarray) -> bool:
    # pragma: no cover - compiled
    """Solve ``a out = g`` for a small positive-definite ``a`` (Cholesky)."""
    p = a.shape[0]
    lo = np.zeros((p, p))
    for i in range(p):
        for j in range(i + 1):
            s = a[i, j]
            for k in range(j):
                s -= lo[i, k] * lo[j, k]
            if i == j:
                if not s > 0.0:
                    return False
                lo[i, i] = math.sqrt(s)
            else:
                lo[i, j] = s / lo[j, j]
    y = np.empty(p)
    for i in range(p):
        s = g[i]
        for k in range(i):
            s -= lo[i, k] * y[k]
        y[i] = s / lo[i, i]
    for i in range(p - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, p):
            s -= lo[k, i] * out[k]
        out[i] = s / lo[i, i]
    return True


@jit
def _model(
    coefs: np.ndarray,
    theta: np.ndarray,
    lin: np.ndarray,
    off: np.ndarray,
    trans: np.ndarray,
    size: int,
    grid_center: float,
    os_per_px: float,
    oversample: int,
    z0: float,
    dz: float,
    mu: np.ndarray,
    jac: np.ndarray,
    scratch: tuple[np.ndarray, ...],
) -> bool:  # pragma: no cover - compiled
    """Expected counts ``mu (K, S, S)`` (without read noise) and their Jacobian
    with respect to ``x, y, z, N`` in ``jac[..., :4]`` at ``theta`` (the
    background columns are plane indicators, never stored); ``False`` off the
    grid."""
    h, hx, hy, hz, a, az, b, bx, bz, w = scratch
    n_planes = coefs.shape[0]
    x = theta[0]
    y = theta[1]
    ph = theta[3]
    for k in range(n_planes):
        xk = lin[k, 0, 0] * x + lin[k, 0, 1] * y + off[k, 0]
        yk = lin[k, 1, 0] * x + lin[k, 1, 1] * y + off[k, 1]
        if not eval_plane(
            coefs[k],
            xk,
            yk,
            theta[2],
            size,
            grid_center,
            os_per_px,
            oversample,
            z0,
            dz,
            h,
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
            return False
        nt = ph * trans[k]
        l00 = lin[k, 0, 0]
        l01 = lin[k, 0, 1]
        l10 = lin[k, 1, 0]
        l11 = lin[k, 1, 1]
        bg = theta[4 + k]
        for i in range(size):
            for j in range(size):
                mu[k, i, j] = nt * h[i, j] + bg
                jac[k, i, j, 0] = nt * (hx[i, j] * l00 + hy[i, j] * l10)
                jac[k, i, j, 1] = nt * (hx[i, j] * l01 + hy[i, j] * l11)
                jac[k, i, j, 2] = nt * hz[i, j]
                jac[k, i, j, 3] = trans[k] * h[i, j]
    return True


@jit
def _loglik(
    data: np.ndarray, var: np.ndarray, mu: np.ndarray
) -> float:  # pragma: no cover - compiled
    """Poisson log-likelihood of ``data + var`` under ``mu + var`` (no constant)."""
    n_planes, size, _ = mu.shape
    s = 0.0
    for k in range(n_planes):
        for i in range(size):
            for j in range(size):
                m = mu[k, i, j] + var[k, i, j]
                d = data[k, i, j] + var[k, i, j]
                if d < 0.0:
                    d = 0.0
                s += d * math.log(m) - m
    return s


@jit
def _normal_equations(
    data: np.ndarray,
    var: np.ndarray,
    mu: np.ndarray,
    jac: np.ndarray,
    fisher: np.ndarray,
    grad: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fisher information ``sum J J^T / (mu + v)`` and score ``sum (d'/mu' - 1) J``."""
    n_planes, size, _, p = jac.shape
    for r in range(p):
        grad[r] = 0.0
        for c in range(p):
            fisher[r, c] = 0.0
    # the background columns are plane indicators: their sums are done apart
    for k in range(n_planes):
        ib = 4 + k
        for i in range(size):
            for j in range(size):
                m = mu[k, i, j] + var[k, i, j]
                d = data[k, i, j] + var[k, i, j]
                if d < 0.0:
                    d = 0.0
                inv = 1.0 / m
                res = d * inv - 1.0
                j0 = jac[k, i, j, 0]
                j1 = jac[k, i, j, 1]
                j2 = jac[k, i, j, 2]
                j3 = jac[k, i, j, 3]
                grad[0] += res * j0
                grad[1] += res * j1
                grad[2] += res * j2
                grad[3] += res * j3
                grad[ib] += res
                i0 = j0 * inv
                i1 = j1 * inv
                i2 = j2 * inv
                i3 = j3 * inv
                fisher[0, 0] += i0 * j0
                fisher[1, 0] += i1 * j0
                fisher[1, 1] += i1 * j1
                fisher[2, 0] += i2 * j0
                fisher[2, 1] += i2 * j1
                fisher[2, 2] += i2 * j2
                fisher[3, 0] += i3 * j0
                fisher[3, 1] += i3 * j1
                fisher[3, 2] += i3 * j2
                fisher[3, 3] += i3 * j3
                fisher[ib, 0] += i0
                fisher[ib, 1] += i1
                fisher[ib, 2] += i2
                fisher[ib, 3] += i3
                fisher[ib, ib] += inv
    for r in range(p):
        for c in range(r + 1, p):
            fisher[r, c] = fisher[c, r]


@jit
def _deviance(
    data: np.ndarray, var: np.ndarray, mu: np.ndarray
) -> float:  # pragma: no cover - compiled
    """Log-likelihood ratio ``2 sum (mu' - d' + d' ln(d'/mu'))`` (saturated model)."""
    n_planes, size, _ = mu.shape
    s = 0.0
    for k in range(n_planes):
        for i in range(size):
            for j in range(size):
                m = mu[k, i, j] + var[k, i, j]
                d = data[k, i, j] + var[k, i, j]
                if d > 0.0:
                    s += m - d + d * math.log(d / m)
                else:
                    s += m
    return 2.0 * s


@jit
def fit_range(
    start: int,
    stop: int,
    coefs: np.ndarray,
    data: np.ndarray,
    var: np.ndarray,
    lin: np.ndarray,
    off: np.ndarray,
    trans: np.ndarray,
    grid_center: float,
    os_per_px: float,
    oversample: int,
    z0: float,
    dz: float,
    lo: np.ndarray,
    hi: np.ndarray,
    step_max: np.ndarray,
    max_iter: int,
    tol_um: float,
    init_amplitudes: bool,
    theta: np.ndarray,
    crlb: np.ndarray,
    llr: np.ndarray,
    n_iter: np.ndarray,
    status: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fit emitters ``start:stop`` in place.

    One function of about 200 lines on purpose: it is the compiled hot loop of
    the refinement (every emitter's Levenberg-Marquardt iterations, the Fisher
    information, the step control and the bound), and its scratch arrays are
    allocated once per call and reused across emitters; split into compiled
    helpers, each call would pass about 20 arrays and allocate its own scratch
    per emitter.

    ``theta (N, P)`` holds the initial values and receives the estimates;
    ``lo, hi (P,)`` bound them; ``step_max (P,)`` bounds a step (the whole
    step is shortened until every parameter moves at most that far: far from
    focus the likelihood is flat in ``z`` and a full Newton step can jump to
    another maximum or the grid's edge). ``max_iter == 0`` evaluates the CRLB at the
    initial values only. ``init_amplitudes``: estimate photons and backgrounds
    first (backgrounds from each crop's border, photons from the sum).
    ``status``: 0 converged, 1 iteration limit, 2 off the PSF's grid,
    3 singular Fisher information.
    """
    n_planes = coefs.shape[0]
    size = data.shape[2]
    p = theta.shape[1]
    span = (size - 1) * oversample + 4
    scratch = (
        np.empty((size, size)),
        np.empty((size, size)),
        np.empty((size, size)),
        np.empty((size, size)),
        np.empty((span, span)),
        np.empty((span, span)),
        np.empty((span, size)),
        np.empty((span, size)),
        np.empty((span, size)),
        np.empty((6, 4)),
    )
    mu = np.empty((n_planes, size, size))
    jac = np.empty((n_planes, size, size, p))
    mu_new = np.empty((n_planes, size, size))
    jac_new = np.empty((n_planes, size, size, p))
    fisher = np.empty((p, p))
    grad = np.empty(p)
    damped = np.empty((p, p))
    step = np.empty(p)
    cur = np.empty(p)
    trial = np.empty(p)
    inv = np.empty((p, p))
    for m in range(start, stop):
        d = data[m]
        v = var[m]
        for q in range(p):
            cur[q] = min(max(theta[m, q], lo[q]), hi[q])
        # N = 1 first when the amplitudes are to be estimated
        if init_amplitudes:
            cur[3] = 1.0
        if not _model(
            coefs,
            cur,
            lin[m],
            off[m],
            trans,
            size,
            grid_center,
            os_per_px,
            oversample,
            z0,
            dz,
            mu,
            jac,
            scratch,
        ):
            status[m] = 2
            n_iter[m] = 0
            llr[m] = np.nan
            for q in range(p):
                theta[m, q] = cur[q]
                crlb[m, q] = np.nan
            continue
        if init_amplitudes:
            # photons and backgrounds: linear least squares at the initial
            # position (the crop's border misses the wings of defocused spots)
            na = 1 + n_planes
            ata = np.zeros((na, na))
            atb = np.zeros(na)
            for k in range(n_planes):
                for i in range(size):
                    for j in range(size):
                        hv = jac[k, i, j, 3]
                        dv = d[k, i, j]
                        ata[0, 0] += hv * hv
                        ata[0, 1 + k] += hv
                        ata[1 + k, 1 + k] += 1.0
                        atb[0] += hv * dv
                        atb[1 + k] += dv
            for k in range(n_planes):
                ata[1 + k, 0] = ata[0, 1 + k]
            amp = np.empty(na)
            if _solve(ata, atb, amp):
                for q in range(na):
                    cur[3 + q] = min(max(amp[q], lo[3 + q]), hi[3 + q])
            else:
                cur[3] = lo[3]
                for k in range(n_planes):
                    cur[4 + k] = lo[4 + k]
            # the model at these amplitudes, from the N = 1 evaluation
            for k in range(n_planes):
                for i in range(size):
                    for j in range(size):
                        mu[k, i, j] = cur[3] * jac[k, i, j, 3] + cur[4 + k]
                        jac[k, i, j, 0] *= cur[3]
                        jac[k, i, j, 1] *= cur[3]
                        jac[k, i, j, 2] *= cur[3]
        ll = _loglik(d, v, mu)
        lam = 1e-3
        it = 0
        st = 1
        while it < max_iter:
            it += 1
            _normal_equations(d, v, mu, jac, fisher, grad)
            accepted = False
            small = False
            for _ in range(12):
                for r in range(p):
                    for c in range(p):
                        damped[r, c] = fisher[r, c]
                    damped[r, r] = fisher[r, r] * (1.0 + lam)
                if not _solve(damped, grad, step):
                    lam *= 10.0
                    continue
                shrink = 1.0
                for q in range(p):
                    if abs(step[q]) * shrink > step_max[q]:
                        shrink = step_max[q] / abs(step[q])
                if shrink < 1.0:
                    for q in range(p):
                        step[q] *= shrink
                if (
                    lam <= 1e-3
                    and abs(step[0]) < tol_um
                    and abs(step[1]) < tol_um
                    and abs(step[2]) < tol_um
                    and abs(step[3]) < 1e-4 * cur[3]
                ):
                    # a nearly undamped step this small: converged where we
                    # are (evaluating it would only confirm that)
                    small = True
                    accepted = True
                    break
                for q in range(p):
                    trial[q] = min(max(cur[q] + step[q], lo[q]), hi[q])
                ok = _model(
                    coefs,
                    trial,
                    lin[m],
                    off[m],
                    trans,
                    size,
                    grid_center,
                    os_per_px,
                    oversample,
                    z0,
                    dz,
                    mu_new,
                    jac_new,
                    scratch,
                )
                if ok:
                    ll_new = _loglik(d, v, mu_new)
                    if ll_new >= ll:
                        accepted = True
                        # converged: moves below tol_um and 1e-4 of the photons
                        small = (
                            abs(trial[0] - cur[0]) < tol_um
                            and abs(trial[1] - cur[1]) < tol_um
                            and abs(trial[2] - cur[2]) < tol_um
                            and abs(trial[3] - cur[3]) < 1e-4 * cur[3]
                        )
                        for q in range(p):
                            cur[q] = trial[q]
                        mu, mu_new = mu_new, mu
                        jac, jac_new = jac_new, jac
                        ll = ll_new
                        lam = max(lam * 0.1, 1e-7)
                        break
                lam *= 10.0
            if not accepted or small:
                st = 0
                break
        _normal_equations(d, v, mu, jac, fisher, grad)
        for q in range(p):
            theta[m, q] = cur[q]
        n_iter[m] = it
        llr[m] = _deviance(d, v, mu)
        if _invert(fisher, inv):
            for q in range(p):
                crlb[m, q] = math.sqrt(inv[q, q]) if inv[q, q] > 0.0 else np.inf
            status[m] = st if max_iter > 0 else 0
        else:
            for q in range(p):
                crlb[m, q] = np.inf
            status[m] = 3

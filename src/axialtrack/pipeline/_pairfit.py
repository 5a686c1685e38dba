"""Two-emitter maximum-likelihood fit of one crop pair (crowded samples).

Two emitters closer than the crop size share their crops; a single-emitter fit
then lands between them and its likelihood ratio says it does not fit. As
DAOSTORM and SMAP's multi-emitter fitters do, :func:`fit_pairs` fits both at
once with the calibrated PSF:

    mu_kp = t_k (N_1 h_k(p - r_1, z_1) + N_2 h_k(p - r_2, z_2)) + b_k,

over ``(x_1, y_1, z_1, N_1, x_2, y_2, z_2, N_2, b_0, ..., b_{K-1})`` by Fisher
scoring with Levenberg-Marquardt damping (vectorized over the batch), under
Poisson noise plus read noise (the shifted-Poisson model of
:mod:`.refine`). :func:`split_start` starts the second emitter at the largest
residual of a single-emitter fit. The caller keeps the pair when its
log-likelihood ratio improves on the single fit's by more than the extra
parameters' cost (:data:`PAIR_LLR_GAIN`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from axialtrack.optics import SampledPSF

__all__ = [
    "PAIR_LLR_GAIN",
    "PairResult",
    "fit_pairs",
    "fit_pairs_multistart",
    "split_start",
]

#: ``dz`` starts (um) of the second emitter tried by :func:`fit_pairs_multistart`
#: besides the first emitter's: its own ``dz`` is unknown, and far from focus
#: the likelihood in ``dz`` has more than one maximum.
Z_STARTS_UM = (-0.5, 0.0, 0.5)

#: A pair replaces a single emitter when the likelihood-ratio statistic drops
#: by more than this (4 extra parameters; about their BIC cost on 2 x 15 x 15
#: pixels: 4 ln 450 = 24).
PAIR_LLR_GAIN = 24.0


@dataclass(frozen=True)
class PairResult:
    """``theta (N, 8 + K)``, ``llr (N,)`` against the saturated model,
    ``n_iter (N,)``, ``ok (N,)`` (both emitters on the PSF's grid)."""

    theta: np.ndarray
    llr: np.ndarray
    n_iter: np.ndarray
    ok: np.ndarray

    @property
    def xyz1(self) -> np.ndarray:
        return self.theta[:, 0:3]

    @property
    def xyz2(self) -> np.ndarray:
        return self.theta[:, 4:7]

    @property
    def photons(self) -> np.ndarray:
        """``(N, 2)`` plane-0 photons of each emitter."""
        return self.theta[:, [3, 7]]


def _model(
    psf: SampledPSF, theta: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mu (N, K, S, S)``, Jacobian ``(N, P, K, S, S)`` and on-grid flags."""
    n, k = theta.shape[0], psf.n_planes
    t = np.asarray(psf.transmission)[None, :, None, None]
    h1, d1, ok1 = psf.evaluate(theta[:, 0:3], size)
    h2, d2, ok2 = psf.evaluate(theta[:, 4:7], size)
    n1 = theta[:, 3][:, None, None, None]
    n2 = theta[:, 7][:, None, None, None]
    bg = theta[:, 8:][:, :, None, None]
    mu = t * (n1 * h1 + n2 * h2) + bg
    jac = np.zeros((n, 8 + k, k, size, size))
    for i in range(3):
        jac[:, i] = t * n1 * d1[..., i]
        jac[:, 4 + i] = t * n2 * d2[..., i]
    jac[:, 3] = t * h1
    jac[:, 7] = t * h2
    for j in range(k):
        jac[:, 8 + j, j] = 1.0
    return mu, jac, ok1 & ok2


def _loglik(d: np.ndarray, mu: np.ndarray, var: float) -> np.ndarray:
    m = np.maximum(mu + var, 1e-9)
    return np.sum(d * np.log(m) - m, axis=(1, 2, 3))


def fit_pairs(
    psf: SampledPSF,
    crops: np.ndarray,
    start1: np.ndarray,
    start2: np.ndarray,
    *,
    photons: np.ndarray | None = None,
    read_noise_e: float = 0.0,
    max_iter: int = 40,
) -> PairResult:
    """Fit two emitters to each crop pair.

    Parameters
    ----------
    psf
        The PSF of every plane (its patch covers the crops with room for the
        emitters' offsets: ``psf.max_shift_px(S)``).
    crops
        ``(N, K, S, S)`` photoelectrons, each crop centred on the same pixel in
        every plane (registered planes, identity geometry).
    start1, start2
        ``(N, 3)`` initial ``x, y`` (um from the central pixel's centre) and
        ``z`` of each emitter.
    photons
        ``(N,)`` total plane-0 photons of the pair to start from (default: the
        crops' excess over their border median), split evenly.
    read_noise_e
        Read noise, e- RMS.
    max_iter
        Iterations at most.
    """
    d = np.asarray(crops, dtype=np.float64)
    n, k, s, _ = d.shape
    var = float(read_noise_e) ** 2
    border = np.concatenate(
        [d[..., 0, :], d[..., -1, :], d[..., 1:-1, 0], d[..., 1:-1, -1]], axis=-1
    )
    bg0 = np.maximum(np.median(border, axis=-1), 1e-2)
    if photons is None:
        photons = np.maximum((d[:, 0] - bg0[:, 0, None, None]).sum(axis=(1, 2)), 10.0)
    theta = np.zeros((n, 8 + k))
    theta[:, 0:3] = start1
    theta[:, 4:7] = start2
    theta[:, 3] = theta[:, 7] = 0.5 * np.asarray(photons, float)
    theta[:, 8:] = bg0
    shift = psf.max_shift_px(s) * psf.pixel_size_um
    zlo, zhi = psf.z_range_um
    lo = np.array([-shift, -shift, zlo, 1.0] * 2 + [1e-3] * k)
    hi = np.array([shift, shift, zhi - 1e-9, 1e9] * 2 + [1e9] * k)
    theta = np.clip(theta, lo, hi)
    step_max = np.array([0.5 * psf.pixel_size_um] * 2 + [0.1, np.inf])
    step_max = np.concatenate([step_max, step_max, np.full(k, np.inf)])
    dp = d + var
    mu, jac, ok = _model(psf, theta, s)
    ll = _loglik(dp, mu, var)
    lam = np.full(n, 1e-3)
    n_iter = np.zeros(n, np.int32)
    active = ok.copy()
    for _ in range(int(max_iter)):
        if not active.any():
            break
        a = np.flatnonzero(active)
        w = 1.0 / np.maximum(mu[a] + var, 1e-9)
        jf = jac[a].reshape(a.size, 8 + k, -1)
        r = ((dp[a] - mu[a] - var) * w).reshape(a.size, -1)
        grad = np.einsum("npq,nq->np", jf, r)
        fisher = np.einsum("npq,nrq,nq->npr", jf, jf, w.reshape(a.size, -1))
        diag = np.einsum("npp->np", fisher)
        damped = fisher + lam[a, None, None] * diag[:, :, None] * np.eye(8 + k)
        try:
            step = np.linalg.solve(damped, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        scale = np.min(
            np.where(np.abs(step) > step_max, step_max / np.abs(step), 1.0), axis=1
        )
        new = np.clip(theta[a] + scale[:, None] * step, lo, hi)
        mu_n, jac_n, ok_n = _model(psf, new, s)
        ll_n = _loglik(dp[a], mu_n, var)
        better = ok_n & (ll_n >= ll[a])
        b = a[better]
        theta[b] = new[better]
        mu[b], jac[b], ll[b] = mu_n[better], jac_n[better], ll_n[better]
        lam[b] = np.maximum(lam[b] / 10.0, 1e-6)
        lam[a[~better]] *= 10.0
        n_iter[a] += 1
        moved = np.max(np.abs(scale[:, None] * step)[:, [0, 1, 2, 4, 5, 6]], axis=1)
        done = (better & (moved < 1e-4)) | (lam[a] > 1e6)
        active[a[done]] = False
    m = np.maximum(mu + var, 1e-9)
    xlogx = np.where(dp > 0, dp * np.log(np.maximum(dp, 1e-12) / m), 0.0)
    llr = 2.0 * np.sum(m - dp + xlogx, axis=(1, 2, 3))
    return PairResult(theta=theta, llr=llr, n_iter=n_iter, ok=ok)


def split_start(
    psf: SampledPSF,
    crops: np.ndarray,
    single: np.ndarray,
    photons: np.ndarray,
    background: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Starts of a pair fit from a single-emitter fit ``single (N, 3)``.

    The second emitter starts at the largest residual of the summed planes
    (data minus the single emitter's model), the first at the single fit moved
    as far the other way, both at the single fit's ``z``.
    """
    d = np.asarray(crops, dtype=np.float64)
    n, _, s, _ = d.shape
    mu = psf.expected(single, s, photons, background)
    res = (d - mu).sum(axis=1).reshape(n, -1)
    at = np.argmax(res, axis=1)
    iy, ix = np.divmod(at, s)
    c = s // 2
    p2 = np.column_stack([(ix - c), (iy - c)]).astype(float) * psf.pixel_size_um
    p1 = single[:, :2] - 0.5 * (p2 - single[:, :2])
    s1 = np.column_stack([p1, single[:, 2]])
    s2 = np.column_stack([p2, single[:, 2]])
    return s1, s2


def fit_pairs_multistart(
    psf: SampledPSF,
    crops: np.ndarray,
    start1: np.ndarray,
    start2: np.ndarray,
    **kwargs: Any,
) -> PairResult:
    """:func:`fit_pairs` from the second emitter at its start's ``dz`` and at
    each of :data:`Z_STARTS_UM`; per crop the fit of the best likelihood."""
    best: PairResult | None = None
    for z in (None, *Z_STARTS_UM):
        s2 = np.array(start2, dtype=float, copy=True)
        if z is not None:
            s2[:, 2] = z
        r = fit_pairs(psf, crops, start1, s2, **kwargs)
        if best is None:
            best = r
            continue
        take = r.ok & (~best.ok | (r.llr < best.llr))
        best = PairResult(
            theta=np.where(take[:, None], r.theta, best.theta),
            llr=np.where(take, r.llr, best.llr),
            n_iter=np.where(take, r.n_iter, best.n_iter),
            ok=best.ok | r.ok,
        )
    assert best is not None
    return best

"""Maximum-likelihood fit of the microscope's pupil to calibration bead stacks.

The PSF of a real microscope differs from the nominal :class:`PSFModel`: the
objective and the splitter add aberrations, the pupil is not uniformly
transmitting, the beads' depth and the refractive-index mismatch are not exactly
known, and the second plane has its own aberrations and transmission. This module
fits those, as the pupil-based inverse-modelling tools of the field do (uiPSF,
INSPR), to the crops of the accepted calibration beads.

The model of bead ``b``, frame ``k`` (stage position ``z_k``), plane ``p``::

    mu_bkp = N_b t_p h_p(x_b + dx_p, y_b + dy_p; depth, focus = z_k - s_b + p delta)
             + bg_bp,

with ``h_p`` the pixelated vectorial PSF of :class:`PSFModel` whose pupil carries

- the index-mismatch phase of an emitter at the fitted ``depth`` (shared by the
  beads) in the nominal sample medium,
- Zernike phase ``2 pi sum_j a_j Z_j`` (Noll 5-15 by default: astigmatism, coma,
  trefoil, spherical, secondary astigmatism, quadrafoil), plus ``d_j`` for plane
  1 (the splitter's relative aberrations),
- the amplitude ``exp(sum_j c_j Z_j)`` (Noll 2, 3, 4, 11 by default:
  apodization, a linear and a radial fall-off),

``t_0 = 1``, ``t_1`` the plane-1 transmission, ``delta`` the plane offset,
``(dx_1, dy_1)`` the bead's registered sub-pixel position in plane 1 plus one
fitted shift, and per bead ``x_b, y_b`` (um from the crop centre), ``s_b`` (the
stage position of the coverslip under the bead), ``N_b`` photons and a background
per plane. Piston, tilt and defocus of the pupil phase are the bead positions.

Noise: camera counts are converted to photoelectrons with the camera's offset and
gain; Poisson shot noise plus Gaussian read noise of variance ``sigma^2`` is
approximated by the shifted Poisson model (``x + sigma^2 ~ Poisson(mu +
sigma^2)``, Huang et al. 2013), with an sCMOS per-pixel map when given. The
fitted quantity is the Poisson deviance, minimized by L-BFGS (strong Wolfe line
search) with torch autograd, batched over all crops.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from axialtrack.errors import AxialtrackError

from ._fitcore import (
    MIN_BEADS,
    MIN_PHOTONS,
    OUTLIER_MAD,
    OUTLIER_RATIO,
    _Data,
    _deviance,
    _initial,
    _model_counts,
    _outliers,
    _Params,
    _per_bead,
    _prepare,
)
from ._fitresult import PSFFit, fit_crlb
from ._pupil import PupilPSF, phase_rms_error_waves
from .params import Optics

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MIN_BEADS",
    "MIN_PHOTONS",
    "OUTLIER_MAD",
    "OUTLIER_RATIO",
    "FitConfig",
    "PSFFit",
    "PSFFitError",
    "PupilPSF",
    "fit_beads",
    "fit_crlb",
    "heldout_nll",
    "phase_rms_error_waves",
]


class PSFFitError(AxialtrackError, ValueError):
    """The beads cannot give a trustworthy PSF fit (too few, dim, not converged)."""


class FitConfig(BaseModel):
    """Settings of :func:`fit_beads`.

    Parameters
    ----------
    phase_noll
        Noll indices of the fitted Zernike phase (both planes).
    plane1_noll
        Noll indices of plane 1's relative phase.
    amplitude_noll
        Noll indices of the pupil amplitude ``exp(sum c_j Z_j)``.
    fit_depth
        Fit the beads' depth (index mismatch); otherwise it stays at ``depth_um``.
        Not fitted when the sample's index equals the immersion's (it is then
        the same as a focus shift).
    depth_um
        Starting (or fixed) bead depth above the coverslip, um.
    dz_range_um
        Frames within this distance of a bead's reference Z are fitted.
    max_frames
        At most this many frames per bead (evenly spread over the range).
    max_beads
        At most this many beads (the brightest).
    max_iter
        L-BFGS iterations of the joint fit, at most.
    tolerance
        Converged when the total deviance (twice the negative log-likelihood)
        drops by less than this over five L-BFGS iterations: 2 is a change of
        the log-likelihood by 1, statistically nothing.
    exclude_outliers
        Refit without the beads flagged as outliers.
    pupil_samples, oversample
        Sampling of the model (see :class:`Optics`).
    chunk
        Crops per batch of matrix products (memory).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase_noll: tuple[int, ...] = tuple(range(5, 16))
    plane1_noll: tuple[int, ...] = tuple(range(5, 16))
    amplitude_noll: tuple[int, ...] = (2, 3, 4, 11)
    fit_depth: bool = True
    depth_um: float = Field(0.05, ge=0.0)
    dz_range_um: float = Field(1.0, gt=0.0)
    max_frames: int = Field(15, ge=5)
    max_beads: int = Field(50, ge=MIN_BEADS)
    max_iter: int = Field(150, ge=1)
    tolerance: float = Field(2.0, gt=0.0)
    exclude_outliers: bool = True
    pupil_samples: int = Field(64, ge=16)
    oversample: int = Field(3, ge=1)
    chunk: int = Field(256, ge=1)


# ------------------------------------------------------------------ fitting
def fit_beads(
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    optics: Optics,
    plane_offset_um: float,
    camera: dict[str, float],
    config: FitConfig | None = None,
    read_noise_map: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> PSFFit:
    """Fit the pupil to bead crops by maximum likelihood.

    Parameters
    ----------
    crops_adu
        ``(R, 2, S, S)`` raw camera counts, one row per (bead, frame): plane 0
        cropped on the bead's pixel, plane 1 on its registered pixel (the
        calibration's :class:`~axialtrack.calibrate.Examples`).
    stage_z_um, bead, ref_z_um
        ``(R,)`` stage position of each row's frame, its bead id, and the bead's
        reference Z (stage frame, plane 0 in focus).
    positions_px
        Bead id -> ``(x0, y0, x1, y1)``: the bead's sub-pixel position in plane 0
        and its registered position in plane 1 (pixels; the crops are centred on
        the rounded positions).
    optics
        Nominal optics (pixel size, NA, wavelength, immersion and sample index).
    plane_offset_um
        Nominal plane offset (fitted from there).
    camera
        ``{"offset_adu", "e_per_adu", "read_noise_e"}``.
    config
        :class:`FitConfig`.
    read_noise_map
        sCMOS read noise (e- RMS) per crop pixel, broadcastable to ``crops_adu``
        (e.g. ``(R, 2, S, S)`` cut from the camera's map with the crops).
    dtype
        Torch dtype of the model (float32 is about twice as fast as float64).
    progress
        Called with a line of text after each stage.

    Raises
    ------
    PSFFitError
        Fewer than :data:`MIN_BEADS` beads, median photons below
        :data:`MIN_PHOTONS`, or no convergence within ``config.max_iter``
        iterations.
    """
    cfg = config or FitConfig()
    t0 = time.perf_counter()
    size = int(crops_adu.shape[-1])
    optics = optics.model_copy(
        update={
            "zernike": {},
            "pupil_samples": cfg.pupil_samples,
            "oversample": cfg.oversample,
        }
    )
    pix = optics.pixel_size_um
    if optics.n_sample == optics.n_immersion:
        # index-matched: the depth only shifts the focus, which the beads' Z does
        cfg = cfg.model_copy(update={"fit_depth": False})
    data = _prepare(
        np.asarray(crops_adu),
        np.asarray(stage_z_um, float),
        np.asarray(bead),
        np.asarray(ref_z_um, float),
        positions_px,
        camera,
        pix,
        cfg,
        read_noise_map,
        dtype,
    )
    nb = int(data.bead_ids.size)
    if nb < MIN_BEADS:
        raise PSFFitError(
            f"the PSF fit needs at least {MIN_BEADS} beads with frames within "
            f"{cfg.dz_range_um} um of focus; got {nb} (use more fields or "
            "calibrate --no-psf-fit)"
        )
    phase_all = tuple(sorted(set(cfg.phase_noll) | set(cfg.plane1_noll)))
    mdl = PupilPSF(optics, phase_all, cfg.amplitude_noll, dtype=dtype)
    p1_index = torch.tensor(
        [phase_all.index(j) for j in cfg.plane1_noll], dtype=torch.long
    )
    focus_init = float(mdl.base.in_focus_offset(cfg.depth_um))
    init = _initial(data, size, pix, 1.0, focus_init)
    med_ph = float(np.median(init["photons"]))
    if med_ph < MIN_PHOTONS:
        raise PSFFitError(
            f"the beads are too dim for a PSF fit: median {med_ph:.0f} photons per "
            f"bead in plane 0, need {MIN_PHOTONS:.0f} (longer exposure, brighter "
            "beads, or calibrate --no-psf-fit)"
        )
    init["depth"] = cfg.depth_um
    init["delta"] = plane_offset_um
    phase_mask = torch.tensor([j in cfg.phase_noll for j in phase_all], dtype=dtype)
    n_pix_total = float(data.counts.numel())
    d01 = torch.as_tensor(data.d01_um, dtype=dtype)

    prob = _Problem(mdl, data, p1_index, d01, size, cfg, phase_mask, n_pix_total)

    def run(
        active: list[int], max_iter: int, stage: str, prm: _Params, tol: float
    ) -> tuple[bool, int, list[float], str]:
        return _lbfgs(prob, prm, active, active_rows, max_iter, stage, tol)

    prm = _Params(
        nb, len(phase_all), len(cfg.plane1_noll), len(cfg.amplitude_noll), init, dtype
    )
    n_glob = len(prm.globals_())
    local_idx = list(range(n_glob, n_glob + 4))
    glob_idx = [0, 1, 2, 4, 5, 6] + ([3] if cfg.fit_depth else [])
    used = np.ones(nb, dtype=bool)
    active_rows = torch.arange(data.counts.shape[0])
    # 1. the beads with the nominal pupil, 2. everything jointly on every third
    # frame (coarse: most of the way at a third of the cost), 3. on all frames
    rank = torch.zeros(data.counts.shape[0], dtype=torch.long)
    for i in range(nb):
        sel = torch.nonzero(data.bead_idx == i).reshape(-1)
        rank[sel] = torch.arange(sel.numel())
    all_rows = torch.arange(data.counts.shape[0])
    active_rows = torch.nonzero(rank % 3 == 0).reshape(-1)
    _, it1, h1, _ = run(local_idx, 5, "beads", prm, 10 * cfg.tolerance)
    if progress:
        progress(f"PSF fit: beads placed ({it1} iterations, {h1[-1]:.3f} dev/px)")
    _, it2, h2, _ = run(
        glob_idx + local_idx, cfg.max_iter, "coarse", prm, cfg.tolerance / 3
    )
    if progress:
        progress(
            f"PSF fit: pupil on a third of the frames ({it2} iterations, "
            f"{h2[-1]:.3f} dev/px)"
        )
    active_rows = all_rows
    ok, it3, h3, msg = run(
        glob_idx + local_idx, cfg.max_iter, "joint", prm, cfg.tolerance
    )
    if progress:
        progress(f"PSF fit: pupil fitted ({it3} iterations, {h3[-1]:.3f} dev/px)")
    it2 += it3
    h2 += h3
    per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    outlier = _outliers(per["reduced_deviance"])
    n_iter = it1 + it2
    hist = h1 + h2
    if cfg.exclude_outliers and outlier.any() and (~outlier).sum() >= MIN_BEADS:
        used = ~outlier
        keep = torch.as_tensor(used)[data.bead_idx]
        active_rows = torch.nonzero(keep).reshape(-1)
        ok, it3, h3, msg = run(
            glob_idx + local_idx, cfg.max_iter, "refit", prm, cfg.tolerance
        )
        n_iter += it3
        hist += h3
        if progress:
            progress(
                f"PSF fit: refitted without {int(outlier.sum())} outlier bead(s) "
                f"({it3} iterations)"
            )
        per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    if not ok:
        raise PSFFitError(
            f"the PSF fit did not converge within {cfg.max_iter} L-BFGS iterations "
            f"(deviance tolerance {cfg.tolerance:g}; {msg}); check the beads "
            "(drift, doublets) or calibrate --no-psf-fit"
        )
    return _result(
        prm,
        data,
        per,
        outlier,
        used,
        optics=optics,
        cfg=cfg,
        phase_all=phase_all,
        phase_mask=phase_mask,
        camera=camera,
        size=size,
        converged=ok,
        n_iter=n_iter,
        time_s=time.perf_counter() - t0,
        history=hist,
        message=msg,
    )


@dataclass(frozen=True)
class _Problem:
    """What every L-BFGS stage of :func:`fit_beads` evaluates."""

    mdl: PupilPSF
    data: _Data
    p1_index: torch.Tensor
    d01: torch.Tensor
    size: int
    cfg: FitConfig
    phase_mask: torch.Tensor
    n_pix_total: float


def _lbfgs(
    prob: _Problem,
    prm: _Params,
    active: list[int],
    rows_all: torch.Tensor,
    max_iter: int,
    stage: str,
    tol: float,
) -> tuple[bool, int, list[float], str]:
    """One L-BFGS stage over the ``active`` parameter groups and ``rows_all``.

    Returns (converged, iterations, reduced deviance per step, why it stopped).
    """
    cfg, data, n_pix_total = prob.cfg, prob.data, prob.n_pix_total
    params = prm.globals_() + prm.locals_()
    use = [params[i] for i in range(len(params)) if i in active]
    for i, q in enumerate(params):
        q.requires_grad_(i in active)
    opt = torch.optim.LBFGS(
        use,
        lr=1.0,
        max_iter=5,
        history_size=30,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )
    n_pix_rows = float(rows_all.numel() * 2 * prob.size * prob.size)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, rows_all.numel(), cfg.chunk):
            r = rows_all[i : i + cfg.chunk]
            mu = _model_counts(
                prob.mdl,
                prm,
                data,
                r,
                prob.p1_index,
                prob.d01,
                prob.size,
                cfg.fit_depth,
            )
            dev = _deviance(mu, data.counts[r], data.var[r]).sum() / n_pix_total
            dev.backward()
            total = total + dev.detach()
        with torch.no_grad():
            if prm.phase.grad is not None:
                prm.phase.grad *= prob.phase_mask
        return total

    hist: list[float] = []
    prev = math.inf
    msg = f"{stage}: iteration limit ({max_iter})"
    done = 0
    while done < max_iter:
        loss = float(opt.step(closure))
        state = opt.state[use[0]]
        done = int(state.get("n_iter", done + 1))
        if not math.isfinite(loss):
            return False, done, hist, f"{stage}: the deviance became {loss}"
        hist.append(loss * n_pix_total / max(n_pix_rows, 1.0))
        if abs(prev - loss) * n_pix_total <= tol:
            msg = f"{stage}: deviance change below {tol:g} over 5 iterations"
            return True, done, hist, msg
        prev = loss
    return False, done, hist, msg


def _result(
    prm: _Params,
    data: _Data,
    per: dict[str, np.ndarray],
    outlier: np.ndarray,
    used: np.ndarray,
    *,
    optics: Optics,
    cfg: FitConfig,
    phase_all: tuple[int, ...],
    phase_mask: torch.Tensor,
    camera: dict[str, float],
    size: int,
    converged: bool,
    n_iter: int,
    time_s: float,
    history: list[float],
    message: str,
) -> PSFFit:
    """The :class:`PSFFit` of fitted parameters and per-bead results."""
    with torch.no_grad():
        phase = (prm.phase * prm.S_PHASE).double().numpy() * phase_mask.double().numpy()
        p1 = (prm.p1 * prm.S_PHASE).double().numpy()
        amp = (prm.amp * prm.S_AMP).double().numpy()
        depth_raw = float(prm.depth.detach()) * prm.S_DEPTH
        depth = (
            float(torch.nn.functional.softplus(torch.tensor(depth_raw * 50.0)) / 50.0)
            if cfg.fit_depth
            else depth_raw
        )
        s = prm.s0.numpy() + (prm.s * prm.S_Z).double().numpy()
        xy = (prm.xy * prm.S_XY).double().numpy()
        shift = (prm.shift * prm.S_SHIFT).double().numpy()
    focus_dz0 = float(np.median((data.ref_z - s)[used]))
    beads = pd.DataFrame(
        {
            "bead": data.bead_ids,
            "x_um": xy[:, 0],
            "y_um": xy[:, 1],
            "coverslip_um": s,
            "photons": per["photons"],
            "background0": per["bg"][:, 0],
            "background1": per["bg"][:, 1],
            "nll": per["nll"],
            "deviance": per["deviance"],
            "reduced_deviance": per["reduced_deviance"],
            "outlier": outlier,
            "used": used,
            "n_frames": per["n_frames"],
            "dx1_um": data.d01_um[:, 0],
            "dy1_um": data.d01_um[:, 1],
        }
    )
    return PSFFit(
        optics=optics,
        phase_noll=tuple(cfg.phase_noll),
        plane1_noll=tuple(cfg.plane1_noll),
        amplitude_noll=tuple(cfg.amplitude_noll),
        zernike={j: float(phase[phase_all.index(j)]) for j in cfg.phase_noll},
        plane1_zernike={j: float(p1[i]) for i, j in enumerate(cfg.plane1_noll)},
        amplitude={j: float(amp[i]) for i, j in enumerate(cfg.amplitude_noll)},
        depth_um=depth,
        plane_offset_um=float(prm.delta0 + float(prm.delta.detach()) * prm.S_DELTA),
        transmission=float(math.exp(float(prm.logt.detach()) * prm.S_LOGT)),
        plane1_shift_um=(float(shift[0]), float(shift[1])),
        focus_dz0_um=focus_dz0,
        crop_size=size,
        beads=beads,
        converged=converged,
        n_iter=n_iter,
        time_s=time_s,
        history=history,
        camera={
            "offset_adu": float(camera["offset_adu"]),
            "e_per_adu": float(camera["e_per_adu"]),
            "read_noise_e": float(camera.get("read_noise_e", 0.0)),
        },
        message=message,
    )


def heldout_nll(
    fit: PSFFit,
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    config: FitConfig | None = None,
) -> float:
    """Negative log-likelihood of held-out beads under a fitted PSF.

    The pupil stays fixed; each held-out bead's position, photons and
    backgrounds are fitted (L-BFGS), as a localization would. Returns the total
    NLL (shifted Poisson, photoelectrons) over the beads' fitted frames.
    """
    cfg = (config or FitConfig()).model_copy(update={"exclude_outliers": False})
    data = _prepare(
        np.asarray(crops_adu),
        np.asarray(stage_z_um, float),
        np.asarray(bead),
        np.asarray(ref_z_um, float),
        positions_px,
        fit.camera,
        fit.optics.pixel_size_um,
        cfg,
        None,
        torch.float32,
    )
    phase_all = tuple(sorted(set(fit.phase_noll) | set(fit.plane1_noll)))
    mdl = PupilPSF(fit.optics, phase_all, fit.amplitude_noll)
    p1_index = torch.tensor([phase_all.index(j) for j in fit.plane1_noll])
    size = int(crops_adu.shape[-1])
    focus0 = fit.focus_dz0_um
    init = _initial(data, size, fit.optics.pixel_size_um, fit.transmission, focus0)
    init["depth"] = fit.depth_um
    init["delta"] = fit.plane_offset_um
    init["transmission"] = fit.transmission
    prm = _Params(
        data.bead_ids.size,
        len(phase_all),
        len(fit.plane1_noll),
        len(fit.amplitude_noll),
        init,
        torch.float32,
    )
    with torch.no_grad():
        prm.phase.copy_(
            torch.tensor([fit.zernike.get(j, 0.0) for j in phase_all]) / prm.S_PHASE
        )
        prm.p1.copy_(
            torch.tensor([fit.plane1_zernike[j] for j in fit.plane1_noll]) / prm.S_PHASE
        )
        prm.amp.copy_(
            torch.tensor([fit.amplitude[j] for j in fit.amplitude_noll]) / prm.S_AMP
        )
        prm.shift.copy_(torch.tensor(fit.plane1_shift_um) / prm.S_SHIFT)
    for q in prm.globals_():
        q.requires_grad_(False)
    d01 = torch.as_tensor(data.d01_um, dtype=torch.float32)
    n_pix = float(data.counts.numel())
    opt = torch.optim.LBFGS(
        prm.locals_(), max_iter=1, history_size=20, line_search_fn="strong_wolfe"
    )
    rows = torch.arange(data.counts.shape[0])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, rows.numel(), cfg.chunk):
            r = rows[i : i + cfg.chunk]
            mu = _model_counts(mdl, prm, data, r, p1_index, d01, size, False)
            dev = _deviance(mu, data.counts[r], data.var[r]).sum() / n_pix
            dev.backward()
            total = total + dev.detach().double()
        return total

    prev = math.inf
    for _ in range(cfg.max_iter):
        loss = float(opt.step(closure))
        if abs(prev - loss) <= cfg.tolerance * abs(loss) + 1e-12:
            break
        prev = loss
    per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    return float(per["nll"].sum())

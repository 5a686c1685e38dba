"""Per-localization uncertainty and MLE refinement of a localizer's batch.

Every row gets the Cramer-Rao bound at its values (:func:`_bounds`); the rows
the budget allows are refined by MLE on both planes (:func:`_fit`: the larger
window far from focus, the sCMOS maps where given), and a few isolated rows are
fitted for the PSF check (:mod:`.psfcheck`); :func:`_apply` writes the refined
values over the network's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from axialtrack.geometry import apply_affine

from .crops import crop_centers, crop_pairs

if TYPE_CHECKING:
    from .localize import Localizer, PreparedBatch
    from .refine import RefineResult

__all__ = ["uncertainty"]


def uncertainty(
    loc: Localizer,
    batch: PreparedBatch,
    xy0: np.ndarray,
    dz: np.ndarray,
    photons: np.ndarray,
    background: np.ndarray,
    sigma_z: np.ndarray,
) -> dict[str, np.ndarray]:
    """CRLB of every row, the MLE refinement of those the budget allows, and
    the PSF check (:mod:`.psfcheck`) of a few isolated ones.

    Returns the (possibly refined) ``xy0, dz, photons, background,
    sigma_z_um`` and the columns ``sigma_xy_um, llr, refined, misfit,
    psf_check``.
    """
    from .psfcheck import NOT_CHECKED, classify
    from .refine import CONVERGED, ITERATION_LIMIT

    cfg = loc.config
    n = xy0.shape[0]
    out: dict[str, np.ndarray] = {
        "xy0": xy0,
        "dz": dz,
        "photons": photons,
        "background": background,
        "sigma_z_um": sigma_z,
        "sigma_xy_um": np.full(n, np.nan),
        "llr": np.full(n, np.nan),
        "refined": np.zeros(n, dtype=bool),
        "misfit": np.zeros(n, dtype=bool),
        "psf_check": np.full(n, NOT_CHECKED, dtype=np.int8),
    }
    if loc.psf is None or n == 0 or not (cfg.uncertainty or cfg.refine):
        return out
    xyz, offs, c0, read_noise = _bounds(loc, batch, xy0, dz, photons, background, out)
    idx = _budgeted(loc, batch, dz, photons)
    chk = check_rows(loc, batch, dz, idx)
    fit = np.union1d(idx, chk)
    if fit.size == 0:
        return out
    res = _fit(loc, batch, fit, xyz, offs, read_noise)
    good = np.isin(res.status, (CONVERGED, ITERATION_LIMIT)) & np.all(
        np.isfinite(res.crlb[:, :3]), axis=1
    )
    if chk.size:
        at = np.searchsorted(fit, chk)
        out["psf_check"][chk] = classify(
            res.llr[at],
            np.broadcast_to(res.dof, fit.shape)[at],
            dz[chk],
            res.z_um[at],
            res.crlb[at, 2],
            good[at],
            cfg.psf_check,
        )
    if idx.size:
        _apply(loc, out, res, fit, idx, good, c0)
    return out


def _bounds(
    loc: Localizer,
    batch: PreparedBatch,
    xy0: np.ndarray,
    dz: np.ndarray,
    photons: np.ndarray,
    background: np.ndarray,
    out: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The bound at every row's values into ``out``; the rows' start ``xyz``,
    plane offsets, plane-0 crop centres and the scalar read noise (e-)."""
    from .refine import crlb_at

    psf = loc.psf
    assert psf is not None
    cam = loc.config.camera
    n = xy0.shape[0]
    pix = loc.pixel_size_um
    c0, c1 = crop_centers(batch.xy_px, loc.affine)
    offs = np.zeros((n, 2, 2))
    offs[:, 1] = (apply_affine(loc.affine, c0) - c1) * pix
    xyz = np.empty((n, 3))
    xyz[:, :2] = (xy0 - c0) * pix
    zlo, zhi = psf.z_range_um
    xyz[:, 2] = np.clip(np.nan_to_num(dz, nan=0.0), zlo, zhi - 1e-6)
    # photoelectrons: the Poisson counts; read noise plus ADU rounding
    rn = float(getattr(cam, "read_noise_e", 0.0) or 0.0)
    read_noise = float(np.sqrt(rn**2 + cam.e_per_adu**2 / 12.0))
    b0 = np.maximum(background * cam.qe, 1e-3)
    if batch.background1_adu is not None:
        b1 = np.maximum((batch.background1_adu - cam.offset_adu) * cam.e_per_adu, 1e-3)
    else:
        b1 = b0
    bound = crlb_at(
        psf,
        xyz,
        np.maximum(photons * cam.qe, 1.0),
        np.stack([b0, b1], axis=1),
        size=loc.refine_size_px,
        read_noise_e=read_noise,
        linear=loc.affine[:, :2],
        offsets_um=offs,
    )
    bound[~np.isfinite(dz)] = np.nan
    sigma_z = out["sigma_z_um"]
    out["sigma_z_um"] = np.where(np.isfinite(sigma_z), sigma_z, bound[:, 2])
    out["sigma_xy_um"] = np.sqrt(0.5 * (bound[:, 0] ** 2 + bound[:, 1] ** 2))
    return xyz, offs, c0, read_noise


def _budgeted(
    loc: Localizer, batch: PreparedBatch, dz: np.ndarray, photons: np.ndarray
) -> np.ndarray:
    """Rows to refine: every finite one, or the brightest the budget allows."""
    cfg = loc.config
    if not cfg.refine:
        return np.zeros(0, np.int64)
    idx = np.flatnonzero(np.isfinite(dz))
    if cfg.refine_budget_frame_s is not None:
        budget = cfg.refine_budget_frame_s * len(batch.frames)
        k = int(budget / max(loc._s_per_refine, 1e-7))
        if k < idx.size:
            idx = idx[np.argsort(-photons[idx], kind="stable")[:k]]
            idx.sort()
    return idx


def _fit(
    loc: Localizer,
    batch: PreparedBatch,
    fit: np.ndarray,
    xyz: np.ndarray,
    offs: np.ndarray,
    read_noise: float,
) -> RefineResult:
    """MLE of the rows ``fit``: the larger window far from focus, and each
    pixel's own offset, gain and read noise where there are camera maps."""
    from .refine import far_from_focus, mle_refine_sized

    psf = loc.psf
    assert psf is not None
    cfg = loc.config
    cam = cfg.camera
    t0 = time.perf_counter()
    sizes = np.where(
        far_from_focus(psf, xyz[fit, 2], cfg.refine_far_um),
        loc.refine_far_size_px,
        loc.refine_size_px,
    )
    big = int(sizes.max())
    lo = loc.crop_size // 2 - big // 2
    win = batch.pairs[fit, :, lo : lo + big, lo : lo + big].astype(np.float64)
    rn_fit: float | np.ndarray = read_noise
    if loc._maps_stacked is None:
        data = (win - cam.offset_adu) * cam.e_per_adu
    else:
        # each pixel its own offset, gain and read noise (sCMOS maps)
        maps = map_crops(loc, batch.xy_px[fit])[..., lo : lo + big, lo : lo + big]
        data = (win - maps[0]) * maps[1]
        rn_fit = np.sqrt(maps[2] ** 2 + maps[1] ** 2 / 12.0)
    res = mle_refine_sized(
        psf,
        data,
        xyz[fit],
        sizes,
        read_noise_e=rn_fit,
        linear=loc.affine[:, :2],
        offsets_um=offs[fit],
        max_iter=cfg.refine_iterations,
        threads=cfg.refine_threads,
    )
    dt = time.perf_counter() - t0
    loc._s_per_refine = 0.5 * loc._s_per_refine + 0.5 * dt / fit.size
    return res


def _apply(
    loc: Localizer,
    out: dict[str, np.ndarray],
    res: RefineResult,
    fit: np.ndarray,
    idx: np.ndarray,
    good: np.ndarray,
    c0: np.ndarray,
) -> None:
    """The refined values of the rows ``idx`` that converged, over ``out``'s."""
    qe = loc.config.camera.qe
    keep = np.isin(fit, idx) & good
    sel = fit[keep]
    th = res.theta[keep]
    new = {k: out[k].astype(float).copy() for k in ("xy0", "photons", "background")}
    new["xy0"][sel] = c0[sel] + th[:, :2] / loc.pixel_size_um
    new["photons"][sel] = th[:, 3] / qe
    new["background"][sel] = th[:, 4] / qe
    for k in ("dz", "sigma_z_um", "sigma_xy_um"):
        new[k] = out[k].copy()
    new["dz"][sel] = th[:, 2]
    new["sigma_z_um"][sel] = res.crlb[keep, 2]
    new["sigma_xy_um"][sel] = res.sigma_xy_um[keep]
    out["llr"][sel] = res.llr[keep]
    out["misfit"][sel] = res.p_value()[keep] < loc.config.misfit_p
    out["refined"][sel] = True
    out.update(new)
    loc.timings["refined"] += int(sel.size)


def map_crops(loc: Localizer, xy_px: np.ndarray) -> np.ndarray:
    """``(3, N, 2, S, S)`` offset, gain and read noise (e-) of each row's
    crops, cut from the camera maps where the pairs were cut."""
    assert loc._maps_stacked is not None
    k = xy_px.shape[0]
    return np.stack(
        [
            crop_pairs(
                loc._maps_stacked,
                xy_px,
                loc.affine,
                loc.crop_size,
                frame_index=np.full(k, j),
            )[0]
            for j in range(3)
        ]
    )


def check_rows(
    loc: Localizer, batch: PreparedBatch, dz: np.ndarray, refined: np.ndarray
) -> np.ndarray:
    """Rows of the PSF check (:func:`.psfcheck.select_isolated`): isolated,
    unsaturated, network ``dz`` in the calibrated range."""
    from .psfcheck import select_isolated

    cfg = loc.config.psf_check
    usable = np.isfinite(dz)
    if loc.z_range_um is not None:
        m = loc.config.range_margin_um
        usable &= (dz >= loc.z_range_um[0] + m) & (dz <= loc.z_range_um[1] - m)
    n = dz.size
    peak = batch.pairs.reshape(n, -1).max(axis=1)
    usable &= peak < loc.config.saturation_adu
    sep = cfg.min_separation_px
    return select_isolated(
        batch.neighbour_px,
        usable,
        min_separation_px=float(loc.refine_size_px if sep is None else sep),
        already=refined,
        per_batch=cfg.per_batch,
    )

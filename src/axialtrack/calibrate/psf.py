"""The calibration's fitted PSF: the pupil fit to the accepted beads, and its storage.

:func:`fit_psf` fits :mod:`axialtrack.optics.fit`'s pupil model to the training
examples of a :class:`~axialtrack.calibrate.CalibrationResult` (the accepted
beads' crops within ``dz_range_um`` of focus). :func:`write_psf` stores the result
in the calibration run's ``psf/`` group: the parameters and per-bead results as
JSON (attribute ``axialtrack_psf``) and the model sampled on a ``dz`` grid
(``psf/dz_um``, ``psf/stack`` of shape ``(2, Z, S, S)``, the fraction of each
plane's photons per pixel of a centred emitter). :func:`read_psf` reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr

from axialtrack.optics import Optics, SplineConfig, SplinePSFFit, load_psf_fit
from axialtrack.optics.fit import MIN_BEADS, FitConfig, PSFFit, fit_beads

if TYPE_CHECKING:
    from collections.abc import Callable

    from axialtrack.optics import SampledPSF

    from .analysis import CalibrationResult
    from .stack import CalibrationStack

__all__ = [
    "PSF_ATTR",
    "PSF_GROUP",
    "PSF_MODELS",
    "camera_of",
    "choose_psf",
    "fit_psf",
    "heldout_scores",
    "read_psf",
    "write_psf",
]

#: Values of ``calibrate --psf-model``.
PSF_MODELS = ("auto", "pupil", "spline")
#: The spline replaces the pupil only when its held-out negative log-likelihood
#: is lower by more than this per held-out frame (both planes): a tie keeps the
#: pupil, which extrapolates beyond the beads' Z range and carries aberrations.
SPLINE_MARGIN_PER_FRAME = 1.0
#: Every this-many-th bead (by id) is held out when the models are compared.
HELDOUT_EVERY = 4

PSF_GROUP = "psf"
PSF_ATTR = "axialtrack_psf"
#: dz grid of the stored sampled PSF: step, um.
SAMPLED_STEP_UM = 0.05


def camera_of(meta: dict[str, Any]) -> dict[str, float]:
    """Offset (ADU), gain (e-/ADU) and read noise (e-) from a stack's metadata.

    Without a gain the counts are taken as photoelectrons above the offset (0
    when not given either): the fit's shape is then right, its noise model only
    approximately.
    """
    gain = meta.get("e_per_adu", meta.get("gain_e_per_adu"))
    return {
        "offset_adu": float(meta.get("offset_adu", 0.0)),
        "e_per_adu": float(gain) if gain is not None else 1.0,
        "read_noise_e": float(meta.get("read_noise_e", 0.0)),
    }


def fit_psf(
    result: CalibrationResult,
    stack: CalibrationStack,
    *,
    optics: Optics | None = None,
    config: FitConfig | None = None,
    progress: Callable[[str], None] | None = None,
    beads: np.ndarray | None = None,
) -> PSFFit:
    """Fit the pupil to the accepted beads of an analyzed calibration.

    Parameters
    ----------
    result
        The analysis (its examples and bead table).
    stack
        The stack analyzed (pixel size, plane offset, camera metadata).
    optics
        Nominal optics; the defaults of :class:`Optics` with the stack's pixel
        size when omitted.
    config
        Fit settings.
    progress
        Called with a line of text after each stage of the fit.
    beads
        Fit only these accepted beads (default: all).

    Raises
    ------
    axialtrack.optics.fit.PSFFitError
        Too few or too dim beads, or no convergence.
    """
    o = optics or Optics()
    o = o.model_copy(update={"camera_pixel_um": stack.pixel_size_um * o.magnification})
    args, positions = _inputs(result, stack, beads)
    return fit_beads(
        *args,
        positions,
        optics=o,
        plane_offset_um=float(stack.geometry.plane_offset_um),
        camera=camera_of(stack.meta or {}),
        config=config,
        progress=progress,
    )


def _inputs(
    result: CalibrationResult, stack: CalibrationStack, beads: np.ndarray | None
) -> tuple[
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    dict[int, tuple[float, float, float, float]],
]:
    ex = result.examples
    b = result.beads
    acc = b[b["status"] == "accepted"]
    positions = {
        int(r.bead): (float(r.x_px0), float(r.y_px0), float(r.x_px1), float(r.y_px1))
        for r in acc.itertuples()
    }
    sel = np.isin(ex.bead, list(positions) if beads is None else beads)
    args = (ex.crops[sel], ex.stage_z_um[sel], ex.bead[sel], ex.ref_z_um[sel])
    return args, positions


def heldout_scores(
    models: dict[str, SampledPSF],
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    camera: dict[str, float],
    pixel_size_um: float,
) -> dict[str, Any]:
    """Held-out negative log-likelihood of each model on beads it did not see.

    Every frame of the held-out beads is localized by MLE with each model
    (:func:`axialtrack.pipeline.mle_refine`: x, y, dz, photons and both
    backgrounds free, started at the bead's position and reference ``dz``),
    as a localization would use the model; the score is the negative
    log-likelihood (shifted Poisson, photoelectrons) at the estimate, summed
    over the frames that every model fits within its grid.

    Returns
    -------
    dict
        ``nll`` (model -> total), ``nll_per_frame``, ``n_frames``, ``n_beads``.
    """
    from scipy.special import gammaln

    from axialtrack.pipeline.refine import OFF_GRID, mle_refine

    e = (np.asarray(crops_adu, float) - camera["offset_adu"]) * camera["e_per_adu"]
    rn = float(camera.get("read_noise_e", 0.0))
    dz = np.asarray(ref_z_um, float) - np.asarray(stage_z_um, float)
    n = e.shape[0]
    xyz = np.zeros((n, 3))
    off = np.zeros((n, 2, 2))
    for i, b in enumerate(np.asarray(bead)):
        x0, y0, x1, y1 = positions_px[int(b)]
        o0 = np.array([x0 - np.rint(x0), y0 - np.rint(y0)]) * pixel_size_um
        o1 = np.array([x1 - np.rint(x1), y1 - np.rint(y1)]) * pixel_size_um
        xyz[i, :2] = o0
        off[i, 1] = o1 - o0
    xyz[:, 2] = dz
    ok = np.ones(n, bool)
    for psf in models.values():
        lo, hi = psf.z_range_um
        ok &= (dz > lo + 0.05) & (dz < hi - 0.05)
    xp = np.maximum(e + rn**2, 0.0)
    sat = xp - xp * np.log(np.maximum(xp, 1e-12)) + gammaln(xp + 1.0)
    sat_nll = np.where(xp > 0, sat, gammaln(xp + 1.0)).sum(axis=(1, 2, 3))
    llr: dict[str, np.ndarray] = {}
    for name, psf in models.items():
        r = mle_refine(psf, e[ok], xyz[ok], read_noise_e=rn, offsets_um=off[ok])
        llr[name] = np.where(r.status == OFF_GRID, np.nan, r.llr)
    common = np.all(np.isfinite(np.stack(list(llr.values()))), axis=0)
    nll = {
        k: float((v[common] / 2 + sat_nll[ok][common]).sum()) for k, v in llr.items()
    }
    m = int(common.sum())
    return {
        "nll": nll,
        "nll_per_frame": {k: v / max(m, 1) for k, v in nll.items()},
        "n_frames": m,
        "n_beads": len(np.unique(np.asarray(bead)[ok][common])),
    }


def choose_psf(
    result: CalibrationResult,
    stack: CalibrationStack,
    *,
    model: str = "auto",
    optics: Optics | None = None,
    config: FitConfig | None = None,
    spline_config: SplineConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> PSFFit | SplinePSFFit:
    """The calibration's PSF: the pupil fit, a spline PSF, or the better of both.

    ``model="auto"`` holds out every :data:`HELDOUT_EVERY`-th accepted bead,
    fits the pupil and measures the spline PSF on the others, and keeps the
    spline only when its held-out negative log-likelihood
    (:func:`heldout_scores`) is lower than the pupil's by more than
    :data:`SPLINE_MARGIN_PER_FRAME` per frame; both scores are recorded in the
    returned fit's ``selection``. With too few beads to hold any out (fewer
    than ``MIN_BEADS`` would remain) the pupil is fitted to all of them.
    ``"pupil"`` / ``"spline"`` fit that model on every bead, without the
    comparison.

    Raises
    ------
    axialtrack.optics.fit.PSFFitError
        The chosen (or, for ``"auto"``, the pupil) fit refuses the beads.
    ValueError
        ``model`` is not one of :data:`PSF_MODELS`.
    """
    if model not in PSF_MODELS:
        raise ValueError(f"psf model must be one of {PSF_MODELS}; got {model!r}")
    if model == "pupil":
        fit = fit_psf(result, stack, optics=optics, config=config, progress=progress)
        fit.selection = {"model": "pupil", "forced": True}
        return fit
    if model == "spline":
        sp = fit_spline_psf(result, stack, config=spline_config, progress=progress)
        sp.selection = {"model": "spline", "forced": True}
        return sp
    acc = np.unique(result.beads.loc[result.beads["status"] == "accepted", "bead"])
    acc = np.intersect1d(acc, np.unique(result.examples.bead))
    held = acc[HELDOUT_EVERY - 1 :: HELDOUT_EVERY]
    train = np.setdiff1d(acc, held)
    if train.size < MIN_BEADS or held.size == 0:
        # too few beads to spare any: the pupil on all of them, as before
        fit = fit_psf(result, stack, optics=optics, config=config, progress=progress)
        fit.selection = {
            "model": "pupil",
            "forced": False,
            "why": f"{acc.size} beads: too few to hold any out for a comparison",
        }
        return fit
    pupil = fit_psf(
        result, stack, optics=optics, config=config, progress=progress, beads=train
    )
    why = ""
    try:
        spline: SplinePSFFit | None = fit_spline_psf(
            result, stack, config=spline_config, progress=progress, beads=train
        )
    except ValueError as exc:  # PSFFitError: too few beads for a spline
        spline = None
        why = str(exc)
    if spline is None:
        pupil.selection = {"model": "pupil", "forced": False, "why": why}
        return pupil
    args, pos = _inputs(result, stack, held)
    scores = heldout_scores(
        {
            "pupil": pupil_sampled(pupil, spline.z_nodes_um, spline.stack.shape[-1]),
            "spline": spline.sampled_psf(),
        },
        *args,
        pos,
        camera=pupil.camera,
        pixel_size_um=spline.pixel_size_um,
    )
    per = scores["nll_per_frame"]
    pick = (
        "spline"
        if scores["n_frames"] > 0
        and per["spline"] < per["pupil"] - SPLINE_MARGIN_PER_FRAME
        else "pupil"
    )
    sel = {
        "model": pick,
        "forced": False,
        "heldout_beads": [int(b) for b in held],
        "heldout_nll": scores["nll"],
        "heldout_nll_per_frame": per,
        "heldout_frames": scores["n_frames"],
        "margin_per_frame": SPLINE_MARGIN_PER_FRAME,
    }
    if progress:
        progress(
            f"PSF model: {pick} (held-out NLL per frame: pupil "
            f"{per['pupil']:.1f}, spline {per['spline']:.1f}, "
            f"{scores['n_frames']} frames of {held.size} beads)"
        )
    chosen: PSFFit | SplinePSFFit = spline if pick == "spline" else pupil
    chosen.selection = sel
    return chosen


def pupil_sampled(fit: PSFFit, z_um: np.ndarray, size: int) -> SampledPSF:
    """The pupil fit sampled like a spline PSF (20 nm over ``z_um``'s range)."""
    from axialtrack.optics import SampledPSF

    lo, hi = float(np.min(z_um)), float(np.max(z_um))
    z = np.round(np.arange(lo, hi + 1e-9, 0.02), 10)
    return SampledPSF.from_render(
        fit.renderer(size),
        z,
        size,
        2,
        pixel_size_um=fit.optics.pixel_size_um,
        transmission=(1.0, fit.transmission),
        plane_offsets_um=(0.0, fit.plane_offset_um),
    )


def fit_spline_psf(
    result: CalibrationResult,
    stack: CalibrationStack,
    *,
    config: SplineConfig | None = None,
    progress: Callable[[str], None] | None = None,
    beads: np.ndarray | None = None,
) -> SplinePSFFit:
    """Measure a spline PSF from the accepted beads (``beads``: only these)."""
    from axialtrack.optics import fit_spline

    args, pos = _inputs(result, stack, beads)
    return fit_spline(
        *args,
        pos,
        pixel_size_um=float(stack.pixel_size_um),
        plane_offset_um=float(stack.geometry.plane_offset_um),
        camera=camera_of(stack.meta or {}),
        config=config,
        progress=progress,
    )


def _root(store: str | Path | zarr.Group, mode: str) -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    return zarr.open_group(str(store), mode=cast("Any", mode))


def write_psf(
    fit: PSFFit | SplinePSFFit,
    store: str | Path | zarr.Group,
    *,
    dz_range_um: float = 1.5,
) -> None:
    """Store a fitted PSF in a calibration run's ``psf/`` group (replacing one).

    Parameters
    ----------
    fit
        The fitted PSF.
    store
        The calibration run store (or its root group).
    dz_range_um
        The sampled stack covers ``|dz| <= dz_range_um`` in steps of
        :data:`SAMPLED_STEP_UM`.
    """
    root = _root(store, "a")
    if PSF_GROUP in root:
        del root[PSF_GROUP]
    g = root.create_group(PSF_GROUP)
    dz = np.round(
        np.arange(-dz_range_um, dz_range_um + SAMPLED_STEP_UM / 2, SAMPLED_STEP_UM), 6
    )
    stack = fit.sampled(dz).astype(np.float32)
    g.create_array("dz_um", data=dz)
    g.create_array("stack", data=stack, chunks=stack.shape)
    g.attrs[PSF_ATTR] = fit.to_json()
    g.attrs["stack"] = {
        "axes": ["plane", "dz", "y", "x"],
        "dz_convention": "dz_um = ref_z_um - stage_z_um",
        "normalization": "fraction of the plane's photons per pixel; plane 1 "
        "receives transmission x plane 0's photons",
    }


def read_psf(store: str | Path | zarr.Group) -> PSFFit | SplinePSFFit | None:
    """The fitted PSF of a calibration run store, or ``None`` when it has none."""
    root = _root(store, "r")
    if PSF_GROUP not in root:
        return None
    g = cast("zarr.Group", root[PSF_GROUP])
    meta = g.attrs.get(PSF_ATTR)
    if meta is None:
        return None
    return load_psf_fit(dict(cast("dict[str, Any]", meta)))


#: dz values (um) of the CRLB table in the calibration's QC.
CRLB_DZ_UM: tuple[float, ...] = tuple(round(-0.8 + 0.2 * i, 1) for i in range(9))


def _nm(v_um: np.ndarray) -> list[float | None]:
    return [float(v) * 1e3 if np.isfinite(v) else None for v in v_um]


def psf_summary(fit: PSFFit | SplinePSFFit) -> dict[str, Any]:
    """JSON summary of a fit for the calibration QC (``info``, the report).

    Includes the CRLB of x, y and dz (nm, stage frame) per ``dz`` of
    :data:`CRLB_DZ_UM` at the used beads' median photons and backgrounds and the
    camera's read noise, from the fitted model.
    """
    from axialtrack.optics.fit import fit_crlb

    b = fit.beads
    used = b[b["used"].astype(bool)]
    photons = float(used["photons"].median())
    bg = [float(used["background0"].median()), float(used["background1"].median())]
    rn = fit.camera.get("read_noise_e") or None
    c = fit_crlb(fit, list(CRLB_DZ_UM), photons=photons, background=bg, read_noise_e=rn)
    return {
        "model": "spline" if isinstance(fit, SplinePSFFit) else "pupil",
        "selection": dict(fit.selection),
        "converged": fit.converged,
        "n_beads": len(b),
        "n_used": len(used),
        "outliers": [int(v) for v in fit.outliers],
        "median_reduced_deviance": float(used["reduced_deviance"].median()),
        "time_s": fit.time_s,
        "n_iter": fit.n_iter,
        "zernike": {str(k): v for k, v in fit.zernike.items()},
        "plane1_zernike": {str(k): v for k, v in fit.plane1_zernike.items()},
        "depth_um": fit.depth_um,
        "plane_offset_um": fit.plane_offset_um,
        "transmission": fit.transmission,
        "crlb": {
            "photons": photons,
            "background": bg,
            "read_noise_e": rn,
            "dz_um": list(CRLB_DZ_UM),
            # None where a spline PSF's dz range ends (JSON has no NaN)
            "sigma_x_nm": _nm(c["sigma_x_um"]),
            "sigma_y_nm": _nm(c["sigma_y_um"]),
            "sigma_z_nm": _nm(c["sigma_z_um"]),
        },
    }

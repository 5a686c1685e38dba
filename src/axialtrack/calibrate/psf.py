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

from axialtrack.optics import Optics
from axialtrack.optics.fit import FitConfig, PSFFit, fit_beads

if TYPE_CHECKING:
    from collections.abc import Callable

    from .analysis import CalibrationResult
    from .stack import CalibrationStack

__all__ = ["PSF_ATTR", "PSF_GROUP", "camera_of", "fit_psf", "read_psf", "write_psf"]

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

    Raises
    ------
    axialtrack.optics.fit.PSFFitError
        Too few or too dim beads, or no convergence.
    """
    o = optics or Optics()
    o = o.model_copy(update={"camera_pixel_um": stack.pixel_size_um * o.magnification})
    ex = result.examples
    b = result.beads
    acc = b[b["status"] == "accepted"]
    positions = {
        int(r.bead): (float(r.x_px0), float(r.y_px0), float(r.x_px1), float(r.y_px1))
        for r in acc.itertuples()
    }
    return fit_beads(
        ex.crops,
        ex.stage_z_um,
        ex.bead,
        ex.ref_z_um,
        positions,
        optics=o,
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
    fit: PSFFit,
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


def read_psf(store: str | Path | zarr.Group) -> PSFFit | None:
    """The fitted PSF of a calibration run store, or ``None`` when it has none."""
    root = _root(store, "r")
    if PSF_GROUP not in root:
        return None
    g = cast("zarr.Group", root[PSF_GROUP])
    meta = g.attrs.get(PSF_ATTR)
    if meta is None:
        return None
    return PSFFit.from_json(dict(cast("dict[str, Any]", meta)))


#: dz values (um) of the CRLB table in the calibration's QC.
CRLB_DZ_UM: tuple[float, ...] = tuple(round(-0.8 + 0.2 * i, 1) for i in range(9))


def psf_summary(fit: PSFFit) -> dict[str, Any]:
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
            "sigma_x_nm": [float(v) * 1e3 for v in c["sigma_x_um"]],
            "sigma_y_nm": [float(v) * 1e3 for v in c["sigma_y_um"]],
            "sigma_z_nm": [float(v) * 1e3 for v in c["sigma_z_um"]],
        },
    }

"""The PSF a model bundle's refinement and uncertainty use: the calibration's
fitted PSF (pupil or spline) when the bundle carries one, else its nominal
optics, sampled (:class:`~axialtrack.optics.sampled.SampledPSF`) and cached
per bundle.

Above both :mod:`.sampled` and the fits (:mod:`._splinefit`, :mod:`.fit`),
so that neither imports the other back."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._splinefit import SplinePSFFit, load_psf_fit
from .params import Optics
from .psf import PSFModel
from .sampled import SampledPSF, SampledPSFError

__all__ = ["psf_for_bundle"]

_CACHE: dict[tuple[str, str], SampledPSF] = {}
_CACHE_LOCK = threading.Lock()


def _fitted_psf(meta: Mapping[str, Any], path: str) -> SampledPSF:
    """The calibration's fitted PSF (``model.json`` key ``"psf_fit"``), sampled.

    Sampled as the nominal one is (the bundle's z range plus 0.3 um each side in
    20 nm steps, 2 sub-pixel offsets per pixel, 17 px), from
    :meth:`axialtrack.optics.fit.PSFFit.render`, whose ``z`` is ``dz_um``.
    A spline PSF (``"model": "spline"``) is its own sampled stack. Cached per
    bundle.
    """
    key = (path + "#psf_fit", str(meta.get("sha256", {}).get("weights.pt", "")))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        fit = load_psf_fit(dict(meta["psf_fit"]))
    except (KeyError, TypeError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise SampledPSFError(
            f"{Path(path) / 'model.json'}: 'psf_fit' is invalid: {first}"
        ) from e
    if isinstance(fit, SplinePSFFit):
        # the beads' measured stack: refinement stays within its dz range
        psf = fit.sampled_psf()
        with _CACHE_LOCK:
            _CACHE[key] = psf
        return psf
    zr = meta.get("z_range_um") or [-1.2, 1.2]
    lo = np.floor((float(zr[0]) - 0.3) / 0.02) * 0.02
    hi = np.ceil((float(zr[1]) + 0.3) / 0.02) * 0.02
    size = 17
    psf = SampledPSF.from_render(
        fit.renderer(size),
        np.round(np.arange(lo, hi + 1e-9, 0.02), 10),
        size,
        2,
        pixel_size_um=fit.optics.pixel_size_um,
        transmission=(1.0, fit.transmission),
        plane_offsets_um=(0.0, fit.plane_offset_um),
        info={"source": "fitted PSF", "depth_um": fit.depth_um},
    )
    with _CACHE_LOCK:
        _CACHE[key] = psf
    return psf


def psf_for_bundle(bundle: Any) -> SampledPSF:
    """The PSF that refinement and per-localization uncertainty use for a bundle.

    The calibration's fitted PSF when the bundle carries one (``model.json``
    key ``"psf_fit"``, :func:`_fitted_psf`); otherwise the nominal one below.

    Built from the nominal optics the bundle records (``model.json`` key
    ``"optics"``: the :class:`Optics`, the calibration beads' depth and plane-1
    transmission, written by training from a simulated calibration), sampled
    over the bundle's z range plus 0.3 um each side. Cached per bundle.

    Raises
    ------
    SampledPSFError
        The bundle records no optics (a calibration of a real microscope carries
        no PSF model yet).
    """
    meta: Mapping[str, Any] = getattr(bundle, "meta", {}) or {}
    path = str(getattr(bundle, "path", ""))
    if isinstance(meta.get("psf_fit"), Mapping):
        return _fitted_psf(meta, path)
    rec = meta.get("optics")
    if not isinstance(rec, Mapping) or "optics" not in rec:
        raise SampledPSFError(
            f"the model bundle {path or '(in memory)'} records no PSF model "
            "(model.json has no 'optics'): MLE refinement and per-localization "
            "uncertainty need one; train the bundle from a simulated calibration, "
            "or from a calibration with a fitted PSF"
        )
    key = (path, str(meta.get("sha256", {}).get("weights.pt", "")))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        optics = Optics.model_validate(rec["optics"])
    except ValueError as e:
        first = " ".join(str(e).split())[:200]
        raise SampledPSFError(
            f"{Path(path) / 'model.json'}: 'optics' is invalid: {first}"
        ) from e
    delta = meta.get("plane_offset_um")
    if delta is None:
        raise SampledPSFError(
            f"{Path(path) / 'model.json'}: records optics but no plane_offset_um"
        )
    zr = meta.get("z_range_um") or [-1.2, 1.2]
    lo = np.floor((float(zr[0]) - 0.3) / 0.02) * 0.02
    hi = np.ceil((float(zr[1]) + 0.3) / 0.02) * 0.02
    psf = SampledPSF.from_model(
        PSFModel(optics),
        (0.0, float(delta)),
        depth_um=float(rec.get("depth_um", 0.05)),
        z_um=np.round(np.arange(lo, hi + 1e-9, 0.02), 10),
        size=int(rec.get("psf_size_px", 17)),
        transmission=float(rec.get("transmission", 1.0)),
    )
    with _CACHE_LOCK:
        _CACHE[key] = psf
    return psf

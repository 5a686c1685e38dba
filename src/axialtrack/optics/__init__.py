"""Pupil-function PSF model (scalar and vectorial) in torch, and the CRLB.

- :class:`Optics`: optical parameters of the detection path.
- :class:`PSFModel`: pixelated, batched, differentiable PSF of point emitters at a
  depth in the sample, imaged with the objective at a nominal focus position.
- :func:`axial_scale`: the focal shift (sample depth per um of stage travel).
- :class:`SampledPSF`: the PSF of each plane sampled on a 3D grid, evaluated
  with its derivatives by cubic B-splines (fast enough for MLE refinement).
- :func:`fit_spline`: a cubic-spline PSF measured directly from calibration
  beads (:class:`SplinePSFFit`), the alternative to the pupil fit;
  :func:`load_psf_fit` reads either back.
- :func:`zernike`, :func:`noll_to_nm`, :data:`NOLL_NAMES`: Zernike polynomials
  by Noll index.
- :func:`crlb`: Cramer-Rao lower bound of 3D localization from one or two focal
  planes under Poisson (and optional sCMOS read) noise.
"""

from __future__ import annotations

from ._bundle_psf import psf_for_bundle
from ._crlb import (
    CRLBResult,
    PSFDerivatives,
    crlb,
    crlb_from_derivatives,
    fisher_information,
    psf_derivatives,
)
from ._splinefit import SplineConfig, SplinePSFFit, fit_spline, load_psf_fit
from ._zernike import NOLL_NAMES, noll_to_nm, zernike
from .focal_shift import axial_scale
from .params import Optics
from .psf import PSFModel
from .sampled import SampledPSF, SampledPSFError

__all__ = [
    "NOLL_NAMES",
    "CRLBResult",
    "Optics",
    "PSFDerivatives",
    "PSFModel",
    "SampledPSF",
    "SampledPSFError",
    "SplineConfig",
    "SplinePSFFit",
    "axial_scale",
    "crlb",
    "crlb_from_derivatives",
    "fisher_information",
    "fit_spline",
    "load_psf_fit",
    "noll_to_nm",
    "psf_derivatives",
    "psf_for_bundle",
    "zernike",
]

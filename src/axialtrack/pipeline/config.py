"""Settings of detection and localization.

:class:`DetectionConfig` (how particles are found), :class:`CameraCalibration` (how
camera counts become photons) and :class:`LocalizerConfig` (everything the
:class:`~axialtrack.pipeline.localize.Localizer` needs besides the engine). The
defaults suit the simulated rig (``hardware_configs/sim-dualplane.cfg``): 0.108 um
pixels, an in-focus PSF of ~1 px sigma, ~2000 photons per particle and ~10
background photons per pixel per plane in a 10 ms frame.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .psfcheck import PSFCheckConfig

__all__ = [
    "CAMERA_FIELDS",
    "CameraCalibration",
    "DetectionConfig",
    "LocalizerConfig",
    "XYMethod",
]

XYMethod = Literal["auto", "fit", "network", "centroid"]


class DetectionConfig(BaseModel):
    """How particles are found in a dual-plane frame.

    The detection image (plane 0, or plane 0 plus plane 1 shifted onto it) is
    smoothed with a Gaussian of ``sigma_px``, a background map (median of
    ``background_block_px`` blocks, bilinearly interpolated) is subtracted, and
    the local maxima whose matched-filter photon estimate exceeds the threshold
    are kept.

    Parameters
    ----------
    source
        ``"sum"``: plane 0 plus plane 1 moved onto plane 0 with the registration
        (particles in focus in either plane are found); ``"plane0"``: plane 0 only.
    sigma_px
        Sigma of the Gaussian smoothing (px); close to the in-focus PSF sigma.
    threshold_photons
        Minimum matched-filter photon estimate of a peak: ``4 pi sigma_px^2`` times
        the background-subtracted smoothed value, in photons. It equals the photons
        of a Gaussian spot of width ``sigma_px`` in the detection image (both planes
        with ``source="sum"``); a wider (defocused) spot of ``N`` photons scores
        about ``N * 2 sigma_px^2 / (sigma_px^2 + sigma_spot^2)``.
    threshold_sigma
        If given, the threshold is at least this many robust standard deviations
        of the background-subtracted smoothed image (estimated on a subsample of
        each frame; costs ~0.5 ms per 512x512 frame).
    min_distance_px
        A peak must be the maximum of the ``(2 d + 1)`` square around it.
    background_block_px
        Side of the blocks whose median makes the background map.
    max_sum_misregistration_px
        With ``source="sum"``, plane 1 is moved onto plane 0 by a whole-pixel shift
        when that is within this distance of the registration everywhere in the
        field; otherwise it is resampled through the full affine (slower).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["sum", "plane0"] = "sum"
    sigma_px: float = Field(1.2, gt=0.3, le=5.0)
    threshold_photons: float = Field(200.0, ge=0.0)
    threshold_sigma: float | None = Field(None, gt=0.0)
    min_distance_px: int = Field(3, ge=1, le=20)
    background_block_px: int = Field(32, ge=4, le=256)
    max_sum_misregistration_px: float = Field(1.0, gt=0.0)


#: The fields of a camera file (``--camera FILE``, ``axialtrack camera``).
CAMERA_FIELDS = ("offset_adu", "e_per_adu", "read_noise_e", "qe", "bit_depth")


class CameraCalibration(BaseModel):
    """The camera: how its counts (ADU) become photons, and its noise.

    ``photons = (adu - offset_adu) * e_per_adu / qe``. The defaults are those of the
    simulated camera (:class:`axialtrack.sim.CameraModel`). A calibration run and a
    model bundle record the camera they were made with (``camera`` in the run's
    attributes and in ``model.json``); ``axialtrack camera`` measures ``offset_adu``,
    ``e_per_adu`` and ``read_noise_e`` from dark and flat frames.

    Parameters
    ----------
    offset_adu
        Baseline (bias) of the camera, ADU.
    e_per_adu
        Conversion gain, electrons per ADU.
    qe
        Quantum efficiency at the emission wavelength.
    read_noise_e
        Read noise, electrons rms.
    bit_depth
        Digitizer depth: counts saturate at ``2**bit_depth - 1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_adu: float = Field(100.0, ge=0.0, lt=65535.0)
    e_per_adu: float = Field(0.5, gt=0.0, le=1000.0)
    qe: float = Field(0.8, gt=0.0, le=1.0)
    read_noise_e: float = Field(1.5, ge=0.0, le=1000.0)
    bit_depth: int = Field(16, ge=8, le=32)

    @field_validator("offset_adu", "e_per_adu", "qe", "read_noise_e")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not np.isfinite(v):
            raise ValueError(f"must be a finite number; got {v}")
        return v

    @property
    def photons_per_adu(self) -> float:
        """Photons per ADU above the offset, ``e_per_adu / qe``."""
        return float(self.e_per_adu / self.qe)

    @property
    def max_adu(self) -> int:
        """Saturation count, ``2**bit_depth - 1``."""
        return int(2**self.bit_depth - 1)

    def photons(self, adu: Any) -> np.ndarray:
        """Photons arriving at the sensor for counts ``adu`` (float64 array)."""
        return (np.asarray(adu, dtype=float) - self.offset_adu) * self.photons_per_adu

    @classmethod
    def from_camera_model(cls, camera: Any) -> CameraCalibration:
        """Calibration of an object with ``offset_adu``, ``gain_e_per_adu``, ``qe``
        (and ``read_noise_e``, ``bit_depth`` where it has them).

        For example :class:`axialtrack.sim.CameraModel`.
        """
        values: dict[str, Any] = {
            "offset_adu": float(camera.offset_adu),
            "e_per_adu": float(camera.gain_e_per_adu),
            "qe": float(camera.qe),
        }
        if getattr(camera, "read_noise_e", None) is not None:
            values["read_noise_e"] = float(camera.read_noise_e)
        if getattr(camera, "bit_depth", None) is not None:
            values["bit_depth"] = int(camera.bit_depth)
        return cls(**values)


class LocalizerConfig(BaseModel):
    """Settings of :class:`~axialtrack.pipeline.localize.Localizer`.

    Parameters
    ----------
    detection
        Particle detection.
    camera
        ADU to photons.
    xy_method
        Sub-pixel XY: ``"fit"`` (iterative Gaussian-weighted fit on plane 0),
        ``"network"`` (the model's ``dx_px, dy_px`` outputs), ``"centroid"``
        (background-subtracted centroid, fastest) or ``"auto"``: ``"network"`` when
        the model has the sub-pixel head, else ``"fit"``.
    xy_planes
        ``"both"``: ``"fit"``/``"centroid"`` run in both planes (plane 1 at the
        registered position) and the two positions are averaged, weighted by their
        expected precision, so particles in focus in either plane are placed well
        (needs ``detection.source="sum"``, which provides the plane-1
        background); ``"plane0"``: plane 0 only.
    fit_size_px
        Odd window side for ``"fit"`` and ``"centroid"``.
    fit_sigma_px
        Width of the Gaussian weight of ``"fit"`` (px).
    fit_iterations
        Iterations of ``"fit"``.
    max_per_frame
        Keep at most this many detections per frame (the brightest); ``None`` for
        no limit.
    saturation_adu
        Counts at or above which a pixel is saturated; a localization whose crop
        pair holds one is flagged ``saturated``.
    defocus_refit_um
        After inference, particles farther than this from the focus of both
        planes (``|dz|`` and ``|dz - plane offset|``) get their XY refitted on
        ``defocus_fit_size_px`` windows of their crop pairs, where the fit's
        weight can widen to the defocused spot; ``None``: no refit.
    defocus_fit_size_px
        Window of that refit (odd, at most the crop size).
    detect_threads
        Threads for the CPU work of a batch (the compiled kernels release the
        GIL): its frames are detected side by side, and the sub-pixel XY fit of
        a batch with many localizations is split in runs (at least 256 each).
        The results are the same for any number. ``1``: all in the calling
        thread, right for a few cores shared with the camera and writer; on a
        many-core machine feeding a GPU, more keep detection off the critical
        path.
    range_margin_um
        A localization is flagged ``in_range`` when its ``dz_um`` lies inside the
        model's calibrated range (the bundle's ``z_range_um``, the span of its
        training labels) shrunk by this margin at both ends. Outside it the
        network extrapolates: a particle beyond the range reads as if at its edge,
        so its Z is wrong by an unknown amount.
    uncertainty
        Fill ``sigma_z_um`` and ``sigma_xy_um`` of every row with the Cramer-Rao
        bound at the row's values (network ``dz``, position, photons,
        background) from the bundle's PSF (:func:`axialtrack.optics.psf_for_bundle`;
        one PSF evaluation per row). A model with its own ``sigma_z_um`` head
        keeps that. Without a PSF in the bundle the columns stay NaN.
    refine
        Refine x, y, z, photons and backgrounds by maximum likelihood on the
        crops of both planes with the bundle's PSF
        (:func:`axialtrack.pipeline.refine.mle_refine`), initialized from the
        network; ``sigma_*`` then come from the Fisher information at the
        estimate and ``llr`` / ``misfit`` say how well the PSF explains the
        pixels. Needs a bundle with a PSF.
    refine_size_px
        Odd crop side of the refinement (central part of the model's crop).
    refine_far_size_px, refine_far_um
        Rows whose network ``dz`` is farther than ``refine_far_um`` from the
        focus of both planes are refined (and checked) on this larger window
        (where the model's crop and the PSF's grid allow it): their spot
        outgrows the small one (measured at dz -0.8 um: z precision 1.8x the
        CRLB on 11 px, 1.4x on 15 px). ``refine_far_size_px = refine_size_px``
        turns it off.
    refine_iterations
        Levenberg-Marquardt iterations at most.
    refine_budget_frame_s
        Seconds of refinement per frame of a batch at most (``axialtrack live
        --refine`` sets half the frame period): the brightest rows of the batch
        that fit in it at the measured rate are refined, the rest keep the
        network's values and the bound at them (``refined`` false). ``None``:
        refine every row.
    refine_threads
        Threads of the refinement (the kernel releases the GIL).
    camera_map
        sCMOS per-pixel offset / gain / read-noise maps
        (:func:`axialtrack.pipeline.load_camera_maps`: an ``.npz`` or ``.tif``
        of ``(2, H, W)`` maps): the refinement converts each crop with its own
        pixels' offset and gain and weights them by their read noise.
    misfit_p
        A refined row whose log-likelihood ratio has a chi-square tail
        probability below this is flagged ``misfit`` (an overlapping neighbour,
        dirt, or a PSF that no longer fits the microscope).
    psf_check
        The check that the bundle's PSF still fits the microscope
        (:mod:`axialtrack.pipeline.psfcheck`): a few isolated rows of every
        batch are fitted and get the ``psf_check`` column; needs a PSF, like
        ``uncertainty``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    camera: CameraCalibration = Field(default_factory=CameraCalibration)
    xy_method: XYMethod = "auto"
    xy_planes: Literal["both", "plane0"] = "both"
    fit_size_px: int = Field(7, ge=3, le=31)
    fit_sigma_px: float = Field(1.2, gt=0.3, le=10.0)
    fit_iterations: int = Field(3, ge=1, le=100)
    max_per_frame: int | None = Field(None, ge=1)
    saturation_adu: int = Field(65535, ge=1)
    range_margin_um: float = Field(0.0, ge=0.0)
    defocus_refit_um: float | None = Field(0.35, ge=0.0)
    defocus_fit_size_px: int = Field(15, ge=3, le=63)
    detect_threads: int = Field(1, ge=1, le=64)
    uncertainty: bool = True
    refine: bool = False
    refine_size_px: int = Field(11, ge=5, le=31)
    refine_far_size_px: int = Field(15, ge=5, le=31)
    refine_far_um: float = Field(0.55, ge=0.0)
    refine_iterations: int = Field(30, ge=1, le=200)
    refine_budget_frame_s: float | None = Field(None, gt=0.0)
    refine_threads: int = Field(1, ge=1, le=64)
    camera_map: str | None = None
    misfit_p: float = Field(1e-3, gt=0.0, lt=1.0)
    psf_check: PSFCheckConfig = Field(default_factory=PSFCheckConfig)

    @field_validator(
        "fit_size_px", "defocus_fit_size_px", "refine_size_px", "refine_far_size_px"
    )
    @classmethod
    def _odd_fit_size(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"fit window sizes must be odd; got {v}")
        return v

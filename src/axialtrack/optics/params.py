"""Microscope optical parameters shared by the PSF model and the simulator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Optics(BaseModel):
    """Optical parameters of the detection path.

    All lengths are in micrometres. The defaults describe a 60x / NA 1.45 oil
    objective imaging fluorescence at 670 nm from an aqueous sample onto a camera
    with 6.5 um pixels (108.3 nm in the sample).

    Parameters
    ----------
    na
        Numerical aperture of the objective; must be smaller than ``n_immersion``.
    wavelength_um
        Emission wavelength in vacuum.
    n_immersion
        Refractive index of the immersion medium (and coverslip, assumed equal).
    n_sample
        Refractive index of the sample medium the emitters are in. Where it differs
        from ``n_immersion`` the PSF changes with depth (spherical aberration,
        focal shift); angles beyond the critical angle (``na > n_sample``) are
        evanescent in the sample and only reach the objective from emitters close
        to the coverslip.
    magnification
        Total magnification from sample to camera.
    camera_pixel_um
        Physical camera pixel pitch.
    vectorial
        Use the vectorial high-NA model (freely rotating dipole, Fresnel transmission
        at the sample/coverslip interface) instead of the scalar model.
    zernike
        Pupil aberrations: Noll index (>= 1) -> amplitude in waves RMS. Noll 5 and 6
        are the two astigmatisms, 11 is primary spherical aberration.
    oversample
        Each camera pixel is integrated by evaluating the PSF on an
        ``oversample x oversample`` sub-grid and summing.
    pupil_samples
        Number of pupil samples across the pupil diameter. The computed image is
        periodic with period ``pupil_samples * wavelength_um / (2 * na)`` (14.8 um
        for the defaults): a patch must fit in it, and light spread further than
        half a period (strong defocus, the far halo of deep emitters) wraps around.
        64 keeps the model within 1 % of a converged one for depths up to a few um.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    na: float = Field(1.45, gt=0.0)
    wavelength_um: float = Field(0.67, gt=0.1, lt=5.0)
    n_immersion: float = Field(1.518, ge=1.0)
    n_sample: float = Field(1.33, ge=1.0)
    magnification: float = Field(60.0, gt=0.0)
    camera_pixel_um: float = Field(6.5, gt=0.0)
    vectorial: bool = True
    zernike: dict[int, float] = Field(default_factory=dict)
    oversample: int = Field(3, ge=1, le=15)
    pupil_samples: int = Field(64, ge=16, le=1024)

    @field_validator("zernike")
    @classmethod
    def _check_zernike(cls, v: dict[int, float]) -> dict[int, float]:
        for j, a in v.items():
            if j < 1:
                raise ValueError(f"Zernike Noll indices start at 1; got {j}")
            if abs(a) > 10.0:
                raise ValueError(
                    f"Zernike amplitude {a} waves RMS for Noll index {j} is "
                    "implausibly large (|a| <= 10 waves)"
                )
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _check_consistency(self) -> Optics:
        if self.na >= self.n_immersion:
            raise ValueError(
                f"na ({self.na}) must be smaller than n_immersion "
                f"({self.n_immersion}): no ray can travel at that angle in the "
                "immersion medium"
            )
        return self

    def __hash__(self) -> int:
        # the zernike dict is not hashable; equal models have equal JSON
        return hash(self.model_dump_json())

    @property
    def pixel_size_um(self) -> float:
        """Camera pixel size projected into the sample, in um."""
        return self.camera_pixel_um / self.magnification

    @property
    def image_period_um(self) -> float:
        """Period of the computed image (the field of view free of wrap-around)."""
        return self.pupil_samples * self.wavelength_um / (2.0 * self.na)

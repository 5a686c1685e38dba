"""Background light: a uniform level plus an optional smooth structure.

The background is expressed as a *rate* in photons per pixel per second arriving at
the sensor, per plane; the renderer multiplies it by the exposure time. The
structured part models uneven illumination or out-of-focus autofluorescence: a
smooth random field (Gaussian-filtered white noise, reproducible from a seed) that
is fixed to the optics, defined in plane-0 pixel coordinates and seen by plane 1
through the splitter's affine map.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from axialtrack.geometry import SplitterGeometry, apply_affine, invert_affine


class Background(BaseModel):
    """Background photons per pixel per second, per plane.

    Parameters
    ----------
    photons_per_px_s
        Mean background rate in photons per pixel per second arriving at the
        sensor. A single number is the plane-0 level; plane 1 then receives it times
        the splitter's ``transmission``. A pair gives both planes explicitly.
    structure
        Relative amplitude (standard deviation over the mean) of the smooth
        structured part; 0 for a uniform background.
    correlation_px
        Length scale of the structure (sigma of the Gaussian filter), in pixels.
    seed
        Seed of the structured field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    photons_per_px_s: float | tuple[float, float] = 1000.0
    structure: float = Field(0.0, ge=0.0, le=5.0)
    correlation_px: float = Field(48.0, gt=0.0)
    seed: int = Field(0, ge=0)

    def levels(self, geometry: SplitterGeometry) -> tuple[float, float]:
        """Mean rates ``(plane 0, plane 1)`` in photons per pixel per second."""
        if isinstance(self.photons_per_px_s, tuple):
            b0, b1 = self.photons_per_px_s
            return float(b0), float(b1)
        b = float(self.photons_per_px_s)
        return b, b * geometry.transmission

    def field(self, plane_shape: tuple[int, int]) -> np.ndarray:
        """The smooth random field on the plane-0 pixel grid: mean 0, std 1."""
        h, w = plane_shape
        rng = np.random.default_rng(self.seed)
        # filter a padded grid so the field does not wrap around
        pad = int(np.ceil(3 * self.correlation_px))
        white = rng.standard_normal((h + 2 * pad, w + 2 * pad))
        smooth = ndimage.gaussian_filter(white, self.correlation_px, mode="wrap")
        smooth = smooth[pad : pad + h, pad : pad + w]
        std = smooth.std()
        return (smooth - smooth.mean()) / (std if std > 0 else 1.0)

    def rate_map(
        self, plane_shape: tuple[int, int], geometry: SplitterGeometry | None = None
    ) -> np.ndarray:
        """Background rate ``(2, H, W)`` in photons per pixel per second.

        Parameters
        ----------
        plane_shape
            ``(H, W)`` of one plane.
        geometry
            Splitter geometry: plane 1 sees the structure through
            :meth:`SplitterGeometry.plane1_affine` and its level is scaled by the
            transmission (unless both levels are given).
        """
        geometry = geometry or SplitterGeometry()
        h, w = plane_shape
        b0, b1 = self.levels(geometry)
        out = np.empty((2, h, w), dtype=np.float32)
        if self.structure == 0:
            out[0] = b0
            out[1] = b1
            return out
        f0 = self.field(plane_shape)
        out[0] = b0 * np.maximum(1.0 + self.structure * f0, 0.0)
        # plane-1 pixel (x1, y1) images the plane-0 position inv(A)(x1, y1)
        inv = invert_affine(geometry.plane1_affine(plane_shape))
        yy, xx = np.mgrid[0:h, 0:w]
        xy0 = apply_affine(inv, np.column_stack([xx.ravel(), yy.ravel()]))
        f1 = ndimage.map_coordinates(
            f0, [xy0[:, 1], xy0[:, 0]], order=1, mode="nearest"
        ).reshape(h, w)
        out[1] = b1 * np.maximum(1.0 + self.structure * f1, 0.0)
        return out

"""Camera noise model: expected photons in, raw uint16 counts out.

The model is the usual sCMOS/CCD chain, applied pixel by pixel:

1. photons arriving at the sensor are converted to photo-electrons with Poisson
   statistics, ``e ~ Poisson(qe * photons)`` (shot noise);
2. electrons above the full-well capacity are lost (optional);
3. Gaussian read noise with an rms of ``read_noise_e`` electrons is added, either
   the same for every pixel or from a per-pixel map (sCMOS);
4. electrons become counts: ``adu = e / gain_e_per_adu + offset_adu``, rounded and
   clipped to ``[0, 2**bit_depth - 1]``.

So for ``N`` photons per pixel the mean is ``qe * N / gain + offset`` ADU and the
variance is ``(qe * N + read_noise_e**2) / gain**2`` ADU^2 (before clipping and with
the 1/12 ADU^2 rounding variance neglected).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator


class CameraModel(BaseModel):
    """Noise model of a scientific camera.

    All intensities that go in are *photons arriving at the sensor* (after the
    objective, splitter and filters, before the quantum efficiency), per pixel per
    exposure.

    Parameters
    ----------
    qe
        Quantum efficiency: the fraction of arriving photons that become
        photo-electrons.
    gain_e_per_adu
        Conversion gain in electrons per count (ADU).
    offset_adu
        Baseline (bias) added to every pixel, in ADU.
    read_noise_e
        Read noise rms in electrons. With ``read_noise_spread > 0`` this is the
        median of the per-pixel map.
    read_noise_spread
        Spread of a per-pixel sCMOS read-noise map: the map is lognormal with this
        sigma (0 gives the same read noise for every pixel). The map is drawn from
        ``read_noise_seed`` and is the same for every frame.
    read_noise_seed
        Seed of the per-pixel read-noise map.
    read_noise_map_e
        An explicit per-pixel read-noise map (electrons rms) in sensor layout; it
        replaces the generated one and must match the sensor shape.
    bit_depth
        Digitizer depth; counts saturate at ``2**bit_depth - 1``.
    full_well_e
        Full-well capacity in electrons; ``None`` for no limit before digitization.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    qe: float = Field(0.8, gt=0.0, le=1.0)
    gain_e_per_adu: float = Field(0.5, gt=0.0)
    offset_adu: float = Field(100.0, ge=0.0)
    read_noise_e: float = Field(1.5, ge=0.0)
    read_noise_spread: float = Field(0.0, ge=0.0, le=2.0)
    read_noise_seed: int = Field(0, ge=0)
    read_noise_map_e: np.ndarray | None = None
    bit_depth: int = Field(16, ge=8, le=16)
    full_well_e: float | None = Field(None, gt=0.0)

    _maps: dict[tuple[int, ...], np.ndarray] = PrivateAttr(default_factory=dict)

    @field_validator("read_noise_map_e", mode="before")
    @classmethod
    def _check_map(cls, v: Any) -> Any:
        if v is None:
            return None
        arr = np.array(v, dtype=np.float32)
        if arr.ndim not in (2, 3) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(
                "read_noise_map_e must be a 2-D (or (2, H, W)) array of finite, "
                "non-negative electrons rms"
            )
        arr.setflags(write=False)
        return arr

    # ------------------------------------------------------------- properties
    @property
    def max_adu(self) -> int:
        """Saturation count, ``2**bit_depth - 1``."""
        return int(2**self.bit_depth - 1)

    def read_noise_map(self, shape: tuple[int, ...]) -> np.ndarray:
        """Per-pixel read-noise rms (electrons) for a sensor of ``shape``.

        Either the given ``read_noise_map_e`` (which must have this shape), or a map
        drawn once from ``read_noise_seed`` (lognormal about ``read_noise_e``), or
        a constant map.
        """
        shape = tuple(int(s) for s in shape)
        if self.read_noise_map_e is not None:
            if self.read_noise_map_e.shape != shape:
                raise ValueError(
                    f"read_noise_map_e has shape {self.read_noise_map_e.shape}, "
                    f"but the sensor frame has shape {shape}"
                )
            return self.read_noise_map_e
        cached = self._maps.get(shape)
        if cached is None:
            if self.read_noise_spread > 0:
                rng = np.random.default_rng(self.read_noise_seed)
                cached = self.read_noise_e * np.exp(
                    self.read_noise_spread * rng.standard_normal(shape)
                )
                cached = cached.astype(np.float32)
            else:
                cached = np.full(shape, self.read_noise_e, dtype=np.float32)
            cached.setflags(write=False)
            self._maps[shape] = cached
        return cached

    # ----------------------------------------------------------------- theory
    def mean_adu(self, photons: float | np.ndarray) -> float | np.ndarray:
        """Expected counts for ``photons`` arriving per pixel (no clipping)."""
        return self.qe * np.asarray(photons) / self.gain_e_per_adu + self.offset_adu

    def variance_adu(
        self,
        photons: float | np.ndarray,
        read_noise_e: float | np.ndarray | None = None,
    ) -> float | np.ndarray:
        """Variance of the counts, ``(qe*N + rn^2) / gain^2`` (no clipping)."""
        rn = self.read_noise_e if read_noise_e is None else read_noise_e
        return (self.qe * np.asarray(photons) + np.asarray(rn) ** 2) / (
            self.gain_e_per_adu**2
        )

    def photons_from_adu(self, adu: np.ndarray) -> np.ndarray:
        """Invert the mean response: counts to photons arriving at the sensor."""
        adu = np.asarray(adu, dtype=np.float32)
        return (adu - self.offset_adu) * (self.gain_e_per_adu / self.qe)

    # ------------------------------------------------------------------ noise
    def apply(
        self,
        expected_photons: np.ndarray,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """Turn an image of expected photons into a noisy raw frame.

        Parameters
        ----------
        expected_photons
            Expected number of photons arriving at each sensor pixel during the
            exposure (any shape; the read-noise map is looked up for that shape).
            Negative values are treated as zero.
        rng
            Random generator (or seed) for shot and read noise. The same generator
            state gives the same frame bit for bit.

        Returns
        -------
        numpy.ndarray
            ``uint16`` counts of the same shape, clipped to ``[0, max_adu]``.
        """
        lam = np.asarray(expected_photons, dtype=np.float64)
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        electrons = rng.poisson(self.qe * np.maximum(lam, 0.0)).astype(np.float32)
        if self.full_well_e is not None:
            np.minimum(electrons, np.float32(self.full_well_e), out=electrons)
        noise = rng.standard_normal(lam.shape, dtype=np.float32)
        noise *= self.read_noise_map(lam.shape)
        electrons += noise
        adu = electrons * np.float32(1.0 / self.gain_e_per_adu)
        adu += np.float32(self.offset_adu)
        np.rint(adu, out=adu)
        np.clip(adu, 0, self.max_adu, out=adu)
        return adu.astype(np.uint16)

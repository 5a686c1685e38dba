"""Virtual sample, camera noise model and dual-focal-plane renderer.

- :class:`Sample` with :class:`Beads`, :class:`DiffusingParticles` and
  :class:`Drift`: what is under the objective, in the world frame (stage ``x, y``
  in um, depth above the coverslip), evolving reproducibly in time.
- :class:`Background`: uniform plus smooth structured background light.
- :class:`CameraModel`: shot noise, read noise (optionally per pixel), gain,
  offset, saturation.
- :class:`Renderer`: the expected photons in both focal planes and raw noisy
  sensor frames, with ground truth.
"""

from __future__ import annotations

from .background import Background
from .camera import CameraModel
from .render import TRUTH_DTYPE, PSFTable, Renderer
from .sample import (
    BEAD,
    PARTICLE,
    TRAJECTORY_DTYPE,
    Beads,
    DiffusingParticles,
    Drift,
    Emitters,
    Sample,
    to_dataframe,
)

__all__ = [
    "BEAD",
    "PARTICLE",
    "TRAJECTORY_DTYPE",
    "TRUTH_DTYPE",
    "Background",
    "Beads",
    "CameraModel",
    "DiffusingParticles",
    "Drift",
    "Emitters",
    "PSFTable",
    "Renderer",
    "Sample",
    "to_dataframe",
]

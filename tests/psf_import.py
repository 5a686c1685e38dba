"""Bead calibration stacks rendered with psfmodels, as a lab would record them.

The renderer is independent of the project's optics (psfmodels' vectorial
Gibson-Lanni model, NA 1.3, 600 nm) and the camera has its own offset and gain;
plane 1 is shifted and, when asked, mirrored on a side-by-side sensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

H = W = 64
PIXEL_UM = 0.1
STEP_UM = 0.1
N_Z = 21
DELTA_UM = 0.4
SHIFT_PX = (2, -1)  # plane 1 relative to plane 0 (dx, dy), before mirroring
OFFSET_ADU = 100.0
GAIN_E_PER_ADU = 2.0
PHOTONS = 6000.0
BACKGROUND = 15.0
BEADS_PER_FIELD = 7
MIN_SEPARATION_PX = 12


@dataclass
class Rendered:
    """Raw side-by-side frames ``(P, Z, H, 2W)`` uint16 and the stage Z ``(Z,)``."""

    raw: np.ndarray
    stage_z_um: np.ndarray
    focus_um: np.ndarray  # (P,) in-focus stage Z of the beads of each field


def _psf(defocus: np.ndarray) -> np.ndarray:
    psfmodels = pytest.importorskip("psfmodels")
    zv = np.round(defocus, 4)
    uniq, inv = np.unique(zv, return_inverse=True)
    n = 1.515
    params = {"NA": 1.3, "ni": n, "ni0": n, "ns": n, "ng": n, "ng0": n}
    p = psfmodels.vectorial_psf(
        zv=uniq, nx=21, dxy=PIXEL_UM, pz=0.0, wvl=0.6, params=params, normalize=False
    )
    p = p / p.sum(axis=(1, 2), keepdims=True)
    return np.asarray(p[inv.ravel()])


def _place(rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random bead positions, :data:`MIN_SEPARATION_PX` apart (Chebyshev)."""
    for _ in range(1000):
        pts: list[tuple[int, int]] = []
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(12, W - 13, size=2))
            if all(max(abs(x - a), abs(y - b)) >= MIN_SEPARATION_PX for a, b in pts):
                pts.append((x, y))
                if len(pts) == BEADS_PER_FIELD:
                    return pts
    raise RuntimeError("could not place the beads")  # pragma: no cover


def render(n_fields: int = 3, *, mirror: str = "horizontal", seed: int = 0) -> Rendered:
    """Bead Z-stacks of ``n_fields`` fields of :data:`BEADS_PER_FIELD` beads.

    Beads lie at random whole-pixel positions at least
    :data:`MIN_SEPARATION_PX` apart (Chebyshev), 12 px or more from the edges.
    """
    rng = np.random.default_rng(seed)
    z = np.round(10.0 + STEP_UM * (np.arange(N_Z) - N_Z // 2), 4)
    raw = np.empty((n_fields, N_Z, H, 2 * W), dtype=np.uint16)
    focus = 10.0 + 0.03 * np.arange(n_fields)
    half = 10
    positions: list[list[tuple[int, int]]] = []
    for _ in range(n_fields):
        positions.append(_place(rng))
    for f in range(n_fields):
        psf0 = _psf(z - focus[f])
        psf1 = _psf(z - focus[f] + DELTA_UM)
        for k in range(N_Z):
            planes = np.full((2, H, W), BACKGROUND)
            for x, y in positions[f]:
                if True:
                    planes[0, y - half : y + half + 1, x - half : x + half + 1] += (
                        PHOTONS * psf0[k]
                    )
                    x1, y1 = x + SHIFT_PX[0], y + SHIFT_PX[1]
                    planes[1, y1 - half : y1 + half + 1, x1 - half : x1 + half + 1] += (
                        PHOTONS * psf1[k]
                    )
            electrons = rng.poisson(planes).astype(float)
            adu = (
                OFFSET_ADU
                + electrons / GAIN_E_PER_ADU
                + rng.normal(0, 1.0, planes.shape)
            )
            p1 = adu[1]
            if mirror in ("horizontal", "both"):
                p1 = p1[:, ::-1]
            if mirror in ("vertical", "both"):
                p1 = p1[::-1]
            raw[f, k] = np.clip(np.hstack([adu[0], p1]), 0, 65535).astype(np.uint16)
    return Rendered(raw=raw, stage_z_um=z, focus_um=focus)

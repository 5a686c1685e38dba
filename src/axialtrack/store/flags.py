"""Quality flags of localizations: one ``flags`` bit field per row.

The live pipeline stores what each flag needs (``saturated``, ``in_range``,
``neighbour_px``, ``photons``); :func:`localization_flags` combines them into
one ``int64`` column, which readers (:func:`axialtrack.store.world.
world_localizations`, the napari plugin, ``axialtrack export``) add to every
table. A table that already has a ``flags`` column keeps its bits; the derived
ones are added to them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_OVERLAP_PX", "LocFlag", "localization_flags", "overlap_px"]

#: Localizations closer than this (camera pixels) to another in the same frame
#: are flagged overlapping when the run does not record its model's crop size.
DEFAULT_OVERLAP_PX = 8.0


class LocFlag(enum.IntFlag):
    """Bits of the ``flags`` column (0: nothing to report)."""

    #: a pixel of the particle's image reached the camera's saturation level
    SATURATED = 1
    #: photometry at or below zero photons, or not finite
    LOW_PHOTONS = 2
    #: ``dz_um`` outside the model's calibrated range (``in_range`` false)
    OUT_OF_RANGE = 4
    #: another localization of the same frame lies within the crop size
    OVERLAPPING = 8


def overlap_px(attrs: Mapping[str, Any]) -> float:
    """The overlap distance of a run (its model's ``crop_size``, else
    :data:`DEFAULT_OVERLAP_PX`)."""
    model = attrs.get("model") or {}
    for key in ("crop_size", "crop_px", "crop"):
        v = model.get(key) if isinstance(model, Mapping) else None
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return DEFAULT_OVERLAP_PX


def _nearest_in_frame(frames: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance from each row to the nearest other row of its frame (inf if
    alone). One KD-tree over ``(x, y, frame * far)``: rows of other frames are
    ``far`` apart, farther than any two rows of one frame."""
    from scipy.spatial import cKDTree

    out = np.full(len(frames), np.inf)
    pts = np.column_stack([x, y])
    ok = np.isfinite(pts).all(axis=1)
    if ok.sum() < 2:
        return out
    span = float(np.ptp(pts[ok], axis=0).max())
    far = 10.0 * (span + 1.0)
    p3 = np.column_stack([pts[ok], frames[ok].astype(np.float64) * far])
    d, _ = cKDTree(p3).query(p3, k=2)
    near = d[:, 1]
    near[near >= far / 2] = np.inf  # the nearest is in another frame
    out[ok] = near
    return out


def localization_flags(
    table: pd.DataFrame, *, pixel_size_um: float, overlap: float = DEFAULT_OVERLAP_PX
) -> np.ndarray:
    """The ``flags`` of each row of a localization table (``int64``).

    Parameters
    ----------
    table
        Localizations (stored columns; ``saturated``, ``in_range`` and
        ``neighbour_px`` are used where present).
    pixel_size_um
        For the overlap distance when ``neighbour_px`` is absent (measured from
        ``x_um``/``y_um`` within each frame).
    overlap
        Overlap distance, camera pixels.
    """
    n = len(table)
    flags = np.zeros(n, np.int64)
    if "flags" in table.columns:
        flags |= table["flags"].to_numpy().astype(np.int64)
    if "saturated" in table.columns:
        flags[table["saturated"].to_numpy().astype(bool)] |= LocFlag.SATURATED
    photons = table["photons"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = ~(photons > 0)
    flags[low] |= LocFlag.LOW_PHOTONS
    if "in_range" in table.columns:
        flags[~table["in_range"].to_numpy().astype(bool)] |= LocFlag.OUT_OF_RANGE
    if "neighbour_px" in table.columns:
        nn = table["neighbour_px"].to_numpy(dtype=np.float64)
    elif n:
        nn = (
            _nearest_in_frame(
                table["frame"].to_numpy(),
                table["x_um"].to_numpy(dtype=np.float64),
                table["y_um"].to_numpy(dtype=np.float64),
            )
            / pixel_size_um
        )
    else:
        nn = np.zeros(0)
    with np.errstate(invalid="ignore"):
        flags[nn < overlap] |= LocFlag.OVERLAPPING
    return flags

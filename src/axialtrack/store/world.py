"""The world frame of a run: micrometres from the image corner, seconds from
the run start.

The stored localization columns keep the frame the live pipeline works in
(``x_um``/``y_um``: the stage frame, ``stage_x_um + (x_px - (W - 1) / 2) *
pixel_size_um``; ``t_s``: the camera clock). Readers that put localizations
beside the images (the napari plugin, ``axialtrack export``) convert at this
boundary, with :func:`world_localizations`:

- ``x_um``, ``y_um``: from the centre of pixel ``(0, 0)`` of plane 0 of the
  localization's own frame, ``x_px * pixel_size_um``: the OME-Zarr image's
  coordinates (scale only, no translation);
- ``t_s``: seconds from the run start, the camera time of frame 0 being 0;
- ``t_frame_s``: ``frame * dt``, the time of the localization's frame on the
  OME-Zarr time axis (``dt`` its scale), for overlays that must sit on a frame;
- ``x_stage_um``, ``y_stage_um``, ``t_camera_s``: the stored values, kept;
- ``flags``: :class:`axialtrack.store.flags.LocFlag` bits (saturated, low
  photons, out of the calibrated range, overlapping).

``z_um`` stays the focus-stage position (the design's Z convention).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from axialtrack.store.flags import localization_flags, overlap_px
from axialtrack.store.layout import units_of

if TYPE_CHECKING:
    import pandas as pd

    from axialtrack.store.reader import Run

__all__ = ["frame_interval", "run_start_s", "table_units", "world_localizations"]


def run_start_s(run: Run) -> float:
    """The camera time of the run's first frame with a timestamp (0 if none)."""
    t = run.frame_meta["t_s"].to_numpy(dtype=np.float64)
    finite = t[np.isfinite(t)]
    return float(finite[0]) if finite.size else 0.0


def frame_interval(run: Run) -> float:
    """The OME time scale of the run: ``frame_interval_s`` when known, else the
    mean interval of the committed frames' ``t_s``, else 1."""
    dt = run.attrs.get("frame_interval_s")
    if isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt):
        return float(dt)
    t = run.frame_meta["t_s"].to_numpy(dtype=np.float64)
    if t.size > 1 and np.isfinite(t[[0, -1]]).all() and t[-1] > t[0]:
        return float((t[-1] - t[0]) / (t.size - 1))
    return 1.0


def world_localizations(
    run: Run, table: pd.DataFrame | None = None, *, dt: float | None = None
) -> pd.DataFrame:
    """Localizations (or ``table``, rows of ``run``) in the world frame.

    Parameters
    ----------
    run
        The run the rows belong to (its pixel size, plane shape, frame
        metadata).
    table
        Rows with the stored columns; default: ``run.localizations``.
    dt
        The time scale for ``t_frame_s``; default :func:`frame_interval`.

    Returns
    -------
    pd.DataFrame
        The same rows with ``x_um``, ``y_um``, ``t_s`` in the world frame and
        ``t_frame_s``, ``x_stage_um``, ``y_stage_um``, ``t_camera_s`` and
        ``flags`` added (see the module docstring).
    """
    import pandas as pd

    locs = run.localizations if table is None else table
    # a dict of the column arrays, not ``locs.copy()``: a copy of a million
    # rows consolidates and copies every column (0.8 s); the columns changed
    # here are new arrays, the others shared with ``locs``
    out = {c: locs[c].to_numpy() for c in locs.columns}
    n = len(locs)
    h, w = (int(v) for v in run.attrs.get("plane_shape", (0, 0)))
    px = run.pixel_size_um
    meta = run.frame_meta
    frames = out["frame"].astype(np.int64, copy=False) if n else np.zeros(0, int)
    ok = (frames >= 0) & (frames < len(meta))
    idx = np.where(ok, frames, 0)

    def stage(col: str) -> np.ndarray:
        v = meta[col].to_numpy(dtype=np.float64)[idx] if len(meta) else idx * 0.0
        return np.where(ok & np.isfinite(v), v, 0.0)

    sx, sy = stage("stage_x_um"), stage("stage_y_um")
    x = out["x_um"].astype(np.float64, copy=False)
    y = out["y_um"].astype(np.float64, copy=False)
    out["x_stage_um"] = x
    out["y_stage_um"] = y
    out["x_um"] = x - sx + (w - 1) / 2 * px
    out["y_um"] = y - sy + (h - 1) / 2 * px
    t = out["t_s"].astype(np.float64, copy=False)
    out["t_camera_s"] = t
    out["t_s"] = t - run_start_s(run)
    out["t_frame_s"] = frames * (frame_interval(run) if dt is None else float(dt))
    out["flags"] = localization_flags(
        locs, pixel_size_um=px, overlap=overlap_px(run.attrs)
    )
    df = pd.DataFrame(out, index=locs.index, copy=False)
    return df


def table_units(columns: Any) -> dict[str, str]:
    """Units of ``columns`` that have one (see
    :data:`axialtrack.store.layout.COLUMN_UNITS`)."""
    return units_of(columns)

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

__all__ = [
    "frame_interval",
    "plane1_affine_px",
    "plane1_world_affine",
    "run_start_s",
    "table_units",
    "world_localizations",
]


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


def _affine_2x3(value: Any) -> np.ndarray | None:
    """``value`` as a finite, invertible ``(2, 3)`` affine, else None."""
    try:
        a = np.asarray(value, dtype=np.float64).reshape(2, 3)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(a).all() or abs(np.linalg.det(a[:, :2])) < 1e-9:
        return None
    return a


def plane1_affine_px(attrs: Any) -> np.ndarray:
    """The plane-0 -> plane-1 registration of a run, ``(2, 3)`` on ``(x, y)``
    pixels (plane 1 as stored: split and un-mirrored, so the flip is already
    undone; this is the residual shift, rotation and scale).

    Taken from, in order: the run's ``registration.affine``, its model's
    ``registration.affine`` (the bundle the live analysis cropped plane 1
    with), the splitter geometry (:meth:`axialtrack.geometry.SplitterGeometry.
    plane1_affine`); the identity where none is recorded.
    """
    from axialtrack.geometry import SplitterGeometry

    attrs = attrs if isinstance(attrs, dict) else {}
    for holder in (attrs, attrs.get("model")):
        reg = holder.get("registration") if isinstance(holder, dict) else None
        a = _affine_2x3(reg.get("affine")) if isinstance(reg, dict) else None
        if a is not None:
            return a
    splitter = attrs.get("splitter")
    shape = attrs.get("plane_shape")
    if isinstance(splitter, dict) and isinstance(shape, (list, tuple)):
        try:
            geo = SplitterGeometry(**splitter)
            a = _affine_2x3(geo.plane1_affine((int(shape[0]), int(shape[1]))))
        except (TypeError, ValueError):
            a = None
        if a is not None:
            return a
    return np.eye(2, 3)


def plane1_world_affine(attrs: Any) -> np.ndarray:
    """The ``(4, 4)`` affine on ``(t, y_um, x_um)`` that puts plane 1 in the
    world frame of plane 0: a bead at plane-0 pixel ``p0`` lies at plane-1
    pixel ``A p0 + b`` (:func:`plane1_affine_px`); this maps plane-1
    micrometres ``px * p1`` back to ``px * p0``. Applied after the image's
    ``(dt, px, px)`` scale (napari's ``affine``)."""
    from axialtrack.geometry import invert_affine

    inv = invert_affine(plane1_affine_px(attrs))  # plane-1 px -> plane-0 px
    px = float(attrs.get("pixel_size_um", 1.0)) if isinstance(attrs, dict) else 1.0
    out = np.eye(4)
    # rows and columns (y, x) = indices (1, 2); the matrix acts on (x, y)
    out[1, 1], out[1, 2], out[1, 3] = inv[1, 1], inv[1, 0], px * inv[1, 2]
    out[2, 1], out[2, 2], out[2, 3] = inv[0, 1], inv[0, 0], px * inv[0, 2]
    return out

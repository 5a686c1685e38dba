"""Open a run store in napari: planes, localizations and tracks in one world frame."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from axialtrack.store import StoreError, open_run, read_attrs
from axialtrack.store.world import (
    frame_interval,
    plane1_world_affine,
    world_localizations,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from axialtrack.store import Run

__all__ = ["get_reader", "image_windows", "read_run", "run_layers"]

LayerData = tuple[Any, dict[str, Any], str]

#: colormaps of plane 0 and plane 1 (as the OME ``omero`` colors)
PLANE_COLORMAPS = ("green", "magenta")
#: the stored localization columns the layers read (positions, times, the
#: features, what the quality flags derive from); a long run's other columns
#: stay on disk until asked for (``open_run(path).localizations``)
LAYER_COLUMNS = (
    "frame",
    "t_s",
    "x_um",
    "y_um",
    "z_um",
    "dz_um",
    "sigma_z_um",
    "photons",
    "background",
    "track_id",
    "flags",
    "saturated",
    "in_range",
    "neighbour_px",
)
#: the features of the tracks layer (the points layer has every column read)
TRACK_FEATURES = ("z_um", "dz_um", "sigma_z_um", "photons", "t_s", "flags")
#: point size, in pixels of the image
POINT_SIZE_PX = 3.0


def get_reader(path: str | list[str]) -> Callable[..., list[LayerData]] | None:
    """npe2 reader hook: :func:`read_run` for a run store's path, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        read_attrs(Path(os.fspath(path)))
    except (StoreError, OSError):
        return None
    return read_run


def read_run(path: str | list[str]) -> list[LayerData]:
    """The layers of the run store at ``path`` (see :func:`run_layers`)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return run_layers(open_run(os.fspath(path)))


def image_windows(run: Run) -> list[tuple[float, float]]:
    """Per plane ``(start, end)`` of the OME ``omero`` window (the store's root,
    else ``frames``); where neither has one from the data, the range of the
    first committed frame."""
    out: list[tuple[float, float]] = []
    for where in (run.path, run.path / "frames"):
        try:
            meta = json.loads((where / "zarr.json").read_text(encoding="utf-8"))
            channels = meta["attributes"]["ome"]["omero"]["channels"]
            out = [
                (float(c["window"]["start"]), float(c["window"]["end"]))
                for c in channels
            ]
            break
        except (OSError, KeyError, TypeError, ValueError):
            continue
    if len(out) != 2 or out == [(0.0, 65535.0)] * 2:
        if run.n_frames:
            f = run.frames[0]
            out = [
                (float(f[p].min()), float(max(f[p].max(), f[p].min() + 1)))
                for p in range(2)
            ]
        else:
            out = [(0.0, 65535.0)] * 2
    return out


class _PlaneView:
    """Plane ``plane`` of the first ``n`` frames of a ``(T, 2, H, W)`` array,
    as a ``(n, H, W)`` array-like that dask wraps without slicing (a slice of
    a dask array with one chunk per frame costs a graph key per frame)."""

    def __init__(self, array: Any, plane: int, n: int) -> None:
        self._array = array
        self._plane = plane
        self.shape = (int(n), *array.shape[2:])
        self.dtype = array.dtype
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        return np.asarray(self._array[key[0], self._plane, key[1], key[2]])


def _plane_data(run: Run, plane: int) -> Any:
    """Plane ``plane`` of the committed frames, ``(T, H, W)``, as a dask array
    with one chunk per frame (nothing is read until a frame is shown)."""
    import dask.array as da

    # the run's FrameArray, not its zarr array: it reads again a shard whose
    # index a running writer was rewriting
    view = _PlaneView(run.frames, plane, run.n_frames)
    return da.from_array(
        view, chunks=(1, *view.shape[1:]), asarray=False, fancy=False, name=False
    )


def run_layers(
    run: Run, *, localizations: bool = True, tracks: bool = True
) -> list[LayerData]:
    """napari layer data of ``run``, co-registered in its world frame.

    - ``<name> plane 0``, ``<name> plane 1``: image layers ``(T, H, W)``, scale
      ``(dt, px, px)`` (seconds, micrometres), translation 0, contrast limits
      from the OME window, read lazily; plane 1 carries the plane registration
      as its ``affine`` (:func:`axialtrack.store.world.plane1_world_affine`),
      so a bead lies at the same world position in both planes;
    - ``<name> localizations``: points ``[frame, y_um, x_um]`` with scale
      ``(dt, 1, 1)``, colored by ``z_um``; features ``z_um``, ``sigma_z_um``,
      ``photons``, ``track_id`` and the others (world-frame ``t_s``);
    - ``<name> tracks``: tracks ``[track_id, frame, y_um, x_um]``, scale
      ``(dt, 1, 1)``, colored by ``z_um``.

    A point of frame ``k`` at pixel ``(r, c)`` of plane 0 lies at world
    ``(k * dt, r * px, c * px)``, where the image layers show that pixel.
    """
    name = run.path.stem
    dt = frame_interval(run)
    px = run.pixel_size_um
    meta_common = {"axialtrack_path": str(run.path), "frame_interval_s": dt}
    layers: list[LayerData] = []
    windows = image_windows(run)
    for p in range(2):
        layers.append(
            (
                _plane_data(run, p),
                {
                    "name": f"{name} plane {p}",
                    "scale": (dt, px, px),
                    "translate": (0.0, 0.0, 0.0),
                    # plane 1 registered onto plane 0 (identity for plane 0)
                    "affine": np.eye(4) if p == 0 else plane1_world_affine(run.attrs),
                    "contrast_limits": windows[p],
                    "colormap": PLANE_COLORMAPS[p],
                    "blending": "additive",
                    "axis_labels": ("t", "y", "x"),
                    "units": ("second", "micrometer", "micrometer"),
                    "metadata": {**meta_common, "axialtrack_layer": f"plane {p}"},
                },
                "image",
            )
        )
    locs = (
        world_localizations(run, run.read_localizations(LAYER_COLUMNS), dt=dt)
        if (localizations or tracks)
        else None
    )
    if localizations and locs is not None and len(locs):
        layers.append(points_layer(locs, name=name, dt=dt, px=px, meta=meta_common))
    if tracks and locs is not None:
        layer = tracks_layer(locs, name=name, dt=dt, meta=meta_common)
        if layer is not None:
            layers.append(layer)
    return layers


def _features(
    locs: pd.DataFrame, skip: set[str], rows: np.ndarray | None = None
) -> pd.DataFrame:
    """The numeric and bool columns of ``locs`` (of ``rows`` only, in that
    order), built from the column arrays: no consolidating copy of the table."""
    import pandas as pd

    cols = {}
    for c in locs.columns:
        v = locs[c].to_numpy()
        if c in skip or not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
            continue
        cols[c] = v if rows is None else v[rows]
    return pd.DataFrame(cols, copy=False)


def points_layer(
    locs: pd.DataFrame, *, name: str, dt: float, px: float, meta: dict[str, Any]
) -> LayerData:
    """The points layer of world-frame localizations (see :func:`run_layers`)."""
    data = np.column_stack(
        [
            locs["frame"].to_numpy(dtype=np.float64),
            locs["y_um"].to_numpy(dtype=np.float64),
            locs["x_um"].to_numpy(dtype=np.float64),
        ]
    )
    return (
        data,
        {
            "name": f"{name} localizations",
            "scale": (dt, 1.0, 1.0),
            "features": _features(locs, set()),
            "face_color": "z_um",
            "face_colormap": "turbo",
            "border_width": 0.0,
            "size": POINT_SIZE_PX * px,
            "axis_labels": ("t", "y", "x"),
            "units": ("second", "micrometer", "micrometer"),
            "metadata": {**meta, "axialtrack_layer": "localizations"},
        },
        "points",
    )


def tracks_layer(
    locs: pd.DataFrame, *, name: str, dt: float, meta: dict[str, Any]
) -> LayerData | None:
    """The tracks layer of world-frame localizations (rows with ``track_id >=
    0``), or None if there is no track."""
    tid = locs["track_id"].to_numpy()
    rows = np.flatnonzero(tid >= 0)
    if rows.size == 0:
        return None
    # the rows in (track_id, frame) order, each column taken once
    frame = locs["frame"].to_numpy()
    rows = rows[np.lexsort((frame[rows], tid[rows]))]
    data = np.column_stack(
        [
            tid[rows].astype(np.float64),
            frame[rows].astype(np.float64),
            locs["y_um"].to_numpy(dtype=np.float64)[rows],
            locs["x_um"].to_numpy(dtype=np.float64)[rows],
        ]
    )
    # what a track vertex shows and is colored by (each column is taken in
    # track order: a million rows cost ~10 ms a column)
    keep = [c for c in TRACK_FEATURES if c in locs.columns]
    features = _features(locs[keep], set(), rows)
    return (
        data,
        {
            "name": f"{name} tracks",
            "scale": (dt, 1.0, 1.0),
            "features": features,
            "color_by": "z_um",
            "colormap": "turbo",
            "tail_length": 30,
            "axis_labels": ("t", "y", "x"),
            "units": ("second", "micrometer", "micrometer"),
            "metadata": {**meta, "axialtrack_layer": "tracks"},
        },
        "tracks",
    )

"""Save a tracks layer as CSV in the world frame (npe2 writer)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["write_tracks"]


def write_tracks(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a tracks layer to ``path`` (CSV).

    Columns ``track_id``, ``frame``, ``t_frame_s`` (the layer's time: ``frame *``
    its time scale), ``y_um``, ``x_um`` (the layer's world coordinates), then
    the layer's features. Layers from another source are written the same
    way, in their own world units.
    """
    import pandas as pd

    arr = np.asarray(data, dtype=np.float64)
    scale = np.asarray(attributes.get("scale") or np.ones(arr.shape[1] - 1))
    translate = np.asarray(attributes.get("translate") or np.zeros(arr.shape[1] - 1))
    world = arr[:, 1:] * scale + translate
    cols: dict[str, Any] = {
        "track_id": arr[:, 0].astype(np.int64),
        "frame": arr[:, 1].astype(np.int64),
        "t_frame_s": world[:, 0],
    }
    spatial = ["z_um", "y_um", "x_um"][-(arr.shape[1] - 2) :]
    for i, c in enumerate(spatial):
        cols[c] = world[:, 1 + i]
    table = pd.DataFrame(cols)
    feats = attributes.get("features")
    if feats is not None and len(feats) == len(table):
        extra = pd.DataFrame(feats).reset_index(drop=True)
        extra = extra[[c for c in extra.columns if c not in table.columns]]
        table = pd.concat([table, extra], axis=1)
    if not str(path).lower().endswith(".csv"):
        path = f"{path}.csv"
    table.to_csv(path, index=False)
    return [os.fspath(path)]

"""A calibration result in its run store: the QC summary, registration, bead
table and examples (:func:`write_qc`), the rig record (:func:`write_rig`) and
the bead table read back (:func:`read_beads`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import zarr

from axialtrack.geometry import Z_CONVENTION

from .examples import save_examples

if TYPE_CHECKING:
    from .analysis import CalibrationResult
    from .stack import CalibrationStack

__all__ = ["read_beads", "write_qc", "write_rig"]


def write_qc(
    result: CalibrationResult,
    store: str | Path | zarr.Group,
    *,
    examples: bool = True,
) -> None:
    """Write the QC summary, registration, bead table (and examples) into a store.

    The summary goes to the root attributes ``axialtrack_calibration`` (JSON);
    the affine, the registration pairs and one array per bead-table column go
    to the ``calibration/`` group (``calibration/registration/affine``,
    ``calibration/registration/pairs``, ``calibration/beads/<column>``). With
    ``examples`` the training examples go to ``calibration/examples/``
    (:func:`~axialtrack.calibrate.save_examples`).
    """
    root = (
        store
        if isinstance(store, zarr.Group)
        else zarr.open_group(str(store), mode="a")
    )
    root.attrs["axialtrack_calibration"] = json.loads(json.dumps(result.qc))
    grp = root.require_group("calibration")
    for name in ("registration", "beads"):
        if name in grp:
            del grp[name]
    rg = grp.create_group("registration")
    rg.create_array("affine", data=np.asarray(result.registration.affine, float))
    pairs = np.asarray(result.registration.pairs, float)
    rg.create_array("pairs", data=pairs, chunks=(max(1, len(pairs)), 5))
    rg.attrs["residual_nm"] = result.registration.residual_nm
    rg.attrs["n_matched"] = result.registration.n_matched
    rg.attrs["direction"] = "plane0_to_plane1"
    bg = grp.create_group("beads")
    n = len(result.beads)
    categories: dict[str, list[str]] = {}
    for col in result.beads.columns:
        v = result.beads[col].to_numpy()
        if v.dtype == object:  # text columns as int8 codes + category list
            cats = sorted({str(x) for x in v})
            categories[col] = cats
            arr = np.array([cats.index(str(x)) for x in v], dtype=np.int8)
        else:
            arr = np.asarray(v)
        bg.create_array(col, data=arr, chunks=(max(1, n),))
    bg.attrs["n_rows"] = n
    bg.attrs["columns"] = [str(c) for c in result.beads.columns]
    bg.attrs["categories"] = categories
    if examples:
        save_examples(root, result.examples)


def write_rig(
    result: CalibrationResult,
    stack: CalibrationStack,
    store: str | Path | zarr.Group,
    *,
    camera: dict[str, Any],
    camera_source: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Record the rig a calibration was made with in a store: what a model
    bundle trained from it needs, whatever the calibration's source.

    The root attribute ``axialtrack_rig`` gets ``pixel_size_um``, ``splitter``
    (layout, plane offset, the mirror found from the beads, ...),
    ``plane_shape``, ``crop_size``, ``camera`` (the fields of
    :class:`~axialtrack.pipeline.config.CameraCalibration`), ``camera_source``
    (where each camera field came from), ``z_convention`` and
    ``ref_z_method``; a run store's ``axialtrack`` attributes get ``camera``
    too. Returns the record.
    """
    root = (
        store
        if isinstance(store, zarr.Group)
        else zarr.open_group(str(store), mode="a")
    )
    analyzed = result.stack or stack
    rec: dict[str, Any] = {
        "pixel_size_um": float(analyzed.pixel_size_um),
        "splitter": analyzed.geometry.model_dump(mode="json"),
        "plane_shape": [int(v) for v in analyzed.plane_shape],
        "crop_size": int(result.crop_size),
        "camera": dict(camera),
        "camera_source": dict(camera_source or {}),
        "z_convention": Z_CONVENTION,
        "ref_z_method": result.method,
    }
    rec = json.loads(json.dumps(rec))
    root.attrs["axialtrack_rig"] = rec
    attrs = root.attrs.asdict()
    run = attrs.get("axialtrack")
    if isinstance(run, dict):
        root.attrs["axialtrack"] = {**run, "camera": rec["camera"]}
    return rec


def read_beads(store: str | Path | zarr.Group) -> pd.DataFrame:
    """Read back the bead table written by :func:`write_qc`."""
    root = (
        store
        if isinstance(store, zarr.Group)
        else zarr.open_group(str(store), mode="r")
    )
    bg = cast("zarr.Group", root["calibration/beads"])
    attrs: dict[str, Any] = dict(bg.attrs.asdict())
    cats: dict[str, list[str]] = dict(attrs.get("categories", {}))
    out = {}
    for col in list(attrs["columns"]):
        v = np.asarray(cast("zarr.Array", bg[str(col)])[...])
        if col in cats:
            v = np.asarray(cats[col], dtype=object)[v.astype(np.int64)]
        out[str(col)] = v
    return pd.DataFrame(out)

"""A calibration run store (``axialtrack calibrate``) read as a
:class:`~axialtrack.calibrate.stack.CalibrationStack`, with its recorded stage
positions, splitter geometry, camera and (simulated runs) ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.calibrate.stack import CalibrationStack
from axialtrack.geometry import SplitterGeometry

from ._zaxis import _REL_TOL, MIN_Z_STEPS
from .errors import import_error as _err

_TRUTH_GROUP = "truth"


def read_truth(path: str | Path) -> list[np.ndarray] | None:
    """Ground truth of a simulated calibration run, one structured array per field.

    Returns ``None`` when the store has no ``truth/`` group (real data).
    """
    import zarr

    p = Path(path)
    if not (p / _TRUTH_GROUP / "zarr.json").is_file():
        return None
    group = zarr.open_group(str(p / _TRUTH_GROUP), mode="r")
    cols = {
        name: np.asarray(arr[...])
        for name, arr in group.arrays()
        if isinstance(arr, zarr.Array)
    }
    if "field" not in cols:
        return None
    names = [c for c in group.attrs.get("columns", sorted(cols)) if c != "field"]  # type: ignore[union-attr]
    dtype = np.dtype([(c, cols[c].dtype) for c in names if c in cols])
    field = cols["field"]
    n_fields = int(field.max()) + 1 if field.size else 0
    out = []
    for f in range(n_fields):
        sel = field == f
        rows = np.empty(int(sel.sum()), dtype=dtype)
        for c in dtype.names or ():
            rows[c] = cols[c][sel]
        out.append(rows)
    return out


def _load_run(
    path: Path,
    *,
    z_step_um: float | None,
    plane_offset_um: float | None,
    pixel_size_um: float | None,
) -> CalibrationStack:
    from axialtrack.store import open_run

    run = open_run(path)
    if run.kind != "calibration":
        raise _err(
            path,
            f"a {run.kind!r} run store, not a calibration run",
            "pass the store written by 'axialtrack calibrate'",
        )
    meta = run.frame_meta
    n = len(meta)
    if n == 0:
        raise _err(path, "the run holds no frames", "acquire the calibration again")
    frames = np.asarray(run.frames[:n])
    pos = meta["position_index"].to_numpy()
    fields = list(dict.fromkeys(int(p) for p in pos))
    counts = {f: int((pos == f).sum()) for f in fields}
    n_z = max(counts.values())
    complete = [f for f in fields if counts[f] == n_z]
    dropped = [f for f in fields if counts[f] != n_z]
    if n_z < MIN_Z_STEPS:
        raise _err(
            path,
            f"only {n_z} frame(s) per field; a calibration needs at least "
            f"{MIN_Z_STEPS} Z steps",
            "acquire a longer Z range or a smaller step",
        )
    idx = [np.flatnonzero(pos == f) for f in complete]
    stack = np.stack([frames[i] for i in idx])
    z = np.stack([meta["stage_z_um"].to_numpy()[i] for i in idx])
    if not np.all(np.isfinite(z)):
        raise _err(
            path,
            "frames without a stage Z position",
            "re-acquire with a focus device that reports its position",
        )
    xy = np.stack(
        [
            [
                np.nanmean(meta["stage_x_um"].to_numpy()[i])
                if np.isfinite(meta["stage_x_um"].to_numpy()[i]).any()
                else 0.0,
                np.nanmean(meta["stage_y_um"].to_numpy()[i])
                if np.isfinite(meta["stage_y_um"].to_numpy()[i]).any()
                else 0.0,
            ]
            for i in idx
        ]
    )
    if z_step_um is not None:
        measured = float(np.median(np.diff(z, axis=1)))
        if abs(measured - z_step_um) > _REL_TOL * abs(z_step_um) + 0.005:
            raise _err(
                path,
                f"the recorded stage Z moves {measured:.4f} um per frame, not the "
                f"given z_step_um={z_step_um}",
                "leave z_step_um out for a run store (its stage Z is recorded)",
            )
    splitter = dict(run.attrs.get("splitter") or {})
    geometry = SplitterGeometry(**splitter) if splitter else SplitterGeometry()
    if plane_offset_um is not None:
        geometry = geometry.model_copy(update={"plane_offset_um": plane_offset_um})
    truth = read_truth(path)
    if truth is not None:
        truth = [truth[f] if f < len(truth) else truth[0][:0] for f in complete]
    px = pixel_size_um if pixel_size_um is not None else run.pixel_size_um
    return CalibrationStack(
        frames=stack,
        stage_z_um=z,
        pixel_size_um=float(px),
        geometry=geometry,
        stage_xy_um=xy,
        source=str(path),
        truth=truth,
        meta={
            "layout": "run-store",
            "acquisition": run.attrs.get("acquisition"),
            "rig": run.attrs.get("rig"),
            "state": run.state,
            "field_indices": complete,
            "dropped_fields": dropped,
            **_camera_meta(run.attrs.get("camera")),
        },
    )


def _camera_meta(camera: Any) -> dict[str, float]:
    """The stack meta entries (``offset_adu``, ``gain_e_per_adu``,
    ``read_noise_e``) of the camera a run store records, for the analysis."""
    if not isinstance(camera, dict):
        return {}
    names = {
        "offset_adu": "offset_adu",
        "e_per_adu": "gain_e_per_adu",
        "read_noise_e": "read_noise_e",
    }
    out = {}
    for key, name in names.items():
        v = camera.get(key)
        if isinstance(v, int | float):
            out[name] = float(v)
    return out

"""Import calibration Z-stacks as :class:`~axialtrack.calibrate.stack.CalibrationStack`.

:func:`load_stack` reads

- a calibration run store (``axialtrack calibrate``), with its stage positions,
  splitter geometry and, for simulated runs, the beads' ground truth;
- an OME-TIFF / TIFF, a ``.npy`` file or a plain zarr array holding one camera
  frame per Z step, in one of the :data:`IMPORT_LAYOUTS`.

Every problem raises :class:`StackImportError` (or ``FileNotFoundError``) naming
the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import numpy as np

from axialtrack.calibrate.stack import CalibrationStack
from axialtrack.geometry import SplitterGeometry, split_frame, unmirror

__all__ = [
    "IMPORT_LAYOUTS",
    "MIN_Z_STEPS",
    "ImportLayout",
    "StackImportError",
    "load_stack",
    "read_truth",
]

ImportLayout = Literal[
    "side-by-side", "top-bottom", "two-files", "single-plane-pairs", "dual-plane"
]
IMPORT_LAYOUTS: tuple[str, ...] = (
    "side-by-side",
    "top-bottom",
    "two-files",
    "single-plane-pairs",
    "dual-plane",
)
"""How the planes lie in an imported stack.

``side-by-side`` / ``top-bottom``: each frame is the raw sensor image of a
single-camera splitter. ``two-files``: one file per plane (``second_path``).
``single-plane-pairs``: a single-plane stack; plane 0 is frame ``k`` and plane 1
frame ``k + round(delta / step)``. ``dual-plane``: already split, a plane axis of
length 2 before ``(H, W)``.
"""

MIN_Z_STEPS = 3
"""Fewest Z steps per field a calibration stack may have."""

_TRUTH_GROUP = "truth"
_REL_TOL = 0.01


class StackImportError(ValueError):
    """A calibration stack that cannot be imported (the message names the fix)."""


def _err(path: Path | str, problem: str, fix: str) -> StackImportError:
    return StackImportError(f"{path}: {problem}. Fix: {fix}")


# ------------------------------------------------------------------ readers
def _is_run_store(path: Path) -> bool:
    zj = path / "zarr.json"
    if not zj.is_file():
        return False
    try:
        doc = json.loads(zj.read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") or {}
    return isinstance(attrs, dict) and "axialtrack" in attrs


def _ome_info(xml: str | None) -> dict[str, Any]:
    """Pixel size, Z step and per-plane Z positions from OME-XML (if any)."""
    info: dict[str, Any] = {}
    if not xml:
        return info
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return info
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return info
    for key, name in (("PhysicalSizeX", "pixel_size_um"), ("PhysicalSizeZ", "dz")):
        if (v := pixels.get(key)) is not None:
            with contextlib.suppress(ValueError):
                info[name] = float(v)
    zs: dict[int, float] = {}
    for el in pixels:
        if el.tag.endswith("Plane") and el.get("PositionZ") is not None:
            try:
                zs.setdefault(int(el.get("TheZ", 0)), float(el.get("PositionZ", "")))
            except ValueError:
                continue
    if len(zs) > 1:
        info["z_positions"] = np.array([zs[k] for k in sorted(zs)])
    return info


def _read_array(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file or zarr array; return the array and metadata."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or directory. Fix: check the path of the "
            "calibration stack"
        )
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zarr"):
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:
            raise _err(
                path,
                f"not a zarr array or group ({type(exc).__name__}: {exc})",
                "pass a TIFF, a .npy file, a zarr array or a calibration run store",
            ) from None
        if isinstance(node, zarr.Group):
            arr = node.get("0")
            if not isinstance(arr, zarr.Array):
                raise _err(
                    path,
                    "a zarr group without an image array '0'",
                    "pass the zarr array itself (e.g. PATH/0) or a run store",
                )
            node = arr
        return np.asarray(node[...]), {}
    if name.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False), {}
        except Exception as exc:
            raise _err(
                path, f"not a readable .npy array ({exc})", "re-save it"
            ) from None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
            info = _ome_info(tif.ome_metadata)
            axes = tif.series[0].axes
    except Exception as exc:
        raise _err(
            path,
            f"not a readable image ({type(exc).__name__}: {exc})",
            "pass an OME-TIFF/TIFF, a .npy file, a zarr array or a run store",
        ) from None
    info["axes"] = axes
    return data, info


# ---------------------------------------------------------------- run stores
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
        },
    )


# ------------------------------------------------------------- image stacks
def _as_fields(data: np.ndarray, core_ndim: int, path: Path, what: str) -> np.ndarray:
    """``(P, Z, *core)`` from an array with an optional leading field axis."""
    while data.ndim > core_ndim + 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == core_ndim + 1:
        return data[None]
    if data.ndim == core_ndim + 2:
        return data
    raise _err(
        path,
        f"an array of shape {data.shape}; {what} needs {core_ndim + 1} "
        f"dimensions (Z, ...) or {core_ndim + 2} (fields, Z, ...)",
        "save one frame per Z step (multi-field: a leading field axis)",
    )


def _z_positions(
    n_z: int,
    path: Path,
    info: dict[str, Any],
    z_step_um: float | None,
    z_range_um: float | None,
    z_start_um: float,
) -> np.ndarray:
    step = z_step_um
    if step is not None and not step > 0:
        raise _err(path, f"z_step_um={step}", "pass a positive Z step (um)")
    if z_range_um is not None:
        if step is None:
            step = z_range_um / (n_z - 1)
        else:
            expected = z_range_um / step + 1
            if abs(expected - n_z) > 0.5:
                raise _err(
                    path,
                    f"{n_z} frames per field, but a Z range of {z_range_um} um at "
                    f"{step} um steps makes {expected:.1f}",
                    "check z_range_um and z_step_um against the frame count "
                    "(range = (frames - 1) x step), or pass only one of them",
                )
    recorded = info.get("z_positions")
    if recorded is not None and len(recorded) == n_z:
        measured = float(np.median(np.diff(recorded)))
        if step is not None and abs(measured - step) > _REL_TOL * step + 1e-6:
            raise _err(
                path,
                f"the file's stage Z positions move {measured:.4f} um per frame, "
                f"not the given {step} um",
                "pass the step the stack was recorded with, or leave z_step_um out",
            )
        return np.asarray(recorded, dtype=float)
    if step is None:
        step = info.get("dz")
    if step is None:
        raise _err(
            path,
            "the Z step is unknown (no PhysicalSizeZ in the file)",
            "pass z_step_um= (the stage step between frames, um)",
        )
    dz = info.get("dz")
    if (
        dz is not None
        and z_step_um is not None
        and abs(dz - z_step_um) > _REL_TOL * z_step_um
    ):
        raise _err(
            path,
            f"the file says the Z step is {dz} um, not the given {z_step_um} um",
            "pass the step the stack was recorded with",
        )
    return z_start_um + np.arange(n_z) * float(step)


def load_stack(
    path: str | Path,
    *,
    layout: str | None = None,
    z_step_um: float | None = None,
    plane_offset_um: float | None = None,
    pixel_size_um: float | None = None,
    z_start_um: float = 0.0,
    z_range_um: float | None = None,
    second_path: str | Path | None = None,
    mirror: str = "none",
) -> CalibrationStack:
    """Load a calibration Z-stack from a run store or an image file.

    Parameters
    ----------
    path
        A calibration run store (``*.zarr`` written by ``axialtrack calibrate``),
        an OME-TIFF/TIFF, a ``.npy`` file or a zarr array: one camera frame per Z
        step, ``(Z, ...)`` or with a leading field axis ``(P, Z, ...)``.
    layout
        One of :data:`IMPORT_LAYOUTS`; ``None`` for a run store, or ``dual-plane``
        when the array has a plane axis of 2.
    z_step_um
        Stage step between frames (default: the file's ``PhysicalSizeZ``).
    plane_offset_um
        Delta: plane 1 is in focus at ``stage_z + plane_offset_um``. Required for
        image files; for a run store it overrides the recorded one.
    pixel_size_um
        Sample-plane pixel size (default: the file's ``PhysicalSizeX``).
    z_start_um
        Stage Z of the first frame.
    z_range_um
        Optional check: the scanned range ``(frames - 1) x step``.
    second_path
        Plane-1 file for ``layout="two-files"``.
    mirror
        Flip of plane 1 (``"none"``, ``"horizontal"``, ``"vertical"``) to undo.

    Returns
    -------
    CalibrationStack

    Raises
    ------
    FileNotFoundError
        A file does not exist.
    StackImportError
        Not an image, a layout that does not fit the image, Z metadata that
        disagrees, too few frames.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: no such file or directory. Fix: check the path of the "
            "calibration stack"
        )
    if p.is_dir() and _is_run_store(p):
        if layout not in (None, "run-store"):
            raise _err(
                p, f"a run store, but layout={layout!r} was given", "leave layout out"
            )
        return _load_run(
            p,
            z_step_um=z_step_um,
            plane_offset_um=plane_offset_um,
            pixel_size_um=pixel_size_um,
        )

    data, info = _read_array(p)
    if data.dtype.kind not in "uif":
        raise _err(p, f"pixel type {data.dtype} is not numeric", "save pixel values")
    if layout is None:
        if data.ndim >= 4 and data.shape[-3] == 2:
            layout = "dual-plane"
        else:
            raise _err(
                p,
                f"the layout of an array of shape {data.shape} is unknown",
                f"pass layout= one of {', '.join(IMPORT_LAYOUTS)}",
            )
    layout = layout.strip().lower().replace("_", "-")
    if layout not in IMPORT_LAYOUTS:
        raise _err(
            p, f"unknown layout {layout!r}", f"use one of {', '.join(IMPORT_LAYOUTS)}"
        )
    if plane_offset_um is None:
        raise _err(
            p,
            "the plane offset is unknown",
            "pass plane_offset_um= (delta: plane 1 is in focus at stage Z + delta)",
        )
    if second_path is not None and layout != "two-files":
        raise _err(
            p,
            f"second_path given with layout {layout!r}",
            "use layout='two-files' for one file per plane",
        )
    px = pixel_size_um if pixel_size_um is not None else info.get("pixel_size_um")
    if px is None or not px > 0:
        raise _err(
            p,
            "the pixel size is unknown (no PhysicalSizeX in the file)",
            "pass pixel_size_um= (sample-plane pixel size, um)",
        )
    sensor_layout = (
        layout if layout in ("side-by-side", "top-bottom") else "two-cameras"
    )
    try:
        geometry = SplitterGeometry(
            layout=sensor_layout, plane_offset_um=plane_offset_um, mirror=mirror
        )
    except ValueError as exc:
        raise _err(
            p, str(exc).splitlines()[0], "check plane_offset_um and mirror"
        ) from None

    meta: dict[str, Any] = {"layout": layout}
    if layout in ("side-by-side", "top-bottom"):
        raw = _as_fields(data, 2, p, f"layout {layout!r}")
        try:
            geometry.plane_shape(raw.shape[-2:])
        except ValueError as exc:
            raise _err(
                p,
                f"frames of {raw.shape[-2]} x {raw.shape[-1]} px do not fit layout "
                f"{layout!r}: {exc}",
                "check the layout (side-by-side needs an even width, top-bottom an "
                "even height)",
            ) from None
        frames = split_frame(raw, geometry)
    elif layout == "dual-plane":
        frames = _as_fields(data, 3, p, "layout 'dual-plane'")
        if frames.shape[2] != 2:
            raise _err(
                p,
                f"layout 'dual-plane' needs a plane axis of 2; got shape {data.shape}",
                "save (Z, 2, H, W), or pass the sensor layout",
            )
        if mirror != "none":
            frames = frames.copy()
            frames[:, :, 1] = unmirror(frames[:, :, 1], geometry.mirror)
    elif layout == "two-files":
        if second_path is None:
            raise _err(
                p,
                "layout 'two-files' needs the plane-1 file",
                "pass second_path= (the stack of the second camera / plane 1)",
            )
        p2 = Path(second_path).expanduser()
        data2, _ = _read_array(p2)
        a = _as_fields(data, 2, p, "layout 'two-files'")
        b = _as_fields(data2, 2, p2, "layout 'two-files'")
        if a.shape != b.shape:
            raise _err(
                p,
                f"shape {a.shape} differs from {p2}'s {b.shape}",
                "pass two stacks of the same fields, Z steps and frame size",
            )
        frames = np.stack([a, unmirror(b, geometry.mirror)], axis=2)
        meta["second_path"] = str(p2)
    else:  # single-plane-pairs
        single = _as_fields(data, 2, p, "layout 'single-plane-pairs'")
        n = single.shape[1]
        z_all = _z_positions(n, p, info, z_step_um, z_range_um, z_start_um)
        step = float(np.median(np.diff(z_all))) if n > 1 else float("nan")
        ratio = plane_offset_um / step
        k = round(ratio)
        if k == 0 or abs(k * step - plane_offset_um) > _REL_TOL * abs(plane_offset_um):
            raise _err(
                p,
                f"plane_offset_um={plane_offset_um} is {ratio:.3f} Z steps of "
                f"{step:g} um, not a whole number of steps (within 1 %)",
                "pass a delta that is a multiple of the Z step, or resample the stack",
            )
        lo, hi = max(0, -k), n - max(0, k)
        if hi - lo < MIN_Z_STEPS:
            raise _err(
                p,
                f"{n} frames make only {max(hi - lo, 0)} pairs {k} frames apart; a "
                f"calibration needs at least {MIN_Z_STEPS}",
                "record a longer Z range than the plane offset",
            )
        frames = np.stack([single[:, lo:hi], single[:, lo + k : hi + k]], axis=2)
        geometry = geometry.model_copy(update={"plane_offset_um": k * step})
        meta.update(pair_offset_frames=k, requested_plane_offset_um=plane_offset_um)
        z = np.broadcast_to(z_all[lo:hi], frames.shape[:2]).copy()
        return _finish(frames, z, float(px), geometry, p, meta)

    n_z = frames.shape[1]
    z_all = _z_positions(n_z, p, info, z_step_um, z_range_um, z_start_um)
    z = np.broadcast_to(z_all, frames.shape[:2]).copy()
    return _finish(frames, z, float(px), geometry, p, meta)


def _finish(
    frames: np.ndarray,
    z: np.ndarray,
    px: float,
    geometry: SplitterGeometry,
    path: Path,
    meta: dict[str, Any],
) -> CalibrationStack:
    if frames.shape[1] < MIN_Z_STEPS:
        raise _err(
            path,
            f"only {frames.shape[1]} Z step(s) per field; a calibration needs at "
            f"least {MIN_Z_STEPS}",
            "record a longer Z range or a smaller step",
        )
    if not math.isfinite(px):
        raise _err(path, "the pixel size is not finite", "pass pixel_size_um=")
    return CalibrationStack(
        frames=np.ascontiguousarray(frames),
        stage_z_um=z,
        pixel_size_um=px,
        geometry=geometry,
        source=str(path),
        meta=meta,
    )

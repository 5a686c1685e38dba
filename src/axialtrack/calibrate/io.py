"""Import calibration Z-stacks as :class:`~axialtrack.calibrate.stack.CalibrationStack`.

:func:`load_stack` reads

- a calibration run store (``axialtrack calibrate``), with its stage positions,
  splitter geometry and, for simulated runs, the beads' ground truth;
- an OME-TIFF / TIFF (also Micro-Manager MMStack), an NDTiff dataset, an
  OME-Zarr image, a ``.npy`` file or a plain zarr array holding one camera
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
from axialtrack.errors import AxialtrackError
from axialtrack.geometry import SplitterGeometry, split_frame, unmirror

__all__ = [
    "IMPORT_LAYOUTS",
    "MAX_Z_SPAN_UM",
    "MIN_Z_STEPS",
    "MIRROR_CHOICES",
    "NDTIFF_Z_KEYS",
    "ImportLayout",
    "StackImportError",
    "detect_layout",
    "expand_sources",
    "frames_as_uint16",
    "load_stack",
    "load_stacks",
    "normalize_mirror",
    "read_truth",
    "write_import_store",
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


class StackImportError(AxialtrackError, ValueError):
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


def _ome_images(xml: str | None) -> list[dict[str, Any]]:
    """Pixel size, Z step and per-frame stage Z of each OME ``Image`` (if any).

    ``z_positions`` follow the frame axis (``TheZ``; ``TheT`` when the image has
    one Z plane), first channel only.
    """
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    out: list[dict[str, Any]] = []
    for image in (el for el in root.iter() if el.tag.endswith("}Image")):
        pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
        if pixels is None:
            continue
        info: dict[str, Any] = {}
        for key, name in (("PhysicalSizeX", "pixel_size_um"), ("PhysicalSizeZ", "dz")):
            if (v := pixels.get(key)) is not None:
                with contextlib.suppress(ValueError):
                    info[name] = float(v)
        frame_key = "TheZ" if int(pixels.get("SizeZ", "1") or 1) > 1 else "TheT"
        zs: dict[int, float] = {}
        for el in pixels:
            if not el.tag.endswith("Plane") or el.get("PositionZ") is None:
                continue
            if int(el.get("TheC", "0") or 0) != 0:
                continue
            with contextlib.suppress(ValueError):
                zs.setdefault(int(el.get(frame_key, 0)), float(el.get("PositionZ", "")))
        if len(zs) > 1:
            info["z_positions"] = np.array([zs[k] for k in sorted(zs)])
        uuid = next((el for el in pixels.iter() if el.tag.endswith("UUID")), None)
        if uuid is not None and uuid.get("FileName"):
            info["file"] = str(uuid.get("FileName"))
        out.append(info)
    return out


def _ome_info(xml: str | None) -> dict[str, Any]:
    """Pixel size, Z step and per-plane Z positions of the first OME image."""
    images = _ome_images(xml)
    return images[0] if images else {}


def _ome_files(xml: str | None) -> set[str]:
    """File names a multi-file OME-TIFF's metadata refers to."""
    if not xml:
        return set()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return set()
    return {
        str(el.get("FileName"))
        for el in root.iter()
        if el.tag.endswith("UUID") and el.get("FileName")
    }


_FRAME_AXES = "ZTQI"


def _canonical_axes(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder an array with named axes to ``(P, Z, [C,] Y, X)``.

    ``P`` (fields) comes from several OME images or Micro-Manager positions
    (``R``); a ``C`` axis of 2 is the plane axis (two cameras saved as two
    channels); without a ``Z`` axis one time/frame axis is taken as Z.
    """
    axes = axes.upper().replace("R", "P")
    shape = dict(zip(axes, data.shape, strict=True))
    if "Y" not in axes or "X" not in axes or axes.count("P") > 1:
        raise _err(
            path,
            f"axes {axes} of shape {data.shape} hold no single image per frame",
            "save one image per Z step (axes Z, Y, X, optionally positions)",
        )
    frame = [a for a in axes if a in _FRAME_AXES and shape[a] > 1]
    if "Z" in frame:
        frame_axis = "Z"
        others = [a for a in frame if a != "Z"]
    elif frame:
        frame_axis = frame[0]
        others = frame[1:]
    else:
        frame_axis = next((a for a in axes if a in _FRAME_AXES), "")
        others = []
    if others:
        raise _err(
            path,
            f"axes {axes} of shape {data.shape}: both {frame_axis} "
            f"({shape[frame_axis]}) and {others[0]} ({shape[others[0]]}) vary; one "
            "Z axis per field is expected (a time series of stacks?)",
            "save one Z-stack per field (several fields: positions or one file each)",
        )
    if shape.get("C", 1) > 2 or shape.get("S", 1) > 1:
        what = "C" if shape.get("C", 1) > 2 else "S"
        raise _err(
            path,
            f"axes {axes} of shape {data.shape}: {shape[what]} channels/samples",
            "save one channel per plane (2 at most: one per camera) or grey images",
        )
    keep = {"P", "C", "Y", "X"} | ({frame_axis} if frame_axis else set())
    for i in reversed(range(len(axes))):
        a = axes[i]
        if a in keep and not (a == "C" and shape[a] == 1):
            continue
        if shape[a] != 1:
            raise _err(
                path,
                f"axes {axes} of shape {data.shape}: axis {a} of {shape[a]} is "
                "not understood",
                "save (positions, Z, Y, X) or (positions, Z, planes, Y, X)",
            )
        data = data.take(0, axis=i)
        axes = axes[:i] + axes[i + 1 :]
    order = [axes.index(a) for a in ("P", frame_axis, "C", "Y", "X") if a and a in axes]
    data = data.transpose(order)
    if not (frame_axis and frame_axis in axes):
        data = np.expand_dims(data, 1 if "P" in axes else 0)
    if "P" not in axes:
        data = data[None]
    return data


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        s0 = series[0]
        axes = s0.axes
        xml = tif.ome_metadata
        named = bool(tif.is_ome or tif.is_mmstack)
        info: dict[str, Any] = {}
        if not named:
            info.update(_ome_info(xml))
            info["axes"] = axes
            return s0.asarray(), info
        images = _ome_images(xml)
        same = [s for s in series if s.shape == s0.shape and s.axes == s0.axes]
        if len(same) > 1:
            data = np.stack(
                [_series_data(path, tif, i, s, images) for i, s in enumerate(same)]
            )
            axes = "P" + axes
        else:
            data = s0.asarray()
        info["axes"] = axes
        info["ome_files"] = _ome_files(xml)
        tif_mm = bool(tif.is_mmstack)
        mm = tif.micromanager_metadata if tif_mm else None
        summary = (mm or {}).get("Summary") or {}
    if images:
        for key in ("pixel_size_um", "dz"):
            if key in images[0]:
                info[key] = images[0][key]
        zp: list[np.ndarray] = [
            im["z_positions"]
            for im in images[: max(1, len(same))]
            if im.get("z_positions") is not None
        ]
        if zp and len(zp) == max(1, len(same)) and len({len(z) for z in zp}) == 1:
            info["z_positions"] = np.stack(zp) if len(zp) > 1 else zp[0]
    for key, name in (("PixelSize_um", "pixel_size_um"), ("z-step_um", "dz")):
        with contextlib.suppress(TypeError, ValueError):
            if summary.get(key) and float(summary[key]) > 0:
                info.setdefault(name, float(summary[key]))
    try:
        out = _canonical_axes(data, axes, path)
    except StackImportError:
        if tif_mm:
            raise
        # an OME-TIFF written without axes (e.g. tifffile's default ZCYX for any
        # 4-D array): read it by shape, as a plain TIFF
        plain = data[0] if len(same) > 1 else data
        return plain, {**info, "axes": s0.axes, "ome_files": set()}
    info["field_axis"] = True
    info["plane_axis"] = out.ndim == 5
    return out, info


def _series_data(
    path: Path, tif: Any, index: int, series: Any, images: list[dict[str, Any]]
) -> np.ndarray:
    """Data of OME image ``index``, read from the file its ``TiffData`` names.

    A multi-file OME-TIFF (one file per position, as ome-writers writes it)
    names every image in each file; tifffile reads an image stored in another
    file correctly only from that file.
    """
    import tifffile

    other = images[index].get("file") if index < len(images) else None
    if not other or other == path.name or not (path.parent / other).is_file():
        return np.asarray(series.asarray())
    with tifffile.TiffFile(path.parent / other) as t2:
        return np.asarray(t2.series[index].asarray())


_NGFF_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X", "p": "P"}


def _read_ngff_image(group: Any, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """An NGFF (OME-Zarr 0.4 / 0.5) image group: full-resolution array and scale."""
    attrs = dict(group.attrs.asdict())
    ome = attrs.get("ome", attrs)
    ms = ome["multiscales"][0]
    ds = ms["datasets"][0]
    names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in ms["axes"]]
    axes = "".join(_NGFF_AXES.get(n, "Q") for n in names)
    arr = np.asarray(group[ds["path"]][...])
    info: dict[str, Any] = {"axes": axes}
    for tr in ds.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = dict(zip(axes, tr.get("scale", []), strict=False))
            # ome-writers records 1.0 when the scale is not known: not a value
            for a, key in (("Z", "dz"), ("X", "pixel_size_um")):
                v = scale.get(a)
                if v is not None and float(v) > 0 and float(v) != 1.0:
                    info[key] = float(v)
    return arr, info


def _read_zarr(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise _err(
            path,
            f"not a zarr array or group ({type(exc).__name__}: {exc})",
            "pass a TIFF, a .npy file, a zarr array or a calibration run store",
        ) from None
    if isinstance(node, zarr.Array):
        return np.asarray(node[...]), {}
    attrs = dict(node.attrs.asdict())
    ome = attrs.get("ome", attrs)
    images: list[Any] = []
    if isinstance(ome, dict) and "multiscales" in ome:
        images = [node]
    elif isinstance(ome, dict) and "bioformats2raw.layout" in ome:
        series: list[str] = []
        if "OME" in node:
            listed = node["OME"].attrs.get("series")
            if isinstance(listed, list):
                series = [str(x) for x in listed]
        if not series:
            series = sorted((k for k, _ in node.groups() if k.isdigit()), key=int)
        images = [node[k] for k in series]
    if images:
        reads = [_read_ngff_image(g, path) for g in images]
        shapes = {r[0].shape for r in reads}
        axes_set = {r[1]["axes"] for r in reads}
        if len(shapes) != 1 or len(axes_set) != 1:
            raise _err(
                path,
                f"its {len(reads)} images differ in shape or axes "
                f"({sorted(shapes)}, {sorted(axes_set)})",
                "pass fields of equal size and Z steps",
            )
        info = dict(reads[0][1])
        data = np.stack([r[0] for r in reads]) if len(reads) > 1 else reads[0][0]
        axes = ("P" if len(reads) > 1 else "") + info["axes"]
        info["axes"] = axes
        out = _canonical_axes(data, axes, path)
        info["field_axis"] = True
        info["plane_axis"] = out.ndim == 5
        return out, info
    arr = node.get("0")
    if not isinstance(arr, zarr.Array):
        raise _err(
            path,
            "a zarr group without an image array '0' or OME-Zarr metadata",
            "pass the zarr array itself (e.g. PATH/0), an OME-Zarr or a run store",
        )
    return np.asarray(arr[...]), {}


_NDTIFF_INDEX = "NDTiff.index"
_NDTIFF_AXES = ("position", "z", "time", "channel")
NDTIFF_Z_KEYS: tuple[str, ...] = ("ZPosition_um_Intended", "ZPosition_um")
"""Image-metadata keys of an NDTiff dataset read as the stage Z (um), in order of
preference; then ``<Core-Focus>-Position`` (the focus device's property)."""


def _ndtiff_root(path: Path) -> Path | None:
    """The NDTiff dataset folder ``path`` is, or is a file of (else ``None``)."""
    for cand in (path, path / "Full resolution"):
        if cand.is_dir() and (cand / _NDTIFF_INDEX).is_file():
            return path
    named = path.name == _NDTIFF_INDEX or path.name.endswith("NDTiffStack.tif")
    if named and path.is_file() and (path.parent / _NDTIFF_INDEX).is_file():
        return path.parent
    return None


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ndtiff_z(md: dict[str, Any]) -> float | None:
    for key in NDTIFF_Z_KEYS:
        if (v := _float(md.get(key))) is not None:
            return v
    focus = md.get("Core-Focus")
    if focus:
        return _float(md.get(f"{focus}-Position"))
    return None


def _read_ndtiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """An NDTiff dataset (Micro-Manager 2 / Pycro-Manager) read with ndstorage.

    Positions are fields, ``z`` the frames (``time`` when there is no ``z``
    axis), two channels the two planes (one camera each). Stage Z comes from each
    image's metadata (:data:`NDTIFF_Z_KEYS`), the pixel size from ``PixelSizeUm``
    (image) or ``PixelSize_um`` (summary), the Z step from ``z-step_um``.
    """
    import io as _io

    try:
        import ndstorage
    except ImportError:
        raise _err(
            path,
            "an NDTiff dataset needs the ndstorage package, which is not installed",
            "pip install ndstorage (axialtrack's ndtiff extra)",
        ) from None
    try:
        with contextlib.redirect_stdout(_io.StringIO()):  # it prints progress
            ds = ndstorage.Dataset(str(path))
    except Exception as exc:
        raise _err(
            path,
            f"not a readable NDTiff dataset ({type(exc).__name__}: {exc})",
            "pass the dataset folder Micro-Manager wrote (it holds NDTiff.index)",
        ) from None
    try:
        coords = [dict(c) for c in ds.get_image_coordinates_list()]
        if not coords:
            raise _err(path, "the NDTiff dataset holds no image", "pass another one")
        names: set[str] = set().union(*coords)
        unknown = sorted(names - set(_NDTIFF_AXES))
        if unknown:
            raise _err(
                path,
                f"NDTiff axes {sorted(names)}: {', '.join(unknown)} not understood",
                "save Z-stacks with axes position, z (and channel for two cameras)",
            )
        values = {a: sorted({c.get(a, 0) for c in coords}, key=str) for a in names}
        for a in ("position", "z", "time"):
            if a in values:
                values[a] = sorted(values[a])
        nz = len(values.get("z", [0]))
        nt = len(values.get("time", [0]))
        if nz > 1 and nt > 1:
            raise _err(
                path,
                f"NDTiff axes z ({nz}) and time ({nt}) both vary; one Z axis per "
                "field is expected (a time series of stacks?)",
                "save one Z-stack per field (several fields: positions)",
            )
        frame_axis = "z" if nz > 1 or nt == 1 else "time"
        chans = values.get("channel", [None])
        if len(chans) > 2:
            raise _err(
                path,
                f"{len(chans)} NDTiff channels {chans}",
                "save one channel per plane (2 at most: one per camera)",
            )
        positions = values.get("position", [None])
        frames = values.get(frame_axis, [None])
        have = {frozenset(c.items()) for c in coords}
        data = None
        z = np.full((len(positions), len(frames)), np.nan)
        px: float | None = None
        for i, pos in enumerate(positions):
            for k, fr in enumerate(frames):
                for j, ch in enumerate(chans):
                    key = {
                        a: v
                        for a, v in (
                            ("position", pos),
                            (frame_axis, fr),
                            ("channel", ch),
                        )
                        if a in names
                    }
                    if frozenset(key.items()) not in have:
                        raise _err(
                            path,
                            f"the NDTiff dataset has no image at {key} (an aborted "
                            "acquisition?)",
                            "pass a dataset with every position, Z step and channel",
                        )
                    img = np.asarray(ds.read_image(**key))
                    if data is None:
                        shape = (len(positions), len(frames), len(chans), *img.shape)
                        data = np.empty(shape, dtype=img.dtype)
                    data[i, k, j] = img
                    if j == 0:
                        md = dict(ds.read_metadata(**key) or {})
                        if (v := _ndtiff_z(md)) is not None:
                            z[i, k] = v
                        if px is None:
                            px = _float(md.get("PixelSizeUm"))
        summary = dict(getattr(ds, "summary_metadata", None) or {})
    finally:
        with contextlib.suppress(Exception):
            ds.close()
    assert data is not None
    if data.shape[2] == 1:
        data = data[:, :, 0]
    info: dict[str, Any] = {
        "axes": "PZCYX" if data.ndim == 5 else "PZYX",
        "field_axis": True,
        "plane_axis": data.ndim == 5,
        "format": "NDTiff",
    }
    if np.all(np.isfinite(z)):
        info["z_positions"] = z if z.shape[0] > 1 else z[0]
    if px is None:
        px = _float(summary.get("PixelSize_um"))
    if px is not None and px > 0:
        info["pixel_size_um"] = px
    if (step := _float(summary.get("z-step_um"))) is not None and step > 0:
        info["dz"] = step
    return data, info


def _read_array(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file or zarr array; return the array and metadata.

    OME-TIFF, Micro-Manager MMStack and OME-Zarr images come back as
    ``(P, Z, [2,] H, W)`` with ``info["field_axis"]`` set; plain TIFF, ``.npy``
    and zarr arrays as stored.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or directory. Fix: check the path of the "
            "calibration stack"
        )
    name = path.name.lower()
    nd = _ndtiff_root(path)
    if nd is not None:
        return _read_ndtiff(nd)
    if path.is_dir() or name.endswith(".zarr"):
        return _read_zarr(path)
    if name.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False), {}
        except Exception as exc:
            raise _err(
                path, f"not a readable .npy array ({exc})", "re-save it"
            ) from None
    try:
        return _read_tiff(path)
    except StackImportError:
        raise
    except Exception as exc:
        raise _err(
            path,
            f"not a readable image ({type(exc).__name__}: {exc})",
            "pass an OME-TIFF/TIFF, a .npy file, a zarr array or a run store",
        ) from None


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


# ------------------------------------------------------------- image stacks
def _describe(shape: tuple[int, ...], info: dict[str, Any]) -> str:
    axes = info.get("axes")
    return f"shape {tuple(shape)}" + (f", axes {axes}" if axes else "")


def _as_fields(
    data: np.ndarray,
    core_ndim: int,
    path: Path,
    what: str,
    fields: int | None = None,
    info: dict[str, Any] | None = None,
) -> np.ndarray:
    """``(P, Z, *core)`` from an array with an optional leading field axis.

    ``fields`` splits one frame axis into that many fields of equal length (a
    file of several fields one after another); it must divide the frames.
    """
    info = info or {}
    shape0 = data.shape
    if not info.get("field_axis"):
        while data.ndim > core_ndim + 2 and data.shape[0] == 1:
            data = data[0]
    if data.ndim == core_ndim + 1:
        data = data[None]
    if data.ndim != core_ndim + 2:
        raise _err(
            path,
            f"an array of shape {shape0}; {what} needs {core_ndim + 1} "
            f"dimensions (Z, ...) or {core_ndim + 2} (fields, Z, ...)",
            "save one frame per Z step (multi-field: a leading field axis)",
        )
    if fields is None or fields == data.shape[0]:
        return data
    if data.shape[0] != 1:
        raise _err(
            path,
            f"{data.shape[0]} fields read ({_describe(shape0, info)}), "
            f"but {fields} were given",
            f"leave --fields out (the file holds {data.shape[0]}) or check the file",
        )
    n = data.shape[1]
    if fields < 1 or n % fields:
        raise _err(
            path,
            f"{n} frames ({_describe(shape0, info)}) do not divide into "
            f"{fields} fields of equal length",
            "pass the number of fields the file holds (--fields N), or one file "
            "per field",
        )
    return data[0].reshape(fields, n // fields, *data.shape[2:])


def _runs(z: np.ndarray) -> tuple[int, int] | None:
    """``(k, m)`` when ``z`` is ``k`` monotonic runs of ``m`` frames, else None."""
    d = np.diff(z)
    sign = np.sign(np.median(d)) or 1.0
    back = np.flatnonzero(np.sign(d) != sign)
    k = len(back) + 1
    if k < 2 or len(z) % k:
        return None
    m = len(z) // k
    return (k, m) if np.array_equal(back, np.arange(1, k) * m - 1) else None


def _z_positions(
    n_fields: int,
    n_z: int,
    path: Path,
    info: dict[str, Any],
    z_step_um: float | None,
    z_range_um: float | None,
    z_start_um: float,
    data_desc: str = "",
) -> np.ndarray:
    """``(P, Z)`` stage positions: the file's per-frame Z, else start + k x step."""
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
    if recorded is not None:
        rec = np.asarray(recorded, dtype=float)
        if rec.size == n_fields * n_z:
            rec = rec.reshape(n_fields, n_z)
        elif rec.ndim == 1 and rec.size == n_z:
            rec = np.broadcast_to(rec, (n_fields, n_z))
        else:
            rec = None  # type: ignore[assignment]
        if rec is not None:
            for f in range(n_fields):
                d = np.diff(rec[f])
                if np.all(d > 0) or np.all(d < 0):
                    continue
                runs = _runs(rec[f])
                where = f"field {f}: " if n_fields > 1 else ""
                looks = (
                    f"; it restarts every {runs[1]} frames, like {runs[0]} stacks "
                    "one after another"
                    if runs
                    else ""
                )
                raise _err(
                    path,
                    f"{where}{n_z} frames ({data_desc}): the file's stage Z "
                    f"({rec[f].min():.3f} to {rec[f].max():.3f} um) is not monotonic"
                    + looks,
                    f"pass --fields {runs[0]} (one file of {runs[0]} fields)"
                    if runs
                    else "record each Z-stack in one direction; one file per field",
                )
            measured = float(np.median(np.diff(rec, axis=1)))
            if step is not None and abs(abs(measured) - step) > _REL_TOL * step + 1e-6:
                raise _err(
                    path,
                    f"the file's stage Z positions move {measured:.4f} um per frame, "
                    f"not the given {step} um",
                    "pass the step the stack was recorded with, or leave --z-step out",
                )
            return np.array(rec, dtype=float)
    dz = info.get("dz")
    if (
        dz is not None
        and z_step_um is not None
        and abs(dz - z_step_um) > (_REL_TOL * z_step_um)
    ):
        raise _err(
            path,
            f"the file says the Z step is {dz} um, not the given {z_step_um} um",
            "pass the step the stack was recorded with, or leave --z-step out",
        )
    if step is None:
        step = dz
    if step is None:
        raise _err(
            path,
            "the Z step is unknown (no PhysicalSizeZ in the file)",
            "pass z_step_um= (the stage step between frames, um)",
        )
    z = z_start_um + np.arange(n_z) * float(step)
    return np.broadcast_to(z, (n_fields, n_z)).copy()


MAX_Z_SPAN_UM = 5.0
"""Largest Z range (first to last frame) accepted without ``z_range_um``.

A bead calibration spans a few um around focus; a longer axis is most often
several stacks read as one."""


def _focus_profile(frames: np.ndarray) -> np.ndarray:
    """``(Z,)`` brightest pixel above the median of each plane-0 frame."""
    h, w = frames.shape[-2:]
    step = max(1, int(np.sqrt(h * w / 65536)))
    sub = np.asarray(frames[:, 0, ::step, ::step], dtype=np.float32).reshape(
        frames.shape[0], -1
    )
    return sub.max(axis=1) - np.median(sub, axis=1)


def _repeats(profile: np.ndarray, min_len: int = 7) -> int | None:
    """Number ``k >= 2`` of stacks one after another in a focus profile, or None.

    The profile is cut into ``k`` equal segments; each must hold a focus peak
    inside it (not on its first or last frame) that stands out (peak above both
    ends by 30 % of the segment's range, range above half its floor), with peak
    heights within a factor 3 of each other. The largest such ``k`` is returned.
    A single stack cut into segments gives rising and falling flanks whose
    maxima lie on their ends, so it never passes.
    """
    n = len(profile)
    best = None
    for k in range(2, n // min_len + 1):
        if n % k:
            continue
        seg = profile.reshape(k, n // k).astype(float)
        lo = seg.min(axis=1)
        hi = seg.max(axis=1)
        ends = np.maximum(seg[:, 0], seg[:, -1])
        peak = seg.argmax(axis=1)
        ok = (
            np.all((peak > 0) & (peak < seg.shape[1] - 1))
            and np.all(hi - lo > 0.5 * np.maximum(np.abs(lo), 1e-9))
            and np.all(hi - ends >= 0.3 * (hi - lo))
            and hi.max() <= 3.0 * max(hi.min(), 1e-9)
        )
        if ok:
            best = k
    return best


LAYOUT_MARGIN = 1.5
""":func:`detect_layout` takes a layout whose score beats the other's by this."""


def detect_layout(raw: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """Find whether ``(P, Z, H, W)`` sensor frames are side-by-side or top-bottom.

    For each layout the frame's two halves (maximum projections over Z,
    band-passed) are cross-correlated (normalized: 1 for identical, shifted
    halves) under each flip of the second half, averaged over the fields; the
    score is the highest peak within a quarter of the half's size of no shift
    (a splitter's residual shift is small, and a far shift can pair the halves
    of the other layout when plane 1 is mirrored). The layout whose score beats
    the other's by :data:`LAYOUT_MARGIN` is returned, else None (also when only
    one fits the frame size). psfmodels beads, 7 per 64 x 64 px plane: 0.997 for
    the true layout, 0.21-0.47 for the other.
    """
    from scipy import ndimage

    from axialtrack.geometry import MIRRORS

    mp = np.asarray(raw, dtype=np.float32).max(axis=1)  # (P, H, W)
    _, h, w = mp.shape

    def band(x: np.ndarray) -> np.ndarray:
        y = np.asarray(
            ndimage.gaussian_filter(x, 1.0) - ndimage.gaussian_filter(x, 4.0)
        )
        return y - y.mean()

    scores: dict[str, float] = {}
    for name in ("side-by-side", "top-bottom"):
        if (name == "side-by-side" and w % 2) or (name == "top-bottom" and h % 2):
            continue
        hh, ww = (h, w // 2) if name == "side-by-side" else (h // 2, w)
        dy = np.minimum(np.arange(hh), hh - np.arange(hh))
        dx = np.minimum(np.arange(ww), ww - np.arange(ww))
        near = (dy[:, None] <= hh // 4) & (dx[None, :] <= ww // 4)
        best = 0.0
        for flip in MIRRORS:
            acc = np.zeros((hh, ww))
            for m in mp:
                if name == "side-by-side":
                    a, b = m[:, :ww], m[:, ww:]
                else:
                    a, b = m[:hh], m[hh:]
                fa = band(a)
                fb = band(np.ascontiguousarray(unmirror(b, flip)))
                norm = float(np.sqrt((fa * fa).sum() * (fb * fb).sum())) or 1.0
                c = np.fft.irfft2(
                    np.fft.rfft2(fb) * np.conj(np.fft.rfft2(fa)), s=(hh, ww)
                )
                acc += c / norm
            best = max(best, float(acc[near].max()) / len(mp))
        scores[name] = best
    if len(scores) < 2:
        return None, scores
    ranked = sorted(scores, key=lambda k: scores[k], reverse=True)
    if scores[ranked[0]] >= LAYOUT_MARGIN * max(scores[ranked[1]], 1e-9):
        return ranked[0], scores
    return None, scores


def _check_z_axis(
    frames: np.ndarray,
    z: np.ndarray,
    path: Path,
    meta: dict[str, Any],
    z_range_um: float | None,
) -> None:
    """Refuse a Z axis that cannot be one bead stack per field."""
    n_fields, n_z = z.shape
    desc = meta.get("read", "")
    span = float(np.max(np.abs(z[:, -1] - z[:, 0])))
    step = float(np.median(np.abs(np.diff(z, axis=1)))) if n_z > 1 else 0.0
    k = None
    for f in range(n_fields):
        k = _repeats(_focus_profile(frames[f]))
        if k:
            break
    fix_k = (
        f"pass --fields {k * n_fields} (the file holds {k * n_fields} fields), or "
        "one file per field"
        if k
        else "pass --fields N if the file holds N fields one after another, or "
        "z_range_um (--z-span) to confirm a long range"
    )
    if z_range_um is None and span > MAX_Z_SPAN_UM:
        source = "the file's stage Z" if meta.get("z_from_file") else "frames x step"
        looks = f"; the beads come into focus {k} times" if k else ""
        raise _err(
            path,
            f"{n_z} frames per field ({desc}) at {step:.4g} um span {span:.2f} um "
            f"({source}), more than a bead stack's {MAX_Z_SPAN_UM:g} um{looks}",
            fix_k,
        )
    if k and z_range_um is None:
        raise _err(
            path,
            f"{n_z} frames per field ({desc}): the beads come into focus {k} times, "
            f"every {n_z // k} frames, as if {k} stacks were read as one",
            fix_k + " (beads at several depths: --z-span to confirm one stack)",
        )


MIRROR_CHOICES: tuple[str, ...] = ("auto", "none", "horizontal", "vertical", "both")
_MIRROR_ALIASES = {"x": "horizontal", "y": "vertical", "xy": "both", "h": "horizontal"}


def normalize_mirror(mirror: str | None) -> str:
    """Normalize a plane-1 mirror: ``auto``, ``none``, ``horizontal`` (``x``),
    ``vertical`` (``y``) or ``both`` (``xy``)."""
    m = "auto" if mirror is None else str(mirror).strip().lower()
    m = _MIRROR_ALIASES.get(m, m)
    if m not in MIRROR_CHOICES:
        raise StackImportError(
            f"unknown plane-1 mirror {mirror!r}. Fix: use one of "
            f"{', '.join(MIRROR_CHOICES)} (or x, y, xy)"
        )
    return m


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
    fields: int | None = None,
) -> CalibrationStack:
    """Load a calibration Z-stack from a run store or an image file.

    Parameters
    ----------
    path
        A calibration run store (``*.zarr`` written by ``axialtrack calibrate``),
        an OME-TIFF/TIFF (also Micro-Manager MMStack), an NDTiff dataset folder
        (Micro-Manager 2; needs ndstorage), an OME-Zarr image (also
        several positions, as ome-writers / pymmcore-plus write them), a ``.npy``
        file or a zarr array: one camera frame per Z step, ``(Z, ...)`` or with a
        leading field axis ``(P, Z, ...)``. OME and Micro-Manager axes are read
        from the metadata: positions (several OME images, ``R``) are fields, a
        channel axis of 2 is the plane axis (two cameras).
    layout
        One of :data:`IMPORT_LAYOUTS`; ``None`` for a run store, ``dual-plane``
        when the array has a plane axis of 2, ``two-files`` with ``second_path``,
        else found from the beads for sensor frames (:func:`detect_layout`).
    z_step_um
        Stage step between frames (default: the file's per-plane ``PositionZ``,
        ``PhysicalSizeZ`` or Micro-Manager ``z-step_um``; a different value given
        here is refused with both numbers).
    plane_offset_um
        Delta: plane 1 is in focus at ``stage_z + plane_offset_um``. Required for
        image files; for a run store it overrides the recorded one.
    pixel_size_um
        Sample-plane pixel size (default: the file's ``PhysicalSizeX``).
    z_start_um
        Stage Z of the first frame.
    z_range_um
        The scanned range ``(frames - 1) x step``: checked against the frame
        count, and needed for a range beyond :data:`MAX_Z_SPAN_UM`.
    second_path
        Plane-1 file for ``layout="two-files"``.
    mirror
        Flip of plane 1 to undo: ``"none"``, ``"horizontal"``, ``"vertical"``,
        ``"both"``, or ``"auto"`` (load unflipped; the analysis finds the flip
        from the beads; ``meta["mirror"]`` records which was asked).
    fields
        Number of fields in a file that holds them one after another along its
        frame axis (it must divide the frames); a file with a field axis must
        hold this many.

    Returns
    -------
    CalibrationStack

    Raises
    ------
    FileNotFoundError
        A file does not exist.
    StackImportError
        Not an image, a layout that does not fit the image, Z metadata that
        disagrees, an implausible Z axis (several stacks read as one), too few
        frames.
    """
    p = Path(path).expanduser()
    asked_mirror = normalize_mirror(mirror)
    mirror = "none" if asked_mirror == "auto" else asked_mirror
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
        if fields is not None:
            raise _err(
                p,
                f"a run store records its fields, but fields={fields} was given",
                "leave --fields out",
            )
        st = _load_run(
            p,
            z_step_um=z_step_um,
            plane_offset_um=plane_offset_um,
            pixel_size_um=pixel_size_um,
        )
        st.meta["mirror"] = st.geometry.mirror
        return st

    data, info = _read_array(p)
    desc = _describe(data.shape, info)
    if data.dtype.kind not in "uif":
        raise _err(p, f"pixel type {data.dtype} is not numeric", "save pixel values")
    layout_scores: dict[str, float] | None = None
    if layout is None and second_path is not None:
        layout = "two-files"
    if layout is None:
        if info.get("plane_axis") or (
            not info.get("field_axis") and data.ndim >= 4 and data.shape[-3] == 2
        ):
            layout = "dual-plane"
        elif data.ndim in (3, 4):
            raw = _as_fields(data, 2, p, "a sensor layout", fields, info)
            layout, layout_scores = detect_layout(raw)
            if layout is None:
                scores = ", ".join(f"{k} {v:.2f}" for k, v in layout_scores.items())
                raise _err(
                    p,
                    f"the layout of {desc} is unknown: the two halves of the frames "
                    f"match no better one way than the other (cross-correlation "
                    f"peaks {scores or 'none: odd frame size'})",
                    f"pass layout= one of {', '.join(IMPORT_LAYOUTS)}",
                )
        else:
            raise _err(
                p,
                f"the layout of {desc} is unknown",
                f"pass layout= one of {', '.join(IMPORT_LAYOUTS)}",
            )
    layout = layout.strip().lower().replace("_", "-")
    if layout not in IMPORT_LAYOUTS:
        raise _err(
            p, f"unknown layout {layout!r}", f"use one of {', '.join(IMPORT_LAYOUTS)}"
        )
    if info.get("plane_axis") and layout != "dual-plane":
        raise _err(
            p,
            f"{desc}: the file holds two channels (one per plane), not layout "
            f"{layout!r}",
            "pass layout dual-plane, or leave it out",
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
    file_px = info.get("pixel_size_um")
    if (
        pixel_size_um is not None
        and file_px is not None
        and abs(file_px - pixel_size_um) > _REL_TOL * pixel_size_um
    ):
        raise _err(
            p,
            f"the file says the pixel size is {file_px} um, not the given "
            f"{pixel_size_um} um",
            "pass the pixel size the stack was recorded with, or leave it out",
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

    meta: dict[str, Any] = {"layout": layout, "read": desc, "mirror": asked_mirror}
    if layout_scores is not None:
        meta["layout_scores"] = layout_scores
    if layout in ("side-by-side", "top-bottom"):
        raw = _as_fields(data, 2, p, f"layout {layout!r}", fields, info)
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
        frames = _as_fields(data, 3, p, "layout 'dual-plane'", fields, info)
        if frames.shape[2] != 2:
            raise _err(
                p,
                f"layout 'dual-plane' needs a plane axis of 2; got {desc}",
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
        data2, info2 = _read_array(p2)
        a = _as_fields(data, 2, p, "layout 'two-files'", fields, info)
        b = _as_fields(data2, 2, p2, "layout 'two-files'", fields, info2)
        if a.shape != b.shape:
            raise _err(
                p,
                f"shape {a.shape} differs from {p2}'s {b.shape}",
                "pass two stacks of the same fields, Z steps and frame size",
            )
        frames = np.stack([a, unmirror(b, geometry.mirror)], axis=2)
        meta["second_path"] = str(p2)
    else:  # single-plane-pairs
        single = _as_fields(data, 2, p, "layout 'single-plane-pairs'", fields, info)
        n = single.shape[1]
        z_all = _z_positions(
            single.shape[0], n, p, info, z_step_um, z_range_um, z_start_um, desc
        )
        _check_z_axis(single[:, :, None], z_all, p, meta, z_range_um)
        step = float(np.median(np.diff(z_all, axis=1))) if n > 1 else float("nan")
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
        z = z_all[:, lo:hi].copy()
        return _finish(frames, z, float(px), geometry, p, meta)

    n_fields, n_z = frames.shape[:2]
    z = _z_positions(n_fields, n_z, p, info, z_step_um, z_range_um, z_start_um, desc)
    meta["z_from_file"] = info.get("z_positions") is not None
    _check_z_axis(frames, z, p, meta, z_range_um)
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


_GLOB_CHARS = set("*?[")


def expand_sources(sources: str | Path | list[str | Path]) -> list[Path]:
    """Paths from ``--from`` values: each a path or a glob (sorted matches).

    Raises
    ------
    FileNotFoundError
        A path does not exist or a glob matches nothing.
    """
    import glob

    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    out: list[Path] = []
    for item in items:
        text = str(Path(item).expanduser())
        if Path(text).exists() or not (_GLOB_CHARS & set(text)):
            out.append(Path(text))
            continue
        hits = sorted(glob.glob(text))
        if not hits:
            raise FileNotFoundError(
                f"{text}: the pattern matches no file. Fix: check the path of the "
                "calibration stacks"
            )
        out.extend(Path(h) for h in hits)
    seen: set[Path] = set()
    uniq = []
    for q in out:
        if q.resolve() not in seen:
            seen.add(q.resolve())
            uniq.append(q)
    return uniq


def load_stacks(
    sources: str | Path | list[str | Path],
    *,
    second_paths: list[str | Path] | None = None,
    fields: int | None = None,
    **kwargs: Any,
) -> CalibrationStack:
    """Load and join calibration stacks, one file (or more fields) per source.

    ``sources`` are paths or globs (:func:`expand_sources`); each is read with
    :func:`load_stack` and their fields are joined in order. The files must agree
    on Z steps per field, plane size, pixel size, plane offset and Z step. A
    multi-file OME-TIFF (one file per position whose metadata names the others)
    is read once. ``fields`` applies to a single source.

    Raises
    ------
    FileNotFoundError, StackImportError
        As :func:`load_stack`; also files that do not match each other.
    """
    paths = expand_sources(sources)
    if not paths:
        raise FileNotFoundError("no calibration stack given. Fix: pass --from PATH")
    seconds = [Path(x).expanduser() for x in (second_paths or [])]
    if seconds and len(seconds) != len(paths):
        raise StackImportError(
            f"{len(paths)} plane-0 file(s) but {len(seconds)} plane-1 file(s). "
            "Fix: pass one --second per --from, in the same order"
        )
    if len(paths) == 1:
        return load_stack(
            paths[0],
            second_path=seconds[0] if seconds else None,
            fields=fields,
            **kwargs,
        )
    if fields is not None:
        raise StackImportError(
            f"--fields {fields} with {len(paths)} files ({paths[0]}, ...): each file "
            "is one field. Fix: leave --fields out, or pass one file of several fields"
        )
    covered: set[str] = set()
    stacks: list[CalibrationStack] = []
    used: list[Path] = []
    for i, q in enumerate(paths):
        if q.name in covered:
            continue
        st = load_stack(q, second_path=seconds[i] if seconds else None, **kwargs)
        files = set()
        if q.suffix.lower() in (".tif", ".tiff"):
            with contextlib.suppress(Exception):
                import tifffile

                with tifffile.TiffFile(q) as tif:
                    files = _ome_files(tif.ome_metadata) if tif.is_ome else set()
        covered |= files
        stacks.append(st)
        used.append(q)
    if len(stacks) == 1:
        return stacks[0]
    first = stacks[0]
    for q, st in zip(used[1:], stacks[1:], strict=True):
        problems = []
        if st.frames.shape[1:] != first.frames.shape[1:]:
            problems.append(
                f"{st.n_z} Z steps of {st.plane_shape[0]} x {st.plane_shape[1]} px, "
                f"not {first.n_z} of {first.plane_shape[0]} x {first.plane_shape[1]}"
            )
        if abs(st.z_step_um - first.z_step_um) > _REL_TOL * abs(first.z_step_um):
            problems.append(f"Z step {st.z_step_um:g} um, not {first.z_step_um:g}")
        if abs(st.pixel_size_um - first.pixel_size_um) > 1e-9:
            problems.append(
                f"pixel size {st.pixel_size_um:g} um, not {first.pixel_size_um:g}"
            )
        if st.geometry != first.geometry:
            problems.append(
                f"plane offset {st.geometry.plane_offset_um:g} um, not "
                f"{first.geometry.plane_offset_um:g}"
            )
        if problems:
            raise _err(
                q,
                f"{'; '.join(problems)} as in {used[0]}",
                "pass stacks of one calibration (same Z steps, frame size, rig)",
            )
    frames = np.concatenate([np.asarray(st.frames) for st in stacks])
    z = np.concatenate([st.stage_z_um for st in stacks])
    meta = dict(first.meta)
    meta["files"] = [str(q) for q in used]
    meta["fields_per_file"] = [st.n_fields for st in stacks]
    return CalibrationStack(
        frames=frames,
        stage_z_um=z,
        pixel_size_um=first.pixel_size_um,
        geometry=first.geometry,
        source=", ".join(str(q) for q in used),
        meta=meta,
    )


def frames_as_uint16(frames: np.ndarray) -> np.ndarray | None:
    """The frames as uint16 when that loses nothing (whole values 0-65535)."""
    a = np.asarray(frames)
    if a.dtype == np.uint16:
        return a
    if a.size == 0:
        return a.astype(np.uint16)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and hi <= 65535):
        return None
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        return None
    return a.astype(np.uint16)


def write_import_store(
    stack: CalibrationStack,
    out: str | Path,
    *,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an imported stack as a calibration run store (format 1).

    The frames (split, plane 1 un-mirrored), each frame's stage Z and field
    (``position_index``), the pixel size and the splitter geometry go where
    ``axialtrack calibrate`` puts them, so ``info``, ``train`` and
    ``calibrate --from`` read the store like an acquired one; the
    ``acquisition`` attributes record ``source: "import"``, the files and the
    layout read.

    Raises
    ------
    StackImportError
        Pixel values that uint16 frames cannot hold (fractions, negative or
        above 65535): nothing is written.
    axialtrack.store.StoreError
        ``out`` exists (without ``overwrite``) or cannot be written.
    """
    from axialtrack.store import FrameMeta, RunWriter

    frames = frames_as_uint16(stack.frames)
    if frames is None:
        a = np.asarray(stack.frames)
        raise StackImportError(
            f"{stack.source}: pixel values {a.dtype} from {float(np.min(a)):g} to "
            f"{float(np.max(a)):g} are not whole numbers 0-65535, which a run store "
            "holds. Fix: save the stack as camera counts (uint16)"
        )
    meta = stack.meta or {}
    files = meta.get("files") or ([stack.source] if stack.source else [])
    acquisition = {
        "source": "import",
        "files": [str(f) for f in files],
        "layout": meta.get("layout"),
        "read": meta.get("read"),
        "fields_per_file": meta.get("fields_per_file"),
        "n_fields": stack.n_fields,
        "n_z": stack.n_z,
        "n_frames": stack.n_fields * stack.n_z,
        "n_planned": stack.n_fields * stack.n_z,
        "z_step_um": stack.z_step_um,
        "status": "imported",
        **(extra or {}),
    }
    xy = np.asarray(stack.stage_xy_um, dtype=float)
    with RunWriter(
        out,
        kind="calibration",
        plane_shape=stack.plane_shape,
        pixel_size_um=stack.pixel_size_um,
        rig={"source": "import", "pixel_size_um": stack.pixel_size_um},
        splitter=stack.geometry,
        overwrite=overwrite,
    ) as writer:
        n = 0
        for p in range(stack.n_fields):
            for k in range(stack.n_z):
                writer.append_frame(
                    frames[p, k],
                    FrameMeta(
                        t_s=math.nan,
                        stage_z_um=float(stack.stage_z_um[p, k]),
                        stage_x_um=float(xy[p, 0]),
                        stage_y_um=float(xy[p, 1]),
                        image_number=n,
                        position_index=p,
                    ),
                )
                n += 1
        writer.set_attrs(acquisition=acquisition)
    return Path(out)

"""Image files -> ``(array, info)``: OME-TIFF/TIFF (MMStack), NDTiff, OME-Zarr,
plain zarr and ``.npy``, with the axes, pixel size and stage Z their metadata
gives. :func:`_read_array` is the one entry point; the stack is built by
:mod:`axialtrack.calibrate.io`.
"""

from __future__ import annotations

import contextlib
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StackImportError
from .errors import import_error as _err


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

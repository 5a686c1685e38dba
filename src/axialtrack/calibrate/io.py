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
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from axialtrack.calibrate.stack import CalibrationStack
from axialtrack.geometry import SplitterGeometry, split_frame, unmirror

from ._readers import NDTIFF_Z_KEYS, _is_run_store, _ome_files, _read_array
from ._run_stack import _load_run, read_truth
from ._zaxis import (
    _REL_TOL,
    LAYOUT_MARGIN,
    MAX_Z_SPAN_UM,
    MIN_Z_STEPS,
    _as_fields,
    _check_z_axis,
    _describe,
    _z_positions,
    detect_layout,
)
from .errors import StackImportError
from .errors import import_error as _err

__all__ = [
    "IMPORT_LAYOUTS",
    "LAYOUT_MARGIN",
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
        return _load_run_store(
            p,
            layout=layout,
            fields=fields,
            z_step_um=z_step_um,
            plane_offset_um=plane_offset_um,
            pixel_size_um=pixel_size_um,
        )

    data, info = _read_array(p)
    desc = _describe(data.shape, info)
    if data.dtype.kind not in "uif":
        raise _err(p, f"pixel type {data.dtype} is not numeric", "save pixel values")
    layout, layout_scores = _choose_layout(p, data, info, layout, second_path, fields)
    px = _pixel_size(p, info, pixel_size_um)
    geometry = _geometry(p, layout, plane_offset_um, mirror, second_path)

    meta: dict[str, Any] = {"layout": layout, "read": desc, "mirror": asked_mirror}
    if layout_scores is not None:
        meta["layout_scores"] = layout_scores
    zargs = (z_step_um, z_range_um, z_start_um)
    if layout == "single-plane-pairs":
        single = _as_fields(data, 2, p, "layout 'single-plane-pairs'", fields, info)
        return _single_plane_pairs(single, p, info, geometry, px, meta, zargs)
    frames = _dual_plane_frames(
        p, data, info, layout, geometry, fields, second_path, meta
    )
    n_fields, n_z = frames.shape[:2]
    z = _z_positions(n_fields, n_z, p, info, *zargs, desc)
    meta["z_from_file"] = info.get("z_positions") is not None
    _check_z_axis(frames, z, p, meta, z_range_um)
    return _finish(frames, z, px, geometry, p, meta)


def _geometry(
    p: Path,
    layout: str,
    plane_offset_um: float | None,
    mirror: str,
    second_path: str | Path | None,
) -> SplitterGeometry:
    """The splitter geometry of an image file's stack: the layout on the
    sensor (``two-cameras`` for planes read apart), delta and the mirror."""
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
    sensor_layout = (
        layout if layout in ("side-by-side", "top-bottom") else "two-cameras"
    )
    try:
        return SplitterGeometry(
            layout=sensor_layout, plane_offset_um=plane_offset_um, mirror=mirror
        )
    except ValueError as exc:
        raise _err(
            p, str(exc).splitlines()[0], "check plane_offset_um and mirror"
        ) from None


def _load_run_store(
    p: Path,
    *,
    layout: str | None,
    fields: int | None,
    z_step_um: float | None,
    plane_offset_um: float | None,
    pixel_size_um: float | None,
) -> CalibrationStack:
    """:func:`load_stack` of a run store: it records its layout and fields."""
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


def _choose_layout(
    p: Path,
    data: np.ndarray,
    info: dict[str, Any],
    layout: str | None,
    second_path: str | Path | None,
    fields: int | None,
) -> tuple[str, dict[str, float] | None]:
    """The layout asked for, else the one the file's axes or its beads show,
    normalized and checked; with the layout scores when found from the beads."""
    desc = _describe(data.shape, info)
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
    return layout, layout_scores


def _pixel_size(p: Path, info: dict[str, Any], pixel_size_um: float | None) -> float:
    """The pixel size given, else the file's; refused when they disagree."""
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
    return float(px)


def _dual_plane_frames(
    p: Path,
    data: np.ndarray,
    info: dict[str, Any],
    layout: str,
    geometry: SplitterGeometry,
    fields: int | None,
    second_path: str | Path | None,
    meta: dict[str, Any],
) -> np.ndarray:
    """``(P, Z, 2, H, W)`` planes of a sensor, dual-plane or two-files layout,
    plane 1 un-mirrored."""
    desc = _describe(data.shape, info)
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
        return split_frame(raw, geometry)
    if layout == "dual-plane":
        frames = _as_fields(data, 3, p, "layout 'dual-plane'", fields, info)
        if frames.shape[2] != 2:
            raise _err(
                p,
                f"layout 'dual-plane' needs a plane axis of 2; got {desc}",
                "save (Z, 2, H, W), or pass the sensor layout",
            )
        if geometry.mirror != "none":
            frames = frames.copy()
            frames[:, :, 1] = unmirror(frames[:, :, 1], geometry.mirror)
        return frames
    # two-files
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
    meta["second_path"] = str(p2)
    return np.stack([a, unmirror(b, geometry.mirror)], axis=2)


def _single_plane_pairs(
    single: np.ndarray,
    p: Path,
    info: dict[str, Any],
    geometry: SplitterGeometry,
    px: float,
    meta: dict[str, Any],
    zargs: tuple[float | None, float | None, float],
) -> CalibrationStack:
    """Pairs of frames ``round(delta / step)`` apart of a ``(P, Z, H, W)``
    single-plane stack; delta becomes that whole number of steps."""
    z_step_um, z_range_um, z_start_um = zargs
    plane_offset_um = geometry.plane_offset_um
    n = single.shape[1]
    z_all = _z_positions(
        single.shape[0], n, p, info, z_step_um, z_range_um, z_start_um, meta["read"]
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
    return _finish(frames, z, px, geometry, p, meta)


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

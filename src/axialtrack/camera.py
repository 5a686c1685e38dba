"""Where the camera model of a command comes from: options, a camera file, the
Micro-Manager core, a calibration run or a model bundle.

Each source gives some of the fields of
:class:`~axialtrack.pipeline.config.CameraCalibration` (``offset_adu``,
``e_per_adu``, ``read_noise_e``, ``qe``, ``bit_depth``); :func:`resolve_camera`
takes each field from the first source that has it, in the order given
(``--camera-*`` options, then ``--camera FILE``, then the core's camera, then
the bundle or calibration run), and the defaults for the rest, and says where
each field came from.

A camera file is JSON, for example as ``axialtrack camera`` writes it::

    {"offset_adu": 400.0, "e_per_adu": 2.0, "read_noise_e": 1.6, "qe": 0.82,
     "bit_depth": 16}

A file may give only some fields; ``"measured"`` (what ``axialtrack camera``
measured, with uncertainties) and ``"comment"`` are kept but not read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from axialtrack.errors import AxialtrackError
from axialtrack.pipeline.config import CAMERA_FIELDS, CameraCalibration

__all__ = [
    "CAMERA_FIELDS",
    "CORE_CAMERA_PROPERTIES",
    "CameraError",
    "CameraSource",
    "camera_differences",
    "camera_from_core",
    "camera_of_attrs",
    "read_camera_file",
    "resolve_camera",
    "write_camera_file",
]

#: Keys of a camera file that are not camera fields (kept, not read).
_INFO_KEYS = ("measured", "comment")

#: ``(label, fields)``: a source of camera fields and what it gives.
CameraSource = tuple[str, Mapping[str, Any]]


#: Camera device properties that give a camera field where the adapter reports
#: them: Hamamatsu DCAM (``HamamatsuHam``) cameras report their calibrated
#: conversion factor (e-/ADU) and offset (ADU).
CORE_CAMERA_PROPERTIES = {
    "CONVERSION FACTOR COEFF": "e_per_adu",
    "CONVERSION FACTOR OFFSET": "offset_adu",
}


class CameraError(AxialtrackError, ValueError):
    """A camera file or value that cannot be used (the message is one line,
    naming the file or option, the field, the value and the fix)."""


def _field_errors(exc: ValidationError) -> list[tuple[str, str, Any]]:
    out = []
    for err in exc.errors():
        loc = err.get("loc") or ("?",)
        ctx = err.get("ctx") or {}
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        lims = [f"{ops[k]} {ctx[k]}" for k in ops if k in ctx]
        why = (
            "must be " + " and ".join(lims)
            if lims
            else str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        )
        out.append((str(loc[0]), why, err.get("input")))
    return out


def check_fields(values: Mapping[str, Any], where: str, fix: str) -> dict[str, Any]:
    """``values`` checked as camera fields (each alone, the others default).

    Raises :class:`CameraError` naming ``where``, the field and the value,
    then ``fix``.
    """
    unknown = [k for k in values if k not in CAMERA_FIELDS]
    if unknown:
        raise CameraError(
            f"{where}: unknown camera field {unknown[0]!r}; the fields are "
            f"{', '.join(CAMERA_FIELDS)}. {fix}"
        )
    try:
        cam = CameraCalibration(**values)
    except ValidationError as exc:
        field, why, given = _field_errors(exc)[0]
        raise CameraError(f"{where}: {field} {why}; got {given!r}. {fix}") from None
    return {k: getattr(cam, k) for k in values}


def read_camera_file(path: str | Path) -> dict[str, Any]:
    """The camera fields of a camera file (JSON; see the module docstring).

    Raises
    ------
    CameraError
        A file that is missing, not JSON, not an object, with an unknown key or a
        field out of range: one line naming the file and field.
    """
    p = Path(path).expanduser()
    fix = (
        "Fix the file (fields: offset_adu, e_per_adu, read_noise_e, qe, "
        "bit_depth), or write it with `axialtrack camera`."
    )
    if not p.is_file():
        raise CameraError(
            f"--camera {p}: no such file. Give a camera JSON file, e.g. one "
            "written by `axialtrack camera`."
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = " ".join(str(exc).split())
        raise CameraError(f"--camera {p} is not a JSON file: {why}. {fix}") from None
    if not isinstance(data, dict):
        raise CameraError(
            f"--camera {p} holds a JSON {type(data).__name__}, not an object. {fix}"
        )
    values = {k: v for k, v in data.items() if k not in _INFO_KEYS}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise CameraError(f"--camera {p}: {k} must be a number; got {v!r}. {fix}")
    return check_fields(values, f"--camera {p}", fix)


def write_camera_file(
    path: str | Path,
    fields: Mapping[str, Any],
    measured: Mapping[str, Any] | None = None,
) -> Path:
    """Write a camera file: ``fields`` (camera fields, checked) and, under
    ``"measured"``, what was measured with its uncertainty."""
    values = check_fields(dict(fields), str(path), "")
    data: dict[str, Any] = {k: values[k] for k in CAMERA_FIELDS if k in values}
    if measured:
        data["measured"] = dict(measured)
    p = Path(path).expanduser()
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p


def camera_from_core(core: Any) -> dict[str, Any]:
    """The camera fields a Micro-Manager core knows of its camera.

    The simulated camera (:class:`axialtrack.devices.SimCamera`) gives all of
    them (its noise model); any other camera its bit depth
    (``core.getImageBitDepth()``) and what :data:`CORE_CAMERA_PROPERTIES` it
    has (a value out of range is left out). Empty without a camera.
    """
    cam = core.getCameraDevice()
    if not cam:
        return {}
    try:
        from axialtrack.devices import SimCamera, get_device

        dev = get_device(core, cam, SimCamera)
    except (LookupError, TypeError, ValueError, RuntimeError, AttributeError):
        dev = None
    if dev is not None:
        model = CameraCalibration.from_camera_model(dev.renderer().camera)
        return model.model_dump()
    out: dict[str, Any] = {}
    for prop, name in CORE_CAMERA_PROPERTIES.items():
        try:
            if core.hasProperty(cam, prop):
                v = float(core.getProperty(cam, prop))
                out.update(check_fields({name: v}, f"camera property {prop}", ""))
        except (RuntimeError, ValueError, TypeError, AttributeError):
            continue
    try:
        bits = int(core.getImageBitDepth())
    except (RuntimeError, ValueError):
        return out
    if 8 <= bits <= 32:
        out["bit_depth"] = bits
    return out


def camera_of_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The camera recorded in run or bundle attributes (``attrs["camera"]``),
    as a dict of camera fields; ``None`` when none is recorded."""
    if not attrs:
        return None
    cam = attrs.get("camera")
    if not isinstance(cam, Mapping):
        return None
    return {k: cam[k] for k in CAMERA_FIELDS if k in cam}


def resolve_camera(
    sources: Sequence[CameraSource],
) -> tuple[CameraCalibration, dict[str, str]]:
    """The camera: each field from the first of ``sources`` that gives it, the
    defaults for the rest; and, per field, the label of its source
    (``"default"`` for a default).

    Raises :class:`CameraError` when the fields together are invalid (naming
    each field's source).
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for label, fields in sources:
        for k in CAMERA_FIELDS:
            if k not in values and k in fields and fields[k] is not None:
                values[k] = fields[k]
                origin[k] = label
    origin = {k: origin.get(k, "default") for k in CAMERA_FIELDS}
    try:
        cam = CameraCalibration(**values)
    except ValidationError as exc:
        field, why, given = _field_errors(exc)[0]
        raise CameraError(
            f"camera {field} (from {origin.get(field, 'default')}) {why}; got "
            f"{given!r}. Give a valid value with --camera-* or --camera FILE."
        ) from None
    return cam, origin


def camera_differences(a: CameraCalibration, b: CameraCalibration) -> list[str]:
    """``field A vs B`` for each field in which two cameras differ (beyond
    0.1 %)."""
    out = []
    for k in CAMERA_FIELDS:
        va, vb = float(getattr(a, k)), float(getattr(b, k))
        if not math.isclose(va, vb, rel_tol=1e-3, abs_tol=1e-9):
            out.append(f"{k} {va:g} vs {vb:g}")
    return out

"""The calibration quality control that ``axialtrack info`` shows.

``axialtrack calibrate`` writes its QC summary (JSON) to the root attribute
``axialtrack_calibration`` of the run store it analyzed, or of the store given
with ``--out`` when it imports recorded stacks. This module reads it back with
nothing but the JSON (no zarr, no calibration code), so ``info`` also describes
a store that holds only the QC (frames that a run store cannot hold, or a store
written before imported stacks were stored as runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "QC_ATTR",
    "RIG_ATTR",
    "calibration_lines",
    "camera_line",
    "qc_only_text",
    "read_calibration_qc",
    "read_rig_record",
]

QC_ATTR = "axialtrack_calibration"
#: The root attribute where ``axialtrack calibrate`` records the rig of a
#: calibration (pixel size, splitter, plane shape, camera, Z convention).
RIG_ATTR = "axialtrack_rig"


def _root_attr(path: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    zj = Path(path) / "zarr.json"
    try:
        doc = json.loads(zj.read_text())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    v = attrs.get(name) if isinstance(attrs, dict) else None
    return v if isinstance(v, dict) else None


def read_rig_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The rig a calibration records (its ``axialtrack_rig``), or None."""
    return _root_attr(path, RIG_ATTR)


def camera_line(
    camera: dict[str, Any] | None, source: dict[str, str] | None = None
) -> tuple[str, str]:
    """The ``Camera`` row of ``info``: offset, gain, read noise, QE, bit depth
    (and where they came from, when recorded)."""
    if not camera:
        return ("Camera", "(none recorded)")
    text = (
        f"offset {_num(camera.get('offset_adu'), 'g')} ADU, gain "
        f"{_num(camera.get('e_per_adu'), 'g')} e-/ADU, read noise "
        f"{_num(camera.get('read_noise_e'), 'g')} e-, QE "
        f"{_num(camera.get('qe'), 'g')}, {camera.get('bit_depth', '?')} bits"
    )
    if source:
        by: dict[str, list[str]] = {}
        for field, label in source.items():
            by.setdefault(str(label), []).append(str(field))
        text += " (" + "; ".join(f"{', '.join(v)} from {k}" for k, v in by.items())
        text += ")"
    return ("Camera", text)


def read_calibration_qc(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The QC summary of a store (its ``axialtrack_calibration``), or None."""
    return _root_attr(path, QC_ATTR)


def _num(v: Any, fmt: str = ".1f") -> str:
    return "?" if not isinstance(v, (int, float)) else format(v, fmt)


def calibration_lines(qc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(label, text)`` rows of a calibration's QC: beads found, accepted and
    rejected by reason, the registration (residual, mirror found), the
    reference-Z method and the training examples."""
    if not qc:
        return []
    rows: list[tuple[str, str]] = []
    rows.append(
        (
            "Calibration",
            f"{qc.get('n_fields', '?')} field(s) x {qc.get('n_z', '?')} Z steps of "
            f"{_num(qc.get('z_step_um'), '.4f')} um, crops {qc.get('crop_size', '?')} "
            "px",
        )
    )
    rejected = {k: v for k, v in (qc.get("rejected") or {}).items() if v}
    why = (
        ", ".join(f"{k} {v}" for k, v in rejected.items())
        if rejected
        else "none rejected"
    )
    rows.append(
        (
            "Beads",
            f"{qc.get('n_accepted', '?')} accepted of {qc.get('n_detected', '?')} "
            f"found; rejected: {why}",
        )
    )
    for field in qc.get("per_field") or []:
        rej = ", ".join(f"{k} {v}" for k, v in (field.get("rejected") or {}).items())
        rows.append(
            (
                f"  field {field.get('field')}",
                f"{field.get('accepted')} / {field.get('detected')}"
                + (f" (rejected: {rej})" if rej else ""),
            )
        )
    reg = qc.get("registration") or {}
    mirror = reg.get("mirror")
    asked = reg.get("mirror_requested")
    mirror_text = (
        f", plane-1 mirror {mirror}"
        + (f" (asked: {asked})" if asked and asked != mirror else "")
        if mirror
        else ""
    )
    bound = reg.get("max_residual_nm")
    rows.append(
        (
            "Registration",
            f"residual {_num(reg.get('residual_nm'))} nm"
            + (f" (bound {bound:g} nm)" if isinstance(bound, (int, float)) else "")
            + f" over {reg.get('n_matched', '?')} beads, rotation "
            f"{_num(reg.get('rotation_deg'), '.3f')} deg{mirror_text}",
        )
    )
    refz = qc.get("ref_z") or {}
    reason = refz.get("auto_reason")
    rows.append(
        (
            "Reference Z",
            f"{refz.get('method', '?')} (asked: {refz.get('requested', '?')})"
            + (f"; {reason}" if reason else ""),
        )
    )
    ex = qc.get("examples") or {}
    splits = ", ".join(f"{k} {v}" for k, v in (ex.get("split_beads") or {}).items())
    rows.append(("Examples", f"{ex.get('n', '?')} (beads: {splits or '?'})"))
    truth = qc.get("truth")
    if isinstance(truth, dict) and truth.get("rms_mean_nm") is not None:
        rows.append(
            (
                "Ref. Z vs truth",
                f"RMS {_num(truth.get('rms_mean_nm'))} nm (mean), "
                f"{_num(truth.get('rms_msd_nm'))} nm (msd)",
            )
        )
    psf = qc.get("psf_fit")
    if isinstance(psf, dict):
        z = {str(k): v for k, v in (psf.get("zernike") or {}).items()}
        big = sorted(z, key=lambda j: -abs(float(z[j])))[:3]
        kind = str(psf.get("model") or "pupil")
        rows.append(
            (
                f"PSF fit ({kind})",
                f"{psf.get('n_used', '?')} of {psf.get('n_beads', '?')} beads, "
                f"deviance/px {_num(psf.get('median_reduced_deviance'), '.2f')}"
                + (
                    ", " + ", ".join(f"Z{j} {float(z[j]):+.3f}" for j in big) + " waves"
                    if big
                    else ""
                )
                + (f"; outlier beads {psf['outliers']}" if psf.get("outliers") else ""),
            )
        )
        cr = psf.get("crlb") or {}
        if cr.get("dz_um"):
            zs = ", ".join(
                f"{dz:+.1f}: {_num(v)}"
                for dz, v in zip(cr["dz_um"], cr.get("sigma_z_nm", []), strict=False)
            )
            rows.append(
                (
                    "CRLB z (nm) per dz",
                    f"{zs} (fitted PSF, {_num(cr.get('photons'), '.0f')} photons, "
                    f"background {_num((cr.get('background') or [None])[0])})",
                )
            )
    if qc.get("source"):
        rows.append(("Analyzed from", str(qc["source"])))
    return rows


def qc_only_text(path: str | os.PathLike[str]) -> str | None:
    """``info`` text for a store that holds only a calibration's QC, or None."""
    qc = read_calibration_qc(path)
    if qc is None:
        return None
    rows = [
        ("Calibration QC", f"{Path(path)} (quality control only: no frames stored)"),
        *calibration_lines(qc),
    ]
    rig = read_rig_record(path)
    if rig:
        rows.append(
            (
                "Rig",
                f"pixel {rig.get('pixel_size_um')} um, splitter "
                f"{json.dumps(rig.get('splitter'), default=str)}",
            )
        )
        rows.append(camera_line(rig.get("camera"), rig.get("camera_source")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

"""The shape of an imported stack: its fields, its Z axis (one monotonic bead
stack per field, checked against the file's metadata and the beads' focus) and
the sensor layout found from the beads (:func:`detect_layout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.geometry import unmirror

from .errors import import_error as _err

MIN_Z_STEPS = 3
"""Fewest Z steps per field a calibration stack may have."""

_REL_TOL = 0.01
"""Relative tolerance between a value given and the one a file records."""


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

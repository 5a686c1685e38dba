"""The calibration analysis: registration, bead QC, reference Z, training examples."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import zarr

from axialtrack.geometry import MIRRORS, Z_CONVENTION, apply_affine, unmirror

from .beads import crop_stack
from .detection import FieldDetections, band_passed_projection, detect_field
from .errors import CalibrationError, RegistrationError
from .examples import Examples, save_examples, split_by_bead
from .refz import aperture_intensity, ref_z_mean, ref_z_msd
from .registration import Registration, phase_correlation_shift, register_points
from .stack import CalibrationStack

__all__ = [
    "AUTO_METHOD",
    "REJECT_REASONS",
    "Z_CONVENTION",
    "CalibrationResult",
    "analyze",
    "read_beads",
    "write_qc",
    "write_rig",
]


Method = Literal["mean", "msd", "auto"]

#: Rejection reasons, in the order they are tested.
REJECT_REASONS: tuple[str, ...] = (
    "edge",
    "fit_failed",
    "saturated",
    "neighbour",
    "low_snr",
    "out_of_range",
)
#: Method chosen by ``method="auto"`` for beads on a surface: the lower RMS error
#: on the simulated rig.
AUTO_METHOD = "msd"
#: ``method="auto"`` takes ``"mean"`` when the beads of a field come into focus
#: over more than this range (um, 10th to 90th percentile): beads at different
#: depths (in a gel) have different PSFs under refractive-index mismatch, and the
#: alignment of ``"msd"`` to one template bead then fails (errors of 0.1-1.2 um
#: on the simulated rig for beads 0.05-1.2 um deep, against 11 nm for ``"mean"``).
VOLUME_SPREAD_UM = 0.25
MIN_Z_STEPS = 11
#: A plane registration with a larger RMS residual (nm) is refused: the planes'
#: beads do not map onto each other by one affine (wrong layout or mirror,
#: beads that moved, a distorted splitter). The simulated rig registers to
#: under 20 nm; beads rendered by psfmodels to 2 nm.
MAX_RESIDUAL_NM = 30.0
#: Fewest bead pairs a registration may rest on (an affine has 6 parameters).
MIN_MATCHED = 5
#: A flip given (``mirror``) is refused when another flip registers with a
#: residual this many times smaller (and at least 10 nm better) or matches
#: twice as many beads.
MIRROR_MARGIN = 2.0


def compose_mirrors(a: str, b: str) -> str:
    """The single flip equal to flip ``a`` then flip ``b``."""
    bits = {"none": (0, 0), "horizontal": (1, 0), "vertical": (0, 1), "both": (1, 1)}
    x, y = (i ^ j for i, j in zip(bits[a], bits[b], strict=True))
    return {v: k for k, v in bits.items()}[(x, y)]


def _flip_xy(xy: np.ndarray, flip: str, h: int, w: int) -> np.ndarray:
    out = np.array(xy, dtype=float, copy=True)
    if flip in ("horizontal", "both"):
        out[:, 0] = w - 1 - out[:, 0]
    if flip in ("vertical", "both"):
        out[:, 1] = h - 1 - out[:, 1]
    return out


def _flip_detections(d: FieldDetections, flip: str, h: int, w: int) -> FieldDetections:
    """The detections of a field with plane 1 flipped by ``flip``."""
    mp = d.max_projection.copy()
    mp[1] = unmirror(mp[1], flip)
    peaks1 = _flip_xy(d.peaks[1], flip, h, w).astype(d.peaks[1].dtype)
    return FieldDetections(
        d.background,
        mp,
        [d.peaks[0], peaks1],
        [d.xy[0], _flip_xy(d.xy[1], flip, h, w)],
        d.best_frame,
    )


def _register_flips(
    dets: list[FieldDetections], pixel_size_um: float, shape: tuple[int, int]
) -> tuple[dict[str, Registration], dict[str, dict[str, Any]]]:
    """Register the planes for each flip of plane 1 (relative to the stack).

    A registration whose affine turns by more than 45 degrees or flips (as the
    splitter geometry allows: rotation within +-45 degrees, scale 0.5-2) is
    not counted for its flip.
    """
    h, w = shape
    regs: dict[str, Registration] = {}
    trials: dict[str, dict[str, Any]] = {}
    xy0 = [d.xy[0][np.isfinite(d.xy[0][:, 0])] for d in dets]
    for flip in MIRRORS:
        fd = [_flip_detections(d, flip, h, w) for d in dets]
        bps = [band_passed_projection(d) for d in fd]
        coarse = phase_correlation_shift([b[0] for b in bps], [b[1] for b in bps])
        xy1 = [d.xy[1][np.isfinite(d.xy[1][:, 0])] for d in fd]
        try:
            r = register_points(xy0, xy1, coarse, pixel_size_um=pixel_size_um)
        except ValueError as e:
            trials[flip] = {"residual_nm": None, "n_matched": 0, "error": str(e)}
            continue
        lin = r.affine[:, :2]
        det = float(np.linalg.det(lin))
        if not (det > 0.25 and det < 4.0 and abs(r.rotation_deg) <= 45.0):
            # a flip or half turn absorbed by the affine: that is another
            # flip's registration, not this one's
            trials[flip] = {
                "residual_nm": None,
                "n_matched": 0,
                "error": f"affine rotation {r.rotation_deg:.1f} deg, det {det:.2f}",
            }
            continue
        regs[flip] = r
        trials[flip] = {"residual_nm": r.residual_nm, "n_matched": r.n_matched}
    return regs, trials


def _trials_text(trials: dict[str, dict[str, Any]], base: str) -> str:
    parts = []
    for flip, t in trials.items():
        name = compose_mirrors(base, flip)
        if t["residual_nm"] is None:
            parts.append(f"{name}: no match")
        else:
            parts.append(f"{name}: {t['residual_nm']:.1f} nm ({t['n_matched']} beads)")
    return ", ".join(parts)


def _choose_flip(
    regs: dict[str, Registration],
    trials: dict[str, dict[str, Any]],
    asked: str,
    loaded: str,
) -> str:
    """The flip of plane 1 to apply (relative to the stack), or a refusal.

    The best flip has the smallest residual among those matching at least half
    as many beads as the flip that matches most. With ``asked`` ``"auto"`` it is
    taken; with a mirror given, the given one (no flip) is kept unless the best
    beats it by :data:`MIRROR_MARGIN`. The registration kept must rest on
    :data:`MIN_MATCHED` beads.

    Raises
    ------
    RegistrationError
    """
    text = _trials_text(trials, loaded)
    most = max((r.n_matched for r in regs.values()), default=0)
    if most < MIN_MATCHED:
        raise RegistrationError(
            f"plane registration matched at most {most} bead pair(s) (need "
            f"{MIN_MATCHED}) for any plane-1 flip ({text}); likely cause: a wrong "
            "--layout, too few beads seen in both planes, or a Z range that misses "
            "focus in one plane"
        )
    ok = {k: r for k, r in regs.items() if r.n_matched >= max(MIN_MATCHED, most / 2)}
    flip = min(ok, key=lambda k: ok[k].residual_nm)
    if asked != "auto" and flip != "none":
        best = regs[flip]
        given = regs.get("none")
        clearly = (
            given is None
            or given.n_matched < MIN_MATCHED
            or given.n_matched * MIRROR_MARGIN <= best.n_matched
            or (
                given.residual_nm > MIRROR_MARGIN * best.residual_nm
                and given.residual_nm - best.residual_nm > 10.0
            )
        )
        found = compose_mirrors(loaded, flip)
        if clearly:
            raise RegistrationError(
                f"plane-1 mirror {asked!r} fits the beads clearly worse than "
                f"{found!r} (residuals {text}); pass --mirror {found}, or --mirror "
                "auto"
            )
        flip = "none"
    return flip


def _check_residual(reg: Registration, trials: dict[str, Any], loaded: str) -> None:
    """Refuse a registration residual above :data:`MAX_RESIDUAL_NM`."""
    if reg.residual_nm > MAX_RESIDUAL_NM:
        raise RegistrationError(
            f"plane registration residual {reg.residual_nm:.1f} nm over "
            f"{reg.n_matched} beads is above {MAX_RESIDUAL_NM:g} nm (flips tried: "
            f"{_trials_text(trials, loaded)}); likely cause: a wrong --layout or "
            "pixel size, beads that moved during the stack, or a splitter "
            "distortion beyond an affine"
        )


@dataclass
class CalibrationResult:
    """Everything the calibration analysis produces.

    Attributes
    ----------
    registration
        Plane-0 -> plane-1 affine with its residual.
    beads
        One row per detected plane-0 bead: ``field``, ``bead`` (unique id),
        ``x_px0, y_px0, x_px1, y_px1`` (plane 1 = registered position),
        ``peak_ratio``, ``status`` (``"accepted"`` or ``"rejected"``), ``reason``
        (empty when accepted), ``z_mean_um, sigma_mean_um, z_msd_um, sigma_msd_um,
        ref_z_um, sigma_ref_z_um``.
    examples
        Training examples of the accepted beads.
    qc
        JSON-serializable summary.
    profiles
        ``(N_accepted, Z, 2)`` on-axis brightness of the accepted beads.
    crop_size
        Crop size used.
    method
        Reference-Z method used for the examples.
    stack
        The stack analyzed, with plane 1 un-flipped as the beads showed (its
        ``geometry.mirror`` is the mirror found).
    """

    registration: Registration
    beads: pd.DataFrame
    examples: Examples
    qc: dict[str, Any]
    profiles: np.ndarray
    crop_size: int
    method: str
    stack: CalibrationStack | None = None


def _check_stack(stack: CalibrationStack, crop_size: int) -> None:
    if crop_size < 5 or crop_size % 2 == 0:
        raise CalibrationError(f"crop_size must be odd and >= 5; got {crop_size}")
    if stack.n_z < MIN_Z_STEPS:
        raise CalibrationError(
            f"the calibration stack has {stack.n_z} Z step(s); at least "
            f"{MIN_Z_STEPS} are needed (acquire a Z range of about +-1.5 um in "
            "steps of 50 nm)"
        )
    for p in range(stack.n_fields):
        d = np.diff(stack.stage_z_um[p])
        if not (np.all(d > 0) or np.all(d < 0)):
            raise CalibrationError(
                f"stage Z of field {p} is not strictly monotonic; acquire the "
                "Z-stack in one direction without repeated positions"
            )
    h, w = stack.plane_shape
    if min(h, w) < 3 * crop_size:
        raise CalibrationError(
            f"planes of {h}x{w} px are too small for crops of {crop_size} px"
        )


def _saturation(stack: CalibrationStack) -> float:
    meta = stack.meta or {}
    if "saturation_adu" in meta:
        return float(meta["saturation_adu"])
    if "bit_depth" in meta:
        return float(2 ** int(meta["bit_depth"]) - 1)
    dt = np.asarray(stack.frames).dtype
    if np.issubdtype(dt, np.integer):
        return float(np.iinfo(dt).max)
    return float("inf")


def analyze(
    stack: CalibrationStack,
    *,
    crop_size: int = 15,
    method: Method = "auto",
    dz_range_um: float = 1.0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    threshold_sigma: float = 8.0,
    neighbour_margin_px: int = 2,
    min_peak_ratio: float = 2.0,
    stage_sigma_um: float = 0.005,
    mean_window_um: float = 0.4,
    mean_power: float = 2.0,
    min_beads: int = 3,
) -> CalibrationResult:
    """Analyze a bead calibration stack.

    Parameters
    ----------
    stack
        The calibration stack (Z-stacks of one or more fields, both planes).
    crop_size
        Odd crop size of the training examples (px).
    method
        Reference Z: ``"mean"`` (brightness-weighted mean), ``"msd"`` (alignment
        to a reference bead) or ``"auto"``: :data:`AUTO_METHOD` (the better one
        on the simulated rig) for beads on a surface, ``"mean"`` when the beads
        of a field lie at different depths (their in-focus positions spread over
        more than :data:`VOLUME_SPREAD_UM`); ``info["ref_z"]`` says which and
        why.
    dz_range_um
        Frames with ``|dz| <= dz_range_um`` become examples.
    split_fractions
        Train/validation/test fractions of the beads.
    seed
        Seed of the split.
    threshold_sigma
        Detection threshold (robust sigmas of the band-passed max projection).
    neighbour_margin_px
        A bead is rejected when another detection lies within
        ``crop_size // 2 + neighbour_margin_px`` px (Chebyshev distance).
    min_peak_ratio
        Minimum peak / mean of the best-focus crop (offset-subtracted).
    stage_sigma_um
        Stage position error per frame for the reference-Z uncertainty.
    mean_window_um, mean_power
        Window half-width around the profile maximum and power of the
        brightness in the weighted mean (:func:`~.refz.ref_z_mean`).
    min_beads
        Fewer accepted beads than this is an error.

    The plane-1 mirror is checked (or, with ``stack.meta["mirror"] == "auto"``,
    found) by registering every flip of plane 1; see :func:`_choose_flip`.

    Raises
    ------
    RegistrationError
        A mirror given that fits the beads clearly worse than another flip, fewer
        than :data:`MIN_MATCHED` bead pairs, or a residual above
        :data:`MAX_RESIDUAL_NM`.
    CalibrationError
        The stack cannot give a trustworthy calibration (too few Z steps, stage Z
        not monotonic, no or too few usable beads).
    """
    t_start = time.perf_counter()
    if method not in ("mean", "msd", "auto"):
        raise CalibrationError(f"unknown reference-Z method {method!r}")
    _check_stack(stack, crop_size)
    use = AUTO_METHOD if method == "auto" else method
    h, w = stack.plane_shape
    half = crop_size // 2
    sat = _saturation(stack)
    offset = float((stack.meta or {}).get("offset_adu", 0.0))

    # 1. detection and localization per field
    dets: list[FieldDetections] = []
    for p in range(stack.n_fields):
        dets.append(
            detect_field(np.asarray(stack.frames[p]), threshold_sigma=threshold_sigma)
        )
    t_detect = time.perf_counter()
    n_det = [len(d.peaks[0]) for d in dets]
    if sum(n_det) == 0:
        raise CalibrationError(
            "no beads were detected in any field; check that the stack shows beads "
            "(exposure, focus range, bead density) and the plane layout"
        )

    # 2. registration from all fields, for each flip of plane 1
    asked = str((stack.meta or {}).get("mirror", stack.geometry.mirror))
    regs, trials = _register_flips(dets, stack.pixel_size_um, (h, w))
    loaded_mirror = stack.geometry.mirror
    flip = _choose_flip(regs, trials, asked, loaded_mirror)
    reg = regs[flip]
    if flip != "none":
        dets = [_flip_detections(d, flip, h, w) for d in dets]
        frames = np.array(stack.frames, copy=True)
        frames[:, :, 1] = unmirror(frames[:, :, 1], flip)
        stack = replace(
            stack,
            frames=frames,
            geometry=stack.geometry.model_copy(
                update={"mirror": compose_mirrors(stack.geometry.mirror, flip)}
            ),
            meta={**(stack.meta or {}), "mirror": "auto"},
        )
    t_reg = time.perf_counter()

    # 3. bead table and exclusion
    rows: list[dict[str, Any]] = []
    accepted_crops: list[np.ndarray] = []
    accepted_bg: list[np.ndarray] = []
    accepted_off: list[np.ndarray] = []
    bead_id = 0
    for p, d in enumerate(dets):
        pk = d.peaks[0]
        xy = d.xy[0].copy()
        fit_ok = np.isfinite(xy[:, 0])
        xy[~fit_ok] = pk[~fit_ok]
        x1 = apply_affine(reg.affine, xy) if len(xy) else np.zeros((0, 2))
        c0 = np.rint(xy).astype(np.int64)
        c1 = np.rint(x1).astype(np.int64)

        def inside(c: np.ndarray) -> np.ndarray:
            return (
                (c[:, 0] >= half)
                & (c[:, 0] < w - half)
                & (c[:, 1] >= half)
                & (c[:, 1] < h - half)
            )

        edge = ~(inside(c0) & inside(c1))
        # neighbours: all plane-0 detections plus plane-1 detections mapped back
        others = [pk.astype(float)]
        if len(d.peaks[1]):
            a = reg.affine
            inv = np.linalg.inv(a[:, :2])
            others.append((d.peaks[1] - a[:, 2]) @ inv.T)
        allpts = np.concatenate(others)
        reach = half + neighbour_margin_px
        neigh = np.zeros(len(pk), dtype=bool)
        for i in range(len(pk)):
            dist = np.abs(allpts - xy[i]).max(axis=1)
            close = dist <= reach
            # the bead itself appears once per plane within ~2 px
            self_hits = dist <= 2.0
            neigh[i] = close.sum() > self_hits.sum()
        ok_idx = np.nonzero(~edge)[0]
        saturated = np.zeros(len(pk), dtype=bool)
        ratio = np.full(len(pk), np.nan)
        crops = np.zeros((0, stack.n_z, 2, crop_size, crop_size), np.float32)
        if len(ok_idx):
            fr = np.asarray(stack.frames[p])
            k0 = crop_stack(fr[:, 0], c0[ok_idx], crop_size)  # (n, Z, S, S)
            k1 = crop_stack(fr[:, 1], c1[ok_idx], crop_size)
            saturated[ok_idx] = (k0.max(axis=(1, 2, 3)) >= sat) | (
                k1.max(axis=(1, 2, 3)) >= sat
            )
            crops = np.stack([k0, k1], axis=2).astype(np.float32)
            best = d.best_frame[0][ok_idx]
            at_best = crops[np.arange(len(ok_idx)), best, 0] - offset
            ratio[ok_idx] = at_best.max(axis=(1, 2)) / np.maximum(
                at_best.mean(axis=(1, 2)), 1e-9
            )
        n_z = stack.n_z
        edge_frames = max(2, n_z // 20)
        out_of_range = (d.best_frame[0] < edge_frames) | (
            d.best_frame[0] >= n_z - edge_frames
        )
        reasons = {
            "edge": edge,
            "fit_failed": ~fit_ok,
            "saturated": saturated,
            "neighbour": neigh,
            "low_snr": ~(ratio >= min_peak_ratio),
            "out_of_range": out_of_range,
        }
        pos_in_crops = {int(j): n for n, j in enumerate(ok_idx)}
        for i in range(len(pk)):
            reason = next((r for r in REJECT_REASONS if reasons[r][i]), "")
            rows.append(
                {
                    "field": p,
                    "bead": bead_id,
                    "x_px0": float(xy[i, 0]),
                    "y_px0": float(xy[i, 1]),
                    "x_px1": float(x1[i, 0]),
                    "y_px1": float(x1[i, 1]),
                    "peak_ratio": float(ratio[i]),
                    "status": "rejected" if reason else "accepted",
                    "reason": reason,
                }
            )
            if not reason:
                accepted_crops.append(crops[pos_in_crops[i]])
                accepted_bg.append(d.background)
                accepted_off.append(np.stack([xy[i] - c0[i], x1[i] - c1[i]]))
            bead_id += 1
    beads = pd.DataFrame(rows)
    acc = np.nonzero((beads["status"] == "accepted").to_numpy())[0]
    counts = beads["reason"].replace("", "accepted").value_counts().to_dict()
    if len(acc) < min_beads:
        raise CalibrationError(
            f"only {len(acc)} bead(s) passed quality control (need {min_beads}); "
            f"rejections: { {k: int(v) for k, v in counts.items()} }. Use more "
            "fields, a sparser bead sample, a lower exposure (saturation) or a "
            "Z range centred on the beads"
        )
    # checked after the bead QC, whose reasons (saturation, ...) say more
    _check_residual(reg, trials, loaded_mirror)
    t_qc = time.perf_counter()

    # 4. reference Z
    crops_acc = np.stack(accepted_crops)  # (N, Z, 2, S, S)
    bg_acc = np.stack(accepted_bg)  # (N, Z, 2)
    off_acc = np.stack(accepted_off)  # (N, 2, 2)
    meta = stack.meta or {}
    camera = (
        (
            float(meta["offset_adu"]),
            float(meta["gain_e_per_adu"]),
            float(meta.get("read_noise_e", 0.0)),
        )
        if "offset_adu" in meta and "gain_e_per_adu" in meta
        else None
    )
    fv = [
        aperture_intensity(
            crops_acc[i : i + 1], bg_acc[i], off_acc[i : i + 1], camera=camera
        )
        for i in range(len(acc))
    ]
    feats = np.concatenate([f for f, _ in fv])
    var_b = (
        None if camera is None else np.concatenate([v for _, v in fv if v is not None])
    )
    field_acc = beads["field"].to_numpy()[acc]
    z_mean = np.empty(len(acc))
    s_mean = np.empty(len(acc))
    z_msd = np.empty(len(acc))
    s_msd = np.empty(len(acc))
    zplanes = np.empty((len(acc), 2))
    ratio_acc = beads["peak_ratio"].to_numpy()[acc]
    for p in np.unique(field_acc):
        sel = np.nonzero(field_acc == p)[0]
        zz = stack.stage_z_um[p]
        order = np.argsort(zz)
        f = feats[sel][:, order]
        rm = ref_z_mean(
            f,
            zz[order],
            stack.geometry.plane_offset_um,
            window_um=mean_window_um,
            power=mean_power,
            stage_sigma_um=stage_sigma_um,
            variance=None if var_b is None else var_b[sel][:, order],
        )
        z_mean[sel], s_mean[sel] = rm.z_um, rm.sigma_um
        assert rm.z_plane_um is not None
        zplanes[sel] = rm.z_plane_um
        ref = int(np.argmax(ratio_acc[sel]))
        rd = ref_z_msd(f, zz[order], rm, reference=ref, stage_sigma_um=stage_sigma_um)
        z_msd[sel], s_msd[sel] = rd.z_um, rd.sigma_um
    t_refz = time.perf_counter()
    spread = 0.0
    for p in np.unique(field_acc):
        zf = z_mean[field_acc == p]
        if zf.size >= 2:
            lo, hi = np.percentile(zf, [10, 90])
            spread = max(spread, float(hi - lo))
    auto_reason = None
    if method == "auto":
        if spread > VOLUME_SPREAD_UM:
            use = "mean"
            auto_reason = (
                f"beads come into focus over {spread:.2f} um within a field (a "
                f"volume sample, > {VOLUME_SPREAD_UM} um): 'mean'"
            )
        else:
            auto_reason = (
                f"beads come into focus within {spread:.2f} um per field (a "
                f"surface): {AUTO_METHOD!r}"
            )
    for col in ("z_mean_um", "sigma_mean_um", "z_msd_um", "sigma_msd_um"):
        beads[col] = np.nan
    beads.loc[acc, "z_mean_um"] = z_mean
    beads.loc[acc, "sigma_mean_um"] = s_mean
    beads.loc[acc, "z_msd_um"] = z_msd
    beads.loc[acc, "sigma_msd_um"] = s_msd
    ref_z = z_mean if use == "mean" else z_msd
    beads["ref_z_um"] = beads["z_mean_um"] if use == "mean" else beads["z_msd_um"]
    beads["sigma_ref_z_um"] = (
        beads["sigma_mean_um"] if use == "mean" else beads["sigma_msd_um"]
    )

    # 5. examples
    bead_ids = beads["bead"].to_numpy()[acc]
    split_of = split_by_bead(bead_ids, split_fractions, seed)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("c", "dz", "sz", "rz", "xy", "b", "f", "s")
    }
    x0 = beads["x_px0"].to_numpy()[acc]
    y0 = beads["y_px0"].to_numpy()[acc]
    for n in range(len(acc)):
        p = int(field_acc[n])
        zz = stack.stage_z_um[p]
        dz = ref_z[n] - zz
        sel = np.nonzero(np.abs(dz) <= dz_range_um)[0]
        m = len(sel)
        parts["c"].append(crops_acc[n, sel])
        parts["dz"].append(dz[sel])
        parts["sz"].append(zz[sel])
        parts["rz"].append(np.full(m, ref_z[n]))
        parts["xy"].append(
            np.tile([2 * x0[n] / (w - 1) - 1, 2 * y0[n] / (h - 1) - 1], (m, 1))
        )
        parts["b"].append(np.full(m, bead_ids[n], np.int64))
        parts["f"].append(np.full(m, p, np.int64))
        parts["s"].append(np.full(m, split_of[int(bead_ids[n])], np.int8))
    examples = Examples(
        crops=np.concatenate(parts["c"]).astype(np.float32),
        dz_um=np.concatenate(parts["dz"]),
        stage_z_um=np.concatenate(parts["sz"]),
        ref_z_um=np.concatenate(parts["rz"]),
        xy_norm=np.concatenate(parts["xy"]),
        bead=np.concatenate(parts["b"]),
        field=np.concatenate(parts["f"]),
        split=np.concatenate(parts["s"]),
    )
    beads["split"] = ""
    names = {v: k for k, v in {"train": 0, "validation": 1, "test": 2}.items()}
    beads.loc[acc, "split"] = [names[split_of[int(b)]] for b in bead_ids]
    t_end = time.perf_counter()

    per_field = []
    for p in range(stack.n_fields):
        fb = beads[beads["field"] == p]
        per_field.append(
            {
                "field": p,
                "detected": len(fb),
                "accepted": int((fb["status"] == "accepted").sum()),
                "rejected": {
                    r: int((fb["reason"] == r).sum())
                    for r in REJECT_REASONS
                    if (fb["reason"] == r).any()
                },
            }
        )
    qc: dict[str, Any] = {
        "n_fields": stack.n_fields,
        "n_z": stack.n_z,
        "z_step_um": stack.z_step_um,
        "crop_size": crop_size,
        "n_detected": len(beads),
        "n_accepted": len(acc),
        "rejected": {r: int((beads["reason"] == r).sum()) for r in REJECT_REASONS},
        "per_field": per_field,
        "registration": {
            "affine": reg.affine.tolist(),
            "residual_nm": reg.residual_nm,
            "max_residual_nm": MAX_RESIDUAL_NM,
            "n_matched": reg.n_matched,
            "mirror": stack.geometry.mirror,
            "mirror_requested": asked,
            "mirror_trials": trials,
            "rotation_deg": reg.rotation_deg,
            "coarse_shift_px": list(reg.coarse_shift_px),
            "direction": "plane0_to_plane1",
        },
        "ref_z": {
            "method": use,
            "requested": method,
            "auto_reason": auto_reason,
            "focus_spread_um": spread,
            "median_sigma_mean_nm": float(np.median(s_mean) * 1e3),
            "median_sigma_msd_nm": float(np.median(s_msd) * 1e3),
            "rms_mean_minus_msd_nm": float(
                np.sqrt(np.mean((z_mean - z_msd) ** 2)) * 1e3
            ),
            "plane_disagreement_rms_nm": float(
                np.sqrt(np.mean((zplanes[:, 0] - zplanes[:, 1]) ** 2)) * 1e3
            ),
        },
        "examples": {
            "n": len(examples),
            "dz_range_um": dz_range_um,
            "dz_convention": "dz_um = ref_z_um - stage_z_um",
            "split_beads": {
                k: int(sum(1 for v in split_of.values() if v == c))
                for k, c in (("train", 0), ("validation", 1), ("test", 2))
            },
            "split_fractions": list(split_fractions),
            "seed": seed,
        },
        "timing_s": {
            "detect": t_detect - t_start,
            "register": t_reg - t_detect,
            "qc_crops": t_qc - t_reg,
            "ref_z": t_refz - t_qc,
            "examples": t_end - t_refz,
            "total": t_end - t_start,
        },
        "source": stack.source,
    }
    if stack.truth is not None:
        qc["truth"] = _truth_errors(stack, beads)
    json.dumps(qc)  # must stay JSON-serializable
    profiles = feats[..., 0]
    return CalibrationResult(
        registration=reg,
        beads=beads,
        examples=examples,
        qc=qc,
        profiles=profiles,
        crop_size=crop_size,
        method=use,
        stack=stack,
    )


def _truth_errors(stack: CalibrationStack, beads: pd.DataFrame) -> dict[str, Any]:
    """RMS errors of both reference-Z methods against simulation truth."""
    assert stack.truth is not None
    err: dict[str, list[float]] = {"mean": [], "msd": []}
    beads["z_true_um"] = np.nan
    for p, tr in enumerate(stack.truth):
        if tr is None or len(tr) == 0:
            continue
        sel = (beads["field"] == p) & (beads["status"] == "accepted")
        if not sel.any():
            continue
        b = beads[sel]
        tp = np.column_stack([tr["x_px0"], tr["y_px0"]])
        for idx, row in b.iterrows():
            d = np.hypot(tp[:, 0] - row["x_px0"], tp[:, 1] - row["y_px0"])
            j = int(np.argmin(d))
            if d[j] > 1.0:
                continue
            zt = float(tr["z_focus_um"][j])
            beads.loc[idx, "z_true_um"] = zt
            err["mean"].append(row["z_mean_um"] - zt)
            err["msd"].append(row["z_msd_um"] - zt)

    def rms(v: list[float]) -> float | None:
        return float(np.sqrt(np.mean(np.square(v))) * 1e3) if v else None

    def bias(v: list[float]) -> float | None:
        return float(np.mean(v) * 1e3) if v else None

    return {
        "n_matched": len(err["mean"]),
        "rms_mean_nm": rms(err["mean"]),
        "rms_msd_nm": rms(err["msd"]),
        "bias_mean_nm": bias(err["mean"]),
        "bias_msd_nm": bias(err["msd"]),
    }


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

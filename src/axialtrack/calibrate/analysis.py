"""The calibration analysis: registration, bead QC, reference Z, training examples."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from axialtrack.geometry import Z_CONVENTION, apply_affine, unmirror

from ._plane_flip import (
    MAX_RESIDUAL_NM,
    MIN_MATCHED,
    MIRROR_MARGIN,
    _check_residual,
    _choose_flip,
    _flip_detections,
    _register_flips,
    compose_mirrors,
)
from .beads import crop_stack
from .detection import FieldDetections, detect_field
from .errors import CalibrationError
from .examples import Examples, split_by_bead
from .refz import aperture_intensity, ref_z_mean, ref_z_msd
from .registration import Registration
from .stack import CalibrationStack

__all__ = [
    "AUTO_METHOD",
    "MAX_RESIDUAL_NM",
    "MIN_MATCHED",
    "MIRROR_MARGIN",
    "REJECT_REASONS",
    "Z_CONVENTION",
    "AnalysisConfig",
    "CalibrationResult",
    "analyze",
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


class AnalysisConfig(BaseModel):
    """Settings of :func:`analyze` (the defaults suit the simulated rig and
    the reference study's beads).

    Attributes
    ----------
    crop_size
        Odd crop size of the training examples (px).
    method
        Reference Z: ``"mean"`` (brightness-weighted mean), ``"msd"`` (alignment
        to a reference bead) or ``"auto"``: :data:`AUTO_METHOD` (the better one
        on the simulated rig) for beads on a surface, ``"mean"`` when the beads
        of a field lie at different depths (their in-focus positions spread over
        more than :data:`VOLUME_SPREAD_UM`); ``qc["ref_z"]`` says which and
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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_size: int = 15
    method: Method = "auto"
    dz_range_um: float = 1.0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    threshold_sigma: float = 8.0
    neighbour_margin_px: int = 2
    min_peak_ratio: float = 2.0
    stage_sigma_um: float = 0.005
    mean_window_um: float = 0.4
    mean_power: float = 2.0
    min_beads: int = 3


@dataclass
class _Accepted:
    """The accepted beads' crops ``(N, Z, 2, S, S)``, per-frame backgrounds
    ``(N, Z, 2)`` and sub-pixel offsets of the crop centres ``(N, 2, 2)``."""

    crops: list[np.ndarray]
    background: list[np.ndarray]
    offsets: list[np.ndarray]


@dataclass
class _RefZ:
    """Both reference-Z estimates of the accepted beads and the one used."""

    z_mean: np.ndarray
    s_mean: np.ndarray
    z_msd: np.ndarray
    s_msd: np.ndarray
    z_planes: np.ndarray
    profiles: np.ndarray
    method: str
    auto_reason: str | None
    spread_um: float

    @property
    def ref_z(self) -> np.ndarray:
        return self.z_mean if self.method == "mean" else self.z_msd


def analyze(
    stack: CalibrationStack,
    config: AnalysisConfig | None = None,
    **overrides: Any,
) -> CalibrationResult:
    """Analyze a bead calibration stack.

    Five steps, each its own function: detection and localization per field
    (:func:`_detect`), registration of the planes for each flip of plane 1
    (:func:`_register`), the bead table with its exclusions
    (:func:`_bead_table`), the reference Z of each bead (:func:`_reference_z`)
    and the training examples (:func:`_examples`); :func:`_qc_summary` gathers
    what they found.

    Parameters
    ----------
    stack
        The calibration stack (Z-stacks of one or more fields, both planes).
    config
        The settings (:class:`AnalysisConfig`; default: its defaults).
    **overrides
        Fields of :class:`AnalysisConfig` to change, e.g. ``dz_range_um=0.8``.

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
        not monotonic, no or too few usable beads), or an unknown method.
    TypeError
        An override that is no field of :class:`AnalysisConfig`.
    """
    unknown = set(overrides) - set(AnalysisConfig.model_fields)
    if unknown:
        raise TypeError(
            f"analyze() got unexpected keyword argument(s) {sorted(unknown)}; "
            f"the settings are {sorted(AnalysisConfig.model_fields)}"
        )
    if overrides.get("method", "auto") not in ("mean", "msd", "auto"):
        raise CalibrationError(f"unknown reference-Z method {overrides['method']!r}")
    base = (config or AnalysisConfig()).model_dump()
    cfg = AnalysisConfig.model_validate({**base, **overrides})
    t = [time.perf_counter()]
    _check_stack(stack, cfg.crop_size)
    dets = _detect(stack, cfg)
    t.append(time.perf_counter())
    asked = str((stack.meta or {}).get("mirror", stack.geometry.mirror))
    loaded_mirror = stack.geometry.mirror
    stack, dets, reg, trials = _register(stack, dets, asked)
    t.append(time.perf_counter())
    beads, accepted = _bead_table(stack, dets, reg, cfg)
    # checked after the bead QC, whose reasons (saturation, ...) say more
    _check_residual(reg, trials, loaded_mirror)
    t.append(time.perf_counter())
    acc = np.nonzero((beads["status"] == "accepted").to_numpy())[0]
    crops_acc = np.stack(accepted.crops)  # (N, Z, 2, S, S)
    rz = _reference_z(stack, beads, acc, crops_acc, accepted, cfg)
    t.append(time.perf_counter())
    examples, split_of = _examples(stack, beads, acc, crops_acc, rz.ref_z, cfg)
    t.append(time.perf_counter())
    qc = _qc_summary(stack, beads, reg, trials, asked, rz, examples, split_of, cfg)
    names = ("detect", "register", "qc_crops", "ref_z", "examples")
    qc["timing_s"] = {n: b - a for n, a, b in zip(names, t[:-1], t[1:], strict=True)}
    qc["timing_s"]["total"] = t[-1] - t[0]
    qc["source"] = stack.source
    if stack.truth is not None:
        qc["truth"] = _truth_errors(stack, beads)
    json.dumps(qc)  # must stay JSON-serializable
    return CalibrationResult(
        registration=reg,
        beads=beads,
        examples=examples,
        qc=qc,
        profiles=rz.profiles,
        crop_size=cfg.crop_size,
        method=rz.method,
        stack=stack,
    )


def _detect(stack: CalibrationStack, cfg: AnalysisConfig) -> list[FieldDetections]:
    """Step 1: the beads of each field, detected and localized in both planes."""
    dets = [
        detect_field(np.asarray(stack.frames[p]), threshold_sigma=cfg.threshold_sigma)
        for p in range(stack.n_fields)
    ]
    if sum(len(d.peaks[0]) for d in dets) == 0:
        raise CalibrationError(
            "no beads were detected in any field; check that the stack shows beads "
            "(exposure, focus range, bead density) and the plane layout"
        )
    return dets


def _register(
    stack: CalibrationStack, dets: list[FieldDetections], asked: str
) -> tuple[
    CalibrationStack, list[FieldDetections], Registration, dict[str, dict[str, Any]]
]:
    """Step 2: the planes registered from all fields for each flip of plane 1;
    the stack and detections with the flip chosen applied."""
    h, w = stack.plane_shape
    regs, trials = _register_flips(dets, stack.pixel_size_um, (h, w))
    flip = _choose_flip(regs, trials, asked, stack.geometry.mirror)
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
    return stack, dets, regs[flip], trials


def _bead_table(
    stack: CalibrationStack,
    dets: list[FieldDetections],
    reg: Registration,
    cfg: AnalysisConfig,
) -> tuple[pd.DataFrame, _Accepted]:
    """Step 3: one row per plane-0 bead with its status and the first rejection
    reason (:data:`REJECT_REASONS`); the accepted beads' crops."""
    rows: list[dict[str, Any]] = []
    accepted = _Accepted([], [], [])
    for p, d in enumerate(dets):
        _field_beads(stack, p, d, reg, cfg, rows, accepted)
    beads = pd.DataFrame(rows)
    n_acc = int((beads["status"] == "accepted").sum())
    counts = beads["reason"].replace("", "accepted").value_counts().to_dict()
    if n_acc < cfg.min_beads:
        raise CalibrationError(
            f"only {n_acc} bead(s) passed quality control (need {cfg.min_beads}); "
            f"rejections: { {k: int(v) for k, v in counts.items()} }. Use more "
            "fields, a sparser bead sample, a lower exposure (saturation) or a "
            "Z range centred on the beads"
        )
    return beads, accepted


def _field_beads(
    stack: CalibrationStack,
    p: int,
    d: FieldDetections,
    reg: Registration,
    cfg: AnalysisConfig,
    rows: list[dict[str, Any]],
    accepted: _Accepted,
) -> None:
    """The bead rows of field ``p`` appended to ``rows`` (ids go on from the
    rows before), the accepted ones' crops to ``accepted``."""
    h, w = stack.plane_shape
    crop_size = cfg.crop_size
    half = crop_size // 2
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
    reach = half + cfg.neighbour_margin_px
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
        sat = _saturation(stack)
        offset = float((stack.meta or {}).get("offset_adu", 0.0))
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
        "low_snr": ~(ratio >= cfg.min_peak_ratio),
        "out_of_range": out_of_range,
    }
    pos_in_crops = {int(j): n for n, j in enumerate(ok_idx)}
    for i in range(len(pk)):
        reason = next((r for r in REJECT_REASONS if reasons[r][i]), "")
        rows.append(
            {
                "field": p,
                "bead": len(rows),
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
            accepted.crops.append(crops[pos_in_crops[i]])
            accepted.background.append(d.background)
            accepted.offsets.append(np.stack([xy[i] - c0[i], x1[i] - c1[i]]))


def _reference_z(
    stack: CalibrationStack,
    beads: pd.DataFrame,
    acc: np.ndarray,
    crops_acc: np.ndarray,
    accepted: _Accepted,
    cfg: AnalysisConfig,
) -> _RefZ:
    """Step 4: both reference Z of each accepted bead (per field), the method
    used; the bead table gets the ``z_*``, ``sigma_*`` and ``ref_z_um`` columns."""
    bg_acc = np.stack(accepted.background)  # (N, Z, 2)
    off_acc = np.stack(accepted.offsets)  # (N, 2, 2)
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
            window_um=cfg.mean_window_um,
            power=cfg.mean_power,
            stage_sigma_um=cfg.stage_sigma_um,
            variance=None if var_b is None else var_b[sel][:, order],
        )
        z_mean[sel], s_mean[sel] = rm.z_um, rm.sigma_um
        assert rm.z_plane_um is not None
        zplanes[sel] = rm.z_plane_um
        ref = int(np.argmax(ratio_acc[sel]))
        rd = ref_z_msd(
            f, zz[order], rm, reference=ref, stage_sigma_um=cfg.stage_sigma_um
        )
        z_msd[sel], s_msd[sel] = rd.z_um, rd.sigma_um
    spread = 0.0
    for p in np.unique(field_acc):
        zf = z_mean[field_acc == p]
        if zf.size >= 2:
            lo, hi = np.percentile(zf, [10, 90])
            spread = max(spread, float(hi - lo))
    use = AUTO_METHOD if cfg.method == "auto" else cfg.method
    auto_reason = None
    if cfg.method == "auto":
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
    beads["ref_z_um"] = beads["z_mean_um"] if use == "mean" else beads["z_msd_um"]
    beads["sigma_ref_z_um"] = (
        beads["sigma_mean_um"] if use == "mean" else beads["sigma_msd_um"]
    )
    return _RefZ(
        z_mean, s_mean, z_msd, s_msd, zplanes, feats[..., 0], use, auto_reason, spread
    )


def _examples(
    stack: CalibrationStack,
    beads: pd.DataFrame,
    acc: np.ndarray,
    crops_acc: np.ndarray,
    ref_z: np.ndarray,
    cfg: AnalysisConfig,
) -> tuple[Examples, dict[int, int]]:
    """Step 5: the frames within ``dz_range_um`` of each accepted bead's
    reference Z as examples, split by bead; the bead table gets ``split``."""
    h, w = stack.plane_shape
    field_acc = beads["field"].to_numpy()[acc]
    bead_ids = beads["bead"].to_numpy()[acc]
    split_of = split_by_bead(bead_ids, cfg.split_fractions, cfg.seed)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("c", "dz", "sz", "rz", "xy", "b", "f", "s")
    }
    x0 = beads["x_px0"].to_numpy()[acc]
    y0 = beads["y_px0"].to_numpy()[acc]
    for n in range(len(acc)):
        p = int(field_acc[n])
        zz = stack.stage_z_um[p]
        dz = ref_z[n] - zz
        sel = np.nonzero(np.abs(dz) <= cfg.dz_range_um)[0]
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
    return examples, split_of


def _qc_summary(
    stack: CalibrationStack,
    beads: pd.DataFrame,
    reg: Registration,
    trials: dict[str, dict[str, Any]],
    asked: str,
    rz: _RefZ,
    examples: Examples,
    split_of: dict[int, int],
    cfg: AnalysisConfig,
) -> dict[str, Any]:
    """The JSON summary of the five steps (``timing_s`` and ``source`` are
    added by :func:`analyze`)."""
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
    return {
        "n_fields": stack.n_fields,
        "n_z": stack.n_z,
        "z_step_um": stack.z_step_um,
        "crop_size": cfg.crop_size,
        "n_detected": len(beads),
        "n_accepted": int((beads["status"] == "accepted").sum()),
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
            "method": rz.method,
            "requested": cfg.method,
            "auto_reason": rz.auto_reason,
            "focus_spread_um": rz.spread_um,
            "median_sigma_mean_nm": float(np.median(rz.s_mean) * 1e3),
            "median_sigma_msd_nm": float(np.median(rz.s_msd) * 1e3),
            "rms_mean_minus_msd_nm": float(
                np.sqrt(np.mean((rz.z_mean - rz.z_msd) ** 2)) * 1e3
            ),
            "plane_disagreement_rms_nm": float(
                np.sqrt(np.mean((rz.z_planes[:, 0] - rz.z_planes[:, 1]) ** 2)) * 1e3
            ),
        },
        "examples": {
            "n": len(examples),
            "dz_range_um": cfg.dz_range_um,
            "dz_convention": "dz_um = ref_z_um - stage_z_um",
            "split_beads": {
                k: int(sum(1 for v in split_of.values() if v == c))
                for k, c in (("train", 0), ("validation", 1), ("test", 2))
            },
            "split_fractions": list(cfg.split_fractions),
            "seed": cfg.seed,
        },
    }


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

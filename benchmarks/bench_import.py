"""Your own microscope, through the CLI only, scored against an independent truth.

For each of two optics unlike the project's defaults, bead Z-stacks and a test
movie are rendered with psfmodels (:mod:`axialtrack.sim.independent`; a test
dependency) on a two-plane splitter with plane 1 shifted and mirrored, by a
camera with its own offset and gain. Then, as a user would, only the CLI runs:

    axialtrack calibrate --from 'fields/field*.tif' --out cal.zarr --z-step ...
        --z-start ... --plane-offset ... --pixel-size ... [--camera-offset ADU
        --camera-gain E_PER_ADU --camera-read-noise E --camera-qe QE]
    axialtrack calibrate --from all_fields.tif --fields N --out cal_one.zarr ...
    axialtrack train cal.zarr --out model.axialmodel
    axialtrack evaluate model.axialmodel cal.zarr --out eval/
    axialtrack localize movie.tif --model model.axialmodel --out movie.zarr
        --stage-z 10 --pixel-size ... --layout ... --plane-offset ... --mirror ...

(the layout and the mirror of the calibration are left for ``calibrate`` to find
from the beads). The outputs are scored against the truth: the beads' reference Z
from the calibration, and for the movie recall, precision, XY and Z RMSE of
isolated emitters (no other within 20 px) and of emitters with a neighbour at
8-15 px, Z bias per 0.2 um bin, and Z / XY RMSE over the CRLB of the project's
own PSF model (:mod:`axialtrack.optics`) at the same optics, photons,
background and read noise over the 15 px crop the network sees.

In focus: the project's reference Z of a bead is the stage Z of its maximum
on-axis intensity; psfmodels' ``zv`` is the focus position with the paraxial
focal shift removed, so an emitter at depth ``pz`` is nominally in focus at
``zv = pz``. Its on-axis maximum lies ``PSFTable.zv_focus - pz`` away from that
(0 for index-matched optics, +0.20 um for NA 1.3 oil into water at 1 um). The
truth is rendered and scored in the project's convention; the reference-Z offset
is also reported against psfmodels' nominal focus, before removing it.

Targets (isolated emitters, 2000 photons, 30-40 accepted beads, |dz| <= 0.6 um):
recall >= 0.95, Z RMSE <= 1.5 x CRLB, XY RMSE <= 1.5 x CRLB.

Usage::

    python benchmarks/bench_import.py [--quick] [--optics NAME ...] [--work DIR]

prints one JSON document. ``--quick`` is a smoke run (fewer beads and frames,
a short training schedule): its numbers are not the targets' measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.sim.independent import (
    IndependentCamera,
    IndependentOptics,
    PSFTable,
    Scene,
    compose_frames,
    place_groups,
)

OPTICS = {
    "water-na1.2": IndependentOptics(
        "water-na1.2",
        na=1.2,
        wavelength_um=0.52,
        n_immersion=1.333,
        n_sample=1.333,
        depth_um=0.5,
        pixel_um=0.13,
        plane_offset_um=0.45,
        shift_px=(3, -2),
        mirror="horizontal",
        layout="side-by-side",
    ),
    "oil-na1.3-in-water": IndependentOptics(
        "oil-na1.3-in-water",
        na=1.3,
        wavelength_um=0.6,
        n_immersion=1.515,
        n_sample=1.33,
        depth_um=1.0,
        pixel_um=0.117,
        plane_offset_um=0.6,
        shift_px=(-2, 4),
        mirror="vertical",
        layout="top-bottom",
    ),
}
"""Two rigs unlike the project's default (NA 1.45 oil into water, 670 nm,
108 nm pixels, 0.5 um plane offset, side-by-side, no mirror)."""

CAMERA = IndependentCamera(offset_adu=300.0, e_per_adu=1.8, read_noise_e=1.4, qe=0.85)
STAGE_Z_UM = 10.0
BACKGROUND_E = 12.0
EMITTER_PHOTONS = 2000.0
BEAD_PHOTONS = (6000.0, 10000.0)
Z_STEP_UM = 0.05
Z_HALF_RANGE_UM = 1.0
MOVIE_DZ_UM = 0.8
DZ_TARGET_UM = 0.6
MATCH_RADIUS_PX = 2.0
ISOLATED_PX = 20.0
NEIGHBOUR_PX = (8.0, 15.0)
CROP_PX = 15
TARGETS = {"recall": 0.95, "z_rmse_over_crlb": 1.5, "xy_rmse_over_crlb": 1.5}


def _cli(args: list[str], log: list[dict[str, Any]]) -> str:
    """Run ``axialtrack ARGS``; the output, or SystemExit with it on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "axialtrack", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout + proc.stderr
    log.append(
        {
            "command": "axialtrack " + " ".join(args),
            "rc": proc.returncode,
            "time_s": round(time.perf_counter() - t0, 1),
        }
    )
    # progress on stderr: a run stopped by a time limit shows how far it got
    print(f"[{log[-1]['time_s']:7.1f} s] axialtrack {args[0]}", file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"axialtrack {' '.join(args)} failed:\n{out[-3000:]}")
    return out


def _camera_support() -> dict[str, bool]:
    """Which commands take the camera options (``--camera-offset``)."""
    res = {}
    for cmd in ("calibrate", "localize"):
        p = subprocess.run(
            [sys.executable, "-m", "axialtrack", cmd, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        res[cmd] = "--camera-offset" in p.stdout
    return res


def _camera_args() -> list[str]:
    return [
        "--camera-offset",
        str(CAMERA.offset_adu),
        "--camera-gain",
        str(CAMERA.e_per_adu),
        "--camera-read-noise",
        str(CAMERA.read_noise_e),
        "--camera-qe",
        str(CAMERA.qe),
    ]


def _q(v: np.ndarray | float, step: float = 0.005) -> Any:
    return np.rint(np.asarray(v, float) / step) * step


# ------------------------------------------------------------------ rendering
def render_beads(
    table: PSFTable,
    plane: tuple[int, int],
    n_fields: int,
    beads_per_field: int,
    rng: np.random.Generator,
    photons: tuple[float, float] = BEAD_PHOTONS,
) -> tuple[np.ndarray, np.ndarray, list[Scene]]:
    """Bead stacks ``(P, Z, H', W')``, the stage Z and each field's beads."""
    n_z = round(2 * Z_HALF_RANGE_UM / Z_STEP_UM) + 1
    stage = np.round(STAGE_Z_UM + Z_STEP_UM * (np.arange(n_z) - n_z // 2), 4)
    field_focus = STAGE_Z_UM + _q(rng.uniform(-0.04, 0.04, n_fields))
    stacks = []
    scenes = []
    for f in range(n_fields):
        x, y = place_groups(
            rng,
            plane,
            singles=beads_per_field,
            pairs=0,
            margin_px=14,
            group_gap_px=14,
            oversample=table.oversample,
        )
        ref = field_focus[f] + _q(rng.uniform(-0.03, 0.03, x.size))
        scene = Scene(x, y, ref, rng.uniform(*photons, x.size))
        scenes.append(scene)
        stacks.append(
            compose_frames(
                table, [scene] * n_z, stage, plane, CAMERA, BACKGROUND_E, rng
            )
        )
    return np.stack(stacks), stage, scenes


def render_movie(
    table: PSFTable,
    plane: tuple[int, int],
    n_frames: int,
    rng: np.random.Generator,
    *,
    singles: int,
    pairs: int,
) -> tuple[np.ndarray, list[Scene]]:
    """A movie of emitters at random 3D positions (``|dz| <= MOVIE_DZ_UM``)."""
    scenes = []
    for _ in range(n_frames):
        x, y = place_groups(
            rng,
            plane,
            singles=singles,
            pairs=pairs,
            margin_px=12,
            oversample=table.oversample,
        )
        dz = _q(rng.uniform(-MOVIE_DZ_UM, MOVIE_DZ_UM, x.size))
        scenes.append(Scene(x, y, STAGE_Z_UM + dz, np.full(x.size, EMITTER_PHOTONS)))
    frames = compose_frames(
        table,
        scenes,
        np.full(n_frames, STAGE_Z_UM),
        plane,
        CAMERA,
        BACKGROUND_E,
        rng,
    )
    return frames, scenes


# -------------------------------------------------------------------- scoring
def crlb_table(
    optics: IndependentOptics, dz_um: np.ndarray, photons: float = EMITTER_PHOTONS
) -> tuple[np.ndarray, np.ndarray]:
    """CRLB of ``dz`` (stage units) and of ``x`` (um) from the project's model.

    Same optics and plane offset, ``photons`` detected photons and
    ``BACKGROUND_E`` per pixel in each plane, the camera's read noise, summed
    over the ``CROP_PX`` crop the network sees.
    """
    from axialtrack.optics import Optics, PSFModel, crlb

    model = PSFModel(
        Optics(
            na=optics.na,
            wavelength_um=optics.wavelength_um,
            n_immersion=optics.n_immersion,
            n_sample=optics.n_sample,
            magnification=100.0,
            camera_pixel_um=optics.pixel_um * 100.0,
        )
    )
    d = optics.depth_um
    h = 0.02
    f0 = float(model.in_focus_offset(d))
    slope = float((model.in_focus_offset(d + h) - model.in_focus_offset(d - h)) / 2 / h)
    res = crlb(
        model,
        np.full(dz_um.shape, d),
        focus_um=f0 - dz_um,
        plane_offsets_um=(0.0, optics.plane_offset_um),
        photons=photons,
        background=BACKGROUND_E,
        roi_size=CROP_PX,
        read_noise=CAMERA.read_noise_e,
    )
    return (
        np.asarray(res.sigma_z_um) * slope,
        np.asarray(res.sigma_x_um),
    )


def _match(
    tx: np.ndarray, ty: np.ndarray, lx: np.ndarray, ly: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    if tx.size == 0 or lx.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.hypot(tx[:, None] - lx[None], ty[:, None] - ly[None])
    cost = np.where(d <= MATCH_RADIUS_PX, d, 1e6)
    r, c = linear_sum_assignment(cost)
    ok = d[r, c] <= MATCH_RADIUS_PX
    return r[ok], c[ok]


def score_movie(
    scenes: list[Scene],
    locs: Any,
    optics: IndependentOptics,
    photons: float = EMITTER_PHOTONS,
) -> dict[str, Any]:
    """Recall, precision, XY / Z RMSE vs CRLB, Z bias per 0.2 um bin."""
    rows = []
    n_locs = 0
    for k, sc in enumerate(scenes):
        lk = locs[locs["frame"] == k]
        n_locs += len(lk)
        d = np.hypot(sc.x_px[:, None] - sc.x_px[None], sc.y_px[:, None] - sc.y_px[None])
        np.fill_diagonal(d, np.inf)
        nearest = d.min(axis=1) if sc.x_px.size > 1 else np.full(sc.x_px.size, np.inf)
        ti, li = _match(sc.x_px, sc.y_px, lk["x_px"].to_numpy(), lk["y_px"].to_numpy())
        found = np.full(sc.x_px.size, -1)
        found[ti] = li
        for i in range(sc.x_px.size):
            j = found[i]
            row = {
                "frame": k,
                "x": sc.x_px[i],
                "y": sc.y_px[i],
                "dz": sc.ref_z_um[i] - STAGE_Z_UM,
                "z": sc.ref_z_um[i],
                "nearest_px": nearest[i],
                "found": j >= 0,
                "ex": np.nan,
                "ey": np.nan,
                "ez": np.nan,
            }
            if j >= 0:
                r = lk.iloc[j]
                row["ex"] = (r["x_px"] - sc.x_px[i]) * optics.pixel_um * 1000
                row["ey"] = (r["y_px"] - sc.y_px[i]) * optics.pixel_um * 1000
                row["ez"] = (r["z_um"] - sc.ref_z_um[i]) * 1000
            rows.append(row)
    import pandas as pd

    t = pd.DataFrame(rows)
    n_matched = int(t["found"].sum())
    grid = np.round(np.arange(-MOVIE_DZ_UM, MOVIE_DZ_UM + 1e-9, 0.005), 4)
    crlb_z, crlb_x = crlb_table(optics, grid, photons)
    t["crlb_z"] = np.interp(t["dz"], grid, crlb_z) * 1000
    t["crlb_x"] = np.interp(t["dz"], grid, crlb_x) * 1000

    def group(sel: np.ndarray) -> dict[str, Any]:
        g = t[sel]
        inr = g[np.abs(g["dz"]) <= DZ_TARGET_UM + 1e-9]
        mi = inr[inr["found"]]
        out: dict[str, Any] = {
            "n_true": len(g),
            "recall": float(g["found"].mean()) if len(g) else None,
            f"recall_dz_le_{DZ_TARGET_UM}": float(inr["found"].mean())
            if len(inr)
            else None,
        }
        if len(mi) > 1:
            xy = np.sqrt(np.mean((mi["ex"] ** 2 + mi["ey"] ** 2) / 2))
            z = np.sqrt(np.mean(mi["ez"] ** 2))
            cz = np.sqrt(np.mean(mi["crlb_z"] ** 2))
            cx = np.sqrt(np.mean(mi["crlb_x"] ** 2))
            out.update(
                {
                    "n_matched_dz_le_0.6": len(mi),
                    "z_rmse_nm": float(z),
                    "z_bias_nm": float(mi["ez"].mean()),
                    "z_precision_nm": float(mi["ez"].std(ddof=1)),
                    "z_crlb_nm": float(cz),
                    "z_rmse_over_crlb": float(z / cz),
                    "z_precision_over_crlb": float(mi["ez"].std(ddof=1) / cz),
                    "xy_rmse_nm": float(xy),
                    "x_bias_nm": float(mi["ex"].mean()),
                    "y_bias_nm": float(mi["ey"].mean()),
                    "xy_crlb_nm": float(cx),
                    "xy_rmse_over_crlb": float(xy / cx),
                }
            )
        ratios = []
        fine = np.round(np.arange(-DZ_TARGET_UM, DZ_TARGET_UM + 1e-9, 0.1), 4)
        for lo, hi in itertools.pairwise(fine):
            b = mi[(mi["dz"] >= lo) & (mi["dz"] < hi + (1e-9 if hi == fine[-1] else 0))]
            if len(b) >= 3:
                ratios.append(
                    float(b["ez"].std(ddof=1) / np.sqrt(np.mean(b["crlb_z"] ** 2)))
                )
        out["z_precision_over_crlb_median_0.1um_bins"] = (
            float(np.median(ratios)) if ratios else None
        )
        bins = []
        edges = np.round(np.arange(-MOVIE_DZ_UM, MOVIE_DZ_UM + 1e-9, 0.2), 4)
        for lo, hi in itertools.pairwise(edges):
            b = g[(g["dz"] >= lo) & (g["dz"] < hi + (1e-9 if hi == edges[-1] else 0))]
            bm = b[b["found"]]
            bins.append(
                {
                    "dz_lo_um": float(lo),
                    "dz_hi_um": float(hi),
                    "n_true": len(b),
                    "recall": float(b["found"].mean()) if len(b) else None,
                    "z_bias_nm": float(bm["ez"].mean()) if len(bm) else None,
                    "z_rmse_nm": float(np.sqrt(np.mean(bm["ez"] ** 2)))
                    if len(bm)
                    else None,
                    "z_crlb_nm": float(np.sqrt(np.mean(bm["crlb_z"] ** 2)))
                    if len(bm)
                    else None,
                    "xy_rmse_nm": float(
                        np.sqrt(np.mean((bm["ex"] ** 2 + bm["ey"] ** 2) / 2))
                    )
                    if len(bm)
                    else None,
                }
            )
        out["bins"] = bins
        return out

    iso = (t["nearest_px"] >= ISOLATED_PX).to_numpy()
    nb = (
        (t["nearest_px"] >= NEIGHBOUR_PX[0]) & (t["nearest_px"] <= NEIGHBOUR_PX[1])
    ).to_numpy()
    return {
        "n_true": len(t),
        "n_localizations": n_locs,
        "n_matched": n_matched,
        "recall": n_matched / max(len(t), 1),
        "precision": n_matched / max(n_locs, 1),
        "isolated": group(iso),
        "neighbour_8_15px": group(nb),
        "neighbour_lt_8px": group((t["nearest_px"] < NEIGHBOUR_PX[0]).to_numpy()),
    }


def score_ref_z(
    cal: Path, scenes: list[Scene], table: PSFTable, optics: IndependentOptics
) -> dict[str, Any]:
    """The calibration's reference Z of each accepted bead against the truth."""
    from axialtrack.model import load_calibration

    beads = load_calibration(cal).beads
    assert beads is not None
    acc = beads[beads["status"] == "accepted"]
    err = []
    for _, b in acc.iterrows():
        sc = scenes[int(b["field"])]
        d = np.hypot(sc.x_px - b["x_px0"], sc.y_px - b["y_px0"])
        i = int(np.argmin(d))
        if d[i] <= MATCH_RADIUS_PX:
            err.append(float(b["ref_z_um"]) - float(sc.ref_z_um[i]))
    e = np.asarray(err) * 1000
    conv = (table.zv_focus - optics.depth_um) * 1000
    return {
        "n_accepted": len(acc),
        "n_matched_to_truth": int(e.size),
        "in_focus_convention_offset_nm": conv,
        "offset_vs_psfmodels_nominal_focus_nm": float(e.mean() + conv)
        if e.size
        else None,
        "offset_nm": float(e.mean()) if e.size else None,
        "rms_nm": float(np.sqrt(np.mean(e**2))) if e.size else None,
        "std_nm": float(e.std(ddof=1)) if e.size > 1 else None,
    }


def _qc(store: Path) -> dict[str, Any]:
    import zarr

    qc = dict(zarr.open_group(str(store), mode="r").attrs["axialtrack_calibration"])
    reg = qc.get("registration") or {}
    return {
        "n_fields": qc.get("n_fields"),
        "n_detected": qc.get("n_detected"),
        "n_accepted": qc.get("n_accepted"),
        "mirror_found": reg.get("mirror"),
        "registration_residual_nm": reg.get("residual_nm"),
    }


# ------------------------------------------------------------------------ run
def _run_variant(
    name: str,
    extra: list[str],
    *,
    d: Path,
    cal: Path,
    optics: IndependentOptics,
    table: PSFTable,
    plane: tuple[int, int],
    scenes: list[Scene],
    rng: np.random.Generator,
    quick: bool,
    steps: int | None,
    bead_photons: tuple[float, float],
    diagnose: bool,
    log: list[dict[str, Any]],
    refine: bool = False,
) -> dict[str, Any]:
    """Train one model on ``cal`` (``axialtrack train`` + ``extra``), evaluate it
    on the held-out beads, localize the movie with it and score (with
    ``refine`` also ``localize --refine``: MLE with the bundle's fitted PSF)."""
    import tifffile

    from axialtrack.store import open_run

    support = _camera_support()
    d = d / name
    if d.exists():  # this variant's own outputs of an earlier run
        shutil.rmtree(d)
    d.mkdir(parents=True)
    movie_tif = d.parent / "movie.tif"
    model = d / "model.axialmodel"
    train = ["train", str(cal), "--out", str(model), "--no-progress"]
    if (steps is not None or quick) and "--steps" not in extra:
        train += ["--steps", str(steps or 400)]
    train_out = _cli([*train, *extra], log)
    ev = d / "eval"
    _cli(["evaluate", str(model), str(cal), "--out", str(ev)], log)
    out = d / "movie.zarr"
    loc = [
        "localize",
        str(movie_tif),
        "--model",
        str(model),
        "--out",
        str(out),
        "--stage-z",
        str(STAGE_Z_UM),
        "--pixel-size",
        str(optics.pixel_um),
        "--layout",
        optics.layout,
        "--plane-offset",
        str(optics.plane_offset_um),
        "--mirror",
        optics.mirror,
        # as the network reads: localize refines by default when the bundle
        # carries a fitted PSF; --refine scores that beside it
        "--no-refine",
    ]
    if support["localize"]:
        loc += _camera_args()
    _cli(loc, log)

    locs = open_run(out).localizations
    movie_score = score_movie(scenes, locs, optics)
    refined = None
    if refine:
        out_r = d / "movie_refined.zarr"
        loc_r = [a if a != "--no-refine" else "--refine" for a in loc]
        loc_r[loc_r.index("--out") + 1] = str(out_r)
        _cli(loc_r, log)
        refined = score_movie(scenes, open_run(out_r).localizations, optics)
    diagnosis = None
    if diagnose:
        # the same emitters as bright as the beads, through the same model: what
        # changes is the emitters' signal over the background
        bright = float(np.mean(bead_photons))
        scenes_b = [
            Scene(sc.x_px, sc.y_px, sc.ref_z_um, np.full(sc.x_px.size, bright))
            for sc in scenes
        ]
        bright_tif = d.parent / "movie_bright.tif"
        if not bright_tif.exists():  # rendered once, for every variant
            frames_b = compose_frames(
                table,
                scenes_b,
                np.full(len(scenes_b), STAGE_Z_UM),
                plane,
                CAMERA,
                BACKGROUND_E,
                rng,
            )
            tifffile.imwrite(bright_tif, frames_b)
        out_b = d / "movie_bright.zarr"
        loc_b = list(loc)
        loc_b[1] = str(bright_tif)
        loc_b[loc_b.index("--out") + 1] = str(out_b)
        _cli(loc_b, log)
        sb = score_movie(scenes_b, open_run(out_b).localizations, optics, bright)
        ib = sb["isolated"]
        diagnosis = {
            "emitter_photons": bright,
            "isolated": {
                k: ib.get(k)
                for k in (
                    f"recall_dz_le_{DZ_TARGET_UM}",
                    "z_rmse_nm",
                    "z_bias_nm",
                    "z_precision_nm",
                    "z_crlb_nm",
                    "z_rmse_over_crlb",
                    "xy_rmse_over_crlb",
                )
            }
            | {"z_bias_per_bin_nm": [b["z_bias_nm"] for b in ib["bins"]]},
        }
    evaluation = json.loads((ev / "eval.json").read_text())["summary"]
    return {
        "train_args": extra,
        "train_output": train_out,
        "evaluation": evaluation,
        "movie": movie_score,
        "movie_refined": refined,
        "diagnosis": diagnosis,
    }


#: What the side-by-side table shows of the isolated emitters.
SIDE_BY_SIDE = (
    f"recall_dz_le_{DZ_TARGET_UM}",
    "z_rmse_nm",
    "z_bias_nm",
    "z_precision_nm",
    "z_rmse_over_crlb",
    "xy_rmse_over_crlb",
)


def side_by_side(per_variant: dict[str, Any]) -> dict[str, Any]:
    """Isolated-emitter figures of each variant, as localized and refined."""
    table: dict[str, Any] = {}
    for name, v in per_variant.items():
        for how, score in (("", v["movie"]), ("+refine", v.get("movie_refined"))):
            if score is not None:
                iso = score["isolated"]
                table[name + how] = {k: iso.get(k) for k in SIDE_BY_SIDE}
    return table


def run_optics(
    optics: IndependentOptics,
    work: Path,
    quick: bool,
    seed: int,
    bead_photons: tuple[float, float] = BEAD_PHOTONS,
    diagnose: bool = True,
    steps: int | None = None,
    variants: list[tuple[str, list[str]]] | None = None,
    reuse: bool = False,
    refine: bool = False,
) -> dict[str, Any]:
    """Render, run the CLI, score one optics.

    ``reuse``: keep the files and calibrations of an earlier run in the same
    work folder (same seed and settings: the truth is rendered again, the same)
    and only train, localize and score.

    ``variants``: ``(name, extra train arguments)`` of each model trained on the
    same calibration and scored on the same movie (default: one, ``beads``,
    with ``train``'s defaults); the first is the one the targets judge.

    With ``diagnose``, the movie's emitters are rendered again as bright as the
    beads (mean of ``bead_photons``) and localized with the same model
    (``movie_at_bead_brightness``).
    """
    import tifffile

    rng = np.random.default_rng(seed)
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    table = PSFTable(
        optics,
        -(Z_HALF_RANGE_UM + 0.15),
        Z_HALF_RANGE_UM + 0.15 + optics.plane_offset_um,
    )
    plane = (96, 96) if quick else (128, 128)
    n_fields, per_field = (3, 8) if quick else (4, 10)
    n_frames = 12 if quick else 100
    stacks, stage, bead_scenes = render_beads(
        table, plane, n_fields, per_field, rng, bead_photons
    )
    movie, scenes = render_movie(
        table,
        plane,
        n_frames,
        rng,
        singles=4 if quick else 6,
        pairs=2 if quick else 3,
    )
    render_s = time.perf_counter() - t0
    d = work / optics.name
    cal = d / "cal.zarr"
    cal_one = d / "cal_one.zarr"
    reused = reuse and cal.exists() and cal_one.exists() and (d / "movie.tif").exists()
    if not reused:
        if d.exists():
            shutil.rmtree(d)
        (d / "fields").mkdir(parents=True)
        for f in range(n_fields):
            tifffile.imwrite(d / "fields" / f"field{f}.tif", stacks[f])
        tifffile.imwrite(d / "all_fields.tif", stacks.reshape(-1, *stacks.shape[2:]))
        tifffile.imwrite(d / "movie.tif", movie)

    support = _camera_support()
    rig = [
        "--z-step",
        str(Z_STEP_UM),
        "--z-start",
        str(stage[0]),
        "--plane-offset",
        str(optics.plane_offset_um),
        "--pixel-size",
        str(optics.pixel_um),
    ]
    # the PSF fit starts from the rig's nominal optics, as a user states them
    fit_optics = [
        "--na",
        str(optics.na),
        "--wavelength",
        str(optics.wavelength_um),
        "--n-immersion",
        str(optics.n_immersion),
        "--n-sample",
        str(optics.n_sample),
    ]
    cam = _camera_args() if support["calibrate"] else []
    if not reused:
        _cli(
            [
                "calibrate",
                "--from",
                str(d / "fields" / "field*.tif"),
                "--out",
                str(cal),
                *rig,
                *fit_optics,
                *cam,
            ],
            log,
        )
        _cli(
            [
                "calibrate",
                "--from",
                str(d / "all_fields.tif"),
                "--fields",
                str(n_fields),
                "--out",
                str(cal_one),
                *rig,
                "--no-psf-fit",
                *cam,
            ],
            log,
        )
    variants = list(variants or [("beads", [])])
    per_variant: dict[str, Any] = {}
    for name, extra in variants:
        per_variant[name] = _run_variant(
            name,
            extra,
            d=d,
            cal=cal,
            optics=optics,
            table=table,
            plane=plane,
            scenes=scenes,
            rng=rng,
            quick=quick,
            steps=steps,
            bead_photons=bead_photons,
            diagnose=diagnose,
            log=log,
            refine=refine,
        )
    first = per_variant[variants[0][0]]
    train_out = first["train_output"]
    evaluation = first["evaluation"]
    movie_score = first["movie"]
    diagnosis = first["diagnosis"]
    ref = score_ref_z(cal, bead_scenes, table, optics)
    qc = _qc(cal)
    qc_one = _qc(cal_one)
    iso = movie_score["isolated"]
    n_acc = qc["n_accepted"] or 0
    checks = {
        "accepted_beads_30_40": 30 <= n_acc <= 40,
        "recall_isolated_dz_le_0.6": _target(
            iso.get(f"recall_dz_le_{DZ_TARGET_UM}"), TARGETS["recall"], ">="
        ),
        "z_rmse_over_crlb_isolated": _target(
            iso.get("z_rmse_over_crlb"), TARGETS["z_rmse_over_crlb"], "<="
        ),
        "xy_rmse_over_crlb_isolated": _target(
            iso.get("xy_rmse_over_crlb"), TARGETS["xy_rmse_over_crlb"], "<="
        ),
    }
    return {
        "optics": optics.as_dict(),
        "camera": CAMERA.as_dict(),
        "camera_options_passed": support,
        "render": {
            "fields": n_fields,
            "beads_per_field": per_field,
            "z_steps": int(stage.size),
            "z_step_um": Z_STEP_UM,
            "plane_shape": list(plane),
            "movie_frames": n_frames,
            "emitter_photons": EMITTER_PHOTONS,
            "bead_photons": list(bead_photons),
            "background_e": BACKGROUND_E,
            "psfmodels_zv_in_focus_um": table.zv_focus,
            "time_s": round(render_s, 1),
        },
        "calibration_fields_as_files": qc,
        "calibration_fields_in_one_file": qc_one,
        "reference_z": ref,
        "train": train_out.strip().splitlines()[:3],
        "evaluate": {
            k: evaluation.get(k)
            for k in ("n", "reference", "rmse_nm", "bias_nm", "precision_nm")
        }
        | {"crlb_note": evaluation.get("crlb_note")},
        "movie": movie_score,
        "movie_at_bead_brightness": diagnosis,
        "variants": {
            k: {kk: vv for kk, vv in v.items() if kk != "evaluation"}
            | {
                "evaluate": {
                    kk: v["evaluation"].get(kk)
                    for kk in ("n", "rmse_nm", "bias_nm", "precision_nm")
                }
            }
            for k, v in per_variant.items()
        },
        "side_by_side_isolated": side_by_side(per_variant),
        "targets": checks,
        "commands": log,
    }


def _target(value: float | None, bound: float, op: str) -> dict[str, Any]:
    ok = value is not None and (value >= bound if op == ">=" else value <= bound)
    return {"value": value, "target": f"{op} {bound}", "pass": bool(ok)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--optics", nargs="+", choices=sorted(OPTICS), default=list(OPTICS))
    ap.add_argument("--work", default=None, help="keep the files here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--bead-photons",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=BEAD_PHOTONS,
        help="detected photons per plane of the beads, uniform in [LO, HI] "
        f"(default {BEAD_PHOTONS[0]:.0f} {BEAD_PHOTONS[1]:.0f}; the movie's "
        f"emitters have {EMITTER_PHOTONS:.0f})",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train --steps (default: train's own schedule; --quick: 400)",
    )
    ap.add_argument(
        "--variant",
        nargs=2,
        action="append",
        metavar=("NAME", "ARGS"),
        default=None,
        help="a model to train on the same calibration and score on the same "
        "movie: NAME and extra `axialtrack train` arguments in one string "
        "(repeat it; the first is judged by the targets; default: one model, "
        "'beads', train's defaults)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: keep the rendered files and calibrations already "
        "there (same --seed and --quick), only train, localize and score",
    )
    ap.add_argument(
        "--refine",
        action="store_true",
        help="also localize the movie with `localize --refine` (MLE with the "
        "bundle's fitted PSF) and score it beside each variant",
    )
    ap.add_argument(
        "--no-diagnosis",
        action="store_true",
        help="skip localizing the movie again with emitters as bright as the beads",
    )
    args = ap.parse_args(argv)
    bead_photons = (float(args.bead_photons[0]), float(args.bead_photons[1]))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bimp"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for i, name in enumerate(args.optics):
        results[name] = run_optics(
            OPTICS[name],
            work,
            args.quick,
            args.seed + i,
            bead_photons,
            diagnose=not args.no_diagnosis,
            steps=args.steps,
            variants=[(n, shlex.split(a)) for n, a in args.variant]
            if args.variant
            else None,
            reuse=args.reuse,
            refine=args.refine,
        )
        # each optics' result as soon as it is scored (kept with --work)
        (work / name / "result.json").write_text(
            json.dumps(results[name], indent=2, default=float)
        )
    report = {
        "benchmark": "bench_import",
        "quick": args.quick,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "in_focus_convention": (
            "project: the stage Z of the maximum on-axis intensity; psfmodels: "
            "zv = depth (paraxial focal shift removed). Truth is rendered and "
            "scored in the project's convention; reference_z."
            "offset_vs_psfmodels_nominal_focus_nm is before removing the "
            "difference (render.psfmodels_zv_in_focus_um - depth)"
        ),
        "optics": results,
        "all_targets_pass": all(
            c["pass"] if isinstance(c, dict) else c
            for r in results.values()
            for c in r["targets"].values()
        ),
        "time_s": round(time.perf_counter() - t0, 1),
        "work": str(work),
    }
    print(json.dumps(report, indent=2, default=float))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

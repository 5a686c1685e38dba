"""The whole story on the simulated rig: calibrate, train, track live, score.

``axialtrack demo`` runs this on a fresh install: a bead calibration through the
simulated dual-plane microscope, a model trained on it, a live tracking run of
diffusing particles written to a run store, and the accuracy of the
localizations and tracks against the simulation's ground truth, with the speed
figures of the live run. The summary puts each figure beside what it should be
judged against: the Z error beside the Cramer-Rao lower bound of the same
optics, photons and background, the analysis speed beside trackpy's on the same
frames, the camera's achieved rate beside its nominal one, and the training's
epochs beside its limit. Figures (PNG) show predicted vs true Z, precision vs
the CRLB per Z bin, and the tracks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from axialtrack._json import jsonable
from axialtrack.errors import AxialtrackError
from axialtrack.model import DEFAULT_STEPS

__all__ = ["DemoConfig", "DemoError", "DemoResult", "run_demo"]

#: The figures the demo writes into its output folder.
FIGURES = ("pred_vs_true_z.png", "precision_vs_crlb.png", "tracks.png")


class DemoError(AxialtrackError, RuntimeError):
    """The demo cannot go on (e.g. the live run stored or analyzed no frame)."""


logger = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    """Settings of :func:`run_demo`; the defaults take a few minutes on a CPU.

    Attributes
    ----------
    plane_size
        Side of each simulated plane (px).
    fields
        Calibration fields of view.
    z_range_um, z_step_um
        Calibration Z scan: +- range around the coverslip focus and step.
    steps
        Optimizer steps of the training schedule (the default of
        ``axialtrack train``; early stopping may end sooner).
    max_train_s
        Training time limit (s).
    duration_s
        Length of the live run (s); ignored when ``frames`` is given.
    frames
        Length of the live run in frames (the run stops after this many frames
        whatever the machine's speed); ``None`` runs for ``duration_s``.
    exposure_ms
        Exposure (and frame period) of the live run.
    diffusion_um2_s
        Diffusion coefficient of the simulated particles.
    particle_density_um3, particle_depth_um
        Density of the diffusing particles and the depth range (from the
        coverslip) they fill.
    focus_depth_um
        Depth above the coverslip that plane 0 is focused on during the live run.
    score_half_range_um
        Particles within this distance of the plane-0 focus are scored against the
        truth. The demo calibrates on beads on the glass; beyond about +0.5 um such
        a model compresses dz of particles in water (refractive-index mismatch).
    engine
        Inference backend (``auto`` picks the fastest present).
    trackpy_frames
        Largest number of the live run's frames the trackpy baseline runs on.
    seed
        Seed of the simulated samples and of the training.
    """

    model_config = ConfigDict(extra="forbid")

    plane_size: int = Field(256, ge=64)
    fields: int = Field(4, ge=1)
    z_range_um: float = Field(1.2, gt=0)
    z_step_um: float = Field(0.05, gt=0)
    steps: int = Field(DEFAULT_STEPS, ge=1)
    max_train_s: float = Field(180.0, gt=0)
    duration_s: float = Field(10.0, gt=0)
    frames: int | None = Field(None, ge=1)
    exposure_ms: float = Field(10.0, gt=0)
    diffusion_um2_s: float = Field(0.2, gt=0)
    particle_density_um3: float = Field(0.03, gt=0)
    particle_depth_um: float = Field(1.2, gt=0)
    focus_depth_um: float = Field(0.3, ge=0)
    score_half_range_um: float = Field(0.5, gt=0)
    engine: str = "auto"
    trackpy_frames: int = Field(200, ge=1)
    seed: int = 0


@dataclass
class DemoResult:
    """What :func:`run_demo` made and measured."""

    out: Path
    calibration: Path
    bundle: Path
    live: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    calibration_qc: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    live_metrics: dict[str, Any] = field(default_factory=dict)
    score: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)
    engine: str = ""
    camera: dict[str, Any] = field(default_factory=dict)
    crlb: dict[str, Any] = field(default_factory=dict)
    trackpy: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible summary."""
        return {
            "out": str(self.out),
            "calibration": str(self.calibration),
            "bundle": str(self.bundle),
            "live": str(self.live),
            "engine": self.engine,
            "timings_s": self.timings_s,
            "calibration_qc": self.calibration_qc,
            "training": self.training,
            "live_metrics": self.live_metrics,
            "score": self.score,
            "diffusion": self.diffusion,
            "camera": self.camera,
            "crlb": self.crlb,
            "trackpy": self.trackpy,
            "figures": [str(p) for p in self.figures],
        }


def _set(core: Any, label: str, prop: str, value: Any) -> None:
    core.setProperty(label, prop, str(value))


def run_demo(
    out: str | Path = "axialtrack-demo",
    config: DemoConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Calibrate, train, track live and score on the simulated rig.

    Parameters
    ----------
    out
        Output folder: ``calibration.zarr``, ``bead.axialmodel``, ``live.zarr``,
        ``demo.json`` (the figures printed), ``summary.txt`` (the printed table)
        and the PNG figures of :data:`FIGURES`.
    config
        Sizes and durations (:class:`DemoConfig`).
    overwrite
        Replace the outputs of an earlier demo in ``out``.
    progress
        Show progress bars and the live status line.
    console
        Where to print (default: a new rich console).

    Returns
    -------
    DemoResult
        Paths, timings, calibration QC, training metrics, live metrics, the
        score against the truth, the CRLB, the trackpy baseline and the figures.

    Raises
    ------
    DemoError
        The live run stored no frame or analyzed none (nothing to score); the
        outputs written so far are kept.
    """
    from axialtrack.acquire.calibration import calibration_sequence, run_calibration
    from axialtrack.calibrate import analyze, write_qc, write_rig
    from axialtrack.calibrate.io import load_stack
    from axialtrack.camera import camera_from_core, resolve_camera
    from axialtrack.devices import SimCamera, get_device
    from axialtrack.model import TrainConfig, load_calibration, train_from_config
    from axialtrack.rig import load_rig, splitter_geometry
    from axialtrack.store import StoreExistsError

    cfg = config or DemoConfig()
    con = console or Console()
    out = Path(out).expanduser().absolute()
    calib_path = out / "calibration.zarr"
    bundle_path = out / "bead.axialmodel"
    live_path = out / "live.zarr"
    existing = [p for p in (calib_path, bundle_path, live_path) if p.exists()]
    if existing and not overwrite:
        raise StoreExistsError(
            f"{existing[0]} exists from an earlier demo; pass overwrite=True "
            "(--overwrite) to replace the demo outputs, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(
        out=out, calibration=calib_path, bundle=bundle_path, live=live_path
    )

    # ------------------------------------------------------------ calibration
    core = load_rig()
    try:
        cam_label = core.getCameraDevice()
        cam = get_device(core, cam_label, SimCamera)
        _set(core, cam_label, "PlaneWidth", cfg.plane_size)
        _set(core, cam_label, "PlaneHeight", cfg.plane_size)
        _set(core, cam_label, "Seed", cfg.seed)
        _set(core, cam_label, "Scene", "beads")
        geo = splitter_geometry(core)
        con.rule("[bold]1. Bead calibration")
        t0 = time.perf_counter()
        seq = calibration_sequence(
            cfg.z_range_um, cfg.z_step_um, fields=cfg.fields, core=core
        )
        run_calibration(core, calib_path, seq, overwrite=True, progress=progress)
        stack = load_stack(calib_path)
        result = analyze(stack)
        write_qc(result, calib_path)
        # the rig and camera, as `axialtrack calibrate` records them
        sim_camera = ("the simulated camera", camera_from_core(core))
        camera, origin = resolve_camera([sim_camera])
        write_rig(
            result, stack, calib_path, camera=camera.model_dump(), camera_source=origin
        )
        res.timings_s["calibration"] = time.perf_counter() - t0
        qc = result.qc
        res.calibration_qc = {
            "beads_accepted": qc["n_accepted"],
            "beads_detected": qc["n_detected"],
            "registration_residual_nm": qc["registration"]["residual_nm"],
        }
        con.print(
            f"{qc['n_fields']} fields x {qc['n_z']} Z steps; beads accepted "
            f"{qc['n_accepted']} / {qc['n_detected']}; plane registration residual "
            f"{qc['registration']['residual_nm']:.1f} nm "
            f"({res.timings_s['calibration']:.1f} s)"
        )

        # --------------------------------------------------------------- train
        con.rule("[bold]2. Training the axial model")
        t0 = time.perf_counter()
        data = load_calibration(calib_path)
        # the defaults of `axialtrack train` (synthetic examples included),
        # under a time limit
        trained = train_from_config(
            data,
            TrainConfig(steps=cfg.steps, seed=cfg.seed, max_time_s=cfg.max_train_s),
            progress=progress,
            log=lambda line: con.print(line, highlight=False),
        )
        trained.save(bundle_path, overwrite=True)
        res.timings_s["training"] = time.perf_counter() - t0
        res.training = training_summary(
            trained.metrics, trained.history, max_time_s=cfg.max_train_s
        )
        con.print(
            f"{_training_line(res.training)} in {res.timings_s['training']:.1f} s "
            f"-> {bundle_path.name}",
            highlight=False,
        )

        # ---------------------------------------------------------------- live
        con.rule("[bold]3. Live 3D tracking of diffusing particles")
        _live(core, cam, cfg, geo, res, con, progress)
    finally:
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        core.unloadAllDevices()
    (out / "demo.json").write_text(json.dumps(jsonable(res.as_dict()), indent=2))
    return res


def training_summary(
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    *,
    max_time_s: float | None,
) -> dict[str, Any]:
    """How training ended and what it reached.

    Parameters
    ----------
    metrics, history
        :attr:`TrainResult.metrics` and :attr:`TrainResult.history`.
    max_time_s
        The time limit training ran under.

    Returns
    -------
    dict
        ``epochs_run``, ``max_epochs`` (the schedule's), ``best_epoch``,
        ``stopped_by`` (:func:`axialtrack.model.train`'s: ``"schedule end"``,
        ``"early stop"`` or ``"time limit"``), ``max_time_s``, ``warnings``,
        ``val_rmse_nm``/``test_rmse_nm`` of the kept weights, and
        ``val_rmse_trend_nm``: the validation RMSE (per epoch) at the epoch a
        quarter of the way back from the stop and at the stop, which says
        whether it was still falling when training stopped.
    """
    run = int(metrics.get("epochs_run", len(history)))
    out: dict[str, Any] = {
        "epochs_run": run,
        "max_epochs": int(metrics.get("epochs_planned", run)),
        "best_epoch": int(metrics.get("best_epoch", run)),
        "stopped_by": metrics.get("stopped_by", "schedule end"),
        "max_time_s": max_time_s,
        "warnings": list(metrics.get("warnings", [])),
        "val_rmse_nm": float(metrics.get("val_rmse_nm", float("nan"))),
        "test_rmse_nm": float(metrics.get("test_rmse_nm", float("nan"))),
        "n_train": metrics.get("n_train"),
    }
    if len(history) >= 2:
        back = history[max(0, len(history) - 1 - max(1, len(history) // 4))]
        last = history[-1]
        out["val_rmse_trend_nm"] = {
            "epoch_from": int(back["epoch"]),
            "from": float(back["val_rmse_nm"]),
            "epoch_to": int(last["epoch"]),
            "to": float(last["val_rmse_nm"]),
        }
    return out


def _training_line(t: dict[str, Any]) -> str:
    line = f"{t['epochs_run']} of {t['max_epochs']} epochs"
    if t["stopped_by"] == "time limit":
        line += f" (stopped at the {t['max_time_s']:g} s time limit"
        trend = t.get("val_rmse_trend_nm")
        if trend and trend["to"] < trend["from"]:
            line += (
                "; validation RMSE still falling, "
                f"{trend['from']:.0f} nm at epoch {trend['epoch_from']} -> "
                f"{trend['to']:.0f} nm at epoch {trend['epoch_to']}: more epochs "
                "would lower the Z error"
            )
        line += ")"
    elif t["stopped_by"] == "early stop":
        line += f" (no better validation loss since epoch {t['best_epoch']})"
    return (
        f"{line}; held-out bead RMSE {_num(t['test_rmse_nm'], '.1f')} nm "
        f"(validation {_num(t['val_rmse_nm'], '.1f')} nm)"
    )


def _num(v: Any, fmt: str, missing: str = "n/a") -> str:
    """Format a number; ``missing`` for None or NaN (never prints ``nan``)."""
    if v is None:
        return missing
    try:
        f = float(v)
    except (TypeError, ValueError):
        return missing
    return format(f, fmt) if np.isfinite(f) else missing


def _live(
    core: Any,
    cam: Any,
    cfg: DemoConfig,
    geo: Any,
    res: DemoResult,
    con: Console,
    progress: bool,
) -> None:
    from axialtrack.live import AnalysisProcess
    from axialtrack.rig import splitter_geometry

    label = core.getCameraDevice()
    _set(core, label, "Scene", "diffusing")
    _set(core, label, "DiffusionUm2PerS", cfg.diffusion_um2_s)
    _set(core, label, "ParticleDensity", cfg.particle_density_um3)
    _set(core, label, "ParticleDepthUm", cfg.particle_depth_um)
    _set(core, label, "RecordTruth", 1)
    core.setExposure(cfg.exposure_ms)
    interval_ms = (
        float(core.getProperty(label, "Interval-ms") or 0.0)
        if core.hasProperty(label, "Interval-ms")
        else 0.0
    )
    period_ms = max(cfg.exposure_ms, interval_ms)
    res.camera = {
        "exposure_ms": cfg.exposure_ms,
        "interval_ms": interval_ms,
        "nominal_fps": 1e3 / period_ms,
    }
    focus = core.getFocusDevice()
    renderer = cam.renderer()
    coverslip = float(renderer.sample.coverslip_z_um)
    stage_z = coverslip + float(renderer.psf_model.in_focus_offset(cfg.focus_depth_um))
    core.setPosition(focus, stage_z)
    core.waitForDevice(focus)
    geo = splitter_geometry(core)
    plane_shape = (cfg.plane_size, cfg.plane_size)
    pixel = float(core.getPixelSizeUm())
    # the analysis in its own process, as in ``axialtrack live``
    analyzer = AnalysisProcess(
        res.bundle,
        plane_shape=plane_shape,
        pixel_size_um=pixel,
        geometry=geo,
        frame_interval_s=cfg.exposure_ms / 1e3,
        engine=cfg.engine,
    )
    res.engine = f"{analyzer.engine_name} ({analyzer.engine_reason})"
    con.print(f"Inference engine: {res.engine} (analysis process)")
    with analyzer:
        metrics = _live_run(
            core, analyzer, res, geo, plane_shape, pixel, cfg, con, progress
        )
    res.live_metrics = metrics.as_dict()
    res.camera["achieved_fps"] = float(res.live_metrics.get("fps_in", 0.0))
    check_live_run(res.live_metrics, res.live)
    _score_live(renderer, res, pixel, stage_z, cfg, con)


def check_live_run(metrics: dict[str, Any], path: Path) -> None:
    """Refuse to score a live run that stored or analyzed no frame.

    Raises
    ------
    DemoError
        One line naming the run, what it holds and what to do.
    """
    written = int(metrics.get("frames_written", 0))
    analyzed = int(metrics.get("frames_analyzed", 0))
    reason = metrics.get("stop_reason", "?")
    if written == 0:
        raise DemoError(
            f"the live run {path} stored no frame (stop reason: {reason}); nothing "
            "to score: run the demo again with a longer --duration"
        )
    if analyzed == 0:
        raise DemoError(
            f"none of the {written} frames of the live run {path} was analyzed "
            f"(stop reason: {reason}); run `axialtrack localize {path}` to analyze "
            "them, or run the demo again with a longer --duration"
        )


def _live_run(
    core: Any,
    analyzer: Any,
    res: DemoResult,
    geo: Any,
    plane_shape: tuple[int, int],
    pixel: float,
    cfg: DemoConfig,
    con: Console,
    progress: bool,
) -> Any:
    from axialtrack.live import CoreSource, LiveRunner, RunnerConfig
    from axialtrack.store import RunWriter

    writer = RunWriter(
        res.live,
        kind="live",
        plane_shape=plane_shape,
        pixel_size_um=pixel,
        splitter=geo,
        model={"bundle": str(res.bundle)},
        overwrite=True,
        frame_interval_s=cfg.exposure_ms / 1e3,
    )
    runner = LiveRunner(
        CoreSource(core),
        analyzer,
        writer,
        geometry=geo,
        config=RunnerConfig(),
    )
    if progress:
        runner.events.status.connect(_status_printer(con))
    t0 = time.perf_counter()
    if cfg.frames is not None:
        metrics = runner.run(n_frames=cfg.frames)
    else:
        metrics = runner.run(duration_s=cfg.duration_s)
    res.timings_s["live"] = time.perf_counter() - t0
    return metrics


def _score_live(
    renderer: Any,
    res: DemoResult,
    pixel: float,
    stage_z: float,
    cfg: DemoConfig,
    con: Console,
) -> None:
    from axialtrack.pipeline import summarize_tracks
    from axialtrack.pipeline.score import (
        in_field,
        match_to_truth,
        score_against_truth,
    )
    from axialtrack.sim import to_dataframe
    from axialtrack.store import open_run

    run = open_run(res.live)
    locs = run.localizations
    truth = to_dataframe(renderer.trajectories())
    meta = run.frame_meta
    if len(meta) == 0 or "analyzed" not in meta:
        raise DemoError(f"the live run {res.live} holds no frame metadata to score")
    analyzed_t = meta.loc[meta["analyzed"].astype(bool), "t_s"].to_numpy()
    key = np.rint(truth["t_s"].to_numpy() * 1e6)
    truth = truth[np.isin(key, np.rint(analyzed_t * 1e6))]
    half = cfg.score_half_range_um
    z_range = (stage_z - half, stage_z + half)
    # the field the crops cover: particles within half a crop of a border of
    # either plane cannot be localized by design, and are not scored
    crop = int(json.loads((res.bundle / "model.json").read_text())["crop_size"])
    field = (cfg.plane_size, cfg.plane_size, crop // 2)
    truth = truth.reset_index(drop=True)
    score = score_against_truth(
        locs, truth, pixel_size_um=pixel, z_range_um=z_range, field_px=field
    )
    res.score = score.as_dict()
    # matched pairs within the scored range and field, with their true values
    m = match_to_truth(locs, truth)
    m = m[in_field(truth, field)[m["truth_row"].to_numpy()]]
    pairs = _matched_pairs(m, locs, truth, z_range)
    exposure_s = cfg.exposure_ms / 1e3
    res.crlb = crlb_by_dz_bin(
        renderer, pairs, truth, stage_z=stage_z, exposure_s=exposure_s, z_range=z_range
    )
    res.trackpy = trackpy_baseline(res.live, cfg.trackpy_frames, pixel)
    tracks = summarize_tracks(locs, frame_interval_s=exposure_s)
    long = tracks[tracks["n_localizations"] >= 20]
    d_med = float(np.nanmedian(long["D_um2_s"])) if len(long) else float("nan")
    res.diffusion = {
        "true_um2_s": cfg.diffusion_um2_s,
        "median_track_um2_s": d_med,
        "tracks_20_plus": len(long),
    }
    res.figures = write_figures(res.out, pairs, res.crlb, locs, stage_z)
    _print_live(con, res, tracks)


def _matched_pairs(
    m: pd.DataFrame,
    locs: pd.DataFrame,
    truth: pd.DataFrame,
    z_range: tuple[float, float],
) -> pd.DataFrame:
    """Matched localizations with their true stage Z, depth and photons."""
    cols = ["z_pred_um", "z_true_um", "depth_um", "photons"]
    if not len(m):
        return pd.DataFrame(columns=cols, dtype=float)
    z_pred = locs.loc[m["loc_index"], "z_um"].to_numpy(float)
    t_s = locs.loc[m["loc_index"], "t_s"].to_numpy(float)
    z_true = z_pred - m["dz_um"].to_numpy(float)
    keyed = truth.assign(_k=np.rint(truth["t_s"].to_numpy() * 1e6).astype(np.int64))
    keyed = keyed.drop_duplicates(["_k", "id"]).set_index(["_k", "id"])
    idx = pd.MultiIndex.from_arrays(
        [np.rint(t_s * 1e6).astype(np.int64), m["truth_id"].to_numpy(np.int64)]
    )
    rows = keyed.reindex(idx)
    out = pd.DataFrame(
        {
            "z_pred_um": z_pred,
            "z_true_um": z_true,
            "depth_um": rows["z_um"].to_numpy(float),
            "photons": rows["photons"].to_numpy(float),
        }
    )
    keep = (z_true >= z_range[0]) & (z_true <= z_range[1])
    return out[keep].reset_index(drop=True)


def crlb_by_dz_bin(
    renderer: Any,
    pairs: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    stage_z: float,
    exposure_s: float,
    z_range: tuple[float, float],
    bin_um: float = 0.1,
) -> dict[str, Any]:
    """Z precision of the matched localizations beside the CRLB, per true-dz bin.

    The CRLB is that of a static emitter imaged through the simulated optics and
    splitter (plane offset, transmission) at the bin's centre, with the median
    photons of the scored emitters, the simulated background, quantum efficiency
    and read noise, over a 21 x 21 px ROI, expressed in the stage frame of
    ``z_um``. Motion blur only adds to it: it is a floor, not a target.

    Returns
    -------
    dict
        ``photons`` (detected, plane 0), ``background`` (detected photons/px per
        plane), ``roi_px``, ``bins`` (one dict per bin with matches:
        ``dz_nm`` centre, ``n``, ``rmse_nm``, ``std_nm``, ``bias_nm``,
        ``crlb_nm``), and ``rmse_z_nm`` / ``crlb_z_nm``: RMS over all matched
        localizations of the error and of their bins' CRLB.
    """
    import torch

    from axialtrack.optics import PSFModel, crlb

    cam = renderer.camera
    qe = float(cam.qe)
    coverslip = float(renderer.sample.coverslip_z_um)
    in_range = truth["z_focus_um"].between(*z_range)
    photons = (
        qe * float(np.median(truth.loc[in_range, "photons"]))
        if in_range.any()
        else float("nan")
    )
    bg_rate = np.asarray(renderer.background_rate, dtype=float)
    background = [qe * exposure_s * float(bg_rate[k].mean()) for k in range(2)]
    roi = 21
    out: dict[str, Any] = {
        "photons": photons,
        "background": background,
        "roi_px": roi,
        "read_noise_e": float(cam.read_noise_e),
        "bins": [],
        "rmse_z_nm": float("nan"),
        "crlb_z_nm": float("nan"),
    }
    if not len(pairs) or not np.isfinite(photons) or photons <= 0:
        return out
    dz_true = pairs["z_true_um"].to_numpy(float) - stage_z
    err = pairs["z_pred_um"].to_numpy(float) - pairs["z_true_um"].to_numpy(float)
    lo = np.floor((z_range[0] - stage_z) / bin_um) * bin_um
    edges = np.arange(lo, z_range[1] - stage_z + bin_um, bin_um)
    which = np.clip(np.digitize(dz_true, edges) - 1, 0, len(edges) - 2)
    used = np.unique(which)
    centres = edges[used] + bin_um / 2
    # the depth in the sample that is in focus at each bin's stage Z
    focus_rel = stage_z - coverslip
    depth = np.maximum(renderer.psf_model.depth_in_focus(focus_rel + centres), 0.0)
    model = PSFModel(renderer.optics, dtype=torch.float64)
    geo = renderer.geometry
    res = crlb(
        model,
        depth,
        focus_um=focus_rel,
        plane_offsets_um=(0.0, float(geo.plane_offset_um)),
        photons=photons,
        background=background,
        transmission=float(geo.transmission),
        roi_size=roi,
        read_noise=float(cam.read_noise_e),
    )
    # sigma_z is in sample depth: the stage frame moves by d(focus)/d(depth)
    grid = np.linspace(max(depth.min() - 0.05, 0.0), depth.max() + 0.05, 64)
    slope = np.interp(depth, grid, np.gradient(model.in_focus_offset(grid), grid))
    crlb_nm = 1e3 * np.asarray(res.sigma_z_um, dtype=float) * slope
    per_loc = np.empty(len(err))
    for j, b in enumerate(used):
        sel = which == b
        e = 1e3 * err[sel]
        per_loc[sel] = crlb_nm[j]
        out["bins"].append(
            {
                "dz_nm": round(float(1e3 * centres[j]), 1),
                "n": int(sel.sum()),
                "rmse_nm": float(np.sqrt(np.mean(e**2))),
                "std_nm": float(np.std(e)),
                "bias_nm": float(np.mean(e)),
                "crlb_nm": float(crlb_nm[j]),
            }
        )
    out["rmse_z_nm"] = float(1e3 * np.sqrt(np.mean(err**2)))
    out["crlb_z_nm"] = float(np.sqrt(np.mean(per_loc**2)))
    return out


def trackpy_baseline(live: Path, max_frames: int, pixel_um: float) -> dict[str, Any]:
    """Time trackpy (locate on plane 0, then link; 2D, no Z) on the run's frames.

    ``trackpy.locate`` (diameter 7 px, minmass 300) on plane 0 of the first
    ``max_frames`` stored frames, then ``trackpy.link`` (search range 1 um,
    memory 3), as ``benchmarks/bench_live.py`` runs it. An untimed first call
    compiles trackpy's numba code.

    Returns
    -------
    dict
        ``frames``, ``engine``, ``locate_ms_per_frame``, ``link_ms_per_frame``,
        ``fps`` (frames / (locate + link time)), ``features_per_frame``,
        ``tracks``.
    """
    import warnings

    import trackpy

    from axialtrack.store import open_run

    with warnings.catch_warnings():
        # trackpy 0.7 sorts with pandas' deprecated inplace=True (one warning
        # per frame); not ours to fix, and it says nothing about the timing
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return _trackpy_timed(trackpy, open_run(live), max_frames, pixel_um)


def _trackpy_timed(
    trackpy: Any, run: Any, max_frames: int, pixel_um: float
) -> dict[str, Any]:
    import importlib.util

    trackpy.quiet()
    n = min(int(max_frames), run.n_frames)
    frames = np.asarray(run.frames[:n, 0])
    engine = "numba" if importlib.util.find_spec("numba") else "python"
    search = 1.0 / pixel_um
    warm = trackpy.locate(frames[0], 7, minmass=300.0, engine=engine)
    warm["frame"] = 0
    if len(warm):  # trackpy.link fails on a table without features
        trackpy.link(
            pd.concat([warm, warm.assign(frame=1)], ignore_index=True),
            search_range=search,
            memory=3,
        )
    t0 = time.perf_counter()
    feats = []
    for i, p in enumerate(frames):
        f = trackpy.locate(p, 7, minmass=300.0, engine=engine)
        f["frame"] = i
        feats.append(f)
    t_loc = time.perf_counter() - t0
    df = pd.concat(feats, ignore_index=True)
    t1 = time.perf_counter()
    linked = (
        trackpy.link(df, search_range=search, memory=3)
        if len(df)
        else df.assign(particle=pd.Series(dtype=np.int64))
    )
    t_link = time.perf_counter() - t1
    total = t_loc + t_link
    return {
        "frames": n,
        "engine": engine,
        "locate_ms_per_frame": 1e3 * t_loc / n,
        "link_ms_per_frame": 1e3 * t_link / n,
        "fps": n / total if total > 0 else float("nan"),
        "features_per_frame": len(df) / n,
        "tracks": int(linked["particle"].nunique()),
    }


def write_figures(
    out: Path,
    pairs: pd.DataFrame,
    crlb_bins: dict[str, Any],
    locs: pd.DataFrame,
    stage_z: float,
) -> list[Path]:
    """Write the demo's PNG figures (:data:`FIGURES`) into ``out``.

    ``pred_vs_true_z.png``: predicted vs true Z (relative to the stage) of the
    matched localizations; ``precision_vs_crlb.png``: Z RMSE and standard
    deviation per true-dz bin beside the CRLB; ``tracks.png``: the tracks in XY
    and XZ.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = [out / name for name in FIGURES]
    # predicted vs true
    fig, ax = plt.subplots(figsize=(5, 5))
    t = 1e3 * (pairs["z_true_um"].to_numpy(float) - stage_z)
    pz = 1e3 * (pairs["z_pred_um"].to_numpy(float) - stage_z)
    ax.scatter(t, pz, s=3, alpha=0.4, lw=0)
    if len(t):
        lim = [min(t.min(), pz.min()), max(t.max(), pz.max())]
        ax.plot(lim, lim, "k--", lw=1, label="predicted = true")
        ax.legend(loc="upper left")
    ax.set_xlabel("true dz (nm, stage frame)")
    ax.set_ylabel("predicted dz (nm)")
    ax.set_title(f"Z of {len(t)} matched localizations")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    # precision vs CRLB
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = crlb_bins.get("bins", [])
    if bins:
        dz = [b["dz_nm"] for b in bins]
        ax.plot(dz, [b["rmse_nm"] for b in bins], "o-", label="RMSE vs truth")
        ax.plot(dz, [b["std_nm"] for b in bins], "s-", label="std (precision)")
        ax.plot(dz, [b["crlb_nm"] for b in bins], "k--", label="CRLB")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("true dz (nm, stage frame)")
    ax.set_ylabel("Z error (nm)")
    ax.set_title("Z precision per dz bin beside the Cramer-Rao bound")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    # tracks
    fig, (axy, axz) = plt.subplots(1, 2, figsize=(10, 4.5))
    tr = locs[locs["track_id"] >= 0] if "track_id" in locs else locs.iloc[:0]
    for _, g in tr.groupby("track_id"):
        if len(g) < 5:
            continue
        g = g.sort_values("frame")
        axy.plot(g["x_um"], g["y_um"], lw=0.8)
        axz.plot(g["x_um"], g["z_um"] - stage_z, lw=0.8)
    axy.set_xlabel("x (um)")
    axy.set_ylabel("y (um)")
    axy.set_aspect("equal", adjustable="datalim")
    axy.invert_yaxis()
    axy.set_title("tracks (>= 5 localizations), XY")
    axz.set_xlabel("x (um)")
    axz.set_ylabel("z - stage (um, stage frame)")
    axz.set_title("XZ")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def _status_printer(con: Console) -> Any:
    def show(m: Any) -> None:
        d = m.as_dict()
        con.print(
            f"  {_num(d.get('elapsed_s'), '5.1f')} s  in "
            f"{_num(d.get('fps_in'), '6.1f')} fps  analyzed "
            f"{_num(d.get('fps_analyzed'), '6.1f')} fps  latency p99 "
            f"{_num(d.get('latency_ms_p99'), '6.1f')} ms  localizations "
            f"{d.get('localizations')}  skipped {d.get('frames_skipped')}",
            highlight=False,
        )

    return show


def summary_table(res: DemoResult, n_tracks: int) -> Any:
    """The demo's summary as a rich table (every figure beside its reference)."""
    from rich.table import Table

    m = res.live_metrics
    s = res.score
    c = res.crlb
    cam = res.camera
    tp = res.trackpy
    table = Table(title="Live tracking on the simulated rig")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(
        "frames in / written / analyzed",
        f"{m['frames_in']} / {m['frames_written']} / {m['frames_analyzed']}",
    )
    table.add_row("frames skipped by analysis", str(m["frames_skipped"]))
    table.add_row(
        "camera rate nominal / achieved",
        f"{_num(cam.get('nominal_fps'), '.1f')} / {_num(m.get('fps_in'), '.1f')} fps "
        f"({_num(cam.get('exposure_ms'), 'g')} ms exposure)",
    )
    table.add_row(
        "fps analyzed (live, paced by the camera)", _num(m["fps_analyzed"], ".1f")
    )
    table.add_row(
        f"trackpy fps, same {tp.get('frames', 0)} frames (plane 0, 2D, no Z)",
        _num(tp.get("fps"), ".1f"),
    )
    table.add_row(
        "latency p50 / p99 (camera -> stored)",
        f"{_num(m['latency_ms_p50'], '.1f')} / {_num(m['latency_ms_p99'], '.1f')} ms",
    )
    table.add_row("localizations / tracks", f"{m['localizations']} / {n_tracks}")
    table.add_row(
        "recall / precision (scored Z range, half a crop inside the field)",
        f"{_num(s['recall'], '.3f')} / {_num(s['precision'], '.3f')}",
    )
    table.add_row(
        "recall of isolated particles (none within 8 px)",
        f"{_num(s.get('recall_isolated'), '.3f')} of {s.get('n_isolated', 0)}",
    )
    table.add_row(
        "RMSE x / y / z vs truth",
        f"{_num(s['rmse_x_nm'], '.0f')} / {_num(s['rmse_y_nm'], '.0f')} / "
        f"{_num(s['rmse_z_nm'], '.0f')} nm",
    )
    table.add_row(
        "Z RMSE / CRLB (same dz, photons, background)",
        f"{_num(c.get('rmse_z_nm'), '.0f')} / {_num(c.get('crlb_z_nm'), '.1f')} nm",
    )
    table.add_row("Z bias vs truth", f"{_num(s['bias_z_nm'], '+.0f')} nm")
    links = (
        f"{_num(s['link_accuracy'], '.4f')} of {s['n_links']}"
        if s["n_links"]
        else "no links scored"
    )
    table.add_row("correct links", links)
    d = res.diffusion
    table.add_row(
        "D (median of tracks >= 20 frames) / true",
        f"{_num(d['median_track_um2_s'], '.3f', 'no track')} / "
        f"{d['true_um2_s']:.3f} um^2/s",
    )
    t = res.training
    table.add_row(
        "training epochs run / limit",
        f"{t.get('epochs_run')} / {t.get('max_epochs')} (stopped by "
        f"{t.get('stopped_by')})",
    )
    table.add_row(
        "bead RMSE of the model (calibration, held out)",
        f"{_num(t.get('test_rmse_nm'), '.1f')} nm",
    )
    return table


def _print_live(con: Console, res: DemoResult, tracks: pd.DataFrame) -> None:
    from io import StringIO

    table = summary_table(res, len(tracks))
    con.print(table)
    c = res.crlb
    notes = [
        f"CRLB: a static emitter with {_num(c.get('photons'), '.0f')} detected "
        f"photons in plane 0 and {_num(c['background'][0], '.1f')} background "
        f"photons/px, {c['roi_px']} x {c['roi_px']} px, the simulated optics and "
        "splitter; per dz bin in precision_vs_crlb.png.",
        f"Training: {_training_line(res.training)}.",
        "Figures: " + ", ".join(p.name for p in res.figures),
    ]
    for line in notes:
        con.print(line, highlight=False)
    buf = StringIO()
    Console(file=buf, width=120, color_system=None).print(table)
    (res.out / "summary.txt").write_text(buf.getvalue() + "\n".join(notes) + "\n")

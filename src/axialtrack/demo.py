"""The whole story on the simulated rig: calibrate, train, track live, score.

``axialtrack demo`` runs this on a fresh install: a bead calibration through the
simulated dual-plane microscope, a model trained on it, a live tracking run of
diffusing particles written to a run store, and the accuracy of the
localizations and tracks against the simulation's ground truth, with the speed
figures of the live run.
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

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

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
    epochs
        Largest number of training epochs (early stopping may end sooner).
    max_train_s
        Training time limit (s).
    duration_s
        Length of the live run (s).
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
    seed
        Seed of the simulated samples and of the training.
    """

    model_config = ConfigDict(extra="forbid")

    plane_size: int = Field(256, ge=64)
    fields: int = Field(4, ge=1)
    z_range_um: float = Field(1.2, gt=0)
    z_step_um: float = Field(0.05, gt=0)
    epochs: int = Field(80, ge=1)
    max_train_s: float = Field(120.0, gt=0)
    duration_s: float = Field(10.0, gt=0)
    exposure_ms: float = Field(10.0, gt=0)
    diffusion_um2_s: float = Field(0.2, gt=0)
    particle_density_um3: float = Field(0.03, gt=0)
    particle_depth_um: float = Field(1.2, gt=0)
    focus_depth_um: float = Field(0.3, ge=0)
    score_half_range_um: float = Field(0.5, gt=0)
    engine: str = "auto"
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
        Output folder: ``calibration.zarr``, ``bead.axialmodel``, ``live.zarr``
        and ``demo.json`` (the figures printed).
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
        Paths, timings, calibration QC, training metrics, live metrics and the
        score against the truth.
    """
    from axialtrack.acquire.calibration import calibration_sequence, run_calibration
    from axialtrack.calibrate import analyze, write_qc
    from axialtrack.calibrate.io import load_stack
    from axialtrack.devices import SimCamera, get_device
    from axialtrack.model import ModelConfig
    from axialtrack.model.train import load_calibration, train
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
        trained = train(
            data,
            config=ModelConfig(crop_size=int(data.examples.crops.shape[-1])),
            epochs=cfg.epochs,
            seed=cfg.seed,
            progress=progress,
            max_time_s=cfg.max_train_s,
            patience=20,
            # a small calibration gives ~20 steps per epoch: a short weight average
            ema_decay=0.95,
        )
        trained.save(bundle_path, overwrite=True)
        res.timings_s["training"] = time.perf_counter() - t0
        m = trained.metrics
        res.training = {
            k: m[k]
            for k in ("test_rmse_nm", "val_rmse_nm", "epochs_run", "n_train")
            if k in m
        }
        con.print(
            f"{m['epochs_run']} epochs in {res.timings_s['training']:.1f} s; held-out "
            f"bead RMSE {m['test_rmse_nm']:.1f} nm -> {bundle_path.name}"
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


def _live(
    core: Any,
    cam: Any,
    cfg: DemoConfig,
    geo: Any,
    res: DemoResult,
    con: Console,
    progress: bool,
) -> None:
    from axialtrack.pipeline.process import AnalysisProcess
    from axialtrack.rig import splitter_geometry

    label = core.getCameraDevice()
    _set(core, label, "Scene", "diffusing")
    _set(core, label, "DiffusionUm2PerS", cfg.diffusion_um2_s)
    _set(core, label, "ParticleDensity", cfg.particle_density_um3)
    _set(core, label, "ParticleDepthUm", cfg.particle_depth_um)
    _set(core, label, "RecordTruth", 1)
    core.setExposure(cfg.exposure_ms)
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
        engine_prefer=cfg.engine,
    )
    res.engine = f"{analyzer.engine_name} ({analyzer.engine_reason})"
    con.print(f"Inference engine: {res.engine} (analysis process)")
    with analyzer:
        metrics = _live_run(
            core, analyzer, res, geo, plane_shape, pixel, cfg, con, progress
        )
    res.live_metrics = metrics.as_dict()
    _score_live(renderer, res, pixel, stage_z, cfg, con)


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
    from axialtrack.pipeline.runner import CoreSource, LiveRunner, RunnerConfig
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
        on_status=_status_printer(con) if progress else None,
    )
    t0 = time.perf_counter()
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
    from axialtrack.pipeline.score import score_against_truth
    from axialtrack.pipeline.tracks import summarize_tracks
    from axialtrack.sim import to_dataframe
    from axialtrack.store import open_run

    run = open_run(res.live)
    locs = run.localizations
    truth = to_dataframe(renderer.trajectories())
    meta = run.frame_meta
    analyzed_t = meta.loc[meta["analyzed"].astype(bool), "t_s"].to_numpy()
    key = np.rint(truth["t_s"].to_numpy() * 1e6)
    truth = truth[np.isin(key, np.rint(analyzed_t * 1e6))]
    half = cfg.score_half_range_um
    score = score_against_truth(
        locs, truth, pixel_size_um=pixel, z_range_um=(stage_z - half, stage_z + half)
    )
    res.score = score.as_dict()
    tracks = summarize_tracks(locs, frame_interval_s=cfg.exposure_ms / 1e3)
    long = tracks[tracks["n_localizations"] >= 20]
    d_med = float(np.nanmedian(long["D_um2_s"])) if len(long) else float("nan")
    res.diffusion = {
        "true_um2_s": cfg.diffusion_um2_s,
        "median_track_um2_s": d_med,
        "tracks_20_plus": len(long),
    }
    _print_live(con, res, tracks)


def _status_printer(con: Console) -> Any:
    def show(m: Any) -> None:
        d = m.as_dict()
        con.print(
            f"  {d['elapsed_s']:5.1f} s  in {d['fps_in']:6.1f} fps  analyzed "
            f"{d['fps_analyzed']:6.1f} fps  latency p99 {d['latency_ms_p99']:6.1f} ms"
            f"  localizations {d['localizations']}  skipped {d['frames_skipped']}",
            highlight=False,
        )

    return show


def _print_live(con: Console, res: DemoResult, tracks: pd.DataFrame) -> None:
    from rich.table import Table

    m = res.live_metrics
    s = res.score
    table = Table(title="Live tracking on the simulated rig")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(
        "frames in / written / analyzed",
        f"{m['frames_in']} / {m['frames_written']} / {m['frames_analyzed']}",
    )
    table.add_row("frames skipped by analysis", str(m["frames_skipped"]))
    table.add_row("fps in / analyzed", f"{m['fps_in']:.1f} / {m['fps_analyzed']:.1f}")
    table.add_row(
        "latency p50 / p99 (camera -> stored)",
        f"{m['latency_ms_p50']:.1f} / {m['latency_ms_p99']:.1f} ms",
    )
    table.add_row("localizations / tracks", f"{m['localizations']} / {len(tracks)}")
    table.add_row(
        "recall / precision (within the scored Z range)",
        f"{s['recall']:.3f} / {s['precision']:.3f}",
    )
    table.add_row(
        "RMSE x / y / z vs truth",
        f"{s['rmse_x_nm']:.0f} / {s['rmse_y_nm']:.0f} / {s['rmse_z_nm']:.0f} nm",
    )
    table.add_row("Z bias vs truth", f"{s['bias_z_nm']:+.0f} nm")
    table.add_row("correct links", f"{s['link_accuracy']:.4f} of {s['n_links']}")
    d = res.diffusion
    table.add_row(
        "D (median of tracks >= 20 frames) / true",
        f"{d['median_track_um2_s']:.3f} / {d['true_um2_s']:.3f} um^2/s",
    )
    table.add_row(
        "bead RMSE of the model (calibration)",
        f"{res.training.get('test_rmse_nm', float('nan')):.1f} nm",
    )
    con.print(table)

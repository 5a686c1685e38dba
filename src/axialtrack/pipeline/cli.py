"""The ``axialtrack live`` and ``axialtrack localize`` subcommands."""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from axialtrack._cli import (
    PIXEL_SIZE_RANGE_UM,
    PIXEL_SIZE_UM,
    PLANE_OFFSET_RANGE_UM,
    PLANE_OFFSET_UM,
    add_camera_options,
    camera_origin_text,
    camera_sources,
    fail,
    nonnegative_float,
    positive_float,
    positive_int,
    unwritable,
)
from axialtrack.pipeline.config import LocalizerConfig
from axialtrack.store.replace import Replacement

__all__ = ["add_parsers", "cmd_live", "cmd_localize"]

console = Console()

#: ``localize``'s refinement defaults, shown in ``--help``.
_LOC_DEFAULTS = LocalizerConfig()


def _shard_frames(text: str) -> int:
    """``--shard-frames``: an integer from 2 to 255."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 2 <= n <= 255:
        raise argparse.ArgumentTypeError(
            f"{n} is out of range: give 2 to 255 frames per file, or leave it out "
            "(one file per frame)"
        )
    return n


def add_parsers(subparsers: Any) -> None:
    """Register ``live`` and ``localize`` on an ``add_subparsers()`` object."""
    from axialtrack.engine.select import ENGINE_CHOICES

    p = subparsers.add_parser(
        "live",
        help="track particles live and record the run",
        description="Acquire a live sequence, store every frame in a run store, "
        "localize and link particles while the camera runs (frames the analysis "
        "cannot keep up with are recorded and marked for `axialtrack localize`).",
    )
    p.add_argument("--config", default=None, help="hardware config (default: sim)")
    p.add_argument("--model", default=None, help="model bundle (.axialmodel)")
    p.add_argument(
        "--duration", type=positive_float, default=None, help="seconds to run"
    )
    p.add_argument(
        "--frames", type=positive_int, default=None, help="frames to acquire"
    )
    p.add_argument("--out", required=True, help="run store to write (.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument(
        "--engine",
        default="auto",
        choices=ENGINE_CHOICES,
        help="inference engine (auto)",
    )
    p.add_argument("--scene", default=None, help="simulated camera scene")
    p.add_argument("--source", default=None, help="replay camera: recording to stream")
    p.add_argument(
        "--rate", type=positive_float, default=None, help="replay frame rate (Hz)"
    )
    p.add_argument(
        "--interval-ms",
        type=nonnegative_float,
        default=0.0,
        help="frame interval (ms; 0: as fast as the exposure allows)",
    )
    p.add_argument(
        "--compression",
        default=None,
        choices=["zstd", "blosc-lz4", "blosc-zstd"],
        help="frame compression (default none)",
    )
    p.add_argument(
        "--axial-scale",
        type=positive_float,
        default=1.0,
        help="sample depth per um of focus travel (focal shift, e.g. 0.73 for an "
        "NA 1.45 oil objective into water) for the tracks' axial diffusion (1)",
    )
    p.add_argument(
        "--analysis",
        default="process",
        choices=["process", "threads"],
        help="run the analysis in its own process, fed through shared memory "
        "(default; the camera and writer threads then never hold it up), or in "
        "threads of this one",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine localizations by maximum likelihood with the bundle's PSF, "
        "as many per frame as half the frame period allows (brightest first; "
        "the status line says how many)",
    )
    p.add_argument(
        "--shard-frames",
        type=_shard_frames,
        default=None,
        metavar="N",
        help="frames per file of the frame array (a zarr v3 sharded array, 2 to "
        "255; default: one file per frame). Long runs at a high frame rate make "
        "fewer, larger files",
    )
    p.add_argument("--no-status", action="store_true", help="no live status line")
    add_camera_options(
        p, "the camera of --config (the simulated camera; another camera's bit depth)"
    )
    p.set_defaults(func=cmd_live)

    q = subparsers.add_parser(
        "localize",
        help="localize and link a recorded run (nothing skipped)",
        description="Run the live pipeline offline over a recorded run: by "
        "default the frames the live analysis skipped (analyzed = false) are "
        "processed and added to the run; --all recomputes every frame and "
        "replaces the table. A TIFF/zarr movie is processed into a new run "
        "(--out) with the stated splitter --layout.",
    )
    q.add_argument("run", metavar="RUN.zarr", help="run store (or TIFF/zarr movie)")
    q.add_argument("--model", required=True, help="model bundle (.axialmodel)")
    q.add_argument("--all", action="store_true", help="recompute every frame")
    q.add_argument(
        "--engine",
        default="auto",
        choices=ENGINE_CHOICES,
        help="inference engine (auto)",
    )
    q.add_argument(
        "--batch", type=positive_int, default=32, help="frames per batch (32)"
    )
    q.add_argument("--out", default=None, help="new run store (movie input)")
    q.add_argument("--overwrite", action="store_true", help="replace --out")
    q.add_argument(
        "--layout",
        default=None,
        help="movie: splitter layout of sensor frames (default: the model bundle's)",
    )
    q.add_argument(
        "--plane-offset",
        type=PLANE_OFFSET_UM,
        default=None,
        help="movie: delta (um; "
        f"{PLANE_OFFSET_RANGE_UM[0]:g} to {PLANE_OFFSET_RANGE_UM[1]:g}; default: "
        "the model bundle's)",
    )
    q.add_argument(
        "--mirror", default=None, help="movie: plane-1 mirror (default: the bundle's)"
    )
    q.add_argument(
        "--stage-z",
        default=None,
        metavar="UM|FILE.csv",
        help="movie: the focus stage's Z (um), a number for the whole movie or a "
        "CSV with one value per frame (a column stage_z_um, or the first); "
        "default: from the movie's metadata, where it has it",
    )
    q.add_argument(
        "--pixel-size",
        type=PIXEL_SIZE_UM,
        default=None,
        help=f"movie: um/px ({PIXEL_SIZE_RANGE_UM[0]:g} to "
        f"{PIXEL_SIZE_RANGE_UM[1]:g}; default: the model bundle's)",
    )
    q.add_argument(
        "--frame-interval", type=positive_float, default=None, help="movie: s"
    )
    q.add_argument(
        "--axial-scale",
        type=positive_float,
        default=1.0,
        help="sample depth per um of focus travel (focal shift, e.g. 0.73 for an "
        "NA 1.45 oil objective into water) for the tracks' axial diffusion (1)",
    )
    add_camera_options(
        q, "the camera the run store records (none for a movie), the model bundle's"
    )
    q.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine every localization by maximum likelihood on both planes "
        "with the bundle's PSF (x, y, z, photons, background; sigma from the "
        "Fisher information, llr and misfit columns); default: on when the "
        "bundle carries its calibration's fitted PSF",
    )
    r = q.add_argument_group("refinement (--refine)")
    r.add_argument(
        "--camera-map",
        default=None,
        metavar="FILE",
        help="sCMOS per-pixel maps for the refinement: .npz with offset (ADU), "
        "gain (e-/ADU) and variance (ADU^2), or a .tif of the three, each of "
        "shape (2, H, W) like the stored frames (default: the camera's scalars)",
    )
    r.add_argument(
        "--refine-far-um",
        type=float,
        default=_LOC_DEFAULTS.refine_far_um,
        help="rows whose dz lies farther than this from the focus of both planes "
        "are refined on the larger window (um, default: %(default)s)",
    )
    r.add_argument(
        "--refine-far-size",
        type=int,
        default=_LOC_DEFAULTS.refine_far_size_px,
        help="odd side of that larger window, px (at most the model's crop; "
        "equal to --refine-size: no larger window) (default: %(default)s)",
    )
    r.add_argument(
        "--refine-size",
        type=int,
        default=_LOC_DEFAULTS.refine_size_px,
        help="odd side of the refinement's window near focus, px "
        "(default: %(default)s)",
    )
    q.set_defaults(func=cmd_localize)


def _make_analyzer(
    bundle: str, *, process_batch: int | None = None, **kwargs: Any
) -> Any:
    """The analyzer of ``bundle``: in this process, or an
    :class:`~axialtrack.pipeline.AnalysisProcess` for batches of up to
    ``process_batch`` frames."""
    from axialtrack.live import make_live_analyzer

    return make_live_analyzer(bundle, process_batch=process_batch, **kwargs)


def _model_error(bundle: str, exc: BaseException | str) -> str:
    """``Cannot use the model BUNDLE: why`` (the path once)."""
    why = " ".join(str(exc).split())
    where = "" if str(bundle) in why else f" {bundle}"
    return f"Cannot use the model{where}: {why}"


def _engine_error(engine: str, exc: BaseException | str) -> str:
    """``Cannot use --engine NAME: why``."""
    return f"Cannot use --engine {engine}: {' '.join(str(exc).split())}"


def _model_refused(bundle: str, engine: str) -> bool:
    """Check a model bundle (its files, hashes and ``model.json``) and the
    engine asked for before anything else runs or is created; the refusal is
    printed (one line) and ``True`` returned.

    The checks against the rig (pixel size, plane offset) come when the
    analyzer is built (:func:`_load_analyzer`), still before any store is.
    """
    from axialtrack.engine.select import available_backends
    from axialtrack.model import BundleError, load_bundle

    try:
        load_bundle(bundle)
    except BundleError as exc:
        fail(_model_error(bundle, exc))
        return True
    if engine not in ("auto", "torch"):
        avail = available_backends()
        why = avail.get(engine)
        if why is not None:
            ok = ", ".join(k for k, v in avail.items() if v is None) or "none"
            fail(
                _engine_error(engine, f"it is unavailable here: {why}"),
                f"Available: {ok}; or leave --engine out (auto).",
            )
            return True
    return False


def _load_analyzer(
    bundle: str, *, process_batch: int | None = None, **kwargs: Any
) -> Any:
    """:func:`_make_analyzer`, printing why a model or engine is refused (then
    ``None``): once, as what it is.

    ``process_batch``: build an :class:`~axialtrack.pipeline.AnalysisProcess`
    for batches of up to this many frames instead; if that process does not
    start, the analysis runs in threads of this process, unless it stopped on
    the model or the engine (threads would stop on them too).
    """
    from axialtrack.engine import EngineError
    from axialtrack.live.process import AnalysisProcessError
    from axialtrack.model import BundleError
    from axialtrack.optics.sampled import SampledPSFError
    from axialtrack.pipeline import CameraMapError

    engine = str(kwargs.get("engine", "auto"))
    try:
        try:
            return _make_analyzer(bundle, process_batch=process_batch, **kwargs)
        except AnalysisProcessError as exc:
            # the child reports its error as "ErrorName: message"
            name, _, why = str(exc).partition(": ")
            if name == "BundleError":
                fail(_model_error(bundle, why))
                return None
            if name == "SampledPSFError":
                fail(_model_error(bundle, why), "Leave out --refine (--no-refine).")
                return None
            if name == "EngineError":
                fail(_engine_error(engine, why))
                return None
            # e.g. an interpreter that cannot run ``python -m``: threads still work
            console.print(
                f"[yellow]The analysis process did not start ({exc}); analyzing "
                "in threads of this process instead.[/yellow]"
            )
            return _make_analyzer(bundle, **kwargs)
    except BundleError as exc:
        fail(_model_error(bundle, exc))
    except SampledPSFError as exc:
        fail(_model_error(bundle, exc), "Leave out --refine (--no-refine).")
    except EngineError as exc:
        fail(_engine_error(engine, exc))
    except FileNotFoundError as exc:
        fail(_model_error(bundle, exc))
    except CameraMapError as exc:
        fail(f"--camera-map {exc}.", "Nothing was written.")
    return None


def _camera(
    args: argparse.Namespace,
    bundle: str | None,
    recorded: list[tuple[str, dict[str, Any]]] | None = None,
) -> Any:
    """The camera of a run: each field from the ``--camera-*`` options,
    ``--camera FILE``, ``recorded`` (the core's camera, or the run store's),
    the model bundle, the defaults, in this order. Says in one line where a
    camera given differs from the bundle's. Returns the
    :class:`~axialtrack.pipeline.config.CameraCalibration`, or the exit code
    of a refusal (printed)."""
    from axialtrack.camera import (
        CameraError,
        camera_differences,
        resolve_camera,
    )

    try:
        given = camera_sources(args) + list(recorded or [])
        bundle_cam = None
        if bundle is not None:
            from axialtrack.model import BundleError, load_bundle

            # a bundle that does not load is refused where the analyzer is
            # built, as what it is
            with contextlib.suppress(BundleError, FileNotFoundError):
                bundle_cam = load_bundle(bundle).camera
        sources = list(given)
        if bundle_cam is not None:
            sources.append(("the model bundle", bundle_cam.model_dump()))
        camera, origin = resolve_camera(sources)
    except CameraError as exc:
        return fail(str(exc))
    if bundle_cam is not None:
        diff = camera_differences(camera, bundle_cam)
        if diff:
            console.print(
                f"[yellow]The camera differs from the model bundle's ("
                f"{escape('; '.join(diff))}; {escape(camera_origin_text(origin))})"
                "; photons and thresholds use the camera given.[/yellow]",
                soft_wrap=True,
            )
    return camera


def _close(analyzer: Any) -> None:
    """Stop an analysis process (other analyzers have nothing to close)."""
    close = getattr(analyzer, "close", None)
    if callable(close):
        close()


def _refuse_existing(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` may not be written (the refusal printed): it exists and
    ``--overwrite`` is not given, or it is not a run store of ours. Leftovers
    of an interrupted replacement beside it are reported."""
    from axialtrack.store.replace import check_output

    error, notes = check_output(out, overwrite, "store")
    for note in notes:
        console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
    if error is not None:
        fail(error)
        return True
    return False


class _Replacement(Replacement):
    """:class:`~axialtrack.store.replace.Replacement` that says when it put
    the previous output back."""

    def settle(self, keep_new: bool | None = None) -> bool:
        restored = super().settle(keep_new)
        if restored:
            console.print(
                f"[yellow]No frame was stored: the previous {self.out} is back as "
                "it was.[/yellow]"
            )
        return restored


def summary_table(metrics: Any, title: str = "Live run") -> Table:
    """A rich table of :class:`~axialtrack.live.runner.LiveMetrics`."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, value in metrics.summary_rows():
        t.add_row(label, value)
    return t


# ------------------------------------------------------------------ live
def _live_refused(args: argparse.Namespace, out: Path) -> int | None:
    """The exit code of a refusal of ``axialtrack live``'s arguments (printed),
    before anything is loaded or written; ``None`` if they may run."""
    if _refuse_existing(out, args.overwrite):
        return 2
    if args.duration is None and args.frames is None:
        return fail("Give --duration SECONDS or --frames N.")
    for flag, v in (("--duration", args.duration), ("--frames", args.frames)):
        if v is not None and not v > 0:
            return fail(f"{flag} must be > 0; got {v}.", "Nothing was changed.")
    if why := unwritable(out):
        return fail(f"--out: {why}.", "Choose another --out. Nothing was written.")
    if args.source is not None and not Path(args.source).expanduser().exists():
        return fail(
            f"--source {args.source} does not exist.",
            "Give the recording (run store, TIFF or zarr) to replay.",
        )
    if args.model and _model_refused(args.model, args.engine):
        return 2
    return None


def _set_camera_properties(core: Any, args: argparse.Namespace) -> int | None:
    """Give the camera ``--scene``, ``--source`` and ``--rate``; the exit code
    of a refusal (printed, the rig unloaded), else ``None``."""
    cam = core.getCameraDevice()
    for prop, value in (
        ("Scene", args.scene),
        ("Source", args.source),
        ("FrameRateHz", args.rate),
    ):
        if value is None:
            continue
        if not core.hasProperty(cam, prop):
            core.unloadAllDevices()
            flag = {"Scene": "--scene", "Source": "--source"}.get(prop, "--rate")
            return fail(
                f"The camera {cam!r} has no {prop} property, so {flag} does not "
                "apply to it.",
                "Leave it out, or use a config with a camera that has it.",
            )
        try:
            core.setProperty(cam, prop, value)
        except (RuntimeError, ValueError, OSError) as exc:
            core.unloadAllDevices()
            return fail(f"The camera {cam!r} refused {prop}={value!r}: {exc}")
    return None


def cmd_live(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack live``: the run is prepared and run by
    :class:`~axialtrack.live.LiveRun`, as the control panel's is."""
    from axialtrack.camera import camera_from_core
    from axialtrack.live import LiveOptions, LiveRig, LiveRun, analyzer_options
    from axialtrack.live.runner import RunnerConfig, StopSignals
    from axialtrack.live.session import model_metadata
    from axialtrack.rig import RigConfigError, load_rig
    from axialtrack.store import StoreError

    out = Path(args.out).expanduser()
    if (code := _live_refused(args, out)) is not None:
        return code
    try:
        core = load_rig(args.config)
    except RigConfigError as exc:
        return fail(str(exc))
    if (code := _set_camera_properties(core, args)) is not None:
        return code
    rig_cam = camera_from_core(core)
    camera = _camera(
        args,
        args.model or None,
        [(f"the camera of {args.config or 'the simulated rig'}", rig_cam)],
    )
    if isinstance(camera, int):
        core.unloadAllDevices()
        return camera
    rig = LiveRig.from_core(core)
    tty = console.is_terminal
    config = RunnerConfig(log_status=False, status_interval_s=0.5 if tty else 1.0)
    analyzer = None
    if args.model:
        analyzer = _load_analyzer(
            args.model,
            process_batch=(
                config.max_batch_frames if args.analysis == "process" else None
            ),
            **analyzer_options(
                rig,
                camera,
                engine=args.engine,
                interval_ms=args.interval_ms,
                axial_scale=args.axial_scale,
                refine=args.refine,
            ),
        )
        if analyzer is None:
            core.unloadAllDevices()
            return 2
    options = LiveOptions(
        out=out,
        overwrite=args.overwrite,
        n_frames=args.frames,
        duration_s=args.duration,
        interval_ms=args.interval_ms,
        compression=args.compression,
        shard_frames=args.shard_frames,
        config_name=args.config or "sim-dualplane",
    )
    try:
        run = LiveRun(
            core,
            rig,
            options,
            analyzer=analyzer,
            camera=camera,
            model=model_metadata(args.model or None, analyzer),
            config=config,
        )
    except (StoreError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    # SIGTERM (systemd, Docker, `timeout`, Slurm), SIGHUP and Ctrl-C stop the
    # run like its duration: frames stored, tracks written, store closed
    stops = StopSignals(
        on_repeat=lambda _n: console.print(
            "[yellow]Stopping: storing what was received and closing the run "
            "store (SIGKILL would lose the track table).[/yellow]"
        )
    )
    with stops:
        return _run_live(args, run, stops)


def _run_live(args: argparse.Namespace, run: Any, stops: Any) -> int:
    """Run ``axialtrack live`` once its store is open; the exit status.

    0 done; 1 stopped by an error, or no frame stored; 3 the analysis stopped
    part-way (every frame stored, the rest unanalyzed); ``128 + signal`` when
    a signal stopped it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    """
    from rich.live import Live

    # a terminal gets one line updated in place; a log file or pipe one line
    # a second (rich would show nothing there until the end)
    tty = console.is_terminal
    show = not args.no_status
    live = Live(
        "starting...",
        console=console,
        refresh_per_second=4,
        transient=True,
        auto_refresh=False,
    )

    def on_status(m: Any) -> None:
        if not show:
            return
        if tty:
            live.update(m.status_line(), refresh=True)
        else:
            console.print(
                m.status_line(), markup=False, highlight=False, soft_wrap=True
            )

    run.events.status.connect(on_status)
    stops.attach(run.handler)
    with live if (tty and show) else contextlib.nullcontext():
        run.run()
    outcome = run.finish()
    return _report_live(args, run.out, outcome, stops)


def _report_live(args: argparse.Namespace, out: Path, outcome: Any, stops: Any) -> int:
    """Print how a live run ended; its exit status (see :func:`_run_live`)."""
    status = 0
    if outcome.acquisition_error is not None:
        why = escape(str(outcome.acquisition_error))
        console.print(f"[red]The acquisition failed:[/red] {why}")
        status = 1
    if outcome.error is not None:
        err = outcome.error
        console.print(f"[red]{type(err).__name__}:[/red] {escape(str(err))}")
        status = 1
    if outcome.put_back:
        console.print(
            f"[yellow]No frame was stored: the previous {out} is back as it "
            "was.[/yellow]"
        )
    metrics = outcome.metrics
    if metrics is None:
        if not outcome.failed:
            console.print(
                "[red]No frame was stored:[/red] the camera delivered none before "
                "the run ended. Check the camera (exposure, trigger, --source) "
                "and run again."
            )
        return stops.exit_code if stops.exit_code is not None else 1
    console.print(summary_table(metrics))
    for w in metrics.warnings:
        console.print(f"[yellow]{w}[/yellow]")
    if stops.signum is not None:
        name = signal.Signals(stops.signum).name
        console.print(
            f"[yellow]Stopped by {name}; everything acquired is stored.[/yellow]"
        )
    if status == 0 and metrics.frames_written == 0 and stops.signum is None:
        console.print(
            f"[red]No frame was stored:[/red] the camera delivered none before "
            f"the run ended ({metrics.stop_reason}). Check the camera (exposure, "
            "trigger, --source) and run again."
        )
        status = 1
    console.print(f"Run store: [green]{out}[/green]")
    if status == 0 and stops.exit_code is not None:
        return stops.exit_code
    if status == 0 and metrics.analysis_error is not None:
        console.print(
            f"[red]The analysis stopped at frame {metrics.analysis_failed_at}[/red] "
            f"({metrics.analysis_error}); every frame is stored. Analyze the "
            f"rest with: axialtrack localize {out} --model {args.model}"
        )
        return 3
    return status


# -------------------------------------------------------------- localize
def _empty_locs() -> dict[str, np.ndarray]:
    from axialtrack.store import LOCALIZATION_COLUMNS

    return {k: np.zeros(0, dtype=v) for k, v in LOCALIZATION_COLUMNS.items()}


def _analyze_all(
    analyzer: Any,
    get_planes: Any,
    indices: np.ndarray,
    metas: list[Any],
    batch: int,
    on_batch: Any = None,
) -> Any:
    import pandas as pd

    parts = []
    # runs of consecutive frames: no track may cross the frames between two
    # runs (analyzed before, by the live run)
    end_tracks = getattr(analyzer, "end_tracks", None)
    cuts = np.flatnonzero(np.diff(indices) != 1) + 1
    for r0, r1 in zip(np.r_[0, cuts], np.r_[cuts, len(indices)], strict=True):
        if r0 and callable(end_tracks):
            end_tracks()
        for s in range(int(r0), int(r1), batch):
            e = min(s + batch, int(r1))
            idx = indices[s:e]
            planes = np.asarray(get_planes(idx))
            table = analyzer.analyze(planes, idx, metas[s:e])
            if table is not None and len(table):
                parts.append(table)
            if on_batch is not None:
                on_batch(len(idx), planes)
    return pd.concat(parts, ignore_index=True) if parts else None


def _has_psf_fit(model: str) -> bool:
    """Whether the bundle's model.json carries a fitted PSF (``localize``
    refines by default then); an unreadable bundle is reported by its loader."""
    import json

    try:
        meta = json.loads((Path(model).expanduser() / "model.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("psf_fit") is not None


def cmd_localize(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack localize``."""
    from rich.progress import Progress

    from axialtrack.geometry import SplitterGeometry
    from axialtrack.store import FrameMeta, StoreError, open_run
    from axialtrack.store.amend import append_localizations_to_run

    path = Path(args.run).expanduser()
    if not path.exists():
        return fail(f"{path} does not exist.")
    if args.out is not None and (why := unwritable(Path(args.out))):
        return fail(f"--out: {why}.", "Choose another --out. Nothing was written.")
    movie = not (path / "zarr.json").is_file() or args.out is not None
    run = None
    if not movie:
        try:
            run = open_run(path)
        except StoreError as exc:
            return fail(str(exc))
        if run.state != "closed":
            return fail(
                f"{path} is not closed (being written, or its writer was killed):",
                f"run `axialtrack recover {path}` first.",
            )
    # the model before any work, always: also where there turns out to be
    # nothing to do
    if _model_refused(args.model, args.engine):
        return 2
    from axialtrack.camera import camera_of_attrs

    recorded = camera_of_attrs(run.attrs) if run is not None else None
    camera = _camera(
        args, args.model, [(f"the run store {path}", recorded)] if recorded else []
    )
    if isinstance(camera, int):
        return camera
    localizer = _localizer_config(args, camera, run)
    if isinstance(localizer, int):
        return localizer
    if run is None:
        return _localize_movie(args, path, localizer)
    if args.stage_z is not None:
        return fail(
            f"--stage-z is for a movie; {path} is a run store, whose frames "
            "record their stage Z."
        )
    meta = run.frame_meta
    todo = (
        np.arange(run.n_frames)
        if args.all
        else np.flatnonzero(~meta["analyzed"].to_numpy())
    )
    if not todo.size:
        console.print(f"Every frame of {path} is analyzed; nothing to do (--all).")
        return 0
    geo = SplitterGeometry(**(run.attrs.get("splitter") or {}))
    h, w = run.attrs["plane_shape"]
    analyzer = _load_analyzer(
        args.model,
        plane_shape=(int(h), int(w)),
        pixel_size_um=run.pixel_size_um,
        geometry=geo,
        frame_interval_s=run.attrs.get("frame_interval_s"),
        engine=args.engine,
        axial_scale=args.axial_scale,
        localizer=localizer,
    )
    if analyzer is None:
        return 2
    metas = [
        FrameMeta(
            t_s=float(r.t_s),
            stage_z_um=float(r.stage_z_um),
            stage_x_um=float(r.stage_x_um),
            stage_y_um=float(r.stage_y_um),
            image_number=int(r.image_number),
            position_index=int(r.position_index),
        )
        for r in meta.iloc[todo].itertuples()
    ]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("localizing", total=len(todo))
        table = _analyze_all(
            analyzer,
            lambda idx: run.frames[idx],
            todo,
            metas,
            max(1, args.batch),
            lambda n, _p: progress.advance(task, n),
        )
    tracks = analyzer.finish()
    if table is None:
        table = _empty_locs()
    elif not args.all and "track_id" in table and len(run.localizations):
        # new tracks must not reuse the ids of the live tracks
        offset = int(max(run.localizations["track_id"].max(), -1)) + 1
        ids = table["track_id"].to_numpy()
        table["track_id"] = np.where(ids >= 0, ids + offset, ids)
        if tracks is not None and "track_id" in tracks:
            import pandas as pd

            tracks = tracks.copy()
            tracks["track_id"] = tracks["track_id"] + offset
            old = run.tracks
            if len(old) and list(old.columns) == list(tracks.columns):
                tracks = pd.concat([old, tracks], ignore_index=True)
            elif len(old):
                console.print(
                    "[yellow]The new track summary has other columns than the "
                    "run's; the run's track table is kept.[/yellow]"
                )
                tracks = None
    if args.all and tracks is None:
        # the new table links nothing: the old tracks (of the replaced rows) go
        old_tracks = run.tracks
        tracks = {
            c: np.zeros(0, dtype=old_tracks[c].dtype) for c in old_tracks.columns
        } or {"track_id": np.zeros(0, np.int64)}
    append_localizations_to_run(
        path, table, frames_analyzed=todo, tracks=tracks, replace=args.all
    )
    n = len(table["frame"])
    console.print(
        f"Localized {len(todo)} frame(s) of {path}: {n} localizations "
        f"{'replaced the table' if args.all else 'added'}; every frame is now "
        "analyzed."
    )
    if not args.all:
        console.print(
            "Tracks of these frames are linked among themselves only; run with "
            "--all to relink the whole run."
        )
    return 0


def _localizer_config(args: argparse.Namespace, camera: Any, run: Any) -> Any:
    """``localize``'s :class:`LocalizerConfig`, or 2 after a one-line refusal
    (refinement options without ``--refine``, invalid values, camera maps that
    do not fit the run's frames)."""
    from pydantic import ValidationError

    from axialtrack.pipeline import CameraMapError, load_camera_maps

    refine = getattr(args, "refine", False)
    if refine is None:  # default: refine when the bundle carries a fitted PSF
        refine = _has_psf_fit(args.model)
    refine = bool(refine)
    if args.camera_map is not None and not refine:
        return fail(
            "--camera-map is used by the refinement only.",
            "Add --refine, or leave out --camera-map. Nothing was written.",
        )
    try:
        cfg = LocalizerConfig(
            camera=camera,
            saturation_adu=min(camera.max_adu, 65535),
            refine=refine,
            refine_far_um=args.refine_far_um,
            refine_size_px=args.refine_size,
            refine_far_size_px=max(args.refine_far_size, args.refine_size),
            camera_map=None
            if args.camera_map is None
            else str(Path(args.camera_map).expanduser()),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        name = {
            "refine_far_um": "--refine-far-um",
            "refine_size_px": "--refine-size",
            "refine_far_size_px": "--refine-far-size",
        }.get(str(err["loc"][0]), str(err["loc"][0]))
        return fail(
            f"{name} {err.get('input')!r}: {err['msg']}.", "Nothing was written."
        )
    if cfg.camera_map is not None and run is not None:
        h, w = run.attrs["plane_shape"]
        try:
            load_camera_maps(cfg.camera_map, (int(h), int(w)))
        except CameraMapError as exc:
            return fail(f"--camera-map {exc}.", "Nothing was written.")
    return cfg


def _stage_z_of(value: str, n: int) -> np.ndarray:
    """The stage Z of each of ``n`` frames from ``--stage-z``: a number, or a
    CSV with one value per frame (a ``stage_z_um`` column, or the first)."""
    try:
        return np.full(n, float(value))
    except ValueError:
        pass
    import pandas as pd

    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"{value} is neither a number (um) nor a CSV file")
    table = pd.read_csv(path)
    has_header = not all(_is_number(c) for c in table.columns)
    if not has_header:
        table = pd.read_csv(path, header=None)
    col = "stage_z_um" if "stage_z_um" in table.columns else table.columns[0]
    z = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
    if len(z) != n:
        raise ValueError(
            f"{path} has {len(z)} values; the movie has {n} frames (one per frame)"
        )
    if not np.isfinite(z).all():
        bad = int(np.flatnonzero(~np.isfinite(z))[0])
        raise ValueError(f"{path}: row {bad} of {col} is not a number")
    return z


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _localize_movie(args: argparse.Namespace, path: Path, localizer: Any) -> int:
    from axialtrack.devices.replay import open_movie
    from axialtrack.geometry import SplitterGeometry, split_frame
    from axialtrack.store import FrameMeta, RunWriter, StoreError

    if args.out is None:
        console.print(
            f"[red]{path} is not a run store.[/red] To process a TIFF/zarr movie "
            "give --out NEW.zarr (the layout, mirror, plane offset and pixel size "
            "are the model bundle's unless given)."
        )
        return 2
    from axialtrack.model import BundleError, load_bundle

    # the rig the bundle records, for what the options leave out (a bundle
    # that does not load is refused where the analyzer is built)
    rig: dict[str, Any] = {}
    with contextlib.suppress(BundleError, FileNotFoundError):
        b = load_bundle(args.model)
        rig = {
            "pixel_size": b.pixel_size_um,
            "layout": b.layout,
            "plane_offset": b.plane_offset_um,
            "mirror": b.mirror,
        }
    if args.pixel_size is None:
        args.pixel_size = rig.get("pixel_size")
    if args.pixel_size is None:
        console.print("[red]A movie needs --pixel-size (um per pixel).[/red]")
        return 2
    try:
        geo = SplitterGeometry(
            layout=args.layout or rig.get("layout") or "side-by-side",
            plane_offset_um=(
                args.plane_offset
                if args.plane_offset is not None
                else rig.get("plane_offset", 0.5)
            ),
            mirror=args.mirror or rig.get("mirror") or "none",
        )
        movie = open_movie(path)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2

    def planes_of(i: int) -> np.ndarray:
        f = movie.frame(i)
        return f if movie.layout == "planes" else split_frame(f, geo)

    stage_z_given: np.ndarray | None = None
    if args.stage_z is not None:
        try:
            stage_z_given = _stage_z_of(args.stage_z, len(movie))
        except ValueError as exc:
            return fail(f"--stage-z: {exc}")
    first = planes_of(0)
    plane_shape = (int(first.shape[1]), int(first.shape[2]))
    dt = args.frame_interval
    out = Path(args.out).expanduser()
    if _refuse_existing(out, args.overwrite):
        return 2
    # the model before the store: a model that does not load changes nothing
    analyzer = _load_analyzer(
        args.model,
        plane_shape=plane_shape,
        pixel_size_um=args.pixel_size,
        geometry=geo,
        frame_interval_s=dt,
        engine=args.engine,
        axial_scale=args.axial_scale,
        localizer=localizer,
    )
    if analyzer is None:
        return 2
    replacing = _Replacement(out) if args.overwrite else None
    try:
        writer = RunWriter(
            out,
            kind="live",
            plane_shape=plane_shape,
            pixel_size_um=args.pixel_size,
            rig={"source": str(path)},
            splitter=geo,
            model={"bundle": str(args.model)},
            overwrite=args.overwrite,
            frame_interval_s=dt,
        )
        writer.set_attrs(camera=localizer.camera.model_dump())
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        if replacing is not None:
            replacing.settle()
        return 2
    n = len(movie)
    idx_all = np.arange(n)
    stage_z = np.asarray(movie.stage_z_um, float)
    if stage_z_given is not None:
        stage_z = stage_z_given
    elif not np.isfinite(stage_z).all():
        console.print(
            f"[yellow]{path} records no stage Z for "
            f"{int((~np.isfinite(stage_z)).sum())} of {n} frames: their z_um is NaN "
            "(dz_um is still measured). Give --stage-z UM or --stage-z "
            "FILE.csv.[/yellow]",
            soft_wrap=True,
        )
    t = movie.t_s.copy()
    if not np.isfinite(t).all():
        t = idx_all * (dt or 1.0)
    metas = [
        FrameMeta(
            t_s=float(t[i]),
            stage_z_um=float(stage_z[i]),
            stage_x_um=float(movie.stage_x_um[i]),
            stage_y_um=float(movie.stage_y_um[i]),
            image_number=i,
        )
        for i in range(n)
    ]
    rows = 0
    try:
        with writer:
            batch = max(1, args.batch)
            for s in range(0, n, batch):
                idx = idx_all[s : s + batch]
                planes = np.stack([planes_of(int(i)) for i in idx]).astype(np.uint16)
                for i, p in zip(idx, planes, strict=True):
                    writer.append_frame(p, metas[int(i)])
                table = analyzer.analyze(planes, idx, metas[s : s + batch])
                if table is not None and len(table):
                    writer.append_localizations(table)
                    rows += len(table)
                # marked only once analyzed: a run that stops part way keeps
                # the rest unanalyzed, for `axialtrack localize` to fill in
                writer.set_analyzed(idx, True)
            tracks = analyzer.finish()
            if tracks is not None and len(tracks):
                writer.write_tracks(tracks)
    finally:
        if replacing is not None:
            replacing.settle()
    console.print(
        f"Processed {n} frames of {path} into [green]{args.out}[/green]: "
        f"{rows} localizations."
    )
    return 0

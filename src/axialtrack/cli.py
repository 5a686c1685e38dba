"""The ``axialtrack`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole story on the simulated rig (or, with --zscan, a Z scan)."""
    if args.zscan:
        return _cmd_zscan(args)
    from axialtrack.demo import DemoConfig, DemoError, run_demo
    from axialtrack.store import StoreExistsError

    cfg = DemoConfig()
    if args.quick:
        # 300 frames (3 s at the nominal 100 fps), however fast the machine is
        cfg = DemoConfig(
            plane_size=128,
            fields=2,
            steps=1000,
            max_train_s=40,
            duration_s=3,
            frames=300,
            trackpy_frames=150,
        )
    if args.duration is not None:  # > 0: checked by its argparse type
        cfg = cfg.model_copy(update={"duration_s": args.duration, "frames": None})
    if args.engine is not None:
        cfg = cfg.model_copy(update={"engine": args.engine})
    t0 = time.perf_counter()
    try:
        res = run_demo(
            args.out,
            cfg,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            console=console,
        )
    except (StoreExistsError, DemoError) as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        return 2
    figures = ", ".join(p.name for p in res.figures)
    console.print(
        f"Demo done in {time.perf_counter() - t0:.0f} s; outputs in "
        f"[green]{res.out}[/green]: demo.json, summary.txt and the figures {figures}",
        highlight=False,
    )
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack recover``."""
    from axialtrack.store.info import run_recover

    return run_recover(args.run, action=args.action, console=console)


def _cmd_zscan(args: argparse.Namespace) -> int:
    """Snap dual-plane frames on the simulated rig through a short Z scan."""
    import numpy as np
    import tifffile

    from axialtrack.geometry import split_frame
    from axialtrack.rig import load_rig, splitter_geometry

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    core = load_rig(args.config)
    geo = splitter_geometry(core)
    load_s = time.perf_counter() - t0
    focus = core.getFocusDevice()
    z0 = core.getPosition(focus)
    console.print(
        f"[bold]Rig[/bold] {args.config or 'simulated dual-plane rig (default)'}: "
        f"camera [cyan]{core.getCameraDevice()}[/cyan], focus [cyan]{focus}[/cyan], "
        f"pixel size {core.getPixelSizeUm():.4f} um, loaded in {load_s:.2f} s"
    )
    console.print(
        f"[bold]Splitter[/bold] {geo.layout}, plane offset {geo.plane_offset_um} um, "
        f"plane-1 mirror {geo.mirror}, transmission {geo.transmission}"
    )

    table = Table(title="Dual-plane frames through focus")
    for col in (
        "stage Z (um)",
        "sensor frame",
        "plane 0 max",
        "plane 1 max",
        "plane-1/plane-0 peak",
        "snap (ms)",
    ):
        table.add_column(col, justify="right")
    offsets = [float(v) for v in args.dz]
    stack = []
    for dz in offsets:
        core.setPosition(focus, z0 + dz)
        core.waitForDevice(focus)
        t = time.perf_counter()
        core.snapImage()
        raw = core.getImage()
        snap_ms = 1e3 * (time.perf_counter() - t)
        planes = split_frame(raw, geo)
        stack.append(planes)
        bg = np.median(planes, axis=(1, 2))
        peak = planes.reshape(2, -1).max(axis=1).astype(float) - bg
        table.add_row(
            f"{z0 + dz:.3f}",
            "x".join(map(str, raw.shape)),
            f"{planes[0].max()}",
            f"{planes[1].max()}",
            f"{peak[1] / max(peak[0], 1.0):.2f}",
            f"{snap_ms:.0f}",
        )
    core.setPosition(focus, z0)
    console.print(table)

    truth_note = ""
    cam = _sim_camera(core)
    if cam is not None:
        truth = cam.renderer().truth(cam.now_s())
        if len(truth):
            zf = np.median(truth["z_focus_um"])
            truth_note = (
                f" The simulation's {len(truth)} beads are in focus in plane 0 at "
                f"stage Z {zf:.3f} um (median) and in plane 1 at "
                f"{zf - geo.plane_offset_um:.3f} um."
            )

    data = np.stack(stack)  # (Z, 2, H, W)
    path = out / "dualplane_zscan.ome.tif"
    tifffile.imwrite(
        path,
        data,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": core.getPixelSizeUm(),
            "PhysicalSizeY": core.getPixelSizeUm(),
        },
        ome=True,
    )
    console.print(
        f"Wrote {data.shape[0]} dual-plane frames {data.shape[1:]} (Z, plane, Y, X) "
        f"to [green]{path}[/green]. Plane 1 is focused {geo.plane_offset_um} um "
        "deeper than plane 0, so a bead deeper than the plane-0 focus is sharper "
        "in plane 1: the plane-1/plane-0 peak ratio encodes Z." + truth_note
    )
    return 0


def _sim_camera(core: object) -> Any:
    """The simulated camera of ``core``, or None on a real rig."""
    from axialtrack.devices import SimCamera, get_device

    try:
        return get_device(core, core.getCameraDevice(), SimCamera)  # type: ignore[attr-defined]
    except Exception:
        return None


def _cmd_info(args: argparse.Namespace) -> int:
    """Print the summary of a run store."""
    from axialtrack.store import run_info

    status = 0
    for path in args.runs:
        status = max(status, run_info(path, console=console))
    return status


def _cmd_gui(args: argparse.Namespace) -> int:
    """Open the Qt control panel (or run its self-test)."""
    from axialtrack.gui import main as gui_main

    return gui_main(
        args.config, self_test=args.self_test, screenshot=args.screenshot, out=args.out
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for the ``axialtrack`` command."""
    from axialtrack import __version__
    from axialtrack._cli import OneLineParser

    parser = OneLineParser(
        prog="axialtrack",
        description="Real-time 3D tracking with a dual-focal-plane microscope.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_demo(sub)
    _add_info(sub)
    _add_recover(sub)
    _add_gui(sub)

    from axialtrack.acquire.cli_calibrate import add_parser as add_calibrate

    add_calibrate(sub)

    from axialtrack.acquire.cli_camera import add_parser as add_camera

    add_camera(sub)

    from axialtrack.model.cli import add_parsers as add_model

    add_model(sub)

    from axialtrack.engine.cli import add_parser as add_compile

    add_compile(sub)

    from axialtrack.pipeline.cli import add_parsers as add_pipeline

    add_pipeline(sub)

    from axialtrack.store.cli_export import add_parser as add_export

    add_export(sub)
    return parser


def _add_demo(sub: Any) -> None:
    from axialtrack._cli import positive_float
    from axialtrack.engine import ENGINE_CHOICES

    demo = sub.add_parser(
        "demo",
        help="calibrate, train, track live and score on the simulated rig",
        description="The whole story on the simulated rig, in a few minutes on a "
        "CPU: a bead calibration, a model trained on it, a live 3D tracking run of "
        "diffusing particles written to a run store, and the accuracy against the "
        "simulation's truth with the speed figures. With --zscan: snap dual-plane "
        "frames through focus and save them as OME-TIFF.",
    )
    demo.add_argument(
        "--config", default=None, help="hardware config (default: simulated rig)"
    )
    demo.add_argument("--out", default="axialtrack-demo", help="output folder")
    demo.add_argument("--overwrite", action="store_true", help="replace outputs")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="smaller and shorter: 128 px planes, 40 s of training, 300 live frames",
    )
    demo.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="live run (s); replaces --quick's 300 frames",
    )
    demo.add_argument(
        "--engine",
        default=None,
        choices=ENGINE_CHOICES,
        help="inference backend (auto)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "--zscan", action="store_true", help="only snap a Z scan to OME-TIFF"
    )
    demo.add_argument(
        "--dz",
        nargs="+",
        type=float,
        default=["-0.6", "-0.3", "0", "0.3", "0.6", "0.9"],
        help="--zscan: stage Z offsets (um) from the current focus to snap at",
    )
    demo.set_defaults(func=_cmd_demo)


def _add_info(sub: Any) -> None:
    info = sub.add_parser(
        "info",
        help="summarize a run store",
        description="Summarize run stores: kind, frames, size, duration, "
        "localizations, tracks, state (and what was recovered), provenance.",
    )
    info.add_argument("runs", nargs="+", metavar="RUN.zarr")
    info.set_defaults(func=_cmd_info)


def _add_recover(sub: Any) -> None:
    rec = sub.add_parser(
        "recover",
        help="close a run store whose writer was killed; tidy leftovers",
        description="Recover a run store after a crash: trim it to what was "
        "committed and mark it closed; put back a previous store hidden by an "
        "interrupted --overwrite (.NAME.replaced-PID) when the new one holds no "
        "frame, or as --restore/--discard say; tidy what an interrupted "
        "`axialtrack localize` left. Exit status 1 when a choice is left to you.",
    )
    rec.add_argument("run", metavar="RUN.zarr")
    how = rec.add_mutually_exclusive_group()
    how.add_argument(
        "--restore",
        action="store_const",
        const="restore",
        dest="action",
        help="put the previous store back in place of the newer run",
    )
    how.add_argument(
        "--discard",
        action="store_const",
        const="discard",
        dest="action",
        help="delete the previous store hidden by --overwrite",
    )
    rec.set_defaults(func=_cmd_recover, action="auto")


def _add_gui(sub: Any) -> None:
    gui = sub.add_parser(
        "gui",
        help="the Qt control panel: rig, calibration, model, live tracking, runs",
        description="Open the control panel (needs the gui extra). --self-test: "
        "drive it offscreen through calibrate, train, live and stop on the "
        "simulated rig; exit 0 only if every step produced its result.",
    )
    gui.add_argument("--config", default=None, help="hardware config (sim rig)")
    gui.add_argument("--self-test", action="store_true", help="run the self-test")
    gui.add_argument("--screenshot", default=None, help="self-test: screenshots here")
    gui.add_argument("--out", default=None, help="self-test: outputs here (temp)")
    gui.set_defaults(func=_cmd_gui)


def _options(parser: argparse.ArgumentParser, command: str | None) -> list[str]:
    """The option strings of subcommand ``command`` (``--z-step``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command:
            sub = action.choices.get(command)
            if sub is not None:
                return list(sub._option_string_actions)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``axialtrack`` command.

    Returns the exit code: 0 done, 2 refused (a bad argument, file or model:
    one line on stderr, nothing written), 1 failed while running, 130
    interrupted.
    """
    from pydantic import ValidationError

    from axialtrack._cli import fail, oserror_message, parse_args, validation_message
    from axialtrack.store import StoreError

    parser = build_parser()
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow]")
        return 130
    except ValidationError as exc:
        # a value no option validator caught: one line naming the option
        return fail(validation_message(exc, _options(parser, args.command)))
    except StoreError as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return fail(oserror_message(exc))
    except Exception as exc:
        from axialtrack.rig import RigConfigError

        if isinstance(exc, RigConfigError):
            return fail(str(exc))
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

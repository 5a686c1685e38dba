"""The ``axialtrack calibrate`` subcommand: acquire (or import) and analyze."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from axialtrack._cli import (
    PIXEL_SIZE_RANGE_UM,
    PIXEL_SIZE_UM,
    PLANE_OFFSET_RANGE_UM,
    PLANE_OFFSET_UM,
    add_camera_options,
    camera_origin_text,
    camera_sources,
    fail,
    positive_float,
    positive_int,
    unwritable,
)
from axialtrack.errors import AxialtrackError

__all__ = ["add_parser", "cmd_calibrate"]

console = Console()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``calibrate`` subcommand on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "calibrate",
        help="acquire a bead calibration run (or import stacks) and analyze it",
        description="Acquire bead Z-stacks over several fields of view into a run "
        "store (or import recorded stacks with --from), then analyze them: plane "
        "registration, bead QC, reference Z and training examples.",
    )
    _add_acquisition_options(p)
    _add_optics_options(p)
    _add_import_options(p)
    add_camera_options(
        p,
        "the camera of --config (the simulated camera's noise model; another "
        "camera's bit depth), the camera an imported run store records",
    )
    p.set_defaults(func=cmd_calibrate)
    return p


def _add_acquisition_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="hardware config (default: sim rig)")
    p.add_argument(
        "--out",
        default=None,
        help="output run store (<name>.zarr); with --from, where the QC goes "
        "(default: into the imported run store)",
    )
    p.add_argument(
        "--z-range",
        type=positive_float,
        default=1.5,
        help="scan +-Z range around focus (um)",
    )
    p.add_argument(
        "--z-step",
        type=positive_float,
        default=None,
        help="Z step (um; default: 0.05 to acquire; with --from, the file's)",
    )
    p.add_argument(
        "--fields",
        type=positive_int,
        default=None,
        help="number of fields of view (acquisition: default 4); with --from, the "
        "fields one file holds one after another along its frames",
    )
    p.add_argument(
        "--spacing",
        type=positive_float,
        default=None,
        help="distance between fields (um; default: 1.2 fields of view, from the "
        "camera's size and pixel size)",
    )
    p.add_argument(
        "--exposure",
        type=positive_float,
        default=None,
        help="exposure (ms; default: the camera's exposure as the config leaves it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument(
        "--report", action="store_true", help="also write the calibration report"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-psf-fit",
        action="store_true",
        help="skip the PSF fit (the pupil fitted to the accepted beads by maximum "
        "likelihood, stored in the run's psf/ group and carried into bundles)",
    )
    p.add_argument(
        "--psf-model",
        choices=("auto", "pupil", "spline"),
        default="auto",
        help="PSF model of the fit: the pupil, a cubic-spline PSF measured from "
        "the beads, or auto: the one with the lower held-out bead likelihood "
        "(every 4th bead held out; a tie keeps the pupil) (default: %(default)s)",
    )


def _add_optics_options(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group(
        "optics of the PSF fit (defaults: NA 1.45 oil objective, n 1.518, 670 nm, "
        "aqueous sample n 1.33)"
    )
    o.add_argument("--na", type=positive_float, default=None, help="objective NA")
    o.add_argument(
        "--wavelength", type=positive_float, default=None, help="emission (um)"
    )
    o.add_argument(
        "--n-immersion", type=positive_float, default=None, help="immersion index"
    )
    o.add_argument(
        "--n-sample", type=positive_float, default=None, help="sample medium index"
    )


def _add_import_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("import (--from)")
    g.add_argument(
        "--from",
        dest="source",
        action="append",
        default=None,
        help="calibrate from recorded stacks instead of acquiring: a run store, "
        "(OME-)TIFF, Micro-Manager MMStack, OME-Zarr, .npy or zarr array; repeat "
        "it or give a glob ('field*.tif') for one file per field",
    )
    g.add_argument(
        "--layout",
        default=None,
        help="side-by-side, top-bottom, two-files, single-plane-pairs, dual-plane",
    )
    g.add_argument(
        "--second",
        action="append",
        default=None,
        help="plane-1 file (two-files); one per --from",
    )
    g.add_argument(
        "--plane-offset",
        type=PLANE_OFFSET_UM,
        default=None,
        help="delta (um): plane 1 is in focus this far above plane 0 "
        f"({PLANE_OFFSET_RANGE_UM[0]:g} to {PLANE_OFFSET_RANGE_UM[1]:g})",
    )
    g.add_argument(
        "--pixel-size",
        type=PIXEL_SIZE_UM,
        default=None,
        help="pixel size in the sample (um; "
        f"{PIXEL_SIZE_RANGE_UM[0]:g} to {PIXEL_SIZE_RANGE_UM[1]:g})",
    )
    g.add_argument("--z-start", type=float, default=0.0, help="Z of first frame (um)")
    g.add_argument(
        "--mirror",
        default="auto",
        help="plane-1 flip: auto (found from the beads; default), none, "
        "horizontal (x), vertical (y), both (xy); a flip given that fits the beads "
        "clearly worse than another is refused",
    )
    g.add_argument(
        "--z-span",
        type=positive_float,
        default=None,
        help="Z range the imported stack covers, first to last frame (um): checked "
        "against frames x step; needed beyond 5 um",
    )


class _Stop(AxialtrackError):
    """Ends ``calibrate`` with an exit code (the message is printed already);
    raised by the command's steps and caught by :func:`cmd_calibrate` only."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack calibrate``: the run store (acquired, or the
    stacks imported), the camera, the analysis, the PSF fit, and what is
    written; each step ends the command with its exit code when it must."""
    try:
        out = _checked_out(args)
        cam_sources = _camera_sources(args)
        optics = _optics(args)
        if args.source is not None:
            stack, qc_target = _import_stack(args, out, cam_sources)
            camera, cam_origin = _imported_camera(stack, cam_sources)
        else:
            assert out is not None  # _checked_out requires it
            stack, qc_target, camera, cam_origin = _acquire_stack(
                args, out, cam_sources
            )
        _with_camera(stack, camera, cam_origin)
        result = _analyze(stack)
        psf_fit = _fit_psf(args, result, stack, optics)
        if args.source is not None and qc_target == out:
            _write_import(args, result, stack, qc_target)
    except _Stop as stop:
        return stop.code
    _write_calibration(args, result, stack, qc_target, camera, cam_origin, psf_fit)
    return 0


def _checked_out(args: argparse.Namespace) -> Path | None:
    """``--out``: required to acquire; never an existing path without
    ``--overwrite``, never an unwritable one."""
    if args.out is None and args.source is None:
        console.print("[red]--out is required[/red] (the run store to acquire into)")
        raise _Stop(2)
    out = Path(args.out).expanduser() if args.out is not None else None
    if out is not None and out.exists() and not args.overwrite:
        console.print(
            f"[red]{out} already exists.[/red] Pass --overwrite to replace it, or "
            "choose another --out."
        )
        raise _Stop(2)
    if out is not None and (why := unwritable(out)):
        raise _Stop(
            fail(f"--out: {why}.", "Choose another --out. Nothing was written.")
        )
    return out


def _camera_sources(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from axialtrack.camera import CameraError

    try:
        return camera_sources(args)
    except CameraError as exc:
        raise _Stop(fail(str(exc))) from None


def _optics(args: argparse.Namespace) -> Any:
    """The objective and media of the PSF fit from ``--na/--wavelength/...``."""
    from pydantic import ValidationError

    from axialtrack.optics import Optics

    given = {
        k: v
        for k, v in (
            ("na", args.na),
            ("wavelength_um", args.wavelength),
            ("n_immersion", args.n_immersion),
            ("n_sample", args.n_sample),
        )
        if v is not None
    }
    try:
        return Optics(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise _Stop(
            fail(
                f"--na/--wavelength/--n-immersion/--n-sample: {err['msg']}.",
                "Give the objective's NA below the immersion index, and a "
                "wavelength in um (e.g. 0.67).",
            )
        ) from None


def _import_stack(
    args: argparse.Namespace, out: Path | None, cam_sources: list[tuple[str, Any]]
) -> tuple[Any, Path]:
    """``--from``: the stacks read, and where the calibration goes (``--out``,
    else the one run store imported); its recorded camera joins the sources."""
    from axialtrack.calibrate.io import StackImportError, load_stacks
    from axialtrack.camera import camera_of_attrs

    try:
        stack = load_stacks(
            args.source,
            layout=args.layout,
            z_step_um=args.z_step,
            plane_offset_um=args.plane_offset,
            pixel_size_um=args.pixel_size,
            z_start_um=args.z_start,
            z_range_um=args.z_span,
            second_paths=args.second,
            mirror=args.mirror,
            fields=args.fields,
        )
    except (StackImportError, FileNotFoundError) as exc:
        console.print(f"[red]Cannot import the stack:[/red] {exc}", soft_wrap=True)
        raise _Stop(2) from None
    if out is not None:
        qc_target = out
    elif stack.meta.get("layout") == "run-store" and len(args.source) == 1:
        qc_target = Path(args.source[0]).expanduser()
    else:
        console.print(
            "[red]--out is required with --from an image file or several "
            "sources[/red] (where the calibration is written)",
            soft_wrap=True,
        )
        raise _Stop(2)
    if stack.meta.get("layout") == "run-store":
        from axialtrack.store.reader import read_attrs

        recorded = camera_of_attrs(read_attrs(Path(args.source[0]).expanduser()))
        if recorded:
            cam_sources.append((f"the run store {args.source[0]}", recorded))
    console.print(
        f"Imported {stack.n_fields} field(s) x {stack.n_z} Z steps "
        f"({stack.plane_shape[0]} x {stack.plane_shape[1]} px per plane, step "
        f"{stack.z_step_um:.4f} um) from [green]{stack.source}[/green]",
        soft_wrap=True,
    )
    return stack, qc_target


def _imported_camera(
    stack: Any, cam_sources: list[tuple[str, Any]]
) -> tuple[Any, dict[str, str]]:
    from axialtrack.camera import CameraError, resolve_camera

    if np.asarray(stack.frames[:1]).dtype == np.uint8:
        # 8-bit frames say the digitizer depth (16-bit ones do not)
        cam_sources.append(("the 8-bit frames", {"bit_depth": 8}))
    try:
        return resolve_camera(cam_sources)
    except CameraError as exc:
        raise _Stop(fail(str(exc))) from None


def _acquire_stack(
    args: argparse.Namespace, out: Path, cam_sources: list[tuple[str, Any]]
) -> tuple[Any, Path, Any, dict[str, str]]:
    """Acquire the calibration run on ``--config``'s rig into ``out``; the
    stack read back, the store, and the camera."""
    from axialtrack.acquire.calibration import calibration_sequence, run_calibration
    from axialtrack.calibrate.io import StackImportError, load_stack
    from axialtrack.camera import CameraError, camera_from_core, resolve_camera
    from axialtrack.rig import RigConfigError, load_rig
    from axialtrack.store import open_run

    try:
        core = load_rig(args.config)
    except RigConfigError as exc:
        raise _Stop(fail(str(exc))) from None
    rig_name = args.config or "the simulated rig"
    cam_sources.append((f"the camera of {rig_name}", camera_from_core(core)))
    try:
        camera, cam_origin = resolve_camera(cam_sources)
    except CameraError as exc:
        core.unloadAllDevices()
        raise _Stop(fail(str(exc))) from None
    try:
        # a plan the options do not allow raises a ValidationError, which
        # the command reports in one line naming the option
        seq = calibration_sequence(
            args.z_range,
            args.z_step if args.z_step is not None else 0.05,
            fields=args.fields if args.fields is not None else 4,
            spacing_um=args.spacing,
            exposure_ms=args.exposure,
            core=core,
        )
        store = run_calibration(
            core,
            out,
            seq,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            camera=camera.model_dump(),
        )
    finally:
        core.unloadAllDevices()
    acq = open_run(store).attrs.get("acquisition", {})
    fps = acq.get("frames_per_s")
    console.print(
        f"Acquired {acq.get('n_frames')}/{acq.get('n_planned')} frames over "
        f"{acq.get('n_fields')} field(s) into [green]{store}[/green] "
        f"({acq.get('status')}; "
        f"{acq.get('hardware_triggered_frames')} hardware-triggered"
        + (f", {fps:.1f} frames/s)" if fps else ")")
    )
    if acq.get("status") == "cancelled":
        console.print("[yellow]Cancelled: the frames acquired are kept.[/yellow]")
        raise _Stop(130)
    try:
        stack = load_stack(store)
    except StackImportError as exc:
        console.print(f"[red]Cannot analyze the run:[/red] {exc}")
        raise _Stop(1) from None
    return stack, store, camera, cam_origin


def _with_camera(stack: Any, camera: Any, cam_origin: dict[str, str]) -> None:
    """The analysis reads counts as photons with the camera: the beads' signal
    above the offset, and the pixel noise of the reference Z."""
    stack.meta.update(
        offset_adu=camera.offset_adu,
        gain_e_per_adu=camera.e_per_adu,
        read_noise_e=camera.read_noise_e,
    )
    if cam_origin["bit_depth"] != "default":
        # else saturation stays at the frames' own full scale (255 for 8 bits)
        stack.meta["bit_depth"] = camera.bit_depth


def _analyze(stack: Any) -> Any:
    from axialtrack.calibrate import CalibrationError, RegistrationError, analyze

    try:
        return analyze(stack)
    except RegistrationError as exc:
        console.print(f"[red]Cannot register the planes:[/red] {exc}", soft_wrap=True)
        raise _Stop(2) from None
    except CalibrationError as exc:
        console.print(
            f"[red]Calibration analysis failed:[/red] {exc}\n"
            f"The recorded frames are kept in {stack.source or 'the input'}; nothing "
            "was written as a calibration."
        )
        raise _Stop(1) from None


def _fit_psf(args: argparse.Namespace, result: Any, stack: Any, optics: Any) -> Any:
    """The PSF fitted to the beads, pupil or spline (None: ``--no-psf-fit``)."""
    if args.no_psf_fit:
        return None
    from axialtrack.calibrate.psf import choose_psf
    from axialtrack.optics.fit import PSFFitError

    try:
        return choose_psf(
            result,
            result.stack or stack,
            model=args.psf_model,
            optics=optics,
            progress=None if args.no_progress else console.print,
        )
    except PSFFitError as exc:
        raise _Stop(
            fail(f"PSF fit refused: {exc}", "Nothing was written as a calibration.")
        ) from None


def _write_import(
    args: argparse.Namespace, result: Any, stack: Any, qc_target: Path
) -> None:
    """An imported stack becomes a calibration run store of its own."""
    from axialtrack.calibrate.io import StackImportError, write_import_store
    from axialtrack.store import StoreError

    analyzed = result.stack or stack
    try:
        write_import_store(
            analyzed,
            qc_target,
            overwrite=args.overwrite,
            extra={"mirror_requested": str(stack.meta.get("mirror", "auto"))},
        )
    except StackImportError as exc:
        if qc_target.exists():
            # --overwrite of an existing store: its old frames must not get
            # this stack's quality control
            raise _Stop(
                fail(
                    f"{exc}: the frames cannot be stored, and {qc_target} holds "
                    "another run, left as it was.",
                    "Give a new --out (it then holds the quality control and "
                    "training examples only).",
                )
            ) from None
        console.print(
            f"[yellow]{exc}[/yellow]: the frames are not stored in {qc_target}, "
            "only the quality control and training examples",
            soft_wrap=True,
        )
    except StoreError as exc:
        console.print(f"[red]Cannot write {qc_target}:[/red] {exc}", soft_wrap=True)
        raise _Stop(2) from None


def _write_calibration(
    args: argparse.Namespace,
    result: Any,
    stack: Any,
    qc_target: Path,
    camera: Any,
    cam_origin: dict[str, str],
    psf_fit: Any,
) -> None:
    """The QC, the rig record, the PSF (and the report) into ``qc_target``."""
    from axialtrack.calibrate import write_qc, write_report, write_rig

    if psf_fit is not None:
        from axialtrack.calibrate.psf import psf_summary

        result.qc["psf_fit"] = psf_summary(psf_fit)
    write_qc(result, qc_target)
    write_rig(
        result,
        stack,
        qc_target,
        camera=camera.model_dump(),
        camera_source=cam_origin,
    )
    if psf_fit is not None:
        from axialtrack.calibrate.psf import write_psf

        write_psf(psf_fit, qc_target)
    console.print(f"Quality control written to [green]{qc_target}[/green]")
    console.print(
        f"Camera: offset {camera.offset_adu:g} ADU, gain {camera.e_per_adu:g} "
        f"e-/ADU, read noise {camera.read_noise_e:g} e-, QE {camera.qe:g}, "
        f"{camera.bit_depth} bits ({camera_origin_text(cam_origin)})",
        soft_wrap=True,
        markup=False,
    )
    if args.report:
        report_dir = qc_target.parent / f"{qc_target.stem}-report"
        write_report(result, result.stack or stack, report_dir, psf_fit=psf_fit)
        console.print(f"Report written to [green]{report_dir}[/green]")
    _print_summary(result, psf_fit)


def _print_summary(result: Any, psf_fit: Any = None) -> None:
    """Print the quality-control summary a microscopist checks after a run."""
    from rich.table import Table

    qc = result.qc
    table = Table(title="Calibration quality control")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row(
        "fields x Z steps", f"{qc['n_fields']} x {qc['n_z']} ({qc['z_step_um']:.4f} um)"
    )
    table.add_row(
        "beads accepted / detected", f"{qc['n_accepted']} / {qc['n_detected']}"
    )
    for field in qc["per_field"]:
        table.add_row(
            f"  field {field['field']}", f"{field['accepted']} / {field['detected']}"
        )
    for reason, n in qc["rejected"].items():
        if n:
            table.add_row(f"rejected: {reason}", str(n))
    reg = qc["registration"]
    table.add_row(
        "plane registration residual",
        f"{reg['residual_nm']:.1f} nm ({reg['n_matched']} beads, "
        f"rotation {reg['rotation_deg']:.3f} deg)",
    )
    refz = qc["ref_z"]
    table.add_row(
        "reference Z method", f"{refz['method']} (asked: {refz['requested']})"
    )
    ex = qc["examples"]
    splits = ", ".join(f"{k} {v}" for k, v in ex["split_beads"].items())
    table.add_row("training examples", f"{ex['n']} (beads: {splits})")
    truth = qc.get("truth")
    if truth:
        table.add_row(
            "reference Z vs simulation truth",
            f"RMS {truth['rms_mean_nm']:.1f} nm (mean), "
            f"{truth['rms_msd_nm']:.1f} nm (msd)",
        )
    table.add_row("analysis time", f"{qc['timing_s']['total']:.2f} s")
    if psf_fit is not None:
        z = psf_fit.zernike
        big = sorted(z, key=lambda j: -abs(z[j]))[:3]
        sel = psf_fit.selection.get("heldout_nll_per_frame")
        if sel:
            table.add_row(
                "PSF model",
                f"{psf_fit.selection['model']} (held-out NLL per frame: "
                + ", ".join(f"{k} {v:.1f}" for k, v in sel.items())
                + ")",
            )
        table.add_row(
            f"PSF fit ({'spline' if not z else 'pupil'})",
            f"{int(psf_fit.beads['used'].sum())} beads, "
            f"{psf_fit.time_s:.0f} s, deviance/px "
            f"{float(psf_fit.beads['reduced_deviance'].median()):.2f}"
            + (", " + ", ".join(f"Z{j} {z[j]:+.3f}" for j in big) if z else "")
            + (" waves" if z else ""),
        )
        n_out = int(psf_fit.beads["outlier"].sum())
        if n_out:
            table.add_row(
                "PSF fit outlier beads (doublets, dirt)",
                ", ".join(str(int(b)) for b in psf_fit.outliers),
            )
    console.print(table)

"""The ``axialtrack camera`` subcommand: measure the camera's offset, gain and
read noise (photon transfer curve) and write a camera file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from axialtrack._cli import fail, positive_float, positive_int, unwritable

__all__ = ["DEFAULT_EXPOSURES_MS", "acquire_ptc_frames", "add_parser", "cmd_camera"]

console = Console()

#: Exposures of the flats acquired with ``--config`` (ms).
DEFAULT_EXPOSURES_MS = (10.0, 30.0, 100.0, 300.0)


def _exposures(text: str) -> list[float]:
    try:
        vals = [positive_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if len(vals) < 2:
        raise argparse.ArgumentTypeError(
            f"give 2 or more exposures, comma-separated (ms); got {text!r}"
        )
    return vals


def _bits(text: str) -> int:
    v = positive_int(text)
    if not 8 <= v <= 32:
        raise argparse.ArgumentTypeError(f"must be from 8 to 32 bits; got {text}")
    return v


def _qe(text: str) -> float:
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(
            f"must be > 0 and <= 1 (a fraction, not a percentage); got {text}"
        )
    return v


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``camera`` subcommand on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "camera",
        help="measure the camera's offset, gain and read noise (photon transfer "
        "curve) and write a camera file",
        description="Measure the camera's offset (ADU), conversion gain (e-/ADU) "
        "and read noise (e-) from dark frames and flat frames at several light "
        "levels (photon transfer curve: the variance of frame-pair differences "
        "against the mean, per tile, robust line fit), and write the camera file "
        "that `calibrate`, `localize` and `live` take with --camera FILE. Frames "
        "from files (--dark, --flat: TIFF, .npy or zarr; 2 or more frames each), "
        "or acquired with --config (dark with the shutter closed, flats at "
        "several --exposures).",
    )
    p.add_argument(
        "--out", required=True, help="camera file to write (JSON, e.g. camera.json)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument(
        "--dark",
        action="append",
        default=None,
        metavar="FILE",
        help="dark frames (no light), 2 or more; repeat or glob for more files",
    )
    p.add_argument(
        "--flat",
        action="append",
        default=None,
        metavar="FILE",
        help="flat frames of one light level (2 or more frames); one --flat per "
        "level, 2 or more levels (a glob gives one level per file)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="acquire the frames from this hardware config instead ('sim' for "
        "the simulated rig)",
    )
    p.add_argument(
        "--exposures",
        type=_exposures,
        default=None,
        metavar="MS,MS,...",
        help="with --config: exposures of the flats (ms; default "
        + ",".join(f"{v:g}" for v in DEFAULT_EXPOSURES_MS)
        + ")",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=4,
        help="with --config: frames per level (even, >= 2; 4)",
    )
    p.add_argument(
        "--tile", type=positive_int, default=32, help="tile side (px) of the PTC (32)"
    )
    p.add_argument(
        "--qe",
        type=_qe,
        default=None,
        help="quantum efficiency to record in the file (not measured here; from "
        "the camera's data sheet at the emission wavelength)",
    )
    p.add_argument(
        "--bit-depth",
        type=_bits,
        default=None,
        help="digitizer bit depth to record (default: the core's with --config; "
        "else not recorded)",
    )
    p.add_argument("--plot", default=None, metavar="FILE.png", help="PTC plot")
    p.set_defaults(func=cmd_camera)
    return p


def _read_levels(
    paths: Sequence[str], option: str, *, one_level: bool
) -> list[np.ndarray] | str:
    """The frames of each file (one level per file; with ``one_level`` the
    files joined as one level), or the refusal text."""
    from axialtrack.calibrate._readers import _read_array
    from axialtrack.calibrate.io import StackImportError, expand_sources

    try:
        files = expand_sources(list(paths))
    except (StackImportError, FileNotFoundError) as exc:
        return f"{option}: {' '.join(str(exc).split())}"
    out = []
    for f in files:
        try:
            arr, _ = _read_array(Path(f))
        except (StackImportError, FileNotFoundError, OSError) as exc:
            return f"{option} {f}: {' '.join(str(exc).split())}"
        a = np.asarray(arr)
        if a.ndim < 2 or not np.issubdtype(a.dtype, np.number):
            return f"{option} {f}: an array of shape {a.shape}, not camera frames"
        out.append(a.reshape(-1, *a.shape[-2:]))
    if one_level:
        shapes = {a.shape[-2:] for a in out}
        if len(shapes) > 1:
            return f"{option}: the files have frames of different sizes {shapes}"
        return [np.concatenate(out)]
    return out


def acquire_ptc_frames(
    core: Any,
    exposures_ms: Sequence[float],
    n_frames: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dark frames (shutter closed) and flats (shutter open, one stack per
    exposure) snapped from ``core``'s camera, ``n_frames`` each.

    On the simulated camera the sample's emitters are switched off (its
    ``Photons`` property set to 0) so a flat is the uniform background alone;
    every setting changed is restored.
    """
    cam = core.getCameraDevice()
    shutter = core.getShutterDevice()
    restore: list[tuple[str, str, str]] = []

    def set_prop(dev: str, prop: str, value: str) -> None:
        if dev and core.hasProperty(dev, prop):
            restore.append((dev, prop, core.getProperty(dev, prop)))
            core.setProperty(dev, prop, value)

    auto = core.getAutoShutter()
    exposure = core.getExposure()

    def snap(n: int) -> np.ndarray:
        frames = []
        for _ in range(n):
            core.snapImage()
            frames.append(np.asarray(core.getImage()).copy())
        return np.stack(frames)

    try:
        core.setAutoShutter(False)
        set_prop(cam, "AutoShutter", "0")
        set_prop(cam, "Photons", "0")
        if shutter:
            core.setShutterOpen(False)
        core.setExposure(float(exposures_ms[0]))
        dark = snap(n_frames)
        if shutter:
            core.setShutterOpen(True)
        flats = []
        for e in exposures_ms:
            core.setExposure(float(e))
            flats.append(snap(n_frames))
    finally:
        if shutter:
            core.setShutterOpen(False)
        for dev, prop, value in reversed(restore):
            core.setProperty(dev, prop, value)
        core.setAutoShutter(auto)
        core.setExposure(exposure)
    return dark, flats


def cmd_camera(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack camera``."""
    from axialtrack.calibrate.ptc import PTCError, measure_ptc, plot_ptc
    from axialtrack.camera import CameraError, write_camera_file

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        return fail(f"--out {out} exists.", "Pass --overwrite to replace it.")
    if why := unwritable(out):
        return fail(f"--out: {why}.", "Choose another --out. Nothing was written.")
    if args.plot is not None and (why := unwritable(Path(args.plot))):
        return fail(f"--plot: {why}.", "Choose another --plot. Nothing was written.")
    from_files = args.dark is not None or args.flat is not None
    if from_files and args.config is not None:
        return fail(
            "Give either --dark/--flat files or --config (to acquire them), not both."
        )
    if not from_files and args.config is None:
        return fail(
            "No frames: give --dark FILE and --flat FILE (2 or more levels), or "
            "--config CFG to acquire them."
        )
    if args.config is None and args.exposures is not None:
        return fail("--exposures is for acquiring with --config.")
    bit_depth = args.bit_depth
    if from_files:
        if not args.dark or not args.flat:
            missing = "--dark" if not args.dark else "--flat"
            return fail(
                f"{missing} is missing: the PTC needs dark frames and flats at 2 "
                "or more light levels."
            )
        dark_l = _read_levels(args.dark, "--dark", one_level=True)
        if isinstance(dark_l, str):
            return fail(dark_l)
        flats = _read_levels(args.flat, "--flat", one_level=False)
        if isinstance(flats, str):
            return fail(flats)
        dark = dark_l[0]
        source = {"dark": list(args.dark), "flat": list(args.flat)}
    else:
        if args.frames < 2 or args.frames % 2:
            return fail(f"--frames must be even and >= 2; got {args.frames}.")
        from axialtrack.rig import RigConfigError, load_rig

        config = None if args.config == "sim" else args.config
        try:
            core = load_rig(config)
        except RigConfigError as exc:
            return fail(str(exc))
        try:
            if bit_depth is None:
                bit_depth = int(core.getImageBitDepth())
            exposures = args.exposures or list(DEFAULT_EXPOSURES_MS)
            console.print(
                f"Acquiring {args.frames} dark frames and {args.frames} flats at "
                f"{', '.join(f'{e:g}' for e in exposures)} ms from "
                f"{core.getCameraDevice()}..."
            )
            dark, flats = acquire_ptc_frames(core, exposures, args.frames)
        finally:
            core.unloadAllDevices()
        source = {"config": args.config, "exposures_ms": exposures}
    shapes = {dark.shape[-2:], *(f.shape[-2:] for f in flats)}
    if len(shapes) > 1:
        return fail(
            f"The dark frames and flats differ in size ({sorted(shapes)}).",
            "Give frames of one camera and one ROI.",
        )
    try:
        res = measure_ptc(dark, flats, tile_px=args.tile, bit_depth=bit_depth or 16)
    except PTCError as exc:
        return fail(f"Cannot measure the camera: {exc}.")
    fields: dict[str, Any] = res.camera_fields()
    if args.qe is not None:
        fields["qe"] = args.qe
    if bit_depth is not None:
        fields["bit_depth"] = int(bit_depth)
    measured = {**res.measured(), "source": source}
    try:
        write_camera_file(out, fields, measured)
    except CameraError as exc:
        return fail(f"The measured camera is not plausible: {exc}")
    lo, hi = res.e_per_adu_ci95
    console.print(
        f"offset     {res.offset_adu:.2f} +- {res.offset_stderr_adu:.2f} ADU\n"
        f"gain       {res.e_per_adu:.4f} e-/ADU (95 % CI {lo:.4f} to {hi:.4f})\n"
        f"read noise {res.read_noise_e:.3f} +- {res.read_noise_stderr_e:.3f} e- rms\n"
        f"from {len(flats)} flat levels ({res.levels[1]['mean_adu']:.0f} to "
        f"{res.levels[-1]['mean_adu']:.0f} ADU) and the dark frames, "
        f"{res.n_points} tile points",
        markup=False,
        highlight=False,
    )
    console.print(f"Camera file written to {out}", markup=False, highlight=False)
    if "qe" not in fields:
        console.print(
            "QE is not measured by a PTC: give it with --qe (or --camera-qe where "
            "the file is used); without it the default 0.8 applies.",
            markup=False,
            highlight=False,
        )
    if args.plot is not None:
        plot = plot_ptc(res, args.plot)
        console.print(f"PTC plot written to {plot}", markup=False, highlight=False)
    return 0

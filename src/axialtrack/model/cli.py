"""The ``axialtrack train`` and ``axialtrack evaluate`` subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from .config import DEFAULT_SYNTHETIC as _DEFAULT_SYNTHETIC
from .config import ModelConfig, TrainConfig

__all__ = ["add_parsers", "cmd_evaluate", "cmd_train"]

console = Console()

#: Synthetic crop pairs rendered by default when the calibration carries a PSF
#: (:data:`axialtrack.model.config.DEFAULT_SYNTHETIC`).
DEFAULT_SYNTHETIC = _DEFAULT_SYNTHETIC
#: The defaults of ``axialtrack train``: those of :class:`TrainConfig`.
_D = TrainConfig()


def add_parsers(subparsers: Any) -> None:
    """Register ``train`` and ``evaluate`` on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "train",
        help="train the axial localization model from a calibration run",
        description="Train the axial localization network on the training examples "
        "of a calibration run store and write a model bundle (<name>.axialmodel: "
        "model.json, weights.pt, model.onnx verified against torch).",
    )
    p.add_argument("calibration", metavar="CALIB.zarr", help="calibration run store")
    p.add_argument("--out", required=True, help="bundle directory (.axialmodel)")
    _schedule_options(p)
    _model_options(p)
    _synthetic_options(p)
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    _evaluate_parser(subparsers)


def _schedule_options(p: Any) -> None:
    """Options of the schedule, optimizer and recalibration."""
    from axialtrack._cli import float_in, positive_float, positive_int

    def opt(flag: str, kind: Any, help: str, **kw: Any) -> None:
        p.add_argument(
            flag, type=kind, default=kw.pop("default", None), help=help, **kw
        )

    opt(
        "--steps",
        positive_int,
        f"optimizer steps of the training schedule (default {_D.steps}: a few "
        "minutes on a 2-core CPU, whatever the number of beads)",
    )
    opt("--epochs", positive_int, "train this many epochs instead of --steps")
    opt(
        "--batch-size",
        positive_int,
        "mini-batch",
        default=_D.batch_size,
    )
    opt("--lr", positive_float, "Adam learning rate", default=_D.lr)
    opt(
        "--patience",
        positive_int,
        "early-stopping epochs without a lower validation loss (default: a "
        "quarter of the epochs, at least 10)",
    )
    opt("--max-time", positive_float, "stop after the epoch that passes this many s")
    opt("--seed", int, f"random seed (default {_D.seed})", default=_D.seed)
    p.add_argument("--device", default=None, help="torch device (default: auto)")
    opt(
        "--ema-decay",
        float_in(0.0, 0.99999),
        "decay of the moving average of the weights per step (0: off; default: "
        "one epoch's time constant, 1 - 1/steps-per-epoch within 0.9-0.998)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["plateau", "cosine"],
        default=_D.lr_schedule,
        help="cosine (default): decay to lr/100 over the schedule; plateau: halve "
        "on a validation plateau",
    )
    recal = p.add_mutually_exclusive_group()
    recal.add_argument(
        "--recalibrate",
        dest="recalibrate",
        action="store_const",
        const=True,
        default=_D.recalibrate,
        help="always fold an affine dz correction fitted on the validation beads "
        "into the output layer (default: only when it lowers the error of "
        "held-out validation beads)",
    )
    recal.add_argument(
        "--no-recalibrate",
        dest="recalibrate",
        action="store_const",
        const=False,
        help="never recalibrate",
    )
    opt(
        "--recalibrate-dz-max",
        positive_float,
        "fit the recalibration on validation examples with |dz| <= this (um)",
    )
    opt(
        "--neighbours",
        float_in(0.0, 1.0),
        "probability of adding a neighbouring particle to a bead pair (crowded "
        f"live samples; 0.5 on the live benchmark); default {_D.neighbours:g}",
        default=_D.neighbours,
    )
    opt(
        "--physics",
        float_in(0.0, 10.0),
        "physics-informed loss: add WEIGHT x the Poisson deviance per pixel of "
        "each crop under the calibration's PSF at the predicted dz (0.005 "
        f"measured; 0.05 diverged); default {_D.physics_weight:g}: off",
        default=_D.physics_weight,
        metavar="WEIGHT",
    )
    opt(
        "--ensemble",
        positive_int,
        "train this many networks (seeds --seed, --seed+1, ...) and save their "
        f"mean: more precise, that many times the inference (default {_D.ensemble})",
        default=_D.ensemble,
    )


def _model_options(p: Any) -> None:
    """Options of the architecture (:class:`ModelConfig`)."""
    from axialtrack._cli import float_in, positive_int

    m = ModelConfig()
    p.add_argument(
        "--dense",
        type=positive_int,
        default=m.dense_width,
        help=f"dense layer width (default {m.dense_width})",
    )
    p.add_argument(
        "--dropout",
        type=float_in(0.0, 0.95),
        default=m.dropout,
        help=f"dropout probability (default {m.dropout:g})",
    )
    p.add_argument(
        "--no-field", action="store_true", help="no field-position (x, y) branch"
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also predict sigma_z (trained with Gaussian NLL)",
    )
    p.add_argument(
        "--subpixel", action="store_true", help="also predict sub-pixel dx, dy"
    )
    p.add_argument(
        "--contamination",
        action="store_true",
        help="add a crowding output: the probability that another emitter's "
        "light is in the crop (trained on the synthetic examples; no extra "
        "network cost)",
    )


def _synthetic_options(p: Any) -> None:
    """Options of the synthetic examples rendered from the calibration's PSF."""
    from axialtrack._cli import float_in, positive_float, positive_int

    syn = p.add_argument_group(
        "synthetic examples",
        "crop pairs rendered from the calibration's fitted PSF and camera, mixed "
        "with the bead examples: dim emitters, other backgrounds, neighbours, "
        "motion blur (validation stays on the held-out beads)",
    )

    def opt(flag: str, kind: Any, default: Any, help: str, **kw: Any) -> None:
        syn.add_argument(flag, type=kind, default=default, help=help, **kw)

    opt(
        "--synthetic",
        int,
        None,
        f"render N synthetic crop pairs (0: none; default {DEFAULT_SYNTHETIC} "
        "when the calibration carries a fitted PSF or nominal optics, else none)",
        metavar="N",
    )
    opt(
        "--synthetic-fraction",
        float_in(0.0, 1.0),
        _D.synthetic_fraction,
        "share of each mini-batch drawn from them (1: synthetic only; default "
        f"{_D.synthetic_fraction:g})",
    )
    opt(
        "--finetune",
        positive_int,
        None,
        "after training, this many more steps on the bead examples only, at a "
        "tenth of --lr",
        metavar="STEPS",
    )
    opt(
        "--match",
        str,
        None,
        "draw photons and background from this run's localizations (a live run "
        "or a movie localized by `axialtrack localize`) instead of the ranges",
        metavar="RUN",
    )
    # the two ranges of the synthetic emitters: LO HI each
    for flag, kind, default, what in (
        (
            "--photons",
            positive_float,
            _D.photons,
            "plane-0 photons per emitter, log-uniform",
        ),
        (
            "--background",
            float,
            _D.background,
            "plane-0 background photons per pixel, uniform",
        ),
    ):
        opt(
            flag,
            kind,
            default,
            f"{what} (default {default[0]:g} {default[1]:g})",
            nargs=2,
            metavar=("LO", "HI"),
        )
    opt(
        "--synthetic-neighbours",
        float,
        _D.synthetic_neighbours,
        "mean number of neighbours within --neighbour-radius px (Poisson, uniform "
        f"in area: overlapping ones included; default {_D.synthetic_neighbours:g})",
        metavar="MEAN",
    )
    opt(
        "--neighbour-radius",
        positive_float,
        _D.neighbour_radius_px,
        f"px (default {_D.neighbour_radius_px:g})",
    )
    opt(
        "--diffusion",
        float,
        _D.diffusion_um2_s,
        "motion blur: diffusion coefficient (um^2/s) during --exposure "
        f"(default {_D.diffusion_um2_s:g})",
        metavar="D",
    )
    opt(
        "--exposure",
        positive_float,
        _D.exposure_s,
        f"exposure (s; default {_D.exposure_s:g})",
    )


def _evaluate_parser(subparsers: Any) -> None:
    from axialtrack._cli import positive_float

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a model bundle on held-out calibration beads",
        description="Bias, precision (std) and RMSE per dz bin and the fraction "
        "within +-50 nm on the test beads of a calibration run, against the "
        "simulation truth or, for imported stacks, the stage labels; on the "
        "simulated rig also the CRLB per bin (an imported calibration has none "
        "until it carries a fitted PSF model). Writes eval.json, bins.csv, "
        "predictions.csv and plots.",
    )
    e.add_argument("bundle", metavar="MODEL.axialmodel")
    e.add_argument("calibration", metavar="CALIB.zarr")
    e.add_argument("--out", default=None, help="output folder (plots, tables)")
    e.add_argument(
        "--split", default="test", help="test, validation, train or all (test)"
    )
    e.add_argument(
        "--bin", type=positive_float, default=0.1, help="dz bin width (um; 0.1)"
    )
    e.add_argument("--no-crlb", action="store_true", help="skip the CRLB")
    e.set_defaults(func=cmd_evaluate)


def _rig_of(data: Any) -> dict[str, Any]:
    """The rig entries a bundle trained on ``data`` would get."""
    return {
        "pixel_size_um": data.pixel_size_um,
        "plane_offset_um": data.plane_offset_um,
        "layout": data.layout,
        "mirror": data.mirror,
        "registration": (
            None
            if data.registration_affine is None
            else {"affine": data.registration_affine}
        ),
        "camera": data.camera,
        "plane_shape": data.plane_shape,
    }


def _settings(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``axialtrack train``'s options."""
    return TrainConfig(
        steps=args.steps if args.steps is not None else _D.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        patience=args.patience,
        augmentation=not args.no_augment,
        max_time_s=args.max_time,
        ema_decay=(
            "auto"
            if args.ema_decay is None
            else (args.ema_decay if args.ema_decay > 0 else None)
        ),
        lr_schedule=args.lr_schedule,
        recalibrate=args.recalibrate,
        recalibrate_dz_max_um=args.recalibrate_dz_max,
        neighbours=args.neighbours,
        synthetic=args.synthetic,
        synthetic_fraction=args.synthetic_fraction,
        photons=tuple(args.photons),
        background=tuple(args.background),
        match=args.match,
        synthetic_neighbours=args.synthetic_neighbours,
        neighbour_radius_px=args.neighbour_radius,
        diffusion_um2_s=args.diffusion,
        exposure_s=args.exposure,
        finetune_steps=args.finetune,
        physics_weight=args.physics,
        ensemble=args.ensemble,
    )


def _rig_refusal(calibration: str, data: Any) -> tuple[str, str] | None:
    """Why a bundle trained on ``data`` could not record the rig, and the fix."""
    from .bundle import missing_rig_fields

    lacking = [
        m
        for m in missing_rig_fields(_rig_of(data))
        if not m.startswith(("crop_size", "z_convention"))
    ]
    if not lacking:
        return None
    return (
        f"{calibration} does not record the rig the model needs: {lacking[0]}"
        + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
        + ".",
        f"Analyze it again with this axialtrack: `axialtrack calibrate --from "
        f"{calibration}` (with --pixel-size, --plane-offset, --camera or "
        "--camera-* where the run does not record them).",
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack train``."""
    from axialtrack._cli import fail
    from axialtrack.store.replace import refusal

    from . import BUNDLE_SUFFIX, RecipeError, load_calibration, train_from_config

    out = Path(args.out).expanduser()
    if out.suffix != BUNDLE_SUFFIX:
        out = out.with_name(out.name + BUNDLE_SUFFIX)
    # only a bundle of ours is replaced: checked before hours of training
    why = refusal(out, args.overwrite, "bundle")
    if why is not None:
        return fail(why)
    if args.synthetic is not None and args.synthetic < 0:
        return fail(f"--synthetic {args.synthetic}: give a number of examples >= 0")
    try:
        data = load_calibration(args.calibration)
    except (FileNotFoundError, KeyError) as exc:
        console.print(f"[red]Cannot read the calibration:[/red] {exc}")
        return 2
    # the bundle must record the rig: checked before minutes of training
    rig = _rig_refusal(args.calibration, data)
    if rig is not None:
        return fail(*rig)
    try:
        settings = _settings(args)
        config = ModelConfig(
            crop_size=int(data.examples.crops.shape[-1]),
            dense_width=args.dense,
            dropout=args.dropout,
            field_branch=not args.no_field,
            uncertainty=args.uncertainty,
            subpixel=args.subpixel,
            contamination=args.contamination,
        )
        result = train_from_config(
            data,
            settings,
            config,
            progress=not args.no_progress,
            log=lambda line: console.print(line, highlight=False),
        )
    except FileNotFoundError as exc:
        return fail(f"--match: {exc}.", "Give a run store with localizations.")
    except RecipeError as exc:
        return fail(str(exc))
    except ValueError as exc:
        console.print(f"[red]Training failed:[/red] {exc}")
        return 2
    path = result.save(out, overwrite=args.overwrite)
    _report(result.metrics, config)
    console.print(f"Model bundle: {path}")
    return 0


def _report(m: dict[str, Any], config: ModelConfig) -> None:
    """Print the training's outcome: epochs, RMSE, recalibration, warnings."""
    console.print(
        f"Trained {m['epochs_run']} of {m.get('epochs_planned', m['epochs_run'])} "
        f"epochs ({m.get('stopped_by', 'done')}) in {m['train_time_s']:.1f} s "
        f"(best epoch {m['best_epoch']}): validation RMSE {m['val_rmse_nm']:.1f} nm, "
        f"test RMSE {m['test_rmse_nm']:.1f} nm"
    )
    recal = m.get("recalibration")
    if recal is not None:
        console.print(
            f"Recalibration {'applied' if recal.get('applied') else 'not applied'}"
            + (
                f" (held-out validation beads: {recal['cv_rmse_raw_nm']:.1f} nm "
                f"as trained, {recal['cv_rmse_nm']:.1f} nm recalibrated)"
                if recal.get("cv_rmse_nm") is not None
                else ""
            )
        )
    for w in m.get("warnings", []):
        console.print(f"[yellow]Warning: {w}[/yellow]")
    if config.subpixel and not m["subpixel_targets"]:
        console.print(
            "[yellow]No sub-pixel targets in this calibration; dx, dy heads are "
            "untrained.[/yellow]"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack evaluate``."""
    from . import BundleError, evaluate

    split = None if args.split == "all" else args.split
    try:
        res = evaluate(
            args.bundle,
            args.calibration,
            split,
            out=args.out,
            bin_width_um=args.bin,
            crlb=None if args.no_crlb else "auto",
        )
    except (BundleError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]Evaluation failed:[/red] {exc}")
        return 2
    s = res.summary
    console.print(
        f"{s['n']} examples of {s['n_beads']} beads (true dz from {s['reference']}): "
        f"RMSE {s['rmse_nm']:.1f} nm, bias {s['bias_nm']:+.1f} nm, "
        f"{100 * s['frac_within_50nm']:.1f} % within +-50 nm"
    )
    if s.get("reference_note"):
        console.print(f"({s['reference_note']})")
    from rich.table import Table

    table = Table("dz (um)", "n", "bias (nm)", "precision (nm)", "RMSE (nm)")
    has_crlb = "crlb_nm" in res.bins
    if has_crlb:
        table.add_column("CRLB (nm)")
        table.add_column("precision/CRLB")
    for _, r in res.bins.iterrows():
        cells = [
            f"{r['dz_center_um']:+.2f}",
            str(int(r["n"])),
            f"{r['bias_nm']:+.1f}",
            f"{r['precision_nm']:.1f}",
            f"{r['rmse_nm']:.1f}",
        ]
        if has_crlb:
            cells += [f"{r['crlb_nm']:.1f}", f"{r['ratio']:.2f}"]
        table.add_row(*cells)
    console.print(table)
    if has_crlb:
        console.print(f"median precision/CRLB: {s['median_ratio']:.2f}")
    elif s.get("crlb_note"):
        console.print(s["crlb_note"].replace("no CRLB:", "No CRLB column:", 1))
    if args.out:
        console.print(f"Wrote {args.out}: {', '.join(f.name for f in res.files)}")
    else:
        console.print(json.dumps(s, default=str))
    return 0

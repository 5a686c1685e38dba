"""The ``axialtrack train`` and ``axialtrack evaluate`` subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["add_parsers", "cmd_evaluate", "cmd_train"]

console = Console()

#: Synthetic crop pairs rendered by default when the calibration carries a PSF:
#: mixed half and half with the beads they took the isolated Z RMSE of the
#: import benchmark's 2000-photon emitters from 126 nm (beads only, 12.9x CRLB)
#: to 30 nm (3.1x), water-na1.2, --quick, 1500 steps.
DEFAULT_SYNTHETIC = 20000


def add_parsers(subparsers: Any) -> None:
    """Register ``train`` and ``evaluate`` on an ``add_subparsers()`` object."""
    from axialtrack._cli import float_in, positive_float, positive_int

    p = subparsers.add_parser(
        "train",
        help="train the axial localization model from a calibration run",
        description="Train the axial localization network on the training examples "
        "of a calibration run store and write a model bundle (<name>.axialmodel: "
        "model.json, weights.pt, model.onnx verified against torch).",
    )
    p.add_argument("calibration", metavar="CALIB.zarr", help="calibration run store")
    p.add_argument("--out", required=True, help="bundle directory (.axialmodel)")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimizer steps of the training schedule (4000: about a minute on a "
        "2-core CPU, whatever the number of beads)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="train this many epochs instead of --steps",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="mini-batch (64)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="early-stopping epochs (default: a quarter of the epochs, >= 10)",
    )
    p.add_argument(
        "--max-time",
        type=positive_float,
        default=None,
        help="stop after the epoch that passes this many seconds",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="torch device (default: auto)")
    p.add_argument("--dense", type=positive_int, default=128, help="dense layer width")
    p.add_argument(
        "--dropout", type=float_in(0.0, 0.95), default=0.5, help="dropout probability"
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
        "--ema-decay",
        type=float_in(0.0, 0.99999),
        default=None,
        help="decay of the moving average of the weights per step (0: off; "
        "default: one epoch's time constant)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["plateau", "cosine"],
        default="cosine",
        help="cosine (default): decay to lr/100 over the schedule; plateau: halve "
        "on a validation plateau",
    )
    recal = p.add_mutually_exclusive_group()
    recal.add_argument(
        "--recalibrate",
        dest="recalibrate",
        action="store_const",
        const=True,
        default="auto",
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
    p.add_argument(
        "--recalibrate-dz-max",
        type=positive_float,
        default=None,
        help="fit the recalibration on validation examples with |dz| <= this (um)",
    )
    p.add_argument(
        "--neighbours",
        type=float_in(0.0, 1.0),
        default=0.0,
        help="probability of adding a neighbouring particle to a training pair "
        "(crowded live samples; 0.5 on the live benchmark); default 0",
    )
    syn = p.add_argument_group(
        "synthetic examples",
        "crop pairs rendered from the calibration's fitted PSF and camera, mixed "
        "with the bead examples: dim emitters, other backgrounds, neighbours, "
        "motion blur (validation stays on the held-out beads)",
    )
    syn.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N",
        help="render N synthetic crop pairs (0: none; default: "
        f"{DEFAULT_SYNTHETIC} when the calibration carries a fitted PSF or "
        "nominal optics, else none)",
    )
    syn.add_argument(
        "--synthetic-fraction",
        type=float_in(0.0, 1.0),
        default=0.5,
        help="share of each mini-batch drawn from them (1: synthetic only)",
    )
    syn.add_argument(
        "--finetune",
        type=positive_int,
        default=None,
        metavar="STEPS",
        help="after training, this many more steps on the bead examples only, "
        "at a tenth of --lr",
    )
    syn.add_argument(
        "--match",
        default=None,
        metavar="RUN",
        help="draw photons and background from this run's localizations (a live "
        "run or a movie localized by `axialtrack localize`) instead of the "
        "default ranges",
    )
    syn.add_argument(
        "--photons",
        type=positive_float,
        nargs=2,
        default=(300.0, 20000.0),
        metavar=("LO", "HI"),
        help="plane-0 photons per emitter, log-uniform",
    )
    syn.add_argument(
        "--background",
        type=float,
        nargs=2,
        default=(1.0, 40.0),
        metavar=("LO", "HI"),
        help="plane-0 background photons per pixel, uniform",
    )
    syn.add_argument(
        "--synthetic-neighbours",
        type=float,
        default=0.5,
        metavar="MEAN",
        help="mean number of neighbours within --neighbour-radius px (Poisson, "
        "uniform in area: overlapping ones included)",
    )
    syn.add_argument(
        "--neighbour-radius",
        type=positive_float,
        default=12.0,
        help="px",
    )
    syn.add_argument(
        "--diffusion",
        type=float,
        default=0.0,
        metavar="D",
        help="motion blur: diffusion coefficient (um^2/s) during --exposure",
    )
    syn.add_argument(
        "--exposure", type=positive_float, default=0.01, help="exposure (s)"
    )
    syn.add_argument(
        "--contamination",
        action="store_true",
        help="add a crowding output: the probability that another emitter's "
        "light is in the crop (trained on the synthetic examples; no extra "
        "network cost)",
    )
    p.add_argument(
        "--physics",
        type=float_in(0.0, 10.0),
        default=0.0,
        metavar="WEIGHT",
        help="physics-informed loss: add WEIGHT x the Poisson deviance per pixel "
        "of each crop under the calibration's PSF at the predicted dz (0.005 "
        "measured; 0.05 diverged); 0: off",
    )
    p.add_argument(
        "--ensemble",
        type=positive_int,
        default=1,
        help="train this many networks (seeds --seed, --seed+1, ...) and save their "
        "mean: more precise, that many times the inference (default 1)",
    )
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

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
    e.add_argument("--bin", type=positive_float, default=0.1, help="dz bin width (um)")
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


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack train``."""
    from .bundle import BUNDLE_SUFFIX
    from .config import ModelConfig
    from .train import load_calibration, train

    out = Path(args.out).expanduser()
    if out.suffix != BUNDLE_SUFFIX:
        out = out.with_name(out.name + BUNDLE_SUFFIX)
    from axialtrack._cli import fail
    from axialtrack.store.replace import refusal

    # only a bundle of ours is replaced: checked before hours of training
    why = refusal(out, args.overwrite, "bundle")
    if why is not None:
        return fail(why)
    try:
        data = load_calibration(args.calibration)
    except (FileNotFoundError, KeyError) as exc:
        console.print(f"[red]Cannot read the calibration:[/red] {exc}")
        return 2
    from .bundle import missing_rig_fields

    # the bundle must record the rig: checked before minutes of training
    lacking = [
        m
        for m in missing_rig_fields(_rig_of(data))
        if not m.startswith(("crop_size", "z_convention"))
    ]
    if lacking:
        return fail(
            f"{args.calibration} does not record the rig the model needs: "
            f"{lacking[0]}"
            + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
            + ".",
            f"Analyze it again with this axialtrack: `axialtrack calibrate --from "
            f"{args.calibration}` (with --pixel-size, --plane-offset, --camera or "
            "--camera-* where the run does not record them).",
        )
    if args.finetune and args.ensemble > 1:
        return fail("--finetune works on one network; drop --ensemble or --finetune")
    if args.finetune and args.contamination:
        return fail(
            "--finetune ends on the beads alone, which cannot train --contamination; "
            "drop one of them"
        )
    synthetic = None
    auto = args.synthetic is None
    if auto:
        has_psf = data.psf_fit is not None or data.optics is not None
        args.synthetic = DEFAULT_SYNTHETIC if has_psf else 0
        if not has_psf:
            console.print(
                "Training on the bead examples only: the calibration carries no "
                "fitted PSF to render synthetic examples from"
            )
    if args.synthetic < 0:
        return fail(f"--synthetic {args.synthetic}: give a number of examples >= 0")
    if args.synthetic > 0:
        from axialtrack.sim.synthetic import Distribution, SyntheticConfig, match_run

        from .train import synthetic_examples

        try:
            if args.match is not None:
                photons, background = match_run(args.match)
            else:
                photons = Distribution(
                    kind="loguniform", low=args.photons[0], high=args.photons[1]
                )
                background = Distribution(
                    kind="uniform", low=args.background[0], high=args.background[1]
                )
            syn_cfg = SyntheticConfig(
                crop_size=int(data.examples.crops.shape[-1]),
                photons=photons,
                background=background,
                neighbours_mean=args.synthetic_neighbours,
                neighbour_radius_px=args.neighbour_radius,
                diffusion_um2_s=args.diffusion,
                exposure_s=args.exposure,
            )
            synthetic = synthetic_examples(
                data, args.synthetic, config=syn_cfg, seed=args.seed
            )
        except FileNotFoundError as exc:
            return fail(f"--match: {exc}.", "Give a run store with localizations.")
        except ValueError as exc:
            msg = " ".join(str(exc).split())
            if auto and args.match is None:
                console.print(
                    f"[yellow]Training on the bead examples only: no synthetic "
                    f"examples ({msg})[/yellow]"
                )
                args.synthetic = 0
                synthetic = None
            else:
                return fail(
                    f"cannot render synthetic examples from {args.calibration}: {msg}.",
                    "Check --match, --photons and --background, or pass --synthetic 0.",
                )
        if synthetic is not None:
            console.print(
                f"Rendered {len(synthetic)} synthetic examples: photons "
                f"{photons.describe()}, background {background.describe()}"
            )
    try:
        config = ModelConfig(
            crop_size=int(data.examples.crops.shape[-1]),
            dense_width=args.dense,
            dropout=args.dropout,
            field_branch=not args.no_field,
            uncertainty=args.uncertainty,
            subpixel=args.subpixel,
            contamination=args.contamination,
        )
        kw: dict[str, Any] = {}
        fn: Any = train
        if args.ensemble > 1:
            from .train import train_ensemble

            fn, kw = train_ensemble, {"members": args.ensemble}
        if args.steps is not None:
            kw["steps"] = args.steps
        result = fn(
            data,
            **kw,
            config=config,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_time_s=args.max_time,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            patience=args.patience,
            augmentation=not args.no_augment,
            ema_decay=(
                "auto"
                if args.ema_decay is None
                else (args.ema_decay if args.ema_decay > 0 else None)
            ),
            lr_schedule=args.lr_schedule,
            recalibrate=args.recalibrate,
            recalibrate_dz_max_um=args.recalibrate_dz_max,
            neighbours=args.neighbours,
            synthetic=synthetic,
            synthetic_fraction=args.synthetic_fraction,
            physics_weight=args.physics,
        )
        if args.finetune:
            first = result
            result = train(
                data,
                config=config,
                steps=args.finetune,
                batch_size=args.batch_size,
                lr=args.lr / 10,
                seed=args.seed,
                device=args.device,
                progress=not args.no_progress,
                augmentation=not args.no_augment,
                lr_schedule=args.lr_schedule,
                recalibrate=args.recalibrate,
                recalibrate_dz_max_um=args.recalibrate_dz_max,
                neighbours=args.neighbours,
                init=first.model,
            )
            result.metrics["pretraining"] = {
                k: first.metrics.get(k)
                for k in ("val_rmse_nm", "test_rmse_nm", "epochs_run", "train_time_s")
            }
            result.settings["synthetic_examples"] = first.settings["synthetic_examples"]
            result.settings["synthetic_fraction"] = first.settings["synthetic_fraction"]
        if synthetic is not None:
            result.settings["synthetic"] = {
                "n": len(synthetic),
                "photons": syn_cfg.photons.describe(),
                "background": syn_cfg.background.describe(),
                "match": args.match,
                "neighbours_mean": syn_cfg.neighbours_mean,
                "neighbour_radius_px": syn_cfg.neighbour_radius_px,
                "diffusion_um2_s": syn_cfg.diffusion_um2_s,
                "exposure_s": syn_cfg.exposure_s,
                "finetune_steps": args.finetune,
            }
    except ValueError as exc:
        console.print(f"[red]Training failed:[/red] {exc}")
        return 2
    path = result.save(out, overwrite=args.overwrite)
    m = result.metrics
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
    console.print(f"Model bundle: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack evaluate``."""
    from .bundle import BundleError
    from .evaluate import evaluate

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

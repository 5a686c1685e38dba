"""Accuracy of the axial localization model against the Cramer-Rao bound.

For each plane offset delta (250, 500, 750 nm) a bead calibration is simulated
with the default optics (beads on the coverslip, 2000 photons per plane per
exposure reaching the camera, 10 background photons per pixel, the simulated
sCMOS camera), analyzed, and a model is trained on its training beads; a
single-plane network (same architecture, plane 0 only) is trained on the
delta = 500 nm calibration. On the held-out test beads (true dz from the
simulation truth) the benchmark reports, per 100 nm dz bin over
``|dz| <= 0.8 um``: bias, precision (std) and the CRLB of the crop the network
sees (15 x 15 px, detected photons = photons x QE, camera read noise), in stage
units, and precision / CRLB. It prints JSON and writes a markdown table.

Usage::

    python benchmarks/bench_accuracy.py [--quick] [--md bench_accuracy.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from axialtrack.calibrate import analyze
from axialtrack.calibrate.simulate import simulated_stack
from axialtrack.geometry import SplitterGeometry
from axialtrack.model import CalibrationData, CRLBSpec, ModelConfig, evaluate, train
from axialtrack.sim import CameraModel

DZ_MAX_UM = 0.8
NEAR_FOCUS_UM = 0.3
#: Stage scan of the simulated calibration: +- this around the beads' focus (um).
Z_HALF_RANGE_UM = 1.5
#: Calibration frames with |dz| <= this become training examples (um). Wider than
#: the evaluated range so its ends are not at the edge of the training labels,
#: where a regressor shrinks towards the middle (the bias at +-0.7 um).
DZ_RANGE_UM = 1.4


def _run(
    data: CalibrationData,
    config: ModelConfig,
    spec: CRLBSpec,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = train(
        data,
        config=config,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    ev = evaluate(res.model, data, "test", dz_max_um=DZ_MAX_UM, crlb=spec)
    p = ev.predictions
    near = p[np.abs(p["dz_true_um"]) <= NEAR_FOCUS_UM]
    return {
        "train_time_s": round(time.perf_counter() - t0, 1),
        "epochs_run": res.metrics["epochs_run"],
        "summary": ev.summary,
        "rmse_near_focus_nm": float(np.sqrt(np.mean(near["error_nm"] ** 2))),
        "bins": ev.bins.round(2).to_dict(orient="list"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 fields, 60 epochs")
    ap.add_argument("--fields", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--z-half-range", type=float, default=Z_HALF_RANGE_UM)
    ap.add_argument("--dz-range", type=float, default=DZ_RANGE_UM)
    ap.add_argument(
        "--no-single", action="store_true", help="skip the single-plane model"
    )
    ap.add_argument("--md", default="bench_accuracy.md", help="markdown output")
    args = ap.parse_args(argv)
    n_fields = args.fields or (2 if args.quick else 4)
    epochs = args.epochs or (60 if args.quick else 250)
    cam = CameraModel()
    photons, background = 2000.0, 10.0
    runs: dict[str, Any] = {}
    t_all = time.perf_counter()
    for delta in args.deltas:
        t0 = time.perf_counter()
        geometry = SplitterGeometry(
            layout="side-by-side",
            plane_offset_um=delta,
            shift_px=(3.3, -2.1),
            rotation_deg=0.7,
        )
        stack = simulated_stack(
            n_fields=n_fields,
            geometry=geometry,
            z_half_range_um=args.z_half_range,
            photons_per_s=photons / 0.01,
            background_photons_per_px_s=background / 0.01,
            exposure_s=0.01,
            seed=args.seed + 7,
        )
        cal = analyze(stack, dz_range_um=args.dz_range)
        sim_s = time.perf_counter() - t0
        data = CalibrationData(
            examples=cal.examples,
            pixel_size_um=stack.pixel_size_um,
            plane_offset_um=delta,
            layout="side-by-side",
            beads=cal.beads,
        )
        common = {
            "photons": photons * cam.qe,
            "background": background * cam.qe,
            "read_noise_e": float(cam.read_noise_e),
            "depth_um": 0.05,
            "roi_size": 15,
        }
        kw = {"epochs": epochs, "batch_size": args.batch_size, "seed": args.seed}
        key = f"dual {delta * 1000:.0f} nm"
        runs[key] = _run(
            data, ModelConfig(), CRLBSpec(plane_offset_um=delta, **common), **kw
        )
        runs[key]["simulate_analyze_s"] = round(sim_s, 1)
        runs[key]["n_examples"] = {
            s: int((cal.examples.split == c).sum())
            for s, c in (("train", 0), ("validation", 1), ("test", 2))
        }
        print(f"{key}: {runs[key]['summary']}", file=sys.stderr)
        if abs(delta - 0.5) < 1e-9 and not args.no_single:
            runs["single plane"] = _run(
                data,
                ModelConfig(channels=1),
                CRLBSpec(plane_offset_um=None, **common),
                **kw,
            )
            print(f"single: {runs['single plane']['summary']}", file=sys.stderr)
    out: dict[str, Any] = {
        "benchmark": "bench_accuracy",
        "quick": bool(args.quick),
        "fields": n_fields,
        "max_epochs": epochs,
        "batch_size": args.batch_size,
        "photons_per_plane": photons,
        "background_per_px": background,
        "dz_max_um": DZ_MAX_UM,
        "z_half_range_um": args.z_half_range,
        "train_dz_range_um": args.dz_range,
        "total_s": round(time.perf_counter() - t_all, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
    }
    if "single plane" in runs and "dual 500 nm" in runs:
        d = runs["dual 500 nm"]["rmse_near_focus_nm"]
        s = runs["single plane"]["rmse_near_focus_nm"]
        out["single_over_dual_rmse_near_focus"] = s / d
    print(json.dumps(out, indent=2, default=float))
    Path(args.md).write_text(markdown(out))
    return 0


def markdown(out: dict[str, Any]) -> str:
    """Markdown tables of a benchmark result."""
    runs = out["runs"]
    first = next(iter(runs.values()))
    centers = first["bins"]["dz_center_um"]
    head = "| model | " + " | ".join(f"{c:+.2f}" for c in centers) + " | median |"
    sep = "|" + " --- |" * (len(centers) + 2)
    lines = [
        f"bench_accuracy ({'quick' if out['quick'] else 'full'}): "
        f"{out['fields']} fields, <= {out['max_epochs']} epochs, batch "
        f"{out['batch_size']}, {out['photons_per_plane']:g} photons/plane, "
        f"background {out['background_per_px']:g}, {out['total_s']} s",
        "",
        "precision / CRLB per dz bin (um):",
        "",
        head,
        sep,
    ]
    for k, r in runs.items():
        cells = " | ".join(f"{v:.2f}" for v in r["bins"]["ratio"])
        lines.append(f"| {k} | {cells} | {r['summary']['median_ratio']:.2f} |")
    for name, col in (("precision (nm)", "precision_nm"), ("bias (nm)", "bias_nm")):
        lines += ["", f"{name}:", "", head.replace("median", "max |.|"), sep]
        for k, r in runs.items():
            v = np.asarray(r["bins"][col], float)
            cells = " | ".join(f"{x:.1f}" for x in v)
            lines.append(f"| {k} | {cells} | {np.nanmax(np.abs(v)):.1f} |")
    lines += [
        "",
        "CRLB (nm, stage units):",
        "",
        head.replace(" median |", ""),
        "|" + " --- |" * (len(centers) + 1),
    ]
    for k, r in runs.items():
        cells = " | ".join(f"{x:.1f}" for x in r["bins"]["crlb_nm"])
        lines.append(f"| {k} | {cells} |")
    lines += [
        "",
        "| model | RMSE (nm) | RMSE near focus, abs(dz) <= 0.3 um (nm) | "
        "within 50 nm | train (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, r in runs.items():
        s = r["summary"]
        lines.append(
            f"| {k} | {s['rmse_nm']:.1f} | {r['rmse_near_focus_nm']:.1f} | "
            f"{100 * s['frac_within_50nm']:.0f} % | {r['train_time_s']} |"
        )
    if "single_over_dual_rmse_near_focus" in out:
        lines += [
            "",
            "single-plane / dual-plane (500 nm) RMSE near focus: "
            f"{out['single_over_dual_rmse_near_focus']:.2f}",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

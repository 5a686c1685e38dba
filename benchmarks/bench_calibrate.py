"""Benchmark of the calibration analysis on simulated bead Z-stacks.

Renders ``N`` fields x 121 Z steps of ``2 x 512 x 512`` (beads on the coverslip,
stage Z over +-1.5 um around focus in 25 nm steps, camera noise), runs
:func:`axialtrack.calibrate.analyze` and prints JSON: generation and analysis
time, beads accepted per field, registration error and the reference-Z RMS error
of both methods against the simulation truth.

Usage::

    python benchmarks/bench_calibrate.py [--fields 10] [--beads 100] [--z-steps 121]
        [--plane 512] [--depth 0.05 0.05]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from axialtrack.calibrate import CalibrationStack, analyze
from axialtrack.calibrate.simulate import simulated_stack
from axialtrack.geometry import SplitterGeometry, apply_affine


def generate(
    n_fields: int,
    n_beads: int,
    n_z: int,
    plane: int,
    depth_um: tuple[float, float],
    geometry: SplitterGeometry,
    seed: int = 0,
) -> CalibrationStack:
    """Render the calibration stack: +-1.5 um around focus in ``n_z`` steps."""
    return simulated_stack(
        n_fields=n_fields,
        plane_shape=(plane, plane),
        n_beads=n_beads,
        geometry=geometry,
        z_half_range_um=1.5,
        z_step_um=3.0 / (n_z - 1),
        depth_um=depth_um,
        min_separation_um=1.0,
        seed=seed,
        field_spacing_um=200.0,
        fill=1.02,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--beads", type=int, default=100)
    ap.add_argument("--z-steps", type=int, default=121)
    ap.add_argument("--plane", type=int, default=512)
    ap.add_argument("--depth", type=float, nargs=2, default=(0.05, 0.05))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    geometry = SplitterGeometry(
        plane_offset_um=0.5, shift_px=(3.3, -2.1), rotation_deg=0.7
    )
    t0 = time.perf_counter()
    stack = generate(
        args.fields,
        args.beads,
        args.z_steps,
        args.plane,
        tuple(args.depth),
        geometry,
        args.seed,
    )
    t1 = time.perf_counter()
    res = analyze(stack)
    t2 = time.perf_counter()
    true = geometry.plane1_affine(stack.plane_shape)
    g = np.stack(np.meshgrid(*(np.linspace(0, args.plane - 1, 16),) * 2), -1).reshape(
        -1, 2
    )
    reg_err = np.linalg.norm(
        apply_affine(res.registration.affine, g) - apply_affine(true, g), axis=1
    )
    out = {
        "fields": args.fields,
        "z_steps": args.z_steps,
        "plane_shape": list(stack.plane_shape),
        "data_gb": stack.frames.nbytes / 1e9,
        "generate_s": round(t1 - t0, 2),
        "analyze_s": round(t2 - t1, 2),
        "analyze_timing_s": {k: round(v, 3) for k, v in res.qc["timing_s"].items()},
        "beads_detected": res.qc["n_detected"],
        "beads_accepted_per_field": [f["accepted"] for f in res.qc["per_field"]],
        "rejected": res.qc["rejected"],
        "registration_residual_nm": round(res.registration.residual_nm, 2),
        "registration_max_error_nm": round(
            float(reg_err.max()) * stack.pixel_size_um * 1e3, 2
        ),
        "registration_rotation_error_deg": round(
            res.registration.rotation_deg - geometry.rotation_deg, 4
        ),
        "ref_z_method_default": res.method,
        "ref_z_rms_mean_nm": res.qc["truth"]["rms_mean_nm"],
        "ref_z_rms_msd_nm": res.qc["truth"]["rms_msd_nm"],
        "ref_z_bias_mean_nm": res.qc["truth"]["bias_mean_nm"],
        "ref_z_bias_msd_nm": res.qc["truth"]["bias_msd_nm"],
        "n_examples": len(res.examples),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

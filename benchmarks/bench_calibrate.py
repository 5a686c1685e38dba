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
from axialtrack.geometry import (
    SplitterGeometry,
    apply_affine,
    compose_frame,
    split_frame,
)
from axialtrack.sim import BEAD, Background, Beads, CameraModel, Renderer, Sample


def generate(
    n_fields: int,
    n_beads: int,
    n_z: int,
    plane: int,
    depth_um: tuple[float, float],
    geometry: SplitterGeometry,
    seed: int = 0,
) -> CalibrationStack:
    """Render the calibration stack (expected image + camera noise)."""
    camera = CameraModel()
    frames = np.empty((n_fields, n_z, 2, plane, plane), dtype=np.uint16)
    truths = []
    zs = None
    stage_xy = np.array([[200.0 * p, 0.0] for p in range(n_fields)])
    r = None
    for p in range(n_fields):
        sx, sy = stage_xy[p]
        sample = Sample(
            beads=Beads(
                n=n_beads,
                center_um=(sx, sy),
                size_um=(plane * 0.1083 * 1.02,) * 2,
                depth_um=depth_um,
                min_separation_um=1.0,
                seed=seed * 1000 + p,
            ),
            background=Background(photons_per_px_s=1000.0),
            seed=seed * 1000 + p,
        )
        r = Renderer(
            sample, geometry=geometry, camera=camera, plane_shape=(plane, plane)
        )
        tr = r.truth(0.0, (sx, sy, sample.coverslip_z_um))
        truths.append(tr[tr["kind"] == BEAD])
        if zs is None:
            zf = r.z_focus_um(np.array(depth_um))
            zs = np.linspace(zf[0] - 1.5, zf[1] + 1.5, n_z)
        for k, z in enumerate(zs):
            rng = np.random.default_rng([seed, p, k])
            img = r.expected((sx, sy, float(z)), 0.0, 0.01)
            frames[p, k] = split_frame(
                camera.apply(compose_frame(img, geometry), rng), geometry
            )
    assert zs is not None
    assert r is not None
    return CalibrationStack(
        frames=frames,
        stage_z_um=np.broadcast_to(zs, (n_fields, n_z)).copy(),
        pixel_size_um=r.pixel_size_um,
        geometry=geometry,
        stage_xy_um=stage_xy,
        source="bench_calibrate",
        truth=truths,
        meta={
            "offset_adu": camera.offset_adu,
            "gain_e_per_adu": camera.gain_e_per_adu,
            "read_noise_e": camera.read_noise_e,
            "saturation_adu": 2**camera.bit_depth - 1,
        },
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

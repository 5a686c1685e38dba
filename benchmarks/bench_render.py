"""Render-time benchmark of the dual-plane simulator.

Times :meth:`Renderer.expected` (expected photons, both planes) and
:meth:`Renderer.snap` (expected image + camera noise + sensor layout) for
``2 x 512 x 512`` planes, and the one-time setup (PSF table), and prints JSON.

Scenarios
---------
``beads-coverslip``
    Static beads on the coverslip (single-depth PSF table).
``beads-volume``
    Static beads at random depths in 0-4 um (depth-grid PSF table).
``particles``
    Particles diffusing in 0-4 um (D = 0.2-1 um^2/s) with motion blur
    (automatic sub-steps).

Usage::

    python benchmarks/bench_render.py [--emitters 100] [--frames 100]
        [--scenario beads-volume] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from axialtrack.sim import (
    Background,
    Beads,
    DiffusingParticles,
    Renderer,
    Sample,
)

SCENARIOS = ("beads-coverslip", "beads-volume", "particles")


def make_sample(scenario: str, n: int, seed: int = 0) -> Sample:
    bg = Background(photons_per_px_s=1000.0, structure=0.2)
    if scenario == "beads-coverslip":
        return Sample(beads=Beads.on_coverslip(n, size_um=(55, 55)), background=bg)
    if scenario == "beads-volume":
        return Sample(
            beads=Beads.in_volume(n, size_um=(55, 55), depth_um=(0.0, 4.0)),
            background=bg,
            seed=seed,
        )
    if scenario == "particles":
        return Sample(
            particles=DiffusingParticles(
                n=n, diffusion_um2_s=(0.2, 1.0), size_um=(55, 55), depth_um=(0.0, 4.0)
            ),
            background=bg,
            seed=seed,
        )
    raise ValueError(f"unknown scenario {scenario!r}; use one of {SCENARIOS}")


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def run(scenario: str, n: int, frames: int, exposure_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        sample = make_sample(scenario, n)
        renderer = Renderer(
            sample, plane_shape=(512, 512), lut_cache=cache, record_truth=False
        )
        setup_s = time.perf_counter() - t0
        # with the PSF table on disk, as a later session would start
        t0 = time.perf_counter()
        from axialtrack.sim import render as render_mod

        render_mod._TABLES.clear()
        Renderer(
            make_sample(scenario, n),
            plane_shape=(512, 512),
            lut_cache=cache,
            record_truth=False,
        )
        setup_cached_s = time.perf_counter() - t0

    stage = (0.0, 0.0, sample.coverslip_z_um + 2.0)
    interval = max(exposure_s, 0.01)
    renderer.expected(stage, 0.0, exposure_s)  # warm-up
    exp_ms, snap_ms = [], []
    for k in range(frames):
        t = (k + 1) * interval
        t0 = time.perf_counter()
        renderer.expected(stage, t, exposure_s)
        exp_ms.append(1e3 * (time.perf_counter() - t0))
    for k in range(frames):
        t = (frames + k + 1) * interval
        t0 = time.perf_counter()
        renderer.snap(stage, t, exposure_s, frame_index=k)
        snap_ms.append(1e3 * (time.perf_counter() - t0))
    return {
        "scenario": scenario,
        "emitters": n,
        "plane_shape": [512, 512],
        "exposure_s": exposure_s,
        "substeps": renderer.auto_substeps(exposure_s),
        "psf_size": renderer.table.size,
        "psf_table_MB": round(renderer.table.nbytes / 1e6, 1),
        "psf_table_depth_nodes": len(renderer.table.depth_nodes_um),
        "setup_s": round(setup_s, 2),
        "setup_cached_s": round(setup_cached_s, 2),
        "expected": percentiles(exp_ms),
        "snap": percentiles(snap_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emitters", type=int, default=100)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--exposure", type=float, default=0.01)
    parser.add_argument(
        "--scenario", choices=(*SCENARIOS, "all"), default="all", help="what to render"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = [run(s, args.emitters, args.frames, args.exposure) for s in scenarios]
    print(
        json.dumps(
            {
                "benchmark": "axialtrack.sim render",
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(),
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Online 3D linking: cost per frame and accuracy, against trackpy on the same data.

Prints one JSON document. The data: simulated 3D Brownian motion of ``--particles``
particles at a time in a box with reflecting walls (D log-uniform in 0.1-1 um^2/s,
frame interval 10 ms, exposure = frame interval with motion blur from 5 sub-steps,
localization noise 20 nm in x/y and 50 nm in z, particles leaving and new ones
entering with a mean lifetime of 200 frames, 2% missed detections). Measured in
the same process on the same localizations:

- ``online``: :class:`axialtrack.pipeline.link.OnlineLinker`, one ``push`` per
  frame (each push timed: mean, p50, p99 ms per frame);
- ``trackpy_linker``: trackpy's streaming ``Linker`` (``init_level`` /
  ``next_level``), timed the same way;
- ``trackpy_link``: ``trackpy.link`` over the whole table (offline baseline),
  total time divided by the number of frames.

All use search range ``--search-range`` um and memory 3. Accuracy: ``precision``
is the fraction of links (consecutive localizations of one track) that join two
localizations of the same particle; ``recall`` the fraction of true links
(consecutive detections of one particle at most memory + 1 frames apart) that were
made. The diffusion coefficient recovered from the linked tracks is reported too
(population estimate, and per track for tracks of >= 500 localizations).

Usage::

    python benchmarks/bench_link.py [--frames 1000] [--particles 100] [--box 40 40 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import pandas as pd
import trackpy as tp

from axialtrack.pipeline import (
    estimate_diffusion_population,
    summarize_tracks,
)
from axialtrack.pipeline.link import LinkConfig, OnlineLinker
from axialtrack.sim.brownian import brownian_localizations


def accuracy(df: pd.DataFrame, track_col: str, memory: int) -> dict[str, float]:
    """Link precision and recall against ``true_id``."""
    d = df[df[track_col] >= 0].sort_values([track_col, "frame"])
    tid, tr = d[track_col].to_numpy(), d["true_id"].to_numpy()
    same = tid[1:] == tid[:-1]
    made = set(
        zip(d.index.to_numpy()[:-1][same], d.index.to_numpy()[1:][same], strict=True)
    )
    correct = int((tr[1:] == tr[:-1])[same].sum())
    t = df.sort_values(["true_id", "frame"])
    ti, tf = t["true_id"].to_numpy(), t["frame"].to_numpy()
    ok = (ti[1:] == ti[:-1]) & (tf[1:] - tf[:-1] <= memory + 1)
    true_links = set(
        zip(t.index.to_numpy()[:-1][ok], t.index.to_numpy()[1:][ok], strict=True)
    )
    return {
        "n_links": len(made),
        "precision": correct / max(len(made), 1),
        "recall": len(made & true_links) / max(len(true_links), 1),
        "n_tracks": int(d[track_col].nunique()),
        "n_true_particles": int(df["true_id"].nunique()),
    }


def _ms(t: list[float]) -> dict[str, float]:
    a = np.asarray(t) * 1e3
    return {
        "ms_per_frame_mean": float(a.mean()),
        "ms_per_frame_p50": float(np.percentile(a, 50)),
        "ms_per_frame_p99": float(np.percentile(a, 99)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    df = brownian_localizations(
        args.particles, args.frames, box_um=tuple(args.box), seed=args.seed
    )
    memory = 3
    fr = df["frame"].to_numpy()
    xyz = df[["x_um", "y_um", "z_um"]].to_numpy()
    starts = np.flatnonzero(np.r_[True, fr[1:] != fr[:-1]])
    ends = np.r_[starts[1:], len(fr)]
    chunks = [(int(fr[s]), xyz[s:e]) for s, e in zip(starts, ends, strict=True)]
    out: dict[str, Any] = {
        "data": {
            "frames": args.frames,
            "particles_per_frame": args.particles,
            "localizations": len(df),
            "box_um": list(args.box),
            "D_um2_s": [0.1, 1.0],
            "frame_interval_s": 0.01,
            "sigma_xy_um": 0.02,
            "sigma_z_um": 0.05,
            "missed_fraction": 0.02,
            "search_range_um": args.search_range,
            "memory": memory,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }

    # online linker (ours)
    linker = OnlineLinker(LinkConfig(search_range_um=args.search_range, memory=memory))
    times = []
    ids = np.empty(len(df), dtype=np.int64)
    for (f, x), s, e in zip(chunks, starts, ends, strict=True):
        t0 = time.perf_counter()
        ids[s:e] = linker.push(f, x)
        times.append(time.perf_counter() - t0)
    df["online"] = ids
    out["online"] = {**_ms(times), **accuracy(df, "online", memory)}

    # trackpy streaming Linker
    lk = tp.linking.Linker(args.search_range, memory=memory)
    times = []
    ids = np.empty(len(df), dtype=np.int64)
    for i, ((f, x), s, e) in enumerate(zip(chunks, starts, ends, strict=True)):
        t0 = time.perf_counter()
        if i == 0:
            lk.init_level(x, f)
        else:
            lk.next_level(x, f)
        ids[s:e] = lk.particle_ids
        times.append(time.perf_counter() - t0)
    df["tp_stream"] = ids
    out["trackpy_linker"] = {**_ms(times), **accuracy(df, "tp_stream", memory)}

    # trackpy.link, offline
    tp.quiet()
    t0 = time.perf_counter()
    linked = tp.link(
        df[["frame", "x_um", "y_um", "z_um"]],
        args.search_range,
        memory=memory,
        pos_columns=["x_um", "y_um", "z_um"],
        t_column="frame",
    )
    el = time.perf_counter() - t0
    df["tp_link"] = linked["particle"].to_numpy().astype(np.int64)
    out["trackpy_link"] = {
        "ms_per_frame_mean": el * 1e3 / args.frames,
        **accuracy(df, "tp_link", memory),
    }
    out["speedup_vs_trackpy_link"] = (
        out["trackpy_link"]["ms_per_frame_mean"] / out["online"]["ms_per_frame_mean"]
    )
    out["speedup_vs_trackpy_linker"] = (
        out["trackpy_linker"]["ms_per_frame_mean"] / out["online"]["ms_per_frame_mean"]
    )

    # diffusion from the online tracks
    locs = df.assign(track_id=df["online"])
    t0 = time.perf_counter()
    summary = summarize_tracks(locs, frame_interval_s=0.01)
    t_sum = time.perf_counter() - t0
    pop = estimate_diffusion_population(locs, 0.01)
    true_d = df.groupby("online")["true_D"].agg(lambda v: v.mode().iloc[0])
    w = summary["n_localizations"].to_numpy()
    truth = true_d.loc[summary["track_id"]].to_numpy()
    long = summary["n_localizations"].to_numpy() >= 500
    rel = summary["D_um2_s"].to_numpy()[long] / truth[long] - 1
    out["diffusion"] = {
        "population_D_um2_s": pop.D_um2_s,
        "population_D_se_um2_s": pop.D_se_um2_s,
        "population_true_D_um2_s": float(np.average(truth, weights=w)),
        "population_rel_error": pop.D_um2_s / float(np.average(truth, weights=w)) - 1,
        "population_D_xy_um2_s": pop.D_xy_um2_s,
        "population_D_z_um2_s": pop.D_z_um2_s,
        "population_rel_error_xy": pop.D_xy_um2_s / float(np.average(truth, weights=w))
        - 1,
        "loc_error_um_xyz": list(pop.loc_error_um),
        "long_tracks": int(long.sum()),
        "long_tracks_within_10pct": (
            float(np.mean(np.abs(rel) < 0.1)) if len(rel) else None
        ),
        "long_tracks_median_abs_rel_error": (
            float(np.median(np.abs(rel))) if len(rel) else None
        ),
        "summarize_tracks_ms": t_sum * 1e3,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--box", type=float, nargs=3, default=[40.0, 40.0, 3.0])
    p.add_argument("--search-range", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(p.parse_args()), indent=2))


if __name__ == "__main__":
    main()

"""Soak benchmark: a long live run on the simulated rig, watching for drift.

A live run of ``--minutes`` (default 30) on the simulated dual-plane rig
(diffusing particles, 192 x 192 px planes, the simulated camera asked for 100
frames/s) with the analysis in its own process (:class:`AnalysisProcess`, what
``axialtrack live`` uses) and a real run store. Every ``--sample-s`` seconds it
records the resident memory (RSS) of every process of the run (this one and the
analysis child), the queue depths and the latency of the frames analyzed since
the last sample.

Reported (one JSON document on stdout, progress on stderr):

- ``rss``: per process, the RSS at the start and end of the measured part and
  its slope in MB/min after the warm-up (``--warmup-min``, default 2 min;
  least-squares line through the samples);
- ``windows``: per ``--window-min`` window (default 5 min): frames, mean rate,
  latency p50/p99 of the frames analyzed in it, largest analysis and writer
  queue depths, frames skipped;
- ``targets``: RSS slope below 0.1 MB/min for every process, and the p99 of
  the last window within 1.2x that of the first (``pass`` for each).

Usage::

    python benchmarks/bench_soak.py [--minutes 30] [--window-min 5]
        [--warmup-min 2] [--sample-s 5] [--bundle B.axialmodel] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

TARGETS = {"rss_slope_mb_per_min": 0.1, "p99_last_over_first": 1.2}
PLANE = 192


def log(msg: str) -> None:
    print(
        f"[bench_soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
    )


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (psutil, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except ImportError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return math.nan


def slope_mb_per_min(t_s: np.ndarray, mb: np.ndarray) -> float:
    """Least-squares slope of ``mb`` against ``t_s``, in MB per minute."""
    ok = np.isfinite(mb)
    if ok.sum() < 3:
        return math.nan
    return float(np.polyfit(t_s[ok] / 60.0, mb[ok], 1)[0])


def _pct(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 2) if v else None


def _trace_growth(
    directory: Path, top: int = 10, prefix: str = "child"
) -> list[dict[str, Any]]:
    """The largest growths between the first and last snapshot in ``directory``
    (of the files ``PREFIX-*.snap``)."""
    import tracemalloc

    snaps = sorted(
        directory.glob(f"{prefix}-*.snap"),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    if len(snaps) < 2:
        return []
    first = tracemalloc.Snapshot.load(str(snaps[0]))
    last = tracemalloc.Snapshot.load(str(snaps[-1]))
    out = []
    for st in last.compare_to(first, "traceback")[:top]:
        out.append(
            {
                "kib": round(st.size_diff / 1024, 1),
                "blocks": st.count_diff,
                "where": [str(f) for f in st.traceback[-6:]],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="run length (30)")
    ap.add_argument("--window-min", type=float, default=5.0, help="window (5)")
    ap.add_argument("--warmup-min", type=float, default=2.0, help="warm-up (2)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="sample period (5)")
    ap.add_argument("--bundle", default=None, help="model bundle (default: train)")
    ap.add_argument("--keep", default=None, help="keep the run store in this dir")
    ap.add_argument(
        "--tracemalloc",
        default=None,
        metavar="DIR",
        help="trace the allocations of the analysis process (snapshots every "
        "30 s) and of this one (every minute after the warm-up) in DIR, and "
        "report the 10 largest growths of each between its first and last",
    )
    ap.add_argument(
        "--keep-rows-in-memory",
        action="store_true",
        help="the analyzer keeps every localization for the track summary "
        "(keep_rows=True, the behaviour before axialtrack live set it false)",
    )
    args = ap.parse_args(argv)
    if not (args.minutes > 0 and args.window_min > 0 and args.sample_s > 0):
        ap.error("--minutes, --window-min and --sample-s must be > 0")

    from bench_live import get_bundle

    from axialtrack.live import (
        AnalysisProcess,
        CoreSource,
        LiveRunner,
        RunnerConfig,
        open_live_writer,
    )
    from axialtrack.rig import load_rig, splitter_geometry

    bundle = get_bundle(args.bundle)
    if args.tracemalloc:
        from axialtrack.live._analysis_child import TRACE_ENV

        os.environ[TRACE_ENV] = str(Path(args.tracemalloc).absolute())
        import tracemalloc

        tracemalloc.start(12)  # this process too: snapshots after warm-up, at end
    core = load_rig()
    cam = core.getCameraDevice()
    for prop, value in (
        ("PlaneWidth", PLANE),
        ("PlaneHeight", PLANE),
        ("Scene", "diffusing"),
        ("DiffusionUm2PerS", 0.2),
        ("ParticleDensity", 0.03),
        ("Seed", 4),
    ):
        core.setProperty(cam, prop, str(value))
    geo = splitter_geometry(core)
    px = float(core.getPixelSizeUm())
    # a loaded machine can take a minute to render the first simulated frame
    cfg = RunnerConfig(
        log_status=False, status_interval_s=args.sample_s, start_timeout_s=300.0
    )
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench_soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / f"soak-{os.getpid()}.zarr"
    proc = AnalysisProcess(
        bundle,
        plane_shape=(PLANE, PLANE),
        max_batch_frames=cfg.max_batch_frames,
        pixel_size_um=px,
        geometry=geo,
        frame_interval_s=max(core.getExposure(), 0.0) / 1e3,
        keep_rows=args.keep_rows_in_memory,
    )
    writer = open_live_writer(
        out, geometry=geo, plane_shape=(PLANE, PLANE), pixel_size_um=px
    )
    samples: list[dict[str, Any]] = []
    traced: list[float] = []  # main-process snapshots taken (elapsed s)
    lat_seen = [0]
    pids = {"main": os.getpid(), "analysis": int(proc.pid or -1)}
    runner: LiveRunner | None = None

    def on_status(m: Any) -> None:
        assert runner is not None
        new = runner.latencies_ms(m.frames_analyzed - lat_seen[0])
        lat_seen[0] = m.frames_analyzed
        samples.append(
            {
                "t_s": m.elapsed_s,
                "frames_in": m.frames_in,
                "frames_skipped": m.frames_skipped,
                "analysis_queue": m.analysis_queue_depth,
                "writer_queue": m.writer_queue_depth,
                "latency_ms": new.tolist(),
                "rss_mb": {k: rss_mb(p) for k, p in pids.items()},
            }
        )
        if (
            args.tracemalloc
            and m.elapsed_s >= args.warmup_min * 60.0
            and (not traced or len(samples) % max(1, round(60 / args.sample_s)) == 0)
        ):
            import tracemalloc

            traced.append(m.elapsed_s)
            tracemalloc.take_snapshot().dump(
                str(Path(args.tracemalloc) / f"main-{os.getpid()}-{len(traced)}.snap")
            )
        if len(samples) % max(1, round(60 / args.sample_s)) == 0:
            rss = ", ".join(f"{k} {v:.1f} MB" for k, v in samples[-1]["rss_mb"].items())
            log(f"{m.status_line()} | {rss}")

    runner = LiveRunner(CoreSource(core), proc, writer, geometry=geo, config=cfg)
    runner.events.status.connect(on_status)
    log(f"soak: {args.minutes:g} min into {out} (analysis pid {proc.pid})")
    try:
        final = runner.run(duration_s=args.minutes * 60.0)
    finally:
        proc.close()
        core.unloadAllDevices()

    t = np.array([s["t_s"] for s in samples])
    t0 = t[0] if t.size else 0.0
    warm = t >= t0 + args.warmup_min * 60.0
    rss: dict[str, Any] = {}
    for k in pids:
        mb = np.array([s["rss_mb"][k] for s in samples])
        rss[k] = {
            "start_mb": round(float(mb[warm][0]), 1) if warm.any() else None,
            "end_mb": round(float(mb[-1]), 1) if mb.size else None,
            "max_mb": round(float(np.nanmax(mb)), 1) if mb.size else None,
            "slope_mb_per_min": (
                round(slope_mb_per_min(t[warm], mb[warm]), 4)
                if warm.sum() >= 3
                else None
            ),
        }
    windows = []
    w_s = args.window_min * 60.0
    # a last window shorter than half a window is merged into the one before
    n_w = max(1, round((t[-1] - t0) / w_s)) if t.size else 0
    prev_in = 0
    for i in range(n_w):
        sel = [s for s in samples if t0 + i * w_s <= s["t_s"] < t0 + (i + 1) * w_s]
        if i == n_w - 1:
            sel = [s for s in samples if s["t_s"] >= t0 + i * w_s]
        if not sel:
            continue
        lat = [v for s in sel for v in s["latency_ms"]]
        span = sel[-1]["t_s"] - (sel[0]["t_s"] - args.sample_s)
        windows.append(
            {
                "window": i,
                "minutes": [
                    round(i * args.window_min, 2),
                    round(sel[-1]["t_s"] / 60, 2),
                ],
                "frames": sel[-1]["frames_in"] - prev_in,
                "fps_in": round((sel[-1]["frames_in"] - prev_in) / span, 1),
                "latency_ms_p50": _pct(lat, 50),
                "latency_ms_p99": _pct(lat, 99),
                "analysis_queue_max": max(s["analysis_queue"] for s in sel),
                "writer_queue_max": max(s["writer_queue"] for s in sel),
                "frames_skipped": sel[-1]["frames_skipped"],
            }
        )
        prev_in = sel[-1]["frames_in"]
    slopes = [r["slope_mb_per_min"] for r in rss.values()]
    p99s = [w["latency_ms_p99"] for w in windows]
    ratio = p99s[-1] / p99s[0] if len(p99s) >= 2 and p99s[0] and p99s[-1] else None
    report = {
        "minutes": args.minutes,
        "window_min": args.window_min,
        "warmup_min": args.warmup_min,
        "sample_s": args.sample_s,
        "cpu_count": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "final": {
            k: final.as_dict()[k]
            for k in (
                "frames_in",
                "frames_analyzed",
                "frames_skipped",
                "fps_requested",
                "fps_in",
                "fps_analyzed",
                "latency_ms_p50",
                "latency_ms_p99",
                "stop_reason",
                "analysis_error",
            )
        },
        "rss": rss,
        "windows": windows,
        "targets": {
            "rss_slope_mb_per_min": {
                "target": TARGETS["rss_slope_mb_per_min"],
                "pass": all(
                    s is not None and s < TARGETS["rss_slope_mb_per_min"]
                    for s in slopes
                ),
            },
            "p99_last_over_first": {
                "target": TARGETS["p99_last_over_first"],
                "value": None if ratio is None else round(ratio, 3),
                "pass": ratio is not None and ratio <= TARGETS["p99_last_over_first"],
            },
        },
    }
    if args.tracemalloc:
        report["tracemalloc_growth"] = _trace_growth(Path(args.tracemalloc))
        report["tracemalloc_growth_main"] = _trace_growth(
            Path(args.tracemalloc), prefix="main"
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

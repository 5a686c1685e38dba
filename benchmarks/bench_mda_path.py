"""What the MDA path costs against polling the camera, recording only.

The same replayed movie (``bench_live``'s cached one, or ``--movie``) is
streamed unpaced through three paths into a run store, with no analysis, so
what is measured is the acquisition side alone: CPU seconds of this process per
frame (less sensitive to other jobs on the machine than wall-clock rates) and
the frames per second received:

- ``core``: :class:`CoreSource` polls the camera buffer (the path before the MDA
  runner);
- ``mda``: a useq time-lapse through pymmcore-plus's MDA runner with
  :class:`TrackingHandler` as its output (``axialtrack live``'s path; the
  runner's relay thread calls the handler);
- ``mda-direct``: the same with the handler attached to the MDA's events
  (called on the MDA's own thread).

The paths are run in turn, ``--repeats`` times, and each path's median is
reported with its ratio to ``core``. Prints one JSON document.

Usage::

    python benchmarks/bench_mda_path.py [--movie RUN.zarr] [--frames 300]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CACHE = Path(
    os.environ.get("AXIALTRACK_BENCH_CACHE", "~/.cache/axialtrack/bench")
).expanduser()


def _movie(path: str | None) -> Path:
    if path:
        return Path(path).expanduser()
    found = sorted(CACHE.glob("live-movie-*/movie.zarr"))
    if not found:
        raise SystemExit(
            "no cached bench_live movie; run benchmarks/bench_live.py --quick "
            "once, or pass --movie RUN.zarr"
        )
    return found[0]


def one_run(movie: Path, kind: str, n: int, out: Path) -> dict[str, Any]:
    """Stream ``n`` frames of ``movie`` unpaced through path ``kind``."""
    import useq

    from axialtrack.live import (
        CoreSource,
        LiveRunner,
        RunnerConfig,
        TrackingHandler,
        open_live_writer,
    )
    from axialtrack.rig import load_rig, splitter_geometry

    core = load_rig("replay-dualplane")
    core.setProperty("Camera", "Source", str(movie))
    core.setProperty("Camera", "FrameRateHz", 0)
    core.setProperty("Camera", "Loop", 1)
    core.setProperty("Camera", "Preload", 1)
    geo = splitter_geometry(core)
    px = core.getPixelSizeUm()
    config = RunnerConfig(log_status=False)
    path = out / f"{kind}.zarr"
    c0, t0 = time.process_time(), time.perf_counter()
    if kind == "core":
        plane = geo.plane_shape((core.getImageHeight(), core.getImageWidth()))
        writer = open_live_writer(
            path, geometry=geo, plane_shape=plane, pixel_size_um=px, overwrite=True
        )
        m = LiveRunner(CoreSource(core), None, writer, geometry=geo, config=config).run(
            n_frames=n
        )
    else:
        handler = TrackingHandler(
            path, None, core=core, geometry=geo, pixel_size_um=px, overwrite=True
        )
        seq = useq.MDASequence(time_plan={"interval": 0, "loops": n})
        if kind == "mda-direct":
            handler.attach(core)
            try:
                core.mda.run(seq)
            finally:
                handler.detach()
            handler.wait()
        else:
            core.mda.run(seq, output=handler)
        assert handler.metrics is not None, handler.error
        m = handler.metrics
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    core.unloadAllDevices()
    return {
        "frames": m.frames_written,
        "cpu_ms_per_frame": 1e3 * cpu / max(m.frames_written, 1),
        "fps_in": m.fps_in,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movie", default=None, help="run store to replay")
    ap.add_argument("--frames", type=int, default=300, help="frames per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each path")
    args = ap.parse_args(argv)
    for name in ("zarr", "numcodecs", "asyncio", "pymmcore-plus"):
        logging.getLogger(name).setLevel(logging.WARNING)
    movie = _movie(args.movie)
    kinds = ("core", "mda", "mda-direct")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_mda_path_") as tmp:
        for r in range(args.repeats):
            for kind in kinds:
                res = one_run(movie, kind, args.frames, Path(tmp))
                print(f"[{r}] {kind}: {res}", file=sys.stderr, flush=True)
                runs[kind].append(res)
    med = {
        k: {
            f: statistics.median(x[f] for x in v)
            for f in ("cpu_ms_per_frame", "fps_in")
        }
        for k, v in runs.items()
    }
    out = {
        "benchmark": "bench_mda_path",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "movie": str(movie),
        "frames": args.frames,
        "repeats": args.repeats,
        "median": med,
        "over_core": {
            k: {f: round(med[k][f] / med["core"][f], 3) for f in med[k]} for k in kinds
        },
        "runs": runs,
        "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

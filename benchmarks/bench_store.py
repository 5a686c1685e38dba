"""Run-store write throughput, against writing one plain file per frame.

Prints one JSON document. For each frame size (2x512x512 and 2x1024x1024 uint16)
it measures, in the same process and on the same disk:

- ``baseline_npsave`` / ``baseline_raw``: ``np.save`` or a raw ``write`` of each
  frame to its own file, from the calling thread (measured before and after the
  writer runs; ``baseline`` is their mean);
- ``writer_<backend>_<compression>``: :class:`axialtrack.store.RunWriter` fed as
  fast as it accepts frames, timed from the first ``append_frame`` to the end of
  ``close()`` (every frame and its metadata committed);
- ``..._with_localizations``: the same while another thread appends 200
  localizations per frame-batch at 200 batches/s.

Per frame: ``append_ms`` is the time ``append_frame`` took (the caller's cost,
including waiting for a free buffer when storage is the bottleneck), ``write_ms``
the time to encode and write one chunk (comparable to one baseline file write).
Between runs the output is deleted and ``os.sync()`` flushes the page cache, so
each run starts with no pending write-back. Nothing is fsync'ed during a run, in
the baseline or in the writer.

With ``--shards``, only the sharded writer is compared with one file per frame
(2x512x512, uncompressed, interleaved runs): MB/s, files written per frame and
per hour at 400 frames/s, and the time ``recover()`` takes on a run whose
writer process ended without closing it (the tail of an unfinished shard is
cut, the shards past the last commit deleted).

With ``--open``, a long run is written (``--open-gb`` of 2x512x512 frames, 100
localizations per frame with the live pipeline's columns, linked into tracks,
the per-track summary) and a fresh Python process times, three times over,
importing the reader's libraries, :func:`axialtrack.store.open_run` and the
napari reader producing its layers (planes, points, tracks); the store is
deleted afterwards. The page cache is not dropped: the tables were just
written.

Usage::

    python benchmarks/bench_store.py [--dir DIR] [--mb 600] [--quick]
    python benchmarks/bench_store.py --shards 64,128,255 [--mb 500] [--reps 3]
    python benchmarks/bench_store.py --open [--open-gb 10] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.store import RunWriter, WriterOptions


def make_frames(shape: tuple[int, int, int], n: int = 8) -> list[np.ndarray]:
    """Camera-like frames: Poisson background around 100 counts plus bright spots."""
    rng = np.random.default_rng(0)
    _, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        img = np.full(shape, 100.0)
        for _ in range(max(4, h * w // 4096)):
            y, x = rng.uniform(0, h), rng.uniform(0, w)
            amp, s = rng.uniform(200, 2000), rng.uniform(1.2, 2.5)
            y0, y1 = max(0, int(y - 4 * s)), min(h, int(y + 4 * s) + 1)
            x0, x1 = max(0, int(x - 4 * s)), min(w, int(x + 4 * s) + 1)
            g = amp * np.exp(
                -((yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2)
                / (2 * s * s)
            )
            img[0, y0:y1, x0:x1] += g
            img[1, y0:y1, x0:x1] += 0.6 * g
        out.append(rng.poisson(img).astype(np.uint16))
    return out


def _reset(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def _pct(a: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(a) * 1e3, q)), 3)


def bench_baseline(
    out: Path, frames: list[np.ndarray], n: int, how: str, to_disk: bool = False
) -> dict[str, Any]:
    """One file per frame from the calling thread: np.save or a raw write."""
    d = out / f"baseline_{how}"
    _reset(d)
    d.mkdir(parents=True)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        f = frames[i % len(frames)]
        a = time.perf_counter()
        if how == "npsave":
            np.save(d / f"{i}.npy", f)
        else:
            with open(d / f"{i}.raw", "wb") as fh:
                fh.write(f)
        lat.append(time.perf_counter() - a)
    if to_disk:
        os.sync()
    dt = time.perf_counter() - t0
    nbytes = n * frames[0].nbytes
    shutil.rmtree(d, ignore_errors=True)
    return {
        "mb_s": round(nbytes / 1e6 / dt, 1),
        "write_ms_p50": _pct(lat, 50),
        "write_ms_p99": _pct(lat, 99),
        "frames": n,
    }


def bench_writer(
    out: Path,
    frames: list[np.ndarray],
    n: int,
    *,
    compression: str | None,
    backend: str = "direct",
    localizations: bool = False,
    to_disk: bool = False,
    fps: float | None = None,
    shard_frames: int | None = None,
) -> dict[str, Any]:
    """Feed a RunWriter as fast as it accepts frames; time until close returns.

    With ``fps``, frames come at that rate instead (a camera), and the result
    says whether the writer kept up: the end-to-end latency from
    ``append_frame`` to the chunk on disk, and the deepest the queue got.

    With ``to_disk`` the time runs until ``os.sync()`` returns after close: the
    data is on the disk, not only in the page cache.
    """
    path = out / "bench.zarr"
    _reset(path)
    _, h, w = frames[0].shape
    stop = threading.Event()
    loc_stats: dict[str, float] = {"batches": 0, "calls": 0}

    def feed_localizations(writer: RunWriter) -> None:
        rows = 200
        rng = np.random.default_rng(1)
        base = {
            c: rng.uniform(0, 50, rows)
            for c in ("x_um", "y_um", "z_um", "dz_um", "sigma_z_um")
        }
        base["photons"] = rng.uniform(500, 5000, rows)
        base["background"] = rng.uniform(5, 20, rows)
        period = 1 / 200
        t_start = time.perf_counter()
        loc_stats["t_start"] = t_start
        b = 0
        while not stop.is_set():
            # every batch that is due: one per 5 ms; when this thread was not
            # scheduled in time, the overdue batches go in one call, as a
            # pipeline that fell behind would send them
            due = int((time.perf_counter() - t_start) / period) + 1 - b
            if due <= 0:
                time.sleep(max(0.0, t_start + b * period - time.perf_counter()))
                continue
            frame = np.repeat(np.arange(b, b + due, dtype=np.int64), rows)
            tab = {k: np.tile(v, due) for k, v in base.items()}
            tab["frame"] = frame
            tab["t_s"] = frame * period
            tab["track_id"] = np.tile(np.arange(rows, dtype=np.int64), due)
            writer.append_localizations(tab)
            b += due
            loc_stats["calls"] += 1
        loc_stats["batches"] = b
        loc_stats["t_stop"] = time.perf_counter()

    opts = WriterOptions(
        backend=backend,  # type: ignore[arg-type]
        shard_frames=shard_frames,
    )
    append = []
    t0 = time.perf_counter()
    writer = RunWriter(
        path,
        kind="live",
        plane_shape=(h, w),
        pixel_size_um=0.1,
        compression=compression,  # type: ignore[arg-type]
        options=opts,
    )
    feeder = None
    if localizations:
        feeder = threading.Thread(target=feed_localizations, args=(writer,))
        feeder.start()
    t_first = time.perf_counter()
    max_depth = 0
    for i in range(n):
        if fps:
            delay = t_first + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            max_depth = max(max_depth, writer.queue_depth)
        a = time.perf_counter()
        writer.append_frame(frames[i % len(frames)], {"t_s": i * 0.005})
        append.append(time.perf_counter() - a)
    t_stop = time.perf_counter()
    stop.set()
    if feeder is not None:
        feeder.join()
    stats = writer.stats
    writer.close()
    if to_disk:
        os.sync()
    t_end = time.perf_counter()
    dt = t_end - t_first
    size = sum(
        os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs
    )
    frame_files = sum(
        1 for f in os.listdir(path / "frames" / "0") if f.startswith("c.")
    )
    res: dict[str, Any] = {
        "mb_s": round(n * frames[0].nbytes / 1e6 / dt, 1),
        "append_ms_p50": _pct(append, 50),
        "append_ms_p99": _pct(append, 99),
        "write_ms_p50": round(stats.write_ms_p50, 3),
        "write_ms_p99": round(stats.write_ms_p99, 3),
        "open_ms": round((t_first - t0) * 1e3, 1),
        "latency_ms_p50": round(stats.latency_ms_p50, 3),
        "latency_ms_p99": round(stats.latency_ms_p99, 3),
        "compression_ratio": round(n * frames[0].nbytes / max(size, 1), 2),
        "frames": n,
        "frame_files": frame_files,
        # one file per shard_frames frames (per frame without shards)
        "frame_files_per_hour_at_400fps": -(-400 * 3600 // (shard_frames or 1)),
    }
    if fps:
        res["fps"] = fps
        res["fps_achieved"] = round((n - 1) / (t_stop - t_first), 1)
        res["max_queue_depth"] = max_depth
        res["queue_capacity"] = stats.queue_capacity
    if localizations:
        from axialtrack.store import open_run

        stored = open_run(path).n_localizations
        res["localization_rows_stored"] = stored
        span = loc_stats["t_stop"] - loc_stats["t_start"]
        res["localization_rows_per_s"] = round(stored / span)
        res["localization_append_calls"] = loc_stats["calls"]
    _reset(path)
    return res


_UNCLOSED = """
import os, sys, time, numpy as np
from axialtrack.store import RunWriter, WriterOptions
path, n, h, w, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
opts = WriterOptions(shard_frames=shards or None)
wr = RunWriter(path, kind="live", plane_shape=(h, w), pixel_size_um=0.1, options=opts)
frame = np.random.default_rng(0).poisson(100, (2, h, w)).astype(np.uint16)
for i in range(n):
    wr.append_frame(frame, {"t_s": i * 0.0025})
while wr.frames_committed < n - n // 7:
    time.sleep(0.001)
os._exit(0)  # ended without close(): the run stays open, as after a kill
"""


def bench_recover(
    out: Path, shape: tuple[int, int, int], n: int, shard_frames: int | None
) -> dict[str, Any]:
    """Time ``recover()`` on a run whose writer process ended without closing."""
    import subprocess
    import sys

    from axialtrack.store import open_run, recover

    path = out / "unclosed.zarr"
    _reset(path)
    _, h, w = shape
    argv = [str(v) for v in (path, n, h, w, shard_frames or 0)]
    subprocess.run([sys.executable, "-c", _UNCLOSED, *argv], check=True)
    t0 = time.perf_counter()
    report = recover(path)
    dt = time.perf_counter() - t0
    run = open_run(path)
    res = {
        "recover_s": round(dt, 3),
        "frames_kept": report.frames,
        "dropped_frame_files": report.dropped_frame_chunks,
        "frames_read_back": int(np.asarray(run.frames[run.n_frames - 1]).size > 0),
    }
    _reset(path)
    return res


def bench_shards(tmp: Path, mb: float, reps: int, sizes: list[int]) -> dict[str, Any]:
    """One file per frame against shards of ``sizes`` frames (interleaved)."""
    shape = (2, 512, 512)
    frames = make_frames(shape)
    n = max(16, int(mb * 1e6 // frames[0].nbytes))
    cases: list[int | None] = [None, *sizes]
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(reps):
        for sf in cases:
            name = "per_frame" if sf is None else f"shard_{sf}"
            runs.setdefault(name, []).append(
                bench_writer(tmp, frames, n, compression=None, shard_frames=sf)
            )
    out: dict[str, Any] = {"frames_per_case": n}
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["mb_s"])
        out[name] = {**best, "mb_s_runs": [r["mb_s"] for r in rs]}
    base = out["per_frame"]["mb_s"]
    out["mb_s_ratio_vs_per_frame"] = {
        k: round(v["mb_s"] / base, 2)
        for k, v in out.items()
        if isinstance(v, dict) and "mb_s" in v
    }
    nrec = max(64, n // 2)
    out["recover"] = {
        ("per_frame" if sf is None else f"shard_{sf}"): bench_recover(
            tmp, shape, nrec, sf
        )
        for sf in cases
    }
    return out


#: what the fresh process of ``--open`` runs: prints one JSON line
_OPEN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import dask.array, pandas  # napari has them loaded before any reader runs
from axialtrack.store import open_run
from axialtrack.napari_plugin import get_reader
t1 = time.perf_counter()
run = open_run(sys.argv[1])
t2 = time.perf_counter()
layers = get_reader(sys.argv[1])(sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({
    "import_s": t1 - t0, "open_run_s": t2 - t1, "layers_s": t3 - t2,
    "frames": run.n_frames, "localizations": run.n_localizations,
    "layers": {m["name"].split(" ", 1)[1]: [type(d).__name__, list(d.shape), kind]
               for d, m, kind in layers},
}))
"""


def write_long_run(
    path: Path, gb: float, per_frame: int = 100, track_len: int = 200
) -> dict[str, Any]:
    """A live run of ``gb`` GB of 2x512x512 frames, ``per_frame`` localizations
    per frame with the live pipeline's columns, in tracks of ``track_len``
    frames, and the per-track summary."""
    from axialtrack.pipeline.localize import TABLE_COLUMNS
    from axialtrack.store import LOCALIZATION_COLUMNS, FrameMeta

    frames = make_frames((2, 512, 512), 4)
    n = max(track_len, int(gb * 1e9 // frames[0].nbytes))
    rng = np.random.default_rng(1)
    batch = 50  # frames per localization batch, as the live analysis sends them
    t0 = time.perf_counter()
    with RunWriter(
        path,
        kind="live",
        plane_shape=(512, 512),
        pixel_size_um=0.108,
        frame_interval_s=0.0025,
        localization_columns={
            k: v for k, v in TABLE_COLUMNS.items() if k not in LOCALIZATION_COLUMNS
        },
    ) as w:
        for i in range(n):
            w.append_frame(frames[i % 4], FrameMeta(t_s=100.0 + i * 0.0025))
            if (i + 1) % batch == 0 or i == n - 1:
                f0 = i + 1 - ((i % batch) + 1)
                f = np.repeat(np.arange(f0, i + 1), per_frame)
                k = f.size
                cols: dict[str, np.ndarray] = {}
                for c, dt in TABLE_COLUMNS.items():
                    if dt == np.bool_:
                        cols[c] = rng.random(k) < 0.95
                    elif dt.kind in "iu":
                        cols[c] = rng.integers(0, 3, k).astype(dt)
                    else:
                        cols[c] = rng.normal(5.0, 2.0, k)
                cols["frame"] = f
                cols["t_s"] = 100.0 + f * 0.0025
                cols["track_id"] = (
                    np.tile(np.arange(per_frame), f.size // per_frame)
                    + (f // track_len) * per_frame
                ).astype(np.int64)
                w.append_localizations(cols)
        n_tracks = per_frame * (-(-n // track_len))
        tid = np.arange(n_tracks, dtype=np.int64)
        w.write_tracks(
            {
                "track_id": tid,
                "n_localizations": np.full(n_tracks, track_len, np.int64),
                "t_start_s": (tid // per_frame) * track_len * 0.0025,
                "mean_z_um": rng.normal(5.0, 1.0, n_tracks),
            }
        )
    write_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "frames": n,
        "localizations": n * per_frame,
        "tracks": int(n_tracks),
        "gb_on_disk": round(size / 1e9, 2),
        "write_s": round(write_s, 1),
    }


def bench_open(tmp: Path, gb: float, reps: int = 3) -> dict[str, Any]:
    """Write a long run (:func:`write_long_run`), time opening it in fresh
    processes, delete it."""
    import subprocess
    import sys

    path = tmp / "long.zarr"
    try:
        out: dict[str, Any] = {"run": write_long_run(path, gb)}
        runs = []
        for _ in range(reps):
            proc = subprocess.run(
                [sys.executable, "-c", _OPEN_SCRIPT, str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for key in ("import_s", "open_run_s", "layers_s"):
            out[key] = [round(r[key], 3) for r in runs]
        out["open_s"] = [round(r["open_run_s"] + r["layers_s"], 3) for r in runs]
        out["layers"] = runs[-1]["layers"]
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def best_of(reps: int, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a case ``reps`` times; keep the fastest run (machine noise is one-sided)."""
    runs = [fn(*args, **kwargs) for _ in range(reps)]
    best = max(runs, key=lambda r: r["mb_s"])
    if reps > 1:
        best = {**best, "mb_s_runs": [r["mb_s"] for r in runs]}
    return best


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="scratch directory (a real disk)")
    parser.add_argument("--mb", type=float, default=500, help="MB written per case")
    parser.add_argument(
        "--disk-mb", type=float, default=1200, help="MB per to-disk case (0: skip)"
    )
    parser.add_argument("--reps", type=int, default=2, help="runs per case (best)")
    parser.add_argument(
        "--paced-s", type=float, default=3, help="seconds of the paced case (0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="small run, for CI")
    parser.add_argument(
        "--shards",
        default="",
        help="only compare shards of these frame counts (e.g. 64,128,255) with "
        "one file per frame",
    )
    parser.add_argument(
        "--backends",
        default="direct,zarr,tensorstore",
        help="frame backends to compare (uncompressed)",
    )
    parser.add_argument(
        "--open",
        action="store_true",
        help="only time opening a long run (open_run and the napari reader)",
    )
    parser.add_argument(
        "--open-gb", type=float, default=10.0, help="frames of the --open run, GB"
    )
    args = parser.parse_args()
    mb, disk_mb, reps, paced_s = args.mb, args.disk_mb, args.reps, args.paced_s
    if args.quick:
        mb, disk_mb, reps, paced_s = 40, 0, 1, 0.5
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench_store_"))
    tmp.mkdir(parents=True, exist_ok=True)
    backends = [b for b in args.backends.split(",") if b]
    if "tensorstore" in backends:
        try:
            import tensorstore  # noqa: F401
        except ImportError:
            backends.remove("tensorstore")
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "dir": str(tmp),
        },
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "mb_per_case": mb,
        "reps": reps,
        "cases": {},
    }
    if args.open:
        try:
            result["open_long_run"] = bench_open(tmp, args.open_gb, reps=3)
        finally:
            if args.dir is None:
                shutil.rmtree(tmp, ignore_errors=True)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))
        return
    if args.shards:
        try:
            sizes = [int(v) for v in args.shards.split(",") if v]
            result["shards_2x512x512"] = bench_shards(tmp, mb, reps, sizes)
        finally:
            if args.dir is None:
                shutil.rmtree(tmp, ignore_errors=True)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))
        return
    try:
        # warm up the file system and page allocator; not reported
        warm = make_frames((2, 512, 512), 2)
        n_warm = max(8, int(min(mb, 300) * 1e6 // warm[0].nbytes))
        bench_baseline(tmp, warm, n_warm, "raw")
        for shape in ((2, 512, 512), (2, 1024, 1024)):
            frames = make_frames(shape)
            fb = frames[0].nbytes
            n = max(16, int(mb * 1e6 // fb))
            case: dict[str, Any] = {"frame_mb": fb / 1e6, "frames_per_case": n}
            case["baseline_raw"] = best_of(reps, bench_baseline, tmp, frames, n, "raw")
            case["baseline_npsave"] = best_of(
                reps, bench_baseline, tmp, frames, n, "npsave"
            )
            # with and without concurrent localizations, interleaved
            plain, locs = [], []
            for _ in range(reps):
                plain.append(bench_writer(tmp, frames, n, compression=None))
                locs.append(
                    bench_writer(tmp, frames, n, compression=None, localizations=True)
                )
            for name, runs in (
                ("writer_direct_raw", plain),
                ("writer_direct_raw_with_localizations", locs),
            ):
                best = max(runs, key=lambda r: r["mb_s"])
                case[name] = {**best, "mb_s_runs": [r["mb_s"] for r in runs]}
            for comp in ("blosc-lz4", "zstd"):
                case[f"writer_direct_{comp}"] = best_of(
                    reps, bench_writer, tmp, frames, n, compression=comp
                )
            for b in backends:
                if b != "direct":
                    case[f"writer_{b}_raw"] = best_of(
                        reps, bench_writer, tmp, frames, n, compression=None, backend=b
                    )
            if disk_mb > 0:
                nd = max(16, int(disk_mb * 1e6 // fb))
                case["to_disk_baseline_raw"] = bench_baseline(
                    tmp, frames, nd, "raw", to_disk=True
                )
                case["to_disk_writer_direct_raw"] = bench_writer(
                    tmp, frames, nd, compression=None, to_disk=True
                )
            base = case["baseline_raw"]["mb_s"]
            case["ratios_vs_baseline_raw"] = {
                k: round(v["mb_s"] / base, 2)
                for k, v in case.items()
                if isinstance(v, dict)
                and "mb_s" in v
                and k != "baseline_raw"
                and not k.startswith("to_disk")
            }
            if disk_mb > 0:
                case["ratio_to_disk_writer_vs_baseline"] = round(
                    case["to_disk_writer_direct_raw"]["mb_s"]
                    / case["to_disk_baseline_raw"]["mb_s"],
                    2,
                )
            w = case["writer_direct_raw"]["mb_s"]
            wl = case["writer_direct_raw_with_localizations"]["mb_s"]
            case["localizations_slowdown"] = round(1 - wl / w, 3)
            result["cases"]["x".join(map(str, shape))] = case
        if paced_s > 0:
            # a camera at 200 frames/s, with 200 localizations per frame appended
            # from another thread at the same rate, against the same without
            frames = make_frames((2, 512, 512))
            n = int(paced_s * 200)
            result["paced_2x512x512_200fps"] = {
                "without_localizations": bench_writer(
                    tmp, frames, n, compression=None, fps=200
                ),
                "with_localizations": bench_writer(
                    tmp, frames, n, compression=None, fps=200, localizations=True
                ),
            }
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    cpu = os.times()
    result["process_cpu_s"] = round(cpu.user + cpu.system, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Throughput and latency of the inference backends, side by side.

For every backend present (ONNX Runtime, torch-CPU, torch-CUDA, TensorRT; on GPUs
also fp16), times :meth:`Engine.infer` on ``uint16`` crop pairs at batch
1/16/64/256/1024 and prints JSON: items/s, per-batch p50/p99 latency (ms), and
the ratio of items/s to the baseline ``torch-eager`` (plain ``model(x)`` in eval
mode under ``no_grad`` on the CPU, default torch threads; its uint16 -> float32
conversion is timed too, as the engines' is). ``items_per_cpu_s`` divides by the
process CPU time instead of the wall time: on a busy machine it shows what the
backend costs, independent of how much CPU the other processes took.

Usage::

    python benchmarks/bench_engines.py [--bundle MODEL.axialmodel] [--quick]
        [--threads 1] [--device auto|cpu|cuda]

Without ``--bundle``, an untrained default :class:`AxialNet` bundle is written to
a temporary directory (same architecture, same cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from axialtrack.engine import BACKENDS, available_backends, select_engine
from axialtrack.engine.base import CPU_BUCKETS
from axialtrack.engine.onnx import OnnxRuntimeEngine
from axialtrack.model import AxialNet, ModelConfig, load_bundle, save_bundle
from axialtrack.pipeline.config import CameraCalibration

BATCHES = (1, 16, 64, 256, 1024)


def _inputs(n: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s] - s // 2
    amp = rng.uniform(100, 2000, (n, 2, 1, 1))
    w = rng.uniform(1.0, 2.5, (n, 2, 1, 1))
    img = rng.poisson(100 + amp * np.exp(-(xx**2 + yy**2) / (2 * w**2)))
    return img.astype(np.uint16), rng.uniform(-1, 1, (n, 2)).astype(np.float32)


def _time(fn: Callable[[], Any], batch: int, budget_s: float, min_iter: int) -> dict:
    for _ in range(3):
        fn()
    lat: list[float] = []
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    while len(lat) < min_iter or (
        time.perf_counter() - t_start < budget_s and len(lat) < 20000
    ):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    cpu = max(time.process_time() - cpu0, 1e-9)
    total = float(np.sum(lat))
    return {
        "items_per_s": round(batch * len(lat) / total, 1),
        "items_per_cpu_s": round(batch * len(lat) / cpu, 1),
        "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 4),
        "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 4),
        "iterations": len(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="model bundle (default: untrained)")
    ap.add_argument("--quick", action="store_true", help="short timing budget")
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of the engines"
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--batches",
        default=",".join(map(str, BATCHES)),
        help="comma-separated batch sizes",
    )
    ap.add_argument(
        "--chunks",
        default="16,32,64,128,256,1024",
        help="onnxruntime: largest buckets (chunk sizes) to compare on one batch "
        "of --chunk-batch pairs ('' to skip)",
    )
    ap.add_argument(
        "--chunk-batch",
        type=int,
        default=800,
        help="pairs per infer call in the chunk comparison (8 frames x 100)",
    )
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    budget, min_iter = (0.4, 5) if args.quick else (2.0, 20)

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            path = Path(args.bundle)
        else:
            torch.manual_seed(0)
            path = save_bundle(
                AxialNet(ModelConfig()).eval(),
                Path(tmp) / "bench",
                pixel_size_um=0.108333,
                plane_offset_um=0.5,
                layout="side-by-side",
                mirror="none",
                camera=CameraCalibration(),
                registration_affine=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                plane_shape=(256, 256),
            )
        bundle = load_bundle(path)
        s = bundle.crop_size
        pairs_all, xy_all = _inputs(max(batches), s)
        field = bundle.config.field_branch

        avail = available_backends()
        results: dict[str, Any] = {}

        # baseline: plain torch eager on the CPU, default threads
        default_threads = torch.get_num_threads()
        model = bundle.model.eval()
        base: dict[str, Any] = {}
        for b in batches:
            x, xy = pairs_all[:b], torch.from_numpy(xy_all[:b])

            def eager(x: np.ndarray = x, xy: torch.Tensor = xy) -> Any:
                with torch.no_grad():
                    img = torch.from_numpy(x.astype(np.float32))
                    return model(img, xy) if field else model(img)

            base[str(b)] = _time(eager, b, budget, min_iter)
        results["torch-eager"] = {
            "precision": "fp32",
            "threads": default_threads,
            "batches": base,
        }

        variants: list[tuple[str, str]] = []
        for name in BACKENDS:
            if avail[name] is not None:
                continue
            gpu = name in ("tensorrt", "torch-cuda")
            if (args.device == "cpu" and gpu) or (args.device == "cuda" and not gpu):
                continue
            variants.append((name, "fp32"))
            if gpu:
                variants.append((name, "fp16"))
        for name, prec in variants:
            label = name if prec == "fp32" else f"{name}-fp16"
            with select_engine(
                bundle,
                name,
                precision=prec,
                threads=args.threads,
                cache_dir=Path(tmp) / "engines" if not args.bundle else None,
            ) as eng:
                eng.warmup()
                rows: dict[str, Any] = {}
                for b in batches:
                    x, xy = pairs_all[:b], xy_all[:b]
                    rows[str(b)] = _time(
                        lambda x=x, xy=xy, eng=eng: eng.infer(x, xy),
                        b,
                        budget,
                        min_iter,
                    )
                    ref = base[str(b)]["items_per_s"]
                    rows[str(b)]["vs_torch_eager"] = round(
                        rows[str(b)]["items_per_s"] / ref, 2
                    )
                results[label] = {
                    "precision": prec,
                    "threads": getattr(eng, "threads", None) or torch.get_num_threads(),
                    "batches": rows,
                }
            torch.set_num_threads(default_threads)

        # onnxruntime: the same large batch in chunks of different sizes (CPU
        # caches): the default CPU_BUCKETS take the best of these
        chunking: dict[str, Any] = {}
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
        if chunks and avail["onnxruntime"] is None and args.device != "cuda":
            n = int(args.chunk_batch)
            x, xy = _inputs(n, s, seed=1)
            for c in chunks:
                with select_engine(
                    bundle, "onnxruntime", threads=args.threads, buckets=(1, c)
                ) as eng:
                    eng.warmup()
                    chunking[str(c)] = _time(
                        lambda eng=eng: eng.infer(x, xy), n, budget, min_iter
                    )
            # the background percentile inside the graph (TopK), as exported
            with OnnxRuntimeEngine(
                bundle, threads=args.threads, split_background=False
            ) as eng:
                eng.warmup()
                chunking["default, TopK in the graph"] = _time(
                    lambda eng=eng: eng.infer(x, xy), n, budget, min_iter
                )
            results["onnxruntime-chunks"] = {
                "batch": n,
                "default_largest_bucket": CPU_BUCKETS[-1],
                "chunk": chunking,
            }

    info = {
        "benchmark": "engines",
        "bundle": str(args.bundle) if args.bundle else "untrained AxialNet (default)",
        "crop_size": s,
        "input": f"uint16 (N, 2, {s}, {s}) + field xy" if field else "uint16",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
        },
        "quick": args.quick,
        "available": avail,
        "baseline": "torch-eager",
        "results": results,
    }
    print(json.dumps(info, indent=2))


def _version(mod: str) -> str | None:
    try:
        return str(__import__(mod).__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    main()

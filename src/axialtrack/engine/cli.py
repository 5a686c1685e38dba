"""The ``axialtrack compile`` subcommand."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from rich.console import Console

__all__ = ["add_parser", "cmd_compile"]

console = Console()


def add_parser(subparsers: Any) -> None:
    """Register ``compile`` on an ``add_subparsers()`` object."""
    from axialtrack._cli import positive_int

    from .select import ENGINE_CHOICES

    p = subparsers.add_parser(
        "compile",
        help="build and cache the inference engine of a model bundle",
        description="Select the fastest inference backend for a model bundle on "
        "this machine (TensorRT > torch-CUDA > ONNX Runtime > torch-CPU), build "
        "and cache its engine ahead of a session, and report a quick latency "
        "figure.",
    )
    p.add_argument("bundle", metavar="MODEL.axialmodel", help="model bundle")
    p.add_argument(
        "--backend",
        default="auto",
        choices=ENGINE_CHOICES,
        help="auto, tensorrt, torch-cuda, onnxruntime, torch-cpu or torch (auto)",
    )
    p.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp32", help="(fp32)"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="CPU intra-op threads"
    )
    p.add_argument(
        "--buckets",
        default=None,
        help="comma-separated batch buckets (default 1,16,64,256,1024)",
    )
    p.add_argument("--cache-dir", default=None, help="engine cache directory")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=64,
        help="batch of the latency figure (64)",
    )
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    """Handler of ``axialtrack compile``."""
    from axialtrack.model import BundleError, load_bundle

    from .select import select_engine

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        console.print(f"[red]Cannot load the model bundle:[/red] {exc}")
        return 2
    buckets = None
    if args.buckets:
        try:
            buckets = [int(b) for b in str(args.buckets).split(",") if b.strip()]
        except ValueError:
            console.print(f"[red]--buckets must be integers:[/red] {args.buckets}")
            return 2
    from .base import EngineError

    t0 = time.perf_counter()
    try:
        engine = select_engine(
            bundle,
            args.backend,
            precision=args.precision,
            threads=args.threads,
            buckets=buckets,
            cache_dir=args.cache_dir,
        )
    except (EngineError, ValueError) as exc:
        console.print(f"[red]Cannot build an engine:[/red] {exc}")
        return 2
    build_s = time.perf_counter() - t0
    with engine:
        engine.warmup()
        console.print(
            f"Backend [cyan]{engine.name}[/cyan] ({engine.precision}), buckets "
            f"{list(engine.buckets)}, ready in {build_s:.2f} s"
        )
        console.print(f"  why: {engine.reason}")
        status = getattr(engine, "cache_status", None)
        if status is not None:
            console.print(f"  engine cache: {status} ({engine.plan_path})")  # type: ignore[attr-defined]
        for batch in sorted({1, max(1, int(args.batch))}):
            ms = _latency_ms(engine, batch)
            console.print(
                f"  batch {batch}: {ms:.3f} ms per batch (median), "
                f"{1e3 * batch / ms:,.0f} pairs/s"
            )
    return 0


def _latency_ms(engine: Any, batch: int, repeats: int = 30) -> float:
    """Median wall time (ms) of ``engine.infer`` on ``batch`` synthetic pairs."""
    rng = np.random.default_rng(0)
    s = engine.crop_size
    pairs = rng.poisson(100.0, size=(batch, 2, s, s)).astype(np.uint16)
    xy = rng.uniform(-1, 1, size=(batch, 2)).astype(np.float32)
    engine.infer(pairs, xy)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.infer(pairs, xy)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))

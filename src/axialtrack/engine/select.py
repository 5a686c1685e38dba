"""Backend availability and automatic selection."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from axialtrack._deprecate import renamed_keyword
from axialtrack.model import Bundle, BundleError, load_bundle

from .base import BACKENDS, Engine, EngineError

__all__ = ["ENGINE_CHOICES", "available_backends", "make_engine", "select_engine"]

#: Accepted values of ``engine`` besides the backend names.
ALIASES = ("auto", "torch")
#: Every accepted value of ``engine`` (the ``--engine`` choices).
ENGINE_CHOICES: tuple[str, ...] = (*ALIASES, *BACKENDS)


def available_backends() -> dict[str, str | None]:
    """Backend name -> ``None`` if usable here, else why not.

    Probes CUDA (the driver's library, then torch, which is not imported where
    there is no driver) before looking for TensorRT, and never imports TensorRT
    (see :mod:`axialtrack.engine.tensorrt`).
    """
    from ._cuda import cuda_unavailable
    from .tensorrt import tensorrt_unavailable

    out: dict[str, str | None] = {
        "tensorrt": tensorrt_unavailable(),
        "torch-cuda": cuda_unavailable(),
    }
    if importlib.util.find_spec("onnxruntime") is None:
        out["onnxruntime"] = "onnxruntime is not installed"
    else:
        import onnxruntime as ort

        provs = ort.get_available_providers()
        out["onnxruntime"] = (
            None
            if "CPUExecutionProvider" in provs
            else f"no CPUExecutionProvider (providers: {provs})"
        )
    out["torch-cpu"] = None
    return out


def make_engine(
    name: str,
    bundle: Bundle,
    *,
    precision: str = "fp32",
    threads: int | None = None,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    reason: str = "",
) -> Engine:
    """Construct the engine of backend ``name`` (no availability check)."""
    if name == "tensorrt":
        from .tensorrt import TensorRTEngine

        return TensorRTEngine(
            bundle,
            precision=precision,
            buckets=buckets,
            cache_dir=cache_dir,
            reason=reason,
        )
    if name in ("torch-cuda", "torch-cpu"):
        from .torch_backend import TorchEngine

        return TorchEngine(
            bundle,
            device="cuda" if name == "torch-cuda" else "cpu",
            precision=precision,
            threads=threads,
            buckets=buckets,
            reason=reason,
        )
    if name == "onnxruntime":
        from .onnx import OnnxRuntimeEngine

        return OnnxRuntimeEngine(
            bundle,
            threads=threads,
            buckets=buckets,
            precision=precision,
            reason=reason,
        )
    raise EngineError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _summary(avail: dict[str, str | None]) -> str:
    ok = [k for k, v in avail.items() if v is None]
    return "available: " + (", ".join(ok) if ok else "none")


def select_engine(
    bundle: Bundle | str | Path,
    engine: str = "auto",
    *,
    precision: str = "fp32",
    threads: int | None = None,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    prefer: str | None = None,
) -> Engine:
    """The fastest available engine for a model bundle.

    Parameters
    ----------
    bundle
        A loaded :class:`~axialtrack.model.Bundle` or the path of one.
    engine
        ``"auto"``: TensorRT > torch-CUDA > ONNX Runtime > torch-CPU, the first
        that is available and builds; or one backend name (``"tensorrt"``,
        ``"torch-cuda"``, ``"onnxruntime"``, ``"torch-cpu"``; ``"torch"`` is
        torch-CUDA if a GPU is present, else torch-CPU), which must be available.
    precision
        ``"fp32"`` or ``"fp16"``. fp16 is for the GPU backends; with ``"auto"``
        on a CPU-only machine it falls back to fp32 (noted in ``reason``).
    threads
        Intra-op threads of the CPU backends (default: 1 on machines with up to
        4 cores).
    buckets
        Batch buckets (default :data:`~axialtrack.engine.DEFAULT_BUCKETS`;
        :data:`~axialtrack.engine.base.CPU_BUCKETS` for onnxruntime).
    cache_dir
        Compiled-engine cache directory (TensorRT).
    prefer
        Deprecated name of ``engine`` (a ``DeprecationWarning``).

    Returns
    -------
    Engine
        With ``.name`` and ``.reason`` saying what was chosen and why.

    Raises
    ------
    EngineError
        An explicitly requested backend is unavailable or fails to build (the
        message says why and what is available), or no backend works.
    axialtrack.model.BundleError
        The bundle is missing or corrupt.
    """
    if prefer is not None:
        engine = renamed_keyword("prefer", "engine", prefer, engine, "auto")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16'; got {precision!r}")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    avail = available_backends()
    kw = {"threads": threads, "buckets": buckets, "cache_dir": cache_dir}
    if engine != "auto":
        name = engine
        if engine == "torch":
            name = "torch-cuda" if avail["torch-cuda"] is None else "torch-cpu"
        if name not in BACKENDS:
            raise EngineError(
                f"unknown backend {engine!r}; choose from {', '.join(ENGINE_CHOICES)}"
            )
        why = avail[name]
        if why is not None:
            raise EngineError(
                f"backend {name!r} is unavailable: {why} ({_summary(avail)})"
            )
        try:
            return make_engine(
                name,
                bundle,
                precision=precision,
                reason=f"{name} requested (engine={engine!r})",
                **kw,  # type: ignore[arg-type]
            )
        except EngineError as exc:
            raise EngineError(f"{exc} ({_summary(avail)})") from exc

    skipped: list[str] = []
    for name in BACKENDS:
        why = avail[name]
        if why is not None:
            skipped.append(f"{name}: {why}")
            continue
        prec = precision
        note = ""
        if precision == "fp16" and name in ("onnxruntime", "torch-cpu"):
            prec = "fp32"
            note = "; fp16 is GPU-only, running fp32"
        reason = f"auto: {name} is the fastest available backend" + (
            f" (skipped {'; '.join(skipped)})" if skipped else ""
        )
        try:
            return make_engine(name, bundle, precision=prec, reason=reason + note, **kw)  # type: ignore[arg-type]
        except BundleError:
            raise  # the bundle is at fault, not the backend: no other one helps
        except Exception as exc:
            skipped.append(f"{name}: failed to build ({exc})")
    raise EngineError("no inference backend works: " + "; ".join(skipped))

"""TensorRT backend: engine built from the bundle's ONNX, cached per GPU.

TensorRT is imported lazily and only after a CUDA GPU was found (the driver's
library, then ``torch.cuda.is_available()``): on a machine without a usable GPU
its runtime can crash the process instead of raising. Buffers are torch CUDA
tensors; execution uses ``set_tensor_address`` and ``execute_async_v3`` on a
torch CUDA stream.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.model import Bundle

from .base import Engine, EngineError
from .cache import (
    EngineKey,
    cache_root,
    invalidate,
    load_or_build,
    profile_of,
    sha256_file,
)

__all__ = ["TensorRTEngine", "engine_key", "import_tensorrt", "tensorrt_unavailable"]

logger = logging.getLogger(__name__)

#: Builder workspace limit (bytes).
WORKSPACE_BYTES = 1 << 30


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot be used here, or ``None`` (does not import it)."""
    import importlib.util

    from ._cuda import cuda_unavailable

    why = cuda_unavailable()
    if why is not None:
        return why
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install tensorrt)"
    return None


def import_tensorrt() -> Any:
    """Import ``tensorrt`` after checking that a CUDA GPU is present."""
    why = tensorrt_unavailable()
    if why is not None:
        raise EngineError(f"tensorrt unavailable: {why}")
    try:
        import tensorrt as trt
    except Exception as exc:  # broken installs raise more than ImportError
        raise EngineError(f"tensorrt unavailable: import failed: {exc}") from exc
    return trt


def engine_key(
    onnx_path: Path,
    precision: str,
    buckets: Sequence[int],
    *,
    trt_version: str,
    device: int = 0,
) -> EngineKey:
    """The cache key of a TensorRT plan for the current GPU."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        backend_version=str(trt_version),
        gpu_name=torch.cuda.get_device_name(device),
        compute_capability=f"{major}.{minor}",
        precision=precision,
        profile=profile_of(buckets),
    )


class _TrtLogger:
    """Factory of a TensorRT logger that forwards to :mod:`logging`."""

    @staticmethod
    def make(trt: Any) -> Any:
        class Forward(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in (
                    trt.ILogger.Severity.INTERNAL_ERROR,
                    trt.ILogger.Severity.ERROR,
                ):
                    logger.error("tensorrt: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    logger.warning("tensorrt: %s", msg)
                else:
                    logger.debug("tensorrt: %s", msg)

        return Forward()


def build_plan(
    trt: Any,
    onnx_path: Path,
    precision: str,
    buckets: Sequence[int],
    *,
    timing_cache: Path | None = None,
    trt_logger: Any = None,
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file.

    A strongly typed network (types from the ONNX; fp16 via :func:`to_half_onnx`)
    with one optimization profile spanning the buckets: min = smallest,
    opt = a middle bucket, max = largest.
    """
    from .cache import write_atomic
    from .half_onnx import to_half_onnx

    log = trt_logger or trt.Logger(trt.Logger.WARNING)
    buckets = profile_of(buckets)
    with tempfile.TemporaryDirectory() as tmp:
        src = onnx_path
        if precision == "fp16":
            src = to_half_onnx(onnx_path, Path(tmp) / "model_fp16.onnx")
        builder = trt.Builder(log)
        flags = 0
        typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if typed is not None:
            flags |= 1 << int(typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, log)
        if not parser.parse(Path(src).read_bytes(), str(src)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"tensorrt cannot parse {src}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    opt = buckets[len(buckets) // 2]
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(int(d) for d in t.shape[1:])
        profile.set_shape(
            t.name, (buckets[0], *rest), (opt, *rest), (buckets[-1], *rest)
        )
    config.add_optimization_profile(profile)
    blob = b""
    if timing_cache is not None and timing_cache.is_file():
        blob = timing_cache.read_bytes()
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=True)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"tensorrt failed to build an engine from {onnx_path}")
    if timing_cache is not None:
        try:
            write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
        except OSError as exc:  # the cache is an optimization only
            logger.warning("cannot write the tensorrt timing cache: %s", exc)
    return bytes(plan)


class TensorRTEngine(Engine):
    """The bundle's ONNX compiled by TensorRT for this GPU (cached).

    Parameters
    ----------
    bundle
        The model bundle.
    precision
        ``"fp32"`` or ``"fp16"`` (built from a half-precision copy of the ONNX
        whose input normalization stays fp32).
    buckets
        Batch buckets (the optimization profile spans them; chunks are padded to
        their bucket).
    cache_dir
        Engine cache directory (see :func:`~axialtrack.engine.cache.cache_root`).
    device
        CUDA device index.
    reason
        Why this backend was chosen.
    """

    name = "tensorrt"
    pad_to_bucket = True

    def __init__(
        self,
        bundle: Bundle,
        *,
        precision: str = "fp32",
        buckets: Sequence[int] | None = None,
        cache_dir: str | Path | None = None,
        device: int = 0,
        reason: str = "",
    ) -> None:
        super().__init__(bundle, precision=precision, buckets=buckets, reason=reason)
        import torch

        trt = import_tensorrt()
        self._trt = trt
        self._torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.cache_dir = cache_root(cache_dir)
        self.key = engine_key(
            bundle.onnx_path,
            precision,
            self.buckets,
            trt_version=trt.__version__,
            device=device,
        )
        self._log = _TrtLogger.make(trt)
        timing = self.cache_dir / (
            f"timing-trt{self.key.backend_version}-"
            f"sm{self.key.compute_capability.replace('.', '')}.cache"
        )

        def builder() -> bytes:
            logger.info("building a tensorrt %s engine for %s", precision, bundle.path)
            return build_plan(
                trt,
                bundle.onnx_path,
                precision,
                self.buckets,
                timing_cache=timing,
                trt_logger=self._log,
            )

        plan, self.cache_status = load_or_build(
            self.key, builder, self.cache_dir, log=logger.info
        )
        self._runtime = trt.Runtime(self._log)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            # a plan that passed the hash check but does not load: rebuild once
            invalidate(self.key, self.cache_dir)
            plan, _ = load_or_build(self.key, builder, self.cache_dir)
            self.cache_status = "rebuilt: the cached plan did not deserialize"
            engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError("tensorrt could not deserialize the engine it built")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
            else:
                self._outputs.append(name)
        self._stream = torch.cuda.Stream(self.device)
        self._dev: dict[int, dict[str, Any]] = {}

    @property
    def plan_path(self) -> Path:
        """Path of the cached plan."""
        from .cache import plan_path

        return plan_path(self.key, self.cache_dir)

    def _alloc(self, shape: tuple[int, ...]) -> np.ndarray:
        torch = self._torch
        return torch.zeros(shape, dtype=torch.float32).pin_memory().numpy()

    def _buffers(self, bucket: int) -> dict[str, Any]:
        bufs = self._dev.get(bucket)
        if bufs is None:
            torch = self._torch
            s = self.crop_size
            shapes = {"image": (bucket, 2, s, s), "xy": (bucket, 2)}
            bufs = {}
            for name in self._inputs:
                bufs[name] = torch.zeros(
                    shapes.get(name, (bucket, 2)), device=self.device
                )
            for name in self._outputs:
                bufs[name] = torch.zeros((bucket, self.n_outputs), device=self.device)
            self._dev[bucket] = bufs
        return bufs

    def _forward(
        self, pairs: np.ndarray, xy: np.ndarray | None, bucket: int
    ) -> np.ndarray:
        torch = self._torch
        n = pairs.shape[0]
        img, xyb = self._stage(pairs, xy, bucket)
        ctx = self._context
        host = {"image": img, "xy": xyb}
        with torch.cuda.stream(self._stream):
            # made (zero-filled) on this stream, so the fill is ordered before
            # the copies and the execution below
            bufs = self._buffers(bucket)
            for name in self._inputs:
                src = host.get(name)
                if src is None:
                    raise EngineError(f"no host data for engine input {name!r}")
                bufs[name].copy_(torch.from_numpy(src), non_blocking=True)
                ctx.set_input_shape(name, tuple(bufs[name].shape))
                ctx.set_tensor_address(name, int(bufs[name].data_ptr()))
            for name in self._outputs:
                ctx.set_tensor_address(name, int(bufs[name].data_ptr()))
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise EngineError("tensorrt execution failed")
            out = bufs[self._outputs[0]].cpu()
        return out.numpy()[:n]

    def close(self) -> None:
        """Release the engine, its context and device buffers."""
        super().close()
        self._dev.clear()
        self._context = None
        self._engine = None

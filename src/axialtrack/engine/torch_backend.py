"""Torch backend (CPU and CUDA): inference mode, channels_last, FP16, CUDA graphs."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from axialtrack.model import Bundle

from .base import Engine, EngineError

__all__ = ["TorchEngine", "half_model"]

logger = logging.getLogger(__name__)


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class _HalfWrapper(nn.Module):
    """fp32 in and out; the input normalization in fp32, the rest in fp16.

    Raw counts reach 65535 (uint16) and the background-subtracted sum of a crop
    pair is larger still, beyond the fp16 range; after normalization a typical
    pixel is O(1) and fp16 is safe.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        m = copy.deepcopy(model).half()
        norm: nn.Module = model.normalize  # type: ignore[assignment]
        m.normalize = nn.Sequential(_Cast(torch.float32), norm, _Cast(torch.float16))
        self.model = m

    def forward(
        self, image: torch.Tensor, xy: torch.Tensor | None = None
    ) -> torch.Tensor:
        xy16 = None if xy is None else xy.half()
        return self.model(image, xy16).float()


def half_model(model: nn.Module) -> nn.Module:
    """``model`` in fp16 with fp32 inputs, outputs and input normalization."""
    return _HalfWrapper(model)


class TorchEngine(Engine):
    """The bundle's torch model, on the CPU or a CUDA GPU.

    Runs in inference mode with the weights in channels_last memory format. On
    CUDA, chunks are padded to their bucket and, with ``cuda_graphs``, each
    bucket is captured as a CUDA graph on first use and replayed afterwards.

    Parameters
    ----------
    bundle
        The model bundle.
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision
        ``"fp32"`` or ``"fp16"`` (CUDA only; the input normalization stays fp32).
    threads
        Torch intra-op threads (CPU; sets the process-wide ``torch`` setting).
        ``None`` leaves it as is.
    buckets
        Batch buckets.
    cuda_graphs
        Capture one CUDA graph per bucket (CUDA only). ``AXIALTRACK_CUDA_GRAPHS=0``
        in the environment turns them off; a capture that fails logs a warning
        and the engine goes on without graphs.
    reason
        Why this backend was chosen.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        buckets: Sequence[int] | None = None,
        cuda_graphs: bool = True,
        reason: str = "",
    ) -> None:
        dev = torch.device(device)
        self.device = dev
        self.name = "torch-cuda" if dev.type == "cuda" else "torch-cpu"
        self.pad_to_bucket = dev.type == "cuda"
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("torch-cuda: torch sees no CUDA GPU")
        if dev.type not in ("cpu", "cuda"):
            raise EngineError(f"unsupported torch device {device!r} (cpu or cuda)")
        if precision == "fp16" and dev.type != "cuda":
            raise EngineError(
                "torch-cpu runs this model in fp32 only (fp16 convolutions on the "
                "CPU are slow or unsupported); use precision='fp32'"
            )
        super().__init__(bundle, precision=precision, buckets=buckets, reason=reason)
        if threads and dev.type == "cpu":
            torch.set_num_threads(int(threads))
        self.threads = threads
        model: nn.Module = copy.deepcopy(bundle.model).eval()
        if precision == "fp16":
            model = half_model(model).eval()
        self.model = model.to(dev).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        graphs_env = os.environ.get("AXIALTRACK_CUDA_GRAPHS", "")
        self.cuda_graphs = bool(
            cuda_graphs and dev.type == "cuda" and graphs_env.strip() != "0"
        )
        self._dev_img: dict[int, torch.Tensor] = {}
        self._dev_xy: dict[int, torch.Tensor] = {}
        self._dev_out: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, Any] = {}
        self._stream: Any = None
        if dev.type == "cuda":
            self._stream = torch.cuda.Stream(dev)
            # the weights were moved and converted on the default stream
            self._stream.wait_stream(torch.cuda.current_stream(dev))

    def _alloc(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.device.type == "cuda":
            return torch.zeros(shape, dtype=torch.float32).pin_memory().numpy()
        return np.zeros(shape, np.float32)

    def _run(self, img: torch.Tensor, xy: torch.Tensor | None) -> torch.Tensor:
        return self.model(img, xy) if xy is not None else self.model(img)

    def _forward(
        self, pairs: np.ndarray, xy: np.ndarray | None, bucket: int
    ) -> np.ndarray:
        n = pairs.shape[0]
        img_np, xy_np = self._stage(pairs, xy, bucket)
        img = torch.from_numpy(img_np)
        xyt = None if xy_np is None else torch.from_numpy(xy_np)
        with torch.inference_mode():
            if self.device.type == "cpu":
                return self._run(img, xyt).numpy()[:n]
            return self._forward_cuda(img, xyt, bucket)[:n]

    def _forward_cuda(
        self, img: torch.Tensor, xy: torch.Tensor | None, bucket: int
    ) -> np.ndarray:
        stream = self._stream
        with torch.cuda.stream(stream):
            if not self.cuda_graphs:
                out = self._run(
                    img.to(self.device, non_blocking=True),
                    None if xy is None else xy.to(self.device, non_blocking=True),
                )
                res = out.cpu()
                return res.numpy()
            if bucket not in self._graphs:
                try:
                    self._capture(bucket, xy is not None)
                except Exception as exc:  # an op that cannot be captured here
                    logger.warning(
                        "torch-cuda: CUDA graph capture of bucket %d failed (%s: "
                        "%s); running without graphs",
                        bucket,
                        type(exc).__name__,
                        exc,
                    )
                    self.cuda_graphs = False
                    self._graphs.clear()
                    return self._forward_cuda(img, xy, bucket)
            self._dev_img[bucket].copy_(img, non_blocking=True)
            if xy is not None:
                self._dev_xy[bucket].copy_(xy, non_blocking=True)
            self._graphs[bucket].replay()
            res = self._dev_out[bucket].cpu()
        return res.numpy()

    def _capture(self, bucket: int, with_xy: bool) -> None:
        s = self.crop_size
        d_img = torch.zeros((bucket, 2, s, s), device=self.device)
        d_xy = torch.zeros((bucket, 2), device=self.device) if with_xy else None
        # warm up on the side stream (cuDNN autotuning, lazy allocations)
        for _ in range(3):
            self._run(d_img, d_xy)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            out = self._run(d_img, d_xy)
        self._dev_img[bucket] = d_img
        if d_xy is not None:
            self._dev_xy[bucket] = d_xy
        self._dev_out[bucket] = out
        self._graphs[bucket] = graph

    def close(self) -> None:
        """Drop graphs and device buffers."""
        super().close()
        self._graphs.clear()
        self._dev_img.clear()
        self._dev_xy.clear()
        self._dev_out.clear()

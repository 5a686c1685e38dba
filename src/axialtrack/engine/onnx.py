"""ONNX Runtime backend (CPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from axialtrack.model import Bundle

from ._ort_graph import BACKGROUND_INPUT, SplitGraph, kth_smallest, split_background
from .base import CPU_BUCKETS, Engine, EngineError

__all__ = ["OnnxRuntimeEngine", "default_threads"]

logger = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads by default: 1 on small machines (<= 4 cores), else up to 4.

    On a few cores, one thread per inference session leaves the others to the
    acquisition, detection and writer threads, and one thread is nearly as fast
    for the small crops this model sees.
    """
    n = os.cpu_count() or 1
    return 1 if n <= 4 else min(4, n // 2)


class OnnxRuntimeEngine(Engine):
    """The bundle's ``model.onnx`` on ONNX Runtime's CPU execution provider.

    Parameters
    ----------
    bundle
        The model bundle.
    threads
        Intra-op threads (default :func:`default_threads`).
    buckets
        Batch buckets; chunks of at most the largest run as one call. The exact
        batch runs (dynamic shapes are free on the CPU), so no padding. Default
        :data:`~axialtrack.engine.base.CPU_BUCKETS`: large chunks fall out of
        the caches and run slower per pair.
    optimization
        ONNX Runtime graph optimization level: ``"all"`` (default: constant
        folding, Conv fusions and layout transforms), ``"extended"``, ``"basic"``
        or ``"disable"``.
    precision
        Only ``"fp32"``.
    split_background
        Compute the input normalization's background percentile with
        ``numpy.partition`` instead of the graph's ``TopK`` (the same value,
        about a quarter less time per pair). The rewritten graph is used only
        if it matches the original on a probe batch; :attr:`background_split`
        says whether it is.
    reason
        Why this backend was chosen.
    """

    name = "onnxruntime"
    pad_to_bucket = False

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int | None = None,
        buckets: Sequence[int] | None = None,
        optimization: str = "all",
        precision: str = "fp32",
        split_background: bool = True,
        reason: str = "",
    ) -> None:
        if precision != "fp32":
            raise EngineError(
                "onnxruntime runs this model in fp32 only; use precision='fp32' "
                "(fp16 is for the GPU backends)"
            )
        super().__init__(
            bundle,
            precision=precision,
            buckets=CPU_BUCKETS if buckets is None else buckets,
            reason=reason,
        )
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(
                f"optimization must be one of {sorted(levels)}; got {optimization!r}"
            )
        self.threads = int(threads) if threads else default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = levels[optimization]
        opts.log_severity_level = 3
        self._opts = opts
        try:
            model_bytes = bundle.onnx_path.read_bytes()
            self._session: Any = ort.InferenceSession(
                model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(
                f"onnxruntime cannot load {bundle.onnx_path}: {exc}"
            ) from exc
        from axialtrack.model.bundle import check_onnx_input

        check_onnx_input(bundle, self._session.get_inputs()[0].shape)
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_name = self._session.get_outputs()[0].name
        self._split: SplitGraph | None = None
        if split_background:
            self._try_split(model_bytes)
        self.optimization = optimization

    @property
    def background_split(self) -> bool:
        """Whether the background percentile runs in numpy (``split_background``)."""
        return self._split is not None

    def _try_split(self, model_bytes: bytes) -> None:
        """Use the graph without ``TopK`` if it gives the same outputs."""
        import onnxruntime as ort

        try:
            split = split_background(model_bytes, self.bundle.config.channels)
            if split is None:
                return
            session = ort.InferenceSession(
                split.model_bytes,
                sess_options=self._opts,
                providers=["CPUExecutionProvider"],
            )
            rng = np.random.default_rng(0)
            s = self.crop_size
            img = rng.poisson(100.0, (32, 2, s, s)).astype(np.float32)
            img[:, :, s // 2, s // 2] += rng.uniform(100, 5000, (32, 2))
            xy = rng.uniform(-1, 1, (32, 2)).astype(np.float32)
            ref = self._run(self._session, img, xy, None)
            got = self._run(session, img, xy, split)
        except Exception as exc:  # any failure: keep the original graph
            logger.debug("background split not used: %s", exc)
            return
        if got.shape == ref.shape and np.allclose(got, ref, rtol=1e-4, atol=1e-5):
            self._session, self._split = session, split
        else:
            logger.warning(
                "%s: the graph without TopK differs from the original (max %.3g); "
                "using the original",
                self.bundle.onnx_path,
                float(np.max(np.abs(got - ref))) if got.shape == ref.shape else -1,
            )

    def _run(
        self,
        session: Any,
        img: np.ndarray,
        xy: np.ndarray | None,
        split: SplitGraph | None,
    ) -> np.ndarray:
        feeds: dict[str, Any] = {self._input_names[0]: img}
        if len(self._input_names) > 1:
            feeds[self._input_names[1]] = xy
        if split is not None:
            feeds[BACKGROUND_INPUT] = kth_smallest(img, split.k, split.channels)
        return np.asarray(session.run([self._output_name], feeds)[0])

    def _forward(
        self, pairs: np.ndarray, xy: np.ndarray | None, bucket: int
    ) -> np.ndarray:
        img, xyb = self._stage(pairs, xy, bucket)
        out = self._run(self._session, img, xyb, self._split)
        return out[: pairs.shape[0]]

    def close(self) -> None:
        """Drop the session."""
        super().close()
        self._session = None

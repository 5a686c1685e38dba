"""Inference engines: one interface over ONNX Runtime, torch and TensorRT.

The live path calls :meth:`Engine.infer` on crop pairs and gets ``dz_um`` (and
``sigma_z_um``, ``dx_px``, ``dy_px`` where the model has those heads) from the
fastest backend the machine has: :func:`select_engine` picks TensorRT >
torch-CUDA > ONNX Runtime > torch-CPU by availability and records why in
:attr:`Engine.reason`. Batches of any size are split and padded to fixed bucket
sizes (:data:`DEFAULT_BUCKETS`); TensorRT engines are cached per GPU (see
:mod:`axialtrack.engine.cache`).
"""

from __future__ import annotations

from .base import BACKENDS, DEFAULT_BUCKETS, Engine, EngineError, InferResult
from .select import ENGINE_CHOICES, available_backends, select_engine

__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKETS",
    "ENGINE_CHOICES",
    "Engine",
    "EngineError",
    "InferResult",
    "available_backends",
    "select_engine",
]

"""Axial localization model: network, training, evaluation, model bundle.

The network (:class:`AxialNet`) regresses ``dz_um`` (``z_um = stage_z_um + dz_um``)
from a dual-plane crop pair and, optionally, the normalized field position; it
can also predict an uncertainty ``sigma_z_um`` and the sub-pixel offset. The input
normalization is part of the network. :func:`train` fits it to calibration
examples (:func:`train_from_config`: as ``axialtrack train`` does, with
:class:`TrainConfig`), :func:`evaluate` measures bias and precision on held-out
beads against the Cramer-Rao bound, and :func:`save_bundle` /
:func:`load_bundle` write and read the ``.axialmodel`` bundle (weights,
verified ONNX, metadata).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .bundle import (
    BUNDLE_SUFFIX,
    FORMAT_VERSION,
    Bundle,
    BundleError,
    export_onnx,
    load_bundle,
    save_bundle,
    verify_onnx,
)
from .config import DEFAULT_STEPS, DEFAULT_SYNTHETIC, ModelConfig, TrainConfig

if TYPE_CHECKING:
    from ._data import (
        CalibrationData,
        examples_hash,
        load_calibration,
        subpixel_targets,
        synthetic_examples,
    )
    from ._evaluate import (
        CRLBSpec,
        EvalResult,
        crlb_stage_um,
        evaluate,
        sim_crlb_spec,
    )
    from ._losses import augment, physics_deviance
    from ._recipe import RecipeError, train_from_config
    from ._train import TrainResult, train, train_ensemble
    from .network import AxialEnsemble, AxialNet, Network, PairNormalization, predict

# the names below need torch (or the calibration readers): their modules are
# imported on first use, so that reading a bundle (the live path with
# onnxruntime) does not import torch
_LAZY = {
    **dict.fromkeys(
        (
            "CalibrationData",
            "examples_hash",
            "load_calibration",
            "subpixel_targets",
            "synthetic_examples",
        ),
        "._data",
    ),
    **dict.fromkeys(
        ("CRLBSpec", "EvalResult", "crlb_stage_um", "evaluate", "sim_crlb_spec"),
        "._evaluate",
    ),
    **dict.fromkeys(("augment", "physics_deviance"), "._losses"),
    **dict.fromkeys(("RecipeError", "train_from_config"), "._recipe"),
    **dict.fromkeys(("TrainResult", "train", "train_ensemble"), "._train"),
    **dict.fromkeys(
        ("AxialEnsemble", "AxialNet", "Network", "PairNormalization", "predict"),
        ".network",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BUNDLE_SUFFIX",
    "DEFAULT_STEPS",
    "DEFAULT_SYNTHETIC",
    "FORMAT_VERSION",
    "AxialEnsemble",
    "AxialNet",
    "Bundle",
    "BundleError",
    "CRLBSpec",
    "CalibrationData",
    "EvalResult",
    "ModelConfig",
    "Network",
    "PairNormalization",
    "RecipeError",
    "TrainConfig",
    "TrainResult",
    "augment",
    "crlb_stage_um",
    "evaluate",
    "examples_hash",
    "export_onnx",
    "load_bundle",
    "load_calibration",
    "physics_deviance",
    "predict",
    "save_bundle",
    "sim_crlb_spec",
    "subpixel_targets",
    "synthetic_examples",
    "train",
    "train_ensemble",
    "train_from_config",
    "verify_onnx",
]

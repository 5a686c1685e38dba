"""Axial localization model: network, training, evaluation, model bundle.

The network (:class:`AxialNet`) regresses ``dz_um`` (``z_um = stage_z_um + dz_um``)
from a dual-plane crop pair and, optionally, the normalized field position; it
can also predict an uncertainty ``sigma_z_um`` and the sub-pixel offset. The input
normalization is part of the network. :func:`train` fits it to calibration
examples, :func:`evaluate` measures bias and precision on held-out beads against
the Cramer-Rao bound, and :func:`save_bundle` / :func:`load_bundle` write and read
the ``.axialmodel`` bundle (weights, verified ONNX, metadata).
"""

from __future__ import annotations

import importlib
import sys
import types
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
from .config import ModelConfig

if TYPE_CHECKING:
    from .evaluate import (
        CRLBSpec,
        EvalResult,
        crlb_stage_um,
        evaluate,
        sim_crlb_spec,
    )
    from .network import AxialEnsemble, AxialNet, Network, PairNormalization
    from .train import (
        CalibrationData,
        TrainResult,
        augment,
        examples_hash,
        load_calibration,
        predict,
        subpixel_targets,
        train,
        train_ensemble,
    )

# the names below need torch: their modules are imported on first use, so that
# reading a bundle (the live path with onnxruntime) does not import torch
_LAZY = {
    **dict.fromkeys(
        ("CRLBSpec", "EvalResult", "crlb_stage_um", "evaluate", "sim_crlb_spec"),
        ".evaluate",
    ),
    **dict.fromkeys(
        ("AxialEnsemble", "AxialNet", "Network", "PairNormalization"), ".network"
    ),
    **dict.fromkeys(
        (
            "CalibrationData",
            "TrainResult",
            "augment",
            "examples_hash",
            "load_calibration",
            "predict",
            "subpixel_targets",
            "train",
            "train_ensemble",
        ),
        ".train",
    ),
}


class _Package(types.ModuleType):
    """This package: importing its submodule ``train`` (or ``evaluate``) must not
    rebind the package's ``train`` (``evaluate``) from the function to the
    module, as the import system does when a submodule is first loaded (the
    submodule stays importable as ``axialtrack.model.train``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "TrainResult",
    "augment",
    "crlb_stage_um",
    "evaluate",
    "examples_hash",
    "export_onnx",
    "load_bundle",
    "load_calibration",
    "predict",
    "save_bundle",
    "sim_crlb_spec",
    "subpixel_targets",
    "train",
    "train_ensemble",
    "verify_onnx",
]

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
from .evaluate import CRLBSpec, EvalResult, crlb_stage_um, evaluate, sim_crlb_spec
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

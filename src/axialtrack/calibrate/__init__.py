"""Bead calibration analysis: registration, bead QC, reference Z, training examples.

:func:`analyze` turns a :class:`CalibrationStack` (dual-plane bead Z-stacks over
several fields) into a :class:`CalibrationResult`: the plane-0 -> plane-1 affine,
a bead table with reference Z (stage frame of plane 0) and rejection reasons,
training examples split by bead, and a JSON QC summary. :func:`write_qc`,
:func:`save_examples` and :func:`write_report` store them.
"""

from __future__ import annotations

from ._result_store import read_beads, write_qc, write_rig
from .analysis import (
    AUTO_METHOD,
    REJECT_REASONS,
    AnalysisConfig,
    CalibrationResult,
    analyze,
)
from .errors import CalibrationError, RegistrationError
from .examples import (
    SPLITS,
    CalibrationDataset,
    Examples,
    load_examples,
    save_examples,
    split_by_bead,
)
from .registration import Registration
from .report import write_report
from .stack import CalibrationStack

__all__ = [
    "AUTO_METHOD",
    "REJECT_REASONS",
    "SPLITS",
    "AnalysisConfig",
    "CalibrationDataset",
    "CalibrationError",
    "CalibrationResult",
    "CalibrationStack",
    "Examples",
    "Registration",
    "RegistrationError",
    "analyze",
    "load_examples",
    "read_beads",
    "save_examples",
    "split_by_bead",
    "write_qc",
    "write_report",
    "write_rig",
]

"""Acquisition: calibration runs (bead Z-stacks over many fields) into run stores.

See :func:`calibration_sequence` and :func:`run_calibration`, and
``docs/acquire.md``.
"""

from __future__ import annotations

from axialtrack.acquire.calibration import (
    TRUTH_COLUMNS,
    TRUTH_GROUP,
    CalibrationFrameHandler,
    CalibrationPlan,
    calibration_sequence,
    read_truth,
    run_calibration,
)

__all__ = [
    "TRUTH_COLUMNS",
    "TRUTH_GROUP",
    "CalibrationFrameHandler",
    "CalibrationPlan",
    "calibration_sequence",
    "read_truth",
    "run_calibration",
]

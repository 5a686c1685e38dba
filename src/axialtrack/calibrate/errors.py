"""Errors of the calibration analysis."""

from __future__ import annotations

__all__ = ["CalibrationError"]


class CalibrationError(RuntimeError):
    """The calibration data cannot give a trustworthy result.

    The message names the field or the property of the input at fault and what to
    change (more beads, a longer Z range, a lower exposure, ...).
    """

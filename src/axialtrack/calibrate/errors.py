"""Errors of the calibration: its import and its analysis."""

from __future__ import annotations

from axialtrack.errors import AxialtrackError

__all__ = ["CalibrationError", "RegistrationError", "StackImportError", "import_error"]


class CalibrationError(AxialtrackError, RuntimeError):
    """The calibration data cannot give a trustworthy result.

    The message names the field or the property of the input at fault and what to
    change (more beads, a longer Z range, a lower exposure, ...).
    """


class RegistrationError(CalibrationError):
    """The two planes cannot be registered from the beads as given.

    Raised for a plane-1 mirror that fits the beads clearly worse than another
    flip, a registration residual above the bound, or too few matched beads; the
    message gives the numbers and the likely cause. It is a problem of the input
    (layout, mirror, bead sample), not of the analysis.
    """


class StackImportError(AxialtrackError, ValueError):
    """A calibration stack that cannot be imported (the message names the fix)."""


def import_error(path: object, problem: str, fix: str) -> StackImportError:
    """``StackImportError("<path>: <problem>. Fix: <fix>")``."""
    return StackImportError(f"{path}: {problem}. Fix: {fix}")

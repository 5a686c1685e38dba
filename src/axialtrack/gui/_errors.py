"""The control panel's own error: a value given in the window that cannot be
used (below every panel and backend module, so each imports it one way)."""

from __future__ import annotations

from axialtrack.errors import AxialtrackError

__all__ = ["InputError"]


class InputError(AxialtrackError, ValueError):
    """A value given in the window cannot be used (one line: what and the fix);
    nothing was written."""

"""The root of every error axialtrack raises on purpose.

``except AxialtrackError`` catches what this package reports about the user's
input, files, rig or run (each with a one-line message that says what to do),
and lets programming errors through. The specific errors keep their built-in
bases (a bad bundle is also a ``ValueError``, a store that exists also a
``FileExistsError``), so code written against those still works.
"""

from __future__ import annotations

__all__ = ["AxialtrackError"]


class AxialtrackError(Exception):
    """Base class of the errors axialtrack raises on purpose."""

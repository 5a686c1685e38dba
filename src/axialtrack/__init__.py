"""axialtrack: real-time 3D particle tracking with a dual-focal-plane microscope.

A pymmcore-plus plugin that drives Micro-Manager devices, learns each particle's
axial position from the pair of images two focal planes give, and writes zarr.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from axialtrack.errors import AxialtrackError

try:
    __version__ = version("axialtrack")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["AxialtrackError", "__version__"]

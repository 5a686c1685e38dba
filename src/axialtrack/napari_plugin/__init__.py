"""napari plugin: open run stores as co-registered layers, follow a run being
written, save tracks.

Every layer is in the run's world frame (micrometres from the image corner of
plane 0, seconds on the OME-Zarr time axis): the planes as image layers (lazy,
dask), the localizations as a points layer colored by ``z_um``, the tracks as a
tracks layer. See docs/napari.md. The functions here need napari only when
called.
"""

from __future__ import annotations

from axialtrack.napari_plugin._reader import get_reader, read_run
from axialtrack.napari_plugin._writer import write_tracks

__all__ = ["get_reader", "read_run", "write_tracks"]

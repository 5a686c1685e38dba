"""Per-frame localization: detection, crop pairs, Z inference, linking, tracks.

- :func:`detect` and :class:`Localizer`: particles found in each dual-plane
  frame, their crop pairs through the inference engine, localizations in
  micrometres with ``z_um = stage_z_um + dz_um``.
- :class:`OnlineLinker`: frame-by-frame 3D linking with gap closing.
- :func:`summarize_tracks`, :func:`to_napari_tracks`, :func:`write_geff`: the
  per-track summary (diffusion coefficients) and exports.
- :class:`TrackingAnalyzer` / :func:`make_analyzer`: localize + link, what the
  live runner (:mod:`axialtrack.live`, which imports this package and is never
  imported by it) and ``axialtrack localize`` call.

The modules behind these names are private (``_detect``, ``_tracks``,
``_analyzer``); import from here.
"""

from __future__ import annotations

from ._analyzer import TrackingAnalyzer, make_analyzer, summarize_linked
from ._camera_maps import CameraMapError, CameraMaps, load_camera_maps
from ._detect import (
    Detections,
    background_map,
    detect,
    detection_image,
    sample_background,
    smooth,
)
from ._tracks import (
    SUMMARY_COLUMNS,
    DiffusionEstimate,
    estimate_diffusion,
    estimate_diffusion_population,
    read_geff,
    summarize_tracks,
    to_napari_tracks,
    write_geff,
)
from .config import CameraCalibration, DetectionConfig, LocalizerConfig
from .crops import crop_pairs
from .link import LinkConfig, OnlineLinker, PositionLinker, link_table
from .localize import Localizer
from .score import TruthScore, score_against_truth

__all__ = [
    "SUMMARY_COLUMNS",
    "CameraCalibration",
    "CameraMapError",
    "CameraMaps",
    "DetectionConfig",
    "Detections",
    "DiffusionEstimate",
    "LinkConfig",
    "Localizer",
    "LocalizerConfig",
    "OnlineLinker",
    "PositionLinker",
    "TrackingAnalyzer",
    "TruthScore",
    "background_map",
    "crop_pairs",
    "detect",
    "detection_image",
    "estimate_diffusion",
    "estimate_diffusion_population",
    "link_table",
    "load_camera_maps",
    "make_analyzer",
    "read_geff",
    "sample_background",
    "score_against_truth",
    "smooth",
    "summarize_linked",
    "summarize_tracks",
    "to_napari_tracks",
    "write_geff",
]

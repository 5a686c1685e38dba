"""The live analysis pipeline: detection, crop pairs, Z inference, linking, runner.

- :func:`~axialtrack.pipeline.detect.detect` and :class:`Localizer`: particles
  found in each dual-plane frame, their crop pairs through the inference engine,
  localizations in micrometres with ``z_um = stage_z_um + dz_um``.
- :class:`OnlineLinker`: frame-by-frame 3D linking with gap closing.
- :func:`summarize_tracks`, :func:`to_napari_tracks`, :func:`write_geff`: the
  per-track summary (diffusion coefficients) and exports.
- :class:`LiveRunner`, :class:`CoreSource`, :class:`TrackingHandler`,
  :class:`AnalysisProcess`: the live machinery, which lives in
  :mod:`axialtrack.live` and is handed out here too (imported when first
  asked for, so the localization does not load it).
- :class:`TrackingAnalyzer` / :func:`make_analyzer`: localize + link, what the
  runner and ``axialtrack localize`` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axialtrack.events import RunSignals

from ._camera_maps import CameraMapError, CameraMaps, load_camera_maps
from .analyzer import TrackingAnalyzer, make_analyzer
from .config import CameraCalibration, DetectionConfig, LocalizerConfig
from .crops import crop_pairs
from .detect import Detections, detect
from .link import LinkConfig, OnlineLinker, PositionLinker, link_table
from .localize import Localizer
from .score import TruthScore, score_against_truth
from .tracks import estimate_diffusion, summarize_tracks, to_napari_tracks, write_geff

if TYPE_CHECKING:
    from axialtrack.live import (
        AnalysisError,
        AnalysisProcess,
        AnalysisProcessError,
        CameraStalledError,
        CoreSource,
        FrameAnalyzer,
        FrameSource,
        LiveMetrics,
        LiveRunner,
        RunnerConfig,
        SourceFrame,
        TrackingHandler,
        open_live_writer,
    )

#: the live machinery's names, from :mod:`axialtrack.live` when first asked for
_LIVE = frozenset(
    {
        "AnalysisError",
        "AnalysisProcess",
        "AnalysisProcessError",
        "CameraStalledError",
        "CoreSource",
        "FrameAnalyzer",
        "FrameSource",
        "LiveMetrics",
        "LiveRunner",
        "RunnerConfig",
        "SourceFrame",
        "TrackingHandler",
        "open_live_writer",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LIVE:
        import axialtrack.live

        return getattr(axialtrack.live, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnalysisError",
    "AnalysisProcess",
    "AnalysisProcessError",
    "CameraCalibration",
    "CameraMapError",
    "CameraMaps",
    "CameraStalledError",
    "CoreSource",
    "DetectionConfig",
    "Detections",
    "FrameAnalyzer",
    "FrameSource",
    "LinkConfig",
    "LiveMetrics",
    "LiveRunner",
    "Localizer",
    "LocalizerConfig",
    "OnlineLinker",
    "PositionLinker",
    "RunSignals",
    "RunnerConfig",
    "SourceFrame",
    "TrackingAnalyzer",
    "TrackingHandler",
    "TruthScore",
    "crop_pairs",
    "detect",
    "estimate_diffusion",
    "link_table",
    "load_camera_maps",
    "make_analyzer",
    "open_live_writer",
    "score_against_truth",
    "summarize_tracks",
    "to_napari_tracks",
    "write_geff",
]

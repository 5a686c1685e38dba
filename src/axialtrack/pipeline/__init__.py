"""The live analysis pipeline: detection, crop pairs, Z inference, linking, runner.

- :func:`~axialtrack.pipeline.detect.detect` and :class:`Localizer`: particles
  found in each dual-plane frame, their crop pairs through the inference engine,
  localizations in micrometres with ``z_um = stage_z_um + dz_um``.
- :class:`OnlineLinker`: frame-by-frame 3D linking with gap closing.
- :func:`summarize_tracks`, :func:`to_napari_tracks`, :func:`write_geff`: the
  per-track summary (diffusion coefficients) and exports.
- :class:`LiveRunner`, :class:`CoreSource`, :class:`TrackingHandler`: the threaded
  live run (acquisition -> ring -> writer and analysis) and the MDA plugin.
- :class:`TrackingAnalyzer` / :func:`make_analyzer`: localize + link, what the
  runner and ``axialtrack localize`` call; :class:`AnalysisProcess`: the same in
  a child process fed through shared memory (live runs).
"""

from __future__ import annotations

from axialtrack.events import RunSignals

from .analyzer import TrackingAnalyzer, make_analyzer
from .config import CameraCalibration, DetectionConfig, LocalizerConfig
from .crops import crop_pairs
from .detect import Detections, detect
from .link import LinkConfig, OnlineLinker, PositionLinker, link_table
from .localize import Localizer
from .mda import TrackingHandler
from .process import AnalysisProcess, AnalysisProcessError
from .runner import (
    AnalysisError,
    CameraStalledError,
    CoreSource,
    FrameAnalyzer,
    FrameSource,
    LiveMetrics,
    LiveRunner,
    RunnerConfig,
    SourceFrame,
    open_live_writer,
)
from .score import TruthScore, score_against_truth
from .tracks import estimate_diffusion, summarize_tracks, to_napari_tracks, write_geff

__all__ = [
    "AnalysisError",
    "AnalysisProcess",
    "AnalysisProcessError",
    "CameraCalibration",
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
    "make_analyzer",
    "open_live_writer",
    "score_against_truth",
    "summarize_tracks",
    "to_napari_tracks",
    "write_geff",
]

"""The live machinery: frames from a camera into a run store and through the
analysis, without ever holding the camera up.

- :class:`TrackingHandler` (:mod:`.mda`): the output handler every acquisition
  goes through, ``core.mda.run(sequence, output=handler)`` (or
  ``handler.attach(core)`` for pymmcore-widgets' MDA widget and the GUI);
  :func:`live_sequence` builds ``axialtrack live``'s time-lapse.
- :class:`LiveRunner` (:mod:`.runner`): the threads (acquisition -> ring ->
  writer and analysis), with :class:`RunnerConfig` (:mod:`.config`),
  :class:`LiveMetrics` (:mod:`.metrics`), the ring (:mod:`.ring`) and
  :class:`StopSignals` (:mod:`.signals`).
- :class:`CoreSource` (:mod:`.sources`): the camera's buffer polled directly
  (scripts, and the baseline of ``benchmarks/bench_live.py --path core``).
- :class:`LiveRun` (:mod:`.session`): a live run prepared (store opened,
  an existing one put back if the new run stores nothing), run and
  reported, the same for ``axialtrack live`` and the control panel.
- :class:`AnalysisProcess` (:mod:`.process`): the analysis in a child process
  fed through shared memory.

The per-frame localization these drive (detection, crops, Z, linking, tracks)
is :mod:`axialtrack.pipeline`: this package imports it, never the other way.
"""

from __future__ import annotations

from axialtrack.events import RunSignals

from ._protocols import FrameAnalyzer, FrameSource, SourceFrame, StagedAnalyzer
from .config import RunnerConfig
from .mda import TrackingHandler, live_sequence, nominal_fps
from .metrics import LiveMetrics
from .process import AnalysisProcess, AnalysisProcessError
from .runner import (
    AnalysisError,
    CameraStalledError,
    LiveRunner,
    open_live_writer,
)
from .session import (
    LiveOptions,
    LiveOutcome,
    LiveRig,
    LiveRun,
    analyzer_options,
    make_live_analyzer,
)
from .signals import StopSignals
from .sources import CoreSource

__all__ = [
    "AnalysisError",
    "AnalysisProcess",
    "AnalysisProcessError",
    "CameraStalledError",
    "CoreSource",
    "FrameAnalyzer",
    "FrameSource",
    "LiveMetrics",
    "LiveOptions",
    "LiveOutcome",
    "LiveRig",
    "LiveRun",
    "LiveRunner",
    "RunSignals",
    "RunnerConfig",
    "SourceFrame",
    "StagedAnalyzer",
    "StopSignals",
    "TrackingHandler",
    "analyzer_options",
    "live_sequence",
    "make_live_analyzer",
    "nominal_fps",
    "open_live_writer",
]

"""The live runner's settings (:class:`RunnerConfig`)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------- config
class RunnerConfig(BaseModel):
    """Tuning of a :class:`LiveRunner`.

    Parameters
    ----------
    ring_frames
        Dual-plane frames in the preallocated ring between the acquisition thread
        and the writer/analysis threads. Must exceed ``analysis_queue_frames +
        max_batch_frames`` so that analysis can never hold every slot.
    max_batch_frames
        Most frames handed to the analyzer at once.
    batch_deadline_s
        Longest wait for a batch to fill, counted from the arrival of its oldest
        frame (a backlog is taken at once). ``0``: a batch is what has arrived
        when the analysis is ready, so a frame never waits for later ones and
        batches grow only while the analysis is behind (lower latency for a
        little more CPU per frame; docs/live.md gives the measurements).
    analysis_queue_frames
        Frames that may wait for analysis; beyond, new frames are skipped.
    status_interval_s
        Period of the ``events.status`` signal (and of the log line).
    stall_timeout_s
        No frame for this long while the camera should deliver: the run stops
        with :class:`CameraStalledError` (every frame received is kept).
        ``None`` disables the check (e.g. MDA runs with long intervals).
    start_timeout_s
        The same for the first frame (cameras may take a while to start).
    poll_s
        How long the acquisition thread waits for a frame before checking for
        a stop request.
    latency_window
        Frames over which latency percentiles are computed (most recent).
    log_status
        Log the status line (``logging.INFO``) every ``status_interval_s``.
    pipelined
        With an analyzer that has ``prepare`` and ``complete`` stages (a
        :class:`StagedAnalyzer`, e.g. :class:`~axialtrack.pipeline.TrackingAnalyzer`),
        run them in two threads one batch apart, so the detection of a batch
        overlaps the inference of the previous one (both release the GIL).
    freeze_gc
        Collect garbage once before the camera starts and move everything that
        exists then out of the collector's reach (:func:`gc.freeze`) until the
        run ends. With numpy, pandas, zarr and the camera driver loaded, a full
        collection walks a quarter of a million objects and holds the GIL long
        enough to stall every thread of the run (docs/live.md gives the
        measurements); after the freeze it walks only what the run allocates.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ring_frames: int = Field(64, ge=4)
    max_batch_frames: int = Field(8, ge=1)
    batch_deadline_s: float = Field(0.0, ge=0)
    analysis_queue_frames: int = Field(16, ge=1)
    status_interval_s: float = Field(0.5, gt=0)
    stall_timeout_s: float | None = Field(2.0, gt=0)
    start_timeout_s: float = Field(30.0, gt=0)
    poll_s: float = Field(0.05, gt=0)
    latency_window: int = Field(4096, ge=16)
    log_status: bool = True
    pipelined: bool = True
    freeze_gc: bool = True

    @model_validator(mode="after")
    def _check_ring(self) -> RunnerConfig:
        need = self.analysis_queue_frames + self.max_batch_frames + 2
        if self.ring_frames < need:
            raise ValueError(
                f"ring_frames={self.ring_frames} is too small: it must be at least "
                f"analysis_queue_frames + max_batch_frames + 2 = {need}"
            )
        return self

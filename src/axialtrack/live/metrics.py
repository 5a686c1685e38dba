"""What a live run reports (:class:`LiveMetrics`): rates, latency, queues,
skipped frames, the status line and the summary table."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- metrics
@dataclass
class LiveMetrics:
    """A snapshot of a live run.

    Attributes
    ----------
    frames_in
        Frames received from the camera (all are given to the writer).
    frames_analyzed
        Frames the analyzer has processed.
    frames_written
        Frames on disk and committed (visible to readers).
    frames_skipped
        Frames the analysis skipped because it was behind (``analyzed = false``).
    fps_in, fps_analyzed, fps_written
        Rates over the last few seconds (in the final metrics: the run's mean
        from the first frame to the last; for ``fps_analyzed``, to the last
        analysis, which may work off its queue after the last frame came).
    latency_ms_p50, latency_ms_p99
        From the frame entering the camera buffer (for the replay camera: when
        it was due) to its localizations handed to the writer (recent frames).
    analysis_queue_depth, writer_queue_depth
        Frames waiting for analysis, and frames the writer holds not yet on
        disk (plus those waiting to be handed to it).
    localizations
        Localization rows handed to the writer.
    refined
        Of those, rows refined by maximum likelihood (``refined`` column; the
        live refinement does what fits in its share of the frame period).
    psf_checked, psf_out_of_bounds, psf_changed
        The check that the bundle's PSF still fits the microscope
        (:mod:`~axialtrack.pipeline.psfcheck`): isolated localizations
        checked, the fraction of the recent ones out of bounds, and whether it
        says the PSF has changed (recalibration due; the status line says so
        and a ``warning`` event is emitted).
    tracks
        Tracks so far (the analyzer's ``n_tracks`` if it has one, else the
        distinct ``track_id >= 0``); -1 if unknown.
    elapsed_s
        Seconds since the run started.
    camera_frames_lost
        Gaps in the camera's image numbers: frames the camera buffer lost
        before the runner could take them (should stay 0).
    stop_reason
        ``"running"``, ``"duration"``, ``"n_frames"``, ``"stopped"``,
        ``"interrupted"`` (Ctrl-C, SIGINT), ``"terminated"`` (SIGTERM),
        ``"hangup"`` (SIGHUP), ``"source-ended"`` (the camera stopped first),
        ``"sequence-finished"`` (an MDA sequence ended) or ``"error"``.
    writer_mb_s
        Raw frame MB/s written since the store was opened.
    fps_requested
        The frame rate the camera was asked for (the source's
        ``requested_fps``; NaN if unknown), beside ``fps_in``, the rate it
        delivered.
    analysis_error
        Why the analysis stopped part-way (its process died, the analyzer
        raised); ``None`` while it works. The recording goes on without it.
    analysis_failed_at
        The first frame not analyzed because the analysis had stopped (every
        frame from it on keeps ``analyzed = false``); -1 if it never stopped.
    warnings
        What went wrong without stopping the run, each message once.
    """

    frames_in: int = 0
    frames_analyzed: int = 0
    frames_written: int = 0
    frames_skipped: int = 0
    fps_in: float = 0.0
    fps_analyzed: float = 0.0
    fps_written: float = 0.0
    latency_ms_p50: float = math.nan
    latency_ms_p99: float = math.nan
    analysis_queue_depth: int = 0
    writer_queue_depth: int = 0
    localizations: int = 0
    refined: int = 0
    psf_checked: int = 0
    psf_out_of_bounds: float = math.nan
    psf_changed: bool = False
    tracks: int = -1
    elapsed_s: float = 0.0
    camera_frames_lost: int = 0
    stop_reason: str = "running"
    writer_mb_s: float = 0.0
    fps_requested: float = math.nan
    analysis_error: str | None = None
    analysis_failed_at: int = -1
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (NaN becomes None)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 4) if math.isfinite(v) else None
        return out

    def status_line(self) -> str:
        """One line for a console: rates, latency, particles, tracks, skipped."""

        def f(v: float, fmt: str = ".0f") -> str:
            return format(v, fmt) if math.isfinite(v) else "-"

        tracks = str(self.tracks) if self.tracks >= 0 else "-"
        line = (
            f"{self.elapsed_s:6.1f} s | {self.frames_in} frames, in "
            f"{f(self.fps_in, '.1f')} fps, analyzed "
            f"{f(self.fps_analyzed, '.1f')}, written {f(self.fps_written, '.1f')} | "
            f"latency p50 {f(self.latency_ms_p50)} p99 {f(self.latency_ms_p99)} ms | "
            f"{self.localizations} localizations"
            f"{f' ({self.refined} refined)' if self.refined else ''}, "
            f"{tracks} tracks | skipped "
            f"{self.frames_skipped} | queues a{self.analysis_queue_depth} "
            f"w{self.writer_queue_depth}"
        )
        if self.psf_changed:
            line += (
                f" | PSF CHANGED ({f(100 * self.psf_out_of_bounds)} % of isolated "
                "localizations misfit): recalibration due"
            )
        if self.analysis_failed_at >= 0:
            line += (
                f" | ANALYSIS STOPPED at frame {self.analysis_failed_at}: "
                "recording only"
            )
        return line

    def summary_rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for a summary table, in reading order.

        Labels name the quantity and its unit (``"latency p50 (ms)"``); values
        are formatted (``"-"`` where unknown).
        """

        def num(v: float, digits: int = 1) -> str:
            return f"{v:.{digits}f}" if math.isfinite(v) else "-"

        rows = [
            ("stopped by", self.stop_reason),
            ("frames received", str(self.frames_in)),
            ("frames stored", str(self.frames_written)),
            ("frames analyzed", str(self.frames_analyzed)),
            ("frames skipped (analysis behind)", str(self.frames_skipped)),
        ]
        if self.analysis_failed_at >= 0:
            rows.append(
                (
                    "analysis stopped at frame",
                    f"{self.analysis_failed_at} (later frames unanalyzed)",
                )
            )
        rows += [
            ("frames lost in the camera", str(self.camera_frames_lost)),
            ("frame rate requested (fps)", num(self.fps_requested)),
            ("frame rate received (fps)", num(self.fps_in)),
            ("frame rate analyzed (fps)", num(self.fps_analyzed)),
            ("frame rate stored (fps)", num(self.fps_written)),
            ("latency p50 (ms)", num(self.latency_ms_p50)),
            ("latency p99 (ms)", num(self.latency_ms_p99)),
            ("localizations", str(self.localizations)),
            *(
                [("localizations refined (MLE)", str(self.refined))]
                if self.refined
                else []
            ),
            *(
                [
                    (
                        "PSF check: recent out of bounds (%)",
                        num(100 * self.psf_out_of_bounds)
                        + (" - PSF CHANGED, recalibrate" if self.psf_changed else ""),
                    )
                ]
                if self.psf_checked
                else []
            ),
            ("tracks", str(self.tracks) if self.tracks >= 0 else "-"),
            ("storage (MB/s)", num(self.writer_mb_s)),
            ("run time (s)", num(self.elapsed_s)),
        ]
        return rows

"""What the live runner's threads share, and how it is told: the counters,
the ring and queues, :class:`~axialtrack.live.LiveMetrics`, the run's events,
warnings and the first failure (:class:`_RunState`, the base of
:class:`~axialtrack.live.LiveRunner`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from array import array
from collections import deque
from typing import Any

import numpy as np

from axialtrack.events import RunSignals
from axialtrack.geometry import SplitterGeometry
from axialtrack.pipeline.psfcheck import PSFChangeMonitor
from axialtrack.store import (
    FrameMeta,
    RunWriter,
)

from ._protocols import (
    FrameAnalyzer,
    FrameSource,
    _as_float,
)
from .config import RunnerConfig
from .metrics import LiveMetrics
from .ring import _Ring

logger = logging.getLogger("axialtrack.live.runner")

#: A camera delivering less than this fraction of the requested frame rate is
#: warned about (once a run), judged after ``RATE_CHECK_S`` seconds of frames.
RATE_SHORTFALL = 0.9
RATE_CHECK_S = 3.0
#: Longest wait at the end of a run for the writer to commit the localization


class _RunState:
    """The shared state of a live run and its reporting (see
    :class:`~axialtrack.live.LiveRunner` for the parameters)."""

    def __init__(
        self,
        source: FrameSource,
        analyzer: FrameAnalyzer | None,
        writer: RunWriter,
        *,
        geometry: SplitterGeometry,
        config: RunnerConfig | None = None,
        events: RunSignals | None = None,
    ) -> None:
        self.source = source
        self.analyzer = analyzer
        self.writer = writer
        self.geometry = geometry
        self.config = config or RunnerConfig()
        self.events = events if events is not None else RunSignals()
        self._stop = threading.Event()
        self._ran = False
        cfg = self.config
        self._ring = _Ring(cfg.ring_frames, writer.frame_shape)
        self._write_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ana_q: deque[tuple[int, int, FrameMeta, float]] = deque()
        self._ana_cv = threading.Condition()
        self._acq_done = False
        self._failure: BaseException | None = None
        self._fail_lock = threading.Lock()
        self._stop_reason = "running"
        self._warnings: list[str] = []
        self._warnings_emitted = 0
        self._emit_failed: set[str] = set()
        # frames the analysis skipped, not yet emitted (appended by the
        # acquisition thread, taken by the run() thread)
        self._skipped_new: list[int] = []
        self._stored_emitted = 0
        # counters
        self._frames_in = 0
        self._frames_handed = 0
        self._frames_analyzed = 0
        self._frames_skipped = 0
        self._camera_lost = 0
        self._rows = 0
        self._refined = 0
        self._psf_check = PSFChangeMonitor()
        self._track_ids: set[int] = set()
        self._lat: deque[float] = deque(maxlen=cfg.latency_window)
        self._lat_lock = threading.Lock()
        self._pending_analyzed: list[np.ndarray] = []
        self._t0 = math.nan
        self._t_first = math.nan
        self._t_last = math.nan
        self._t_last_analyzed = math.nan  # when the last batch's rows were handed
        self._history: deque[tuple[float, int, int, int]] = deque(maxlen=64)
        # the field (position_index) of every frame, for the track summary
        self._frame_fields = array("q")
        self._staged = (
            cfg.pipelined
            and analyzer is not None
            and callable(getattr(analyzer, "prepare", None))
            and callable(getattr(analyzer, "complete", None))
        )
        # prepared batches between the two analysis stages (one in flight)
        self._stage_q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._analysis_stopped = False
        # the analysis failed (its tracks are not summarized at the end)
        self._analysis_broken = False
        # the writer's own append failed: it stores no more frames
        self._writer_failed = False
        self._stage_drained = False
        # the analysis stopped part-way: why, and the first frame it missed
        self._analysis_error: str | None = None
        self._analysis_failed_at = -1
        self._last_analyzed_index = -1
        self._last_report = -math.inf
        self._rate_warned = False

    def latencies_ms(self, n: int | None = None) -> np.ndarray:
        """The end-to-end latencies (ms) of the last ``n`` frames analyzed
        (all those kept, up to ``latency_window``, if ``n`` is None)."""
        with self._lat_lock:
            lat = np.array(self._lat, dtype=float)
        if n is not None:
            lat = lat[len(lat) - min(max(int(n), 0), len(lat)) :]
        return lat * 1e3

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the run, as soon as it happened (``run()``
        raises it once everything is closed); ``None`` while all is well."""
        return self._failure

    def metrics(self) -> LiveMetrics:
        """The current metrics (rates over the last few seconds)."""
        now = time.perf_counter()
        w = self.writer
        written = w.frames_committed
        hist = self._history
        snap = (now, self._frames_in, self._frames_analyzed, written)
        hist.append(snap)
        while len(hist) > 2 and now - hist[0][0] > 3.0:
            hist.popleft()
        t_a, in_a, an_a, wr_a = hist[0]
        dt = now - t_a
        if dt <= 0 or len(hist) < 2:
            elapsed = max(now - self._t0, 1e-9)
            fps = (
                self._frames_in / elapsed,
                self._frames_analyzed / elapsed,
                written / elapsed,
            )
        else:
            fps = (
                (self._frames_in - in_a) / dt,
                (self._frames_analyzed - an_a) / dt,
                (written - wr_a) / dt,
            )
        return self._snapshot(now, fps, written)

    # ------------------------------------------------------------ helpers
    def _snapshot(
        self, now: float, fps: tuple[float, float, float], written: int
    ) -> LiveMetrics:
        with self._lat_lock:
            lat = np.array(self._lat, dtype=float)
        p50 = float(np.percentile(lat, 50)) * 1e3 if lat.size else math.nan
        p99 = float(np.percentile(lat, 99)) * 1e3 if lat.size else math.nan
        n_tracks = getattr(self.analyzer, "n_tracks", None)
        if isinstance(n_tracks, (int, np.integer)):
            tracks = int(n_tracks)
        elif self.analyzer is None:
            tracks = -1
        else:
            tracks = len(self._track_ids)
        st = self.writer.stats
        return LiveMetrics(
            frames_in=self._frames_in,
            frames_analyzed=self._frames_analyzed,
            frames_written=written,
            frames_skipped=self._frames_skipped,
            fps_in=fps[0],
            fps_analyzed=fps[1],
            fps_written=fps[2],
            latency_ms_p50=p50,
            latency_ms_p99=p99,
            analysis_queue_depth=len(self._ana_q),
            writer_queue_depth=(self._frames_in - self._frames_handed) + st.queue_depth,
            localizations=self._rows,
            refined=self._refined,
            psf_checked=self._psf_check.checked,
            psf_out_of_bounds=self._psf_check.fraction,
            psf_changed=self._psf_check.changed,
            tracks=tracks,
            elapsed_s=0.0 if math.isnan(self._t0) else now - self._t0,
            camera_frames_lost=self._camera_lost,
            stop_reason=self._stop_reason,
            writer_mb_s=st.write_mb_s,
            fps_requested=self._requested_fps(),
            analysis_error=self._analysis_error,
            analysis_failed_at=self._analysis_failed_at,
            warnings=list(self._warnings),
        )

    def _requested_fps(self) -> float:
        """The rate the source was asked for (its ``requested_fps``), or NaN."""
        v = _as_float(getattr(self.source, "requested_fps", math.nan))
        return v if v > 0 else math.nan

    def _check_rate(self, final: bool = False) -> None:
        """Warn once when the camera delivers clearly less than was asked.

        Judged on the mean rate from the first frame, once frames have come for
        ``RATE_CHECK_S`` seconds (or at the end of a run of at least 10 frames).
        """
        if self._rate_warned:
            return
        want = self._requested_fps()
        n = self._frames_in
        span = self._t_last - self._t_first
        if not (want > 0) or n < 10 or not span > 0:
            return
        if not final and span < RATE_CHECK_S:
            return
        got = (n - 1) / span
        if got < RATE_SHORTFALL * want:
            self._rate_warned = True
            self._warn(
                f"The camera delivered {got:.1f} frames/s of the {want:.1f} "
                "requested; the frame times, rates and latencies are those of "
                "the frames as delivered. Lower the requested rate (or, for the "
                "replay camera, set Preload = 1) if this matters."
            )

    def _report(self) -> None:
        """Report the metrics, at most once per ``status_interval_s``."""
        now = time.perf_counter()
        if now - self._last_report < 0.99 * self.config.status_interval_s:
            return
        self._last_report = now
        self._check_rate()
        m = self.metrics()
        if self.config.log_status:
            logger.info("live: %s", m.status_line())
        self._emit_pending(m.frames_written)
        self._emit(self.events.status, m)

    def _emit(self, signal: Any, *args: Any) -> None:
        """Emit ``signal``; a subscriber that raises is logged, and never stops
        the run (a display or a controller problem must not lose frames)."""
        try:
            signal.emit(*args)
        except Exception as exc:
            name = str(signal.name)
            if name in self._emit_failed:
                return  # said once: formatting it again costs the run time
            self._emit_failed.add(name)
            logger.error("a subscriber of %s failed: %s", name, exc)
            cause = exc.__cause__ or exc
            self._warn(
                f"A subscriber of the run's {name} event failed "
                f"({type(cause).__name__}: {cause}); the run goes on without "
                "reporting its further failures"
            )

    def _emit_pending(self, written: int) -> None:
        """Emit the warnings, skipped frames and stored count not yet emitted
        (from the thread that called :meth:`run`)."""
        ev = self.events
        while self._warnings_emitted < len(self._warnings):
            self._warnings_emitted += 1
            self._emit(ev.warning, self._warnings[self._warnings_emitted - 1])
        if self._skipped_new:
            # swap, then read: the acquisition thread appends to the new list
            taken, self._skipped_new = self._skipped_new, []
            self._emit(ev.framesSkipped, np.asarray(taken, dtype=np.int64))
        if written > self._stored_emitted:
            self._stored_emitted = written
            self._emit(ev.framesStored, int(written))

    def _fail(self, exc: BaseException) -> None:
        with self._fail_lock:
            first = self._failure
            if first is None:
                self._failure = exc
                self._stop_reason = "error"
            elif exc is not first:
                # the run raises the first failure; the others go with it
                logger.error("live: a further failure after the first: %r", exc)
                first.add_note(
                    f"Also, while the run stopped: {type(exc).__name__}: {exc}"
                )
        self._stop.set()

    def _warn(self, msg: str) -> None:
        logger.warning(msg)
        self._warnings.append(msg)

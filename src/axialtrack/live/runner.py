"""The threaded live runner: camera -> frame ring -> writer and analysis.

Threads
-------
*Acquisition* (``live-acquire``) takes each frame from the :class:`FrameSource`
(the camera's circular buffer), splits it into a free slot of a preallocated ring
of dual-plane frames and hands the slot to the writer thread and, if the analysis
queue has room, to the analysis thread. It never waits for analysis: a frame that
finds the analysis queue full is *skipped* (counted, and its ``analyzed`` flag
stays false in the run store). It waits for a ring slot only while the writer
thread holds them all, i.e. when storage cannot keep up, and then the writer
stops the run with a clear error within its ``block_timeout_s``.

*Writer feed* (``live-write``) hands every frame, in order, to
:meth:`RunWriter.append_frame <axialtrack.store.RunWriter.append_frame>`, which
copies it into the writer's own bounded pool; the writer's I/O threads put it on
disk. Raw frames are never dropped: if the writer cannot take a frame
(:class:`~axialtrack.store.WriterTooSlowError`, a full disk) the run stops and
:meth:`LiveRunner.run` raises that error after closing the store, which keeps
every frame it accepted.

*Analysis* takes up to ``max_batch_frames`` queued frames (by default what
has arrived when it is ready: batches grow only when it falls behind), calls
:meth:`FrameAnalyzer.analyze`, hands the localizations to the writer and marks
the frames analyzed. With a :class:`StagedAnalyzer` it is two threads one batch
apart: ``live-detect`` runs ``prepare`` (detection, crop pairs) on batch
*k + 1* while ``live-analyze`` runs ``complete`` (inference, linking, writing)
on batch *k*; both stages spend most of their time in code that releases the
GIL, so on two cores they overlap. The analyzer's ``warmup()``, if it has one,
runs before the camera starts.

If the analyzer raises or its process dies, the analysis stops for good but
the recording goes on: every frame is still stored, the frames from the failed
batch on keep ``analyzed = false``, and the metrics say so
(``analysis_error``, ``analysis_failed_at``).

The thread that calls :meth:`LiveRunner.run` supervises: it stops the run at the
requested duration (counted from the first frame), reports :class:`LiveMetrics`
as ``events.status`` at most every ``status_interval_s`` and, at the end, writes
the tracks, the final metrics (``live_metrics`` in the run's attributes) and
closes the store. :class:`StopSignals` makes SIGTERM and SIGHUP stop a run as
Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from axialtrack.errors import AxialtrackError
from axialtrack.geometry import SplitterGeometry
from axialtrack.store import (
    FrameMeta,
    RunWriter,
    StoreError,
    WriterOptions,
)

if TYPE_CHECKING:
    import pandas as pd

from ._analysis_threads import _DONE, _AnalysisThreads
from ._protocols import (
    FrameAnalyzer,
    FrameSource,
    SourceFrame,
    StagedAnalyzer,
)
from .config import RunnerConfig
from .metrics import LiveMetrics
from .ring import (
    split_into,
)
from .signals import (
    STOP_SIGNALS,  # noqa: F401
    Stoppable,  # noqa: F401
    StopSignals,
)
from .sources import CoreSource

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisError",
    "CameraStalledError",
    "CoreSource",
    "FrameAnalyzer",
    "FrameSource",
    "LiveMetrics",
    "LiveRunner",
    "RunnerConfig",
    "SourceFrame",
    "StagedAnalyzer",
    "StopSignals",
    "open_live_writer",
    "split_into",
]

#: Longest wait at the end of a run for the writer to commit the localization
#: rows the track summary is made from (it commits every 0.25 s by default).
ROWS_COMMIT_WAIT_S = 30.0


# ----------------------------------------------------------------- errors
class CameraStalledError(AxialtrackError, RuntimeError):
    """The camera stopped delivering frames while the run was going on."""


class AnalysisError(AxialtrackError, RuntimeError):
    """The frame analyzer raised or its process died.

    The run does not stop for it: the recording goes on (every frame stored,
    ``analyzed = false`` from the failure on) and the final
    :class:`LiveMetrics` carry it as ``analysis_error``.
    """


def open_live_writer(
    out: str | os.PathLike[str],
    *,
    geometry: SplitterGeometry,
    plane_shape: tuple[int, int],
    pixel_size_um: float,
    rig: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    frame_interval_s: float | None = None,
    compression: Any = None,
    options: WriterOptions | None = None,
) -> RunWriter:
    """Create the run store of a live run (``kind="live"``).

    Raises
    ------
    axialtrack.store.StoreExistsError
        ``out`` exists and ``overwrite`` is False (nothing is touched).
    """
    return RunWriter(
        out,
        kind="live",
        plane_shape=plane_shape,
        pixel_size_um=pixel_size_um,
        rig=dict(rig or {}),
        splitter=geometry,
        model=dict(model or {}),
        compression=compression,
        overwrite=overwrite,
        frame_interval_s=frame_interval_s,
        options=options,
    )


# ----------------------------------------------------------------- runner


class LiveRunner(_AnalysisThreads):
    """Run a live acquisition: every frame stored, as many as possible analyzed.

    Parameters
    ----------
    source
        Where the frames come from (:class:`CoreSource` for a camera).
    analyzer
        The frame analysis, or None to record only.
    writer
        An open :class:`~axialtrack.store.RunWriter`; the runner closes it.
    geometry
        How the planes lie on the sensor (splits each raw frame).
    config
        Threading and queue tuning.
    events
        The :class:`~axialtrack.events.RunSignals` to emit (default: a
        new group); subscribe through :attr:`events`.

    Attributes
    ----------
    events
        The run's signals (:class:`~axialtrack.events.RunSignals`):
        ``started``, ``status`` (a :class:`LiveMetrics` every
        ``status_interval_s``), ``batchAnalyzed``, ``framesStored``,
        ``framesSkipped``, ``warning``, ``finished``, ``failed``. No subscriber
        ever runs in the acquisition thread.
    """

    # ------------------------------------------------------------- public
    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to stop; :meth:`run` returns once everything is stored.

        Safe from any thread and from a signal handler (it only sets a flag).
        ``reason`` becomes the run's ``stop_reason`` (the first one given wins),
        e.g. ``"terminated"`` for SIGTERM.
        """
        if self._stop_reason == "running":
            self._stop_reason = reason
        self._stop.set()

    def run(
        self, *, duration_s: float | None = None, n_frames: int | None = None
    ) -> LiveMetrics:
        """Acquire, store and analyze until done; return the final metrics.

        Stops after ``duration_s`` seconds counted from the first frame (a
        camera may take seconds to start) or ``n_frames`` frames (whichever
        first; neither: until :meth:`stop`, Ctrl-C or the source ends). At the
        end it marks analyzed frames, writes the analyzer's tracks, stores the
        metrics as ``live_metrics`` in the run's attributes and closes the
        store. Ctrl-C stops the run cleanly (``stop_reason="interrupted"``);
        for SIGTERM and SIGHUP see :class:`StopSignals`.

        An analyzer that raises, or an analysis process that dies, does not
        stop the run: the recording goes on, the frames from then on keep
        ``analyzed = false`` (``axialtrack localize`` fills them in), and the
        metrics say so (``analysis_error``, ``analysis_failed_at``, a warning).

        Raises
        ------
        CameraStalledError
            No frame for ``stall_timeout_s``; the store holds every frame
            received and is closed.
        axialtrack.store.StoreError
            The store could not keep up or failed (its message says how many
            frames are safely stored).
        """
        if self._ran:
            raise RuntimeError("a LiveRunner runs once; create a new one")
        self._ran = True
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        if n_frames is not None and n_frames <= 0:
            raise ValueError(f"n_frames must be > 0, got {n_frames}")
        cfg = self.config
        # an analyzer that served an earlier run (its frames also started at 0)
        # starts a new one: no open tracks, no kept rows
        reset = getattr(self.analyzer, "reset", None)
        warmup = getattr(self.analyzer, "warmup", None)
        if callable(reset) or callable(warmup):
            try:
                if callable(reset):
                    reset()
                if callable(warmup):
                    warmup()  # build graphs and buffers before the first frame
            except BaseException:
                with contextlib.suppress(StoreError):
                    self.writer.close()
                raise
        frozen = cfg.freeze_gc and gc.isenabled()
        try:
            if frozen:
                gc.collect()
                gc.freeze()
        except BaseException:  # Ctrl-C before the camera started: nothing acquired
            gc.unfreeze()
            with contextlib.suppress(StoreError):
                self.writer.close()
            raise
        try:
            return self._run(n_frames, duration_s)
        finally:
            if frozen:
                gc.unfreeze()

    def _run(self, n_frames: int | None, duration_s: float | None) -> LiveMetrics:
        cfg = self.config
        try:
            self.source.start(n_frames)
        except BaseException:
            with contextlib.suppress(StoreError):
                self.writer.close()
            raise
        self._t0 = time.perf_counter()
        self._emit(self.events.started, self.writer.path)
        # each thread sets its event when it ends: a Thread.join() interrupted
        # by Ctrl-C (KeyboardInterrupt) can mark the running thread as stopped,
        # so that later joins return at once (seen with CPython 3.11); the
        # acquisition then went on after the writer was told the frames had
        # ended, and its last frame was counted but never stored
        acq_done = self._start_thread(self._acquire_loop, "live-acquire", n_frames)
        others = [self._start_thread(self._write_loop, "live-write")]
        if self.analyzer is not None:
            if self._staged:
                others.append(self._start_thread(self._prepare_loop, "live-detect"))
            others.append(self._start_thread(self._analyze_loop, "live-analyze"))
        end: float | None = None
        try:
            while not acq_done.is_set():
                now = time.perf_counter()
                wait = cfg.status_interval_s
                if duration_s is not None and not self._stop.is_set():
                    if end is None and self._frames_in:
                        # from the first frame: a camera may take seconds to
                        # start, and that is no part of the run
                        end = self._t_first + duration_s
                    if end is None:
                        wait = min(wait, cfg.poll_s)
                    elif now >= end:
                        self.stop("duration")
                    else:
                        wait = min(wait, end - now)
                acq_done.wait(wait)
                self._report()
        except KeyboardInterrupt:
            self._interrupted()
        finally:
            self._stop.set()
            self._wait_for(acq_done)
            self._write_q.put(_DONE)
            with self._ana_cv:
                self._acq_done = True
                self._ana_cv.notify_all()
            for done in others:
                self._wait_for(done)
        return self._finish()

    def _start_thread(
        self, target: Callable[..., None], name: str, *args: Any
    ) -> threading.Event:
        """Start a daemon thread running ``target``; the event is set when it ends."""
        done = threading.Event()

        def body() -> None:
            try:
                target(*args)
            except BaseException as exc:  # the loops catch what they expect
                self._thread_died(name, exc)
            finally:
                done.set()

        threading.Thread(target=body, name=name, daemon=True).start()
        return done

    def _thread_died(self, name: str, exc: BaseException) -> None:
        """A runner thread ended on an exception its loop did not catch: an
        analysis thread's stops the analysis (the recording goes on), any other
        stops the run with it."""
        logger.error("live: thread %s died: %r", name, exc)
        if name in ("live-detect", "live-analyze"):
            self._analysis_down(f"the analysis thread {name} died", exc)
            return
        self._fail(exc)

    def _interrupted(self) -> None:
        self.stop("interrupted")

    def _wait_for(self, done: threading.Event) -> None:
        """Wait for a thread to end; more Ctrl-C only repeats the stop request
        (the run must still store everything it received)."""
        while True:
            try:
                done.wait()
                return
            except KeyboardInterrupt:
                self._interrupted()

    # --------------------------------------------------- acquisition thread
    def _acquire_loop(self, n_frames: int | None) -> None:
        cfg = self.config
        src = self.source
        ring = self._ring
        last = time.perf_counter()
        stopping = False
        last_number: int | None = None
        analyze = self.analyzer is not None
        drain_s = max(cfg.stall_timeout_s or 0.0, 5.0)
        # a source that ends on its own (the MDA's sequence) says how long
        # its frames may take to come in after a stop (its cancel)
        drain_s = max(drain_s, float(getattr(src, "drain_timeout_s", 0.0)))
        stop_at = math.inf
        try:
            while True:
                if self._stop.is_set() and not stopping:
                    stopping = True
                    stop_at = time.perf_counter()
                    src.stop()  # frames already in the camera buffer still come
                if self._failure is not None:
                    break
                if stopping and time.perf_counter() - stop_at > drain_s:
                    self._warn(
                        f"The frame source kept delivering {drain_s:g} s after it "
                        "was stopped; the frames not yet taken were left in it."
                    )
                    break
                item = src.next(cfg.poll_s)
                now = time.perf_counter()
                if item is None:
                    if self._no_frame(now - last, stopping, n_frames):
                        break
                    continue
                last = now
                frame = item if isinstance(item, SourceFrame) else SourceFrame(*item)
                slot = None
                while slot is None:
                    slot = ring.acquire(cfg.poll_s)
                    if slot is None and self._failure is not None:
                        return
                try:
                    split_into(frame.raw, self.geometry, ring.frames[slot])
                except ValueError as exc:
                    ring.hold(slot, 1)
                    ring.release(slot)
                    self._fail(exc)
                    break
                num = int(frame.image_number)
                if last_number is not None and num >= 0 and num > last_number + 1:
                    self._camera_lost += num - last_number - 1
                if num >= 0:
                    last_number = num
                meta = FrameMeta(
                    t_s=float(frame.t_s),
                    stage_z_um=float(frame.stage_z_um),
                    stage_x_um=float(frame.stage_x_um),
                    stage_y_um=float(frame.stage_y_um),
                    image_number=num,
                    position_index=int(frame.position_index),
                    # when it reached this process, not when the writer's
                    # thread got to it (which lags by the write queue)
                    host_t_s=now - self.writer.t0,
                )
                t_host = frame.t_host if math.isfinite(frame.t_host) else now
                index = self._frames_in
                if not index:
                    self._t_first = now
                self._t_last = now
                if analyze:
                    self._queue_for_analysis(index, slot, meta, t_host)
                else:
                    ring.hold(slot, 1)
                self._frame_fields.append(meta.position_index)
                self._write_q.put((index, slot, meta))
                self._frames_in = index + 1
                if n_frames is not None and self._frames_in >= n_frames:
                    if self._stop_reason == "running":
                        self._stop_reason = "n_frames"
                    src.stop()
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            with contextlib.suppress(Exception):
                src.stop()
        if self._camera_lost:
            self._warn(
                f"{self._camera_lost} frame(s) were lost in the camera buffer before "
                "the runner could take them (gaps in the image numbers); enlarge "
                "the circular buffer or lower the frame rate."
            )

    def _no_frame(self, waited_s: float, stopping: bool, n_frames: int | None) -> bool:
        """No frame came in ``poll_s``: True when the acquisition ends (the
        source finished, or the camera stalled: the run fails)."""
        cfg = self.config
        if self.source.finished():
            if not stopping:
                self._source_ended(n_frames)
            return True
        stall = cfg.stall_timeout_s
        if stall is not None and not self._frames_in:
            stall = max(stall, cfg.start_timeout_s)
        if stopping or stall is None or waited_s <= stall:
            return False
        self.source.stop()
        self._fail(
            CameraStalledError(
                f"The camera delivered no frame for {waited_s:.1f} "
                f"s (stall timeout {stall:g} s) after "
                f"{self._frames_in} frames; the run was stopped. "
                f"All {self._frames_in} frames received are stored "
                f"in {self.writer.path}. Check the camera (cable, "
                "trigger, exposure) and start a new run."
            )
        )
        return True

    def _queue_for_analysis(
        self, index: int, slot: int, meta: FrameMeta, t_host: float
    ) -> None:
        """Hold ``slot`` for the writer and, if the analysis queue has room, for
        the analysis; else the frame is skipped (counted, never waited for)."""
        ring = self._ring
        give = False
        ring.hold(slot, 2)
        # the queue is checked again under its lock: a failed analysis lets go
        # of the queued frames and takes no more
        if not self._analysis_stopped:
            with self._ana_cv:
                if (
                    not self._analysis_stopped
                    and len(self._ana_q) < self.config.analysis_queue_frames
                ):
                    self._ana_q.append((index, slot, meta, t_host))
                    self._ana_cv.notify()
                    give = True
            if not give and not self._analysis_stopped:
                self._frames_skipped += 1
                self._skipped_new.append(index)
        if not give:
            ring.hold(slot, 1)

    def _source_ended(self, n_frames: int | None) -> None:
        if getattr(self.source, "natural_end", False):
            # e.g. an MDA sequence: its end is the end of the run (the source
            # may say why it ended, e.g. "sequence-canceled")
            self._stop_reason = (
                getattr(self.source, "end_reason", None) or "sequence-finished"
            )
            return
        self._stop_reason = "source-ended"
        if n_frames is not None and self._frames_in < n_frames:
            self._warn(
                f"The camera stopped after {self._frames_in} of {n_frames} frames; "
                f"all {self._frames_in} frames received are stored."
            )
        elif n_frames is None:
            self._warn(
                f"The camera sequence ended after {self._frames_in} frames, before "
                "the run was stopped; all frames received are stored."
            )

    # ------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        ring = self._ring
        w = self.writer
        while True:
            item = self._write_q.get()
            if item is _DONE:
                break
            index, slot, meta = item
            if self._writer_failed:
                # the store refused a frame: it takes no more (every frame
                # before that one is stored)
                ring.release(slot)
                continue
            try:
                got = w.append_frame(ring.frames[slot], meta)
                if got != index:  # pragma: no cover - the writer is ours alone
                    raise RuntimeError(
                        f"run store index {got} != runner index {index}: another "
                        "thread appended frames to this writer"
                    )
                self._frames_handed = index + 1
            except BaseException as exc:
                self._writer_failed = True
                # no localizations for frames the store will not hold
                self._analysis_stopped = True
                self._fail(exc)
            finally:
                ring.release(slot)

    # ---------------------------------------------------- analysis thread
    # --------------------------------------------------------------- end
    def _stored_localizations(self) -> pd.DataFrame:
        """The localization rows handed to the writer, read back from the store
        once it has committed them all (it does every
        ``table_flush_interval_s``)."""
        from axialtrack.store import open_run

        w = self.writer
        deadline = time.perf_counter() + ROWS_COMMIT_WAIT_S
        while w.rows_committed < self._rows:
            if time.perf_counter() > deadline:
                raise StoreError(
                    f"{w.rows_committed} of {self._rows} localization rows were "
                    f"committed after {ROWS_COMMIT_WAIT_S:g} s"
                )
            time.sleep(0.01)
        return open_run(w.path).localizations

    def _finish(self) -> LiveMetrics:
        w = self.writer
        failure = self._failure
        tracks_df = None
        analyzer: Any = self.analyzer
        if analyzer is not None and not self._analysis_broken:
            try:
                tracks_df = analyzer.finish()
            except Exception as exc:
                self._warn(f"The analyzer failed to summarize tracks: {exc}")
        summarize = getattr(analyzer, "summarize", None)
        # several fields (stage positions, grid tiles, z steps): each field's
        # tracks step from one visit of it to the next, which only the
        # positions of all frames (the skipped ones too) tell
        fields = np.frombuffer(self._frame_fields, dtype=np.int64)
        several = len(fields) > 0 and bool((fields != fields[0]).any())
        if several and callable(summarize):
            tracks_df = None
        if (
            callable(summarize)
            and tracks_df is None
            and self._rows
            and not self._writer_failed
            and failure is None
            and (
                several
                or self._analysis_broken
                or getattr(analyzer, "keep_rows", True) is False
            )
        ):
            # an analyzer that keeps no rows (flat memory on long runs), or one
            # that failed: the tracks of the rows the store holds
            try:
                stored = self._stored_localizations()
                tracks_df = (
                    summarize(stored, frame_positions=fields)
                    if several
                    else summarize(stored)
                )
            except Exception as exc:
                self._warn(
                    f"The track table could not be made from the stored "
                    f"localizations: {type(exc).__name__}: {exc} (`axialtrack "
                    "localize --all` makes it again)"
                )
        self._check_rate(final=True)
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        # mean rates from the first frame on (a camera may take a while to start)
        span = self._t_last - self._t_first
        rate_s = span * self._frames_in / (self._frames_in - 1) if span > 0 else elapsed
        self._flush_analyzed()  # every frame handed over is appended by now
        if tracks_df is not None and len(tracks_df):
            try:
                w.write_tracks(tracks_df)
            except StoreError as exc:
                self._warn(f"The track table was not stored: {exc}")
        final = self._snapshot(now, (0.0, 0.0, 0.0), w.frames_committed)
        # final numbers: every frame handed to the writer is on disk after close
        final.frames_written = self._frames_handed
        final.fps_in = final.frames_in / rate_s
        # frames analyzed after the last one arrived (the queue worked off)
        # took that much longer: the span runs to the last analysis, less the
        # time a frame takes with no queue before it (the shortest latency),
        # so a run that kept up is not charged for its last frame
        ana_s = rate_s
        if final.frames_analyzed and self._t_last_analyzed > self._t_last:
            with self._lat_lock:
                shortest = min(self._lat, default=0.0)
            ana_s = rate_s + max(self._t_last_analyzed - self._t_last - shortest, 0.0)
        final.fps_analyzed = final.frames_analyzed / ana_s
        final.fps_written = final.frames_written / rate_s
        final.writer_queue_depth = 0
        final.analysis_queue_depth = 0
        final.elapsed_s = elapsed
        close_error: BaseException | None = None
        with contextlib.suppress(StoreError):
            w.set_attrs(live_metrics=final.as_dict(), runner=self.config.model_dump())
        try:
            w.close()
        except BaseException as exc:
            close_error = exc
        final.frames_written = w.frames_committed
        if self.config.log_status:
            logger.info("live run finished (%s): %s", final.stop_reason, final)
        self._emit_pending(final.frames_written)
        if len(self._warnings) > self._warnings_emitted:  # a subscriber failed
            self._emit_pending(final.frames_written)
            final.warnings = list(self._warnings)
        if failure is not None or close_error is not None:
            self._emit(self.events.failed, failure or close_error)
        if failure is not None:
            if self._analysis_error is not None:
                failure.add_note(
                    f"Before that, the analysis had stopped at frame "
                    f"{self._analysis_failed_at}: {self._analysis_error}"
                )
            if close_error is not None and hasattr(failure, "add_note"):
                failure.add_note(f"and closing the run store failed: {close_error}")
            raise failure
        if close_error is not None:
            raise close_error
        if final.frames_written != final.frames_in:  # pragma: no cover - guard
            raise RuntimeError(
                f"{final.frames_in} frames received but {final.frames_written} "
                f"stored in {w.path}"
            )
        self._emit(self.events.finished, final)
        return final

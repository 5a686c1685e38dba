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
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from axialtrack.errors import AxialtrackError
from axialtrack.events import RunSignals
from axialtrack.geometry import SplitterGeometry, unmirror
from axialtrack.pipeline.psfcheck import PSFChangeMonitor
from axialtrack.store import (
    FrameMeta,
    RunWriter,
    StoreClosedError,
    StoreError,
    StoreWriteError,
    WriterOptions,
)

if TYPE_CHECKING:
    import pandas as pd

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

logger = logging.getLogger(__name__)


#: A camera delivering less than this fraction of the requested frame rate is
#: warned about (once a run), judged after ``RATE_CHECK_S`` seconds of frames.
RATE_SHORTFALL = 0.9
RATE_CHECK_S = 3.0
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


# ------------------------------------------------------------- protocols
class SourceFrame(NamedTuple):
    """One raw camera frame and what is known about it.

    Attributes
    ----------
    raw
        The sensor frame: ``(H, 2W)`` side-by-side, ``(2H, W)`` top-bottom or
        ``(2, H, W)`` for two cameras (see :func:`axialtrack.geometry.split_frame`).
    t_s
        Camera timestamp, seconds (stored as ``t_s`` of the frame).
    stage_z_um, stage_x_um, stage_y_um
        Stage positions during the exposure (NaN if unknown).
    image_number
        The camera's image counter (-1 if unknown).
    position_index
        Stage position (field) index in multi-position acquisitions.
    t_host
        ``time.perf_counter()`` time that corresponds to ``t_s`` (the frame
        arriving in the camera buffer), for the end-to-end latency; NaN: the time
        the runner received the frame is used.
    """

    raw: np.ndarray
    t_s: float
    stage_z_um: float = math.nan
    stage_x_um: float = math.nan
    stage_y_um: float = math.nan
    image_number: int = -1
    position_index: int = 0
    t_host: float = math.nan


@runtime_checkable
class FrameSource(Protocol):
    """Where the runner takes raw frames from (a camera sequence, a queue, ...)."""

    def start(self, n_frames: int | None = None) -> None:
        """Start delivering frames (``n_frames`` of them, or until stopped)."""

    def stop(self) -> None:
        """Stop acquiring; frames already acquired may still be returned."""

    def next(self, timeout_s: float) -> SourceFrame | tuple | None:
        """The next frame, or None if none arrived within ``timeout_s``.

        A plain tuple ``(raw, t_s, stage_z_um, stage_x_um, stage_y_um,
        image_number)`` is accepted too.
        """

    def finished(self) -> bool:
        """True when no more frames will come (stopped or done, buffer empty)."""


class FrameAnalyzer(Protocol):
    """The analysis the runner applies to batches of frames (one thread)."""

    def analyze(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> pd.DataFrame:
        """Localizations of a batch of frames.

        Parameters
        ----------
        planes
            ``(F, 2, H, W)`` uint16 split (and un-mirrored) frames.
        indices
            ``(F,)`` int64 run frame indices, increasing, with gaps where frames
            were skipped.
        meta
            The :class:`~axialtrack.store.FrameMeta` of each frame (``t_s`` is
            the camera timestamp, ``stage_z_um`` the focus position, ...).

        Returns
        -------
        pandas.DataFrame
            Localization rows (``frame``, ``t_s``, ``x_um``, ... ``track_id``) for
            these frames; possibly empty.
        """
        ...

    def finish(self) -> pd.DataFrame | None:
        """At the end of the run: the per-track summary table (or None)."""
        ...


@runtime_checkable
class StagedAnalyzer(Protocol):
    """A :class:`FrameAnalyzer` split in two stages the runner can overlap.

    ``analyze(planes, indices, meta)`` must equal
    ``complete(prepare(planes, indices, meta))``. ``prepare`` (detection, crops)
    runs in the ``live-detect`` thread and must not touch what ``complete``
    (inference, linking; ``live-analyze`` thread, in frame order) changes.
    """

    def analyze(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> pd.DataFrame:
        """Both stages at once."""
        ...

    def prepare(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> Any:
        """First stage of a batch; its result goes to :meth:`complete`."""
        ...

    def complete(self, prepared: Any) -> pd.DataFrame:
        """Second stage: the localization rows of the batch."""
        ...

    def finish(self) -> pd.DataFrame | None:
        """At the end of the run: the per-track summary table (or None)."""
        ...


def _columns_variant(analyzer: Any, name: str) -> Any:
    """``analyzer.<name>_columns`` where it has one (rows as a dict of column
    arrays), else ``analyzer.<name>``."""
    fn = getattr(analyzer, f"{name}_columns", None)
    return fn if callable(fn) else getattr(analyzer, name)


def _n_rows(table: Any) -> int:
    """Rows of a DataFrame or of a dict of equal-length column arrays."""
    if table is None:
        return 0
    if isinstance(table, Mapping):
        return len(next(iter(table.values()))) if table else 0
    return len(table)


def _as_columns(table: Any) -> dict[str, np.ndarray]:
    """A batch's rows as a dict of column arrays (``{}`` for none)."""
    if table is None:
        return {}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    return {str(c): table[c].to_numpy() for c in table.columns}


def _rows_before(table: Any, n_frames: int) -> Any:
    """The rows of ``table`` (DataFrame or dict of columns) whose ``frame`` is
    below ``n_frames``."""
    if table is None or not _n_rows(table):
        return table
    keep = np.asarray(table["frame"]) < n_frames
    if keep.all():
        return table
    if isinstance(table, Mapping):
        return {k: np.asarray(v)[keep] for k, v in table.items()}
    return table[keep]


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
        batches grow only while the analysis is behind (at 100 frames/s on two
        cores, latency p50 7 ms against 25 ms with 20 ms, p99 16 against 34 ms,
        for about 0.5 ms more CPU per frame).
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
        collection walks a quarter of a million objects and holds the GIL for
        up to 170 ms (measured in the live benchmark), stalling every thread of
        the run; after the freeze it walks only what the run itself allocates.
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


# ---------------------------------------------------------------- helpers
def split_into(raw: np.ndarray, geometry: SplitterGeometry, out: np.ndarray) -> None:
    """Split a raw sensor frame into ``out`` (``(2, H, W)``) without allocating.

    Same result as :func:`axialtrack.geometry.split_frame`.

    Raises
    ------
    ValueError
        The frame does not match the layout or ``out``'s plane shape.
    """
    raw = np.asarray(raw)
    h, w = out.shape[-2:]
    if geometry.layout == "two-cameras":
        p0, p1 = raw[0], raw[1]
        shape = raw.shape
        want: tuple[int, ...] = (2, h, w)
    else:
        shape = raw.shape
        want = geometry.sensor_shape((h, w))
        if geometry.layout == "side-by-side":
            p0, p1 = raw[:, :w], raw[:, w:]
        else:
            p0, p1 = raw[:h], raw[h:]
    if tuple(shape) != tuple(want):
        raise ValueError(
            f"camera frame of shape {tuple(shape)} does not match the run: a "
            f"{geometry.layout} sensor frame of two {h} x {w} planes is "
            f"{tuple(want)}. Was the camera ROI or the splitter changed?"
        )
    out[0] = p0
    out[1] = unmirror(p1, geometry.mirror)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


# ---------------------------------------------------------------- signals
#: The signals :class:`StopSignals` turns into a clean stop, with the
#: ``stop_reason`` each gives (SIGHUP only where the platform has it).
STOP_SIGNALS: dict[str, str] = {
    "SIGINT": "interrupted",
    "SIGTERM": "terminated",
    "SIGHUP": "hangup",
}


class StopSignals:
    """Stop a live run on SIGINT, SIGTERM or SIGHUP as on Ctrl-C.

    systemd, Docker, ``timeout`` and Slurm stop a job with SIGTERM; a closed
    terminal or SSH session sends SIGHUP. Inside the ``with`` block each of
    these only asks the attached :class:`LiveRunner` to stop
    (:meth:`LiveRunner.stop`, ``stop_reason`` ``"interrupted"``,
    ``"terminated"`` or ``"hangup"``): the run then ends as it does at its
    duration, with every frame received stored, the tracks written and the
    store closed. A signal that comes before a runner is attached is kept and
    stops the runner as soon as it is. Repeating the signal changes nothing
    but calls ``on_repeat`` (to tell the user the run is closing); SIGKILL
    remains the way to end the process at once.

    The handlers can only be installed from the main thread; elsewhere (and
    for signals the platform lacks: Windows has no SIGHUP, and delivers no
    SIGTERM from other processes) the block changes nothing. The previous
    handlers come back when it ends.

    Attributes
    ----------
    signum
        The first stop signal received (``None``: none).
    """

    def __init__(
        self,
        runner: LiveRunner | None = None,
        *,
        on_repeat: Callable[[int], None] | None = None,
        names: Sequence[str] = tuple(STOP_SIGNALS),
    ) -> None:
        self.runner = runner
        self.on_repeat = on_repeat
        self.signum: int | None = None
        self.received = 0
        self._names = tuple(names)
        self._old: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """``128 + signum`` (the shell's convention: 130 for SIGINT, 143 for
        SIGTERM, 129 for SIGHUP), or ``None`` if no signal came."""
        return None if self.signum is None else 128 + int(self.signum)

    @property
    def reason(self) -> str | None:
        """The ``stop_reason`` of the first signal received."""
        if self.signum is None:
            return None
        import signal

        return STOP_SIGNALS.get(signal.Signals(self.signum).name, "stopped")

    def attach(self, runner: LiveRunner) -> None:
        """Stop ``runner`` on a signal (at once if one came already)."""
        self.runner = runner
        reason = self.reason
        if reason is not None:
            runner.stop(reason)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        elif self.on_repeat is not None:
            with contextlib.suppress(Exception):
                self.on_repeat(signum)
        if self.runner is not None:
            self.runner.stop(self.reason or "stopped")

    def __enter__(self) -> StopSignals:
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self._names:
            num = getattr(signal, name, None)
            if num is None:
                continue
            try:
                self._old[num] = signal.signal(num, self._handle)
            except (OSError, ValueError):  # pragma: no cover - platform refuses
                continue
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for num, old in self._old.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(num, old if old is not None else signal.SIG_DFL)
        self._old = {}


# ----------------------------------------------------------- core source
class CoreSource:
    """A :class:`FrameSource` over a pymmcore-plus core's sequence acquisition.

    :meth:`start` calls ``startSequenceAcquisition(n, interval_ms, False)`` (or
    ``startContinuousSequenceAcquisition``), :meth:`next` pops frames with
    ``popNextImageAndMD``.

    The frame's ``t_s`` is the camera's own timestamp when its metadata has one
    (``SimTime_s`` of the simulated camera, ``ReplayTime_s`` of the replay
    camera; see ``time_keys``), else ``ElapsedTime-ms`` (the core's time since
    the sequence started). Stage positions come from the metadata
    (``SimStageZ_um``, ``ReplayStageZ_um``, ...) or else from the positions the
    core reported when the sequence started (the stage does not move during a
    live run).

    Two cameras (the ``two-cameras`` splitter layout under Micro-Manager's
    ``Multi Camera``): the core's buffer holds the images of both cameras; each
    image's ``Camera`` tag names its physical camera. Images are paired in
    arrival order per camera, plane 0 from ``camera_labels[0]``, into a
    ``(2, H, W)`` raw frame.

    Parameters
    ----------
    core
        A loaded ``CMMCorePlus``/``UniMMCore``.
    interval_ms
        Frame interval passed to the sequence acquisition (0: as fast as the
        exposure allows).
    two_cameras
        Pair images of two physical cameras (see above).
    camera_labels
        Physical camera labels of plane 0 and plane 1 (two cameras); default:
        the core's camera channels 0 and 1.
    time_keys, z_keys, x_keys, y_keys
        Metadata tags tried, in order, for the timestamp (seconds) and the
        stage positions (um).
    poll_interval_s
        How often :meth:`next` looks at the camera buffer while it is empty.
        Each look takes the GIL from the analysis threads; 2 ms adds at most
        2 ms to a frame's latency.

    Attributes
    ----------
    requested_fps
        The frame rate asked of the camera, set by :meth:`start`: the
        camera's ``FrameRateHz`` property where it has one (the replay
        camera), else ``1000 / max(exposure_ms, interval_ms)``, the fastest
        a camera whose frames follow one another can go; NaN if unknown. The
        runner reports it beside the rate delivered.
    """

    def __init__(
        self,
        core: Any,
        *,
        interval_ms: float = 0.0,
        two_cameras: bool = False,
        camera_labels: tuple[str, str] | None = None,
        time_keys: Sequence[str] = ("SimTime_s", "ReplayTime_s"),
        z_keys: Sequence[str] = ("SimStageZ_um", "ReplayStageZ_um"),
        x_keys: Sequence[str] = ("SimStageX_um", "ReplayStageX_um"),
        y_keys: Sequence[str] = ("SimStageY_um", "ReplayStageY_um"),
        poll_interval_s: float = 0.002,
    ) -> None:
        self.core = core
        self.poll_interval_s = float(poll_interval_s)
        self.interval_ms = float(interval_ms)
        self.two_cameras = bool(two_cameras)
        self._labels = camera_labels
        self._time_keys = tuple(time_keys)
        self._z_keys = tuple(z_keys)
        self._x_keys = tuple(x_keys)
        self._y_keys = tuple(y_keys)
        self._z0 = self._x0 = self._y0 = math.nan
        self._t_start = math.nan
        self._started = False
        self._pending: dict[str, deque[tuple[np.ndarray, Mapping[str, Any]]]] = {}
        self.requested_fps = math.nan

    def _nominal_fps(self) -> float:
        """See ``requested_fps``."""
        core = self.core
        period_ms = self.interval_ms
        with contextlib.suppress(Exception):
            cam = core.getCameraDevice()
            if cam and core.hasProperty(cam, "FrameRateHz"):
                hz = float(core.getProperty(cam, "FrameRateHz"))
                if hz > 0:
                    period_ms = max(period_ms, 1e3 / hz)
                    return 1e3 / period_ms
                return math.nan  # unpaced: as fast as it can
            period_ms = max(period_ms, float(core.getExposure()))
        return 1e3 / period_ms if period_ms > 0 else math.nan

    def start(self, n_frames: int | None = None) -> None:
        """Start the core's sequence acquisition."""
        core = self.core
        with contextlib.suppress(Exception):
            if core.getFocusDevice():
                self._z0 = float(core.getPosition())
        with contextlib.suppress(Exception):
            if core.getXYStageDevice():
                self._x0, self._y0 = (float(v) for v in core.getXYPosition())
        if self.two_cameras and self._labels is None:
            try:
                self._labels = (
                    str(core.getCameraChannelName(0)),
                    str(core.getCameraChannelName(1)),
                )
            except Exception as exc:
                raise RuntimeError(
                    "two-cameras: cannot tell the two physical cameras apart "
                    f"({exc}); pass camera_labels=(plane0_camera, plane1_camera)"
                ) from None
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        self.requested_fps = self._nominal_fps()
        self._pending = {}
        self._t_start = time.perf_counter()
        if n_frames is not None:
            n_images = int(n_frames) * (2 if self.two_cameras else 1)
            core.startSequenceAcquisition(n_images, self.interval_ms, False)
        else:
            core.startContinuousSequenceAcquisition(self.interval_ms)
        self._started = True

    def stop(self) -> None:
        """Stop the sequence acquisition (frames in the buffer stay poppable)."""
        if self._started and self.core.isSequenceRunning():
            self.core.stopSequenceAcquisition()

    def finished(self) -> bool:
        """The sequence is over and the buffer is empty."""
        core = self.core
        return (
            self._started
            and not core.isSequenceRunning()
            and core.getRemainingImageCount() == 0
        )

    def _meta_value(self, md: Mapping[str, Any], keys: Sequence[str]) -> float:
        for k in keys:
            if k in md:
                v = _as_float(md[k])
                if math.isfinite(v):
                    return v
        return math.nan

    def _pop(self) -> tuple[np.ndarray, Mapping[str, Any]]:
        img, md = self.core.popNextImageAndMD()
        return img, md

    def next(self, timeout_s: float) -> SourceFrame | None:
        """Pop the next frame (pairing two cameras' images if configured)."""
        deadline = time.perf_counter() + timeout_s
        core = self.core
        while True:
            if core.getRemainingImageCount() > 0:
                img, md = self._pop()
                if not self.two_cameras:
                    return self._frame(img, md)
                pair = self._pair(img, md)
                if pair is not None:
                    return pair
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            time.sleep(min(self.poll_interval_s, left))

    def _pair(self, img: np.ndarray, md: Mapping[str, Any]) -> SourceFrame | None:
        assert self._labels is not None
        cam = str(md.get("Camera", ""))
        if cam not in self._labels:
            raise RuntimeError(
                f"two-cameras: an image came from camera {cam!r}, not one of "
                f"{self._labels}; pass camera_labels= with the physical cameras"
            )
        self._pending.setdefault(cam, deque()).append((np.asarray(img), md))
        q0 = self._pending.get(self._labels[0])
        q1 = self._pending.get(self._labels[1])
        if not q0 or not q1:
            return None
        img0, md0 = q0.popleft()
        img1, _ = q1.popleft()
        return self._frame(np.stack([img0, img1]), md0)

    def _frame(self, img: np.ndarray, md: Mapping[str, Any]) -> SourceFrame:
        elapsed_ms = _as_float(md.get("ElapsedTime-ms"))
        t_s = self._meta_value(md, self._time_keys)
        if not math.isfinite(t_s):
            t_s = elapsed_ms / 1e3
        t_host = (
            self._t_start + elapsed_ms / 1e3 if math.isfinite(elapsed_ms) else math.nan
        )
        due = self._meta_value(md, ("ReplayDue_perf_s",))
        if math.isfinite(due):  # the replay camera: when the frame was due
            t_host = due
        z = self._meta_value(md, self._z_keys)
        x = self._meta_value(md, self._x_keys)
        y = self._meta_value(md, self._y_keys)
        num = _as_float(md.get("ImageNumber"))
        return SourceFrame(
            raw=img,
            t_s=t_s,
            stage_z_um=z if math.isfinite(z) else self._z0,
            stage_x_um=x if math.isfinite(x) else self._x0,
            stage_y_um=y if math.isfinite(y) else self._y0,
            image_number=int(num) if math.isfinite(num) else -1,
            t_host=t_host,
        )


# ----------------------------------------------------------------- runner
_DONE = object()


class _Ring:
    """Preallocated dual-plane frames with reference counts."""

    def __init__(self, n: int, frame_shape: tuple[int, int, int]) -> None:
        self.frames = np.empty((n, *frame_shape), dtype=np.uint16)
        self._refs = [0] * n
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self._free.put(i)
        self.n = n

    def acquire(self, timeout: float) -> int | None:
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def hold(self, slot: int, refs: int) -> None:
        with self._lock:
            self._refs[slot] = refs

    def release(self, slot: int) -> None:
        with self._lock:
            self._refs[slot] -= 1
            free = self._refs[slot] <= 0
        if free:
            self._free.put(slot)

    def in_use(self) -> int:
        return self.n - self._free.qsize()


class LiveRunner:
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
                    if src.finished():
                        if not stopping:
                            self._source_ended(n_frames)
                        break
                    stall = cfg.stall_timeout_s
                    if stall is not None and not self._frames_in:
                        stall = max(stall, cfg.start_timeout_s)
                    if not stopping and stall is not None and now - last > stall:
                        src.stop()
                        self._fail(
                            CameraStalledError(
                                f"The camera delivered no frame for {now - last:.1f} "
                                f"s (stall timeout {stall:g} s) after "
                                f"{self._frames_in} frames; the run was stopped. "
                                f"All {self._frames_in} frames received are stored "
                                f"in {self.writer.path}. Check the camera (cable, "
                                "trigger, exposure) and start a new run."
                            )
                        )
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
                # the queue is checked again under its lock: a failed analysis
                # lets go of the queued frames and takes no more
                give = False
                ring.hold(slot, 2)
                if analyze and not self._analysis_stopped:
                    with self._ana_cv:
                        if (
                            not self._analysis_stopped
                            and len(self._ana_q) < cfg.analysis_queue_frames
                        ):
                            self._ana_q.append((index, slot, meta, t_host))
                            self._ana_cv.notify()
                            give = True
                    if not give and not self._analysis_stopped:
                        self._frames_skipped += 1
                        self._skipped_new.append(index)
                if not give:
                    ring.hold(slot, 1)
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
    def _take_batch(self) -> list[tuple[int, int, FrameMeta, float]]:
        cfg = self.config
        cv = self._ana_cv
        q = self._ana_q
        with cv:
            while not q and not self._acq_done:
                cv.wait(0.1)
            if not q:
                return []
            # the oldest queued frame waits at most batch_deadline_s (from its
            # arrival, not from now: frames queued while the previous batch was
            # analyzed are taken at once)
            now = time.perf_counter()
            deadline = min(q[0][3], now) + cfg.batch_deadline_s
            while len(q) < cfg.max_batch_frames and not self._acq_done:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                cv.wait(left)
            n = min(len(q), cfg.max_batch_frames)
            return [q.popleft() for _ in range(n)]

    def _take_planes(
        self,
    ) -> tuple[np.ndarray, np.ndarray, list[FrameMeta], list[float]] | None:
        """The next batch copied out of the ring (slots freed); None at the end."""
        ring = self._ring
        while True:
            batch = self._take_batch()
            if not batch:
                return None
            slots = [b[1] for b in batch]
            try:
                planes = ring.frames[slots]  # a copy: the slots are free at once
            finally:
                for s in slots:
                    ring.release(s)
            if self._analysis_stopped:
                continue  # drain the queue; nothing more is analyzed
            indices = np.array([b[0] for b in batch], dtype=np.int64)
            return planes, indices, [b[2] for b in batch], [b[3] for b in batch]

    def _analysis_failed(self, indices: np.ndarray, exc: Exception) -> None:
        if isinstance(exc, (StoreWriteError, StoreClosedError)):
            self._analysis_stopped = True
            self._analysis_broken = True
            self._fail(exc)  # the store itself failed: no frame can be written
            return
        self._analysis_down(
            f"the analyzer failed on frames {indices[0]}..{indices[-1]}",
            exc,
            int(indices[0]),
        )

    def _analysis_down(
        self, what: str, exc: BaseException, first: int | None = None
    ) -> None:
        """The analysis stopped for good: the recording goes on without it.

        Frames from ``first`` (the failed batch's first; default: the one after
        the last analyzed) on keep ``analyzed = false``; batches before it that
        are already prepared are still completed; queued frames are let go
        (their ring slots freed).
        """
        with self._fail_lock:
            if self._analysis_error is not None:
                logger.error("live: the analysis also failed: %r", exc)
                return
            self._analysis_stopped = True
            self._analysis_broken = True
            at = self._last_analyzed_index + 1 if first is None else first
            self._analysis_failed_at = at
            self._analysis_error = f"{type(exc).__name__}: {exc}"
        with self._ana_cv:
            while self._ana_q:
                self._ring.release(self._ana_q.popleft()[1])
            self._ana_cv.notify_all()
        logger.error("live: %s: %r", what, exc)
        self._warn(
            f"The analysis stopped at frame {at} ({what}: {type(exc).__name__}: "
            f"{exc}). The recording goes on: every frame is stored, frames from "
            f"{at} on unanalyzed; run `axialtrack localize {self.writer.path} "
            "--model MODEL` afterwards to analyze them."
        )

    def _prepare_loop(self) -> None:
        """First analysis stage (staged analyzers): detection, one batch ahead."""
        analyzer: Any = self.analyzer
        try:
            while True:
                got = self._take_planes()
                if got is None:
                    break
                planes, indices, metas, t_host = got
                try:
                    prepared = analyzer.prepare(planes, indices, metas)
                except Exception as exc:
                    self._analysis_failed(indices, exc)
                    continue
                self._stage_q.put((indices, t_host, prepared))
        finally:
            self._stage_q.put(_DONE)

    def _next_for_analysis(self) -> tuple[np.ndarray, list[float], Any] | None:
        if self._staged:
            item = self._stage_q.get()
            if item is _DONE:
                self._stage_drained = True
                return None
            return item
        got = self._take_planes()
        if got is None:
            return None
        planes, indices, metas, t_host = got
        return indices, t_host, (planes, metas)

    def _analyze_loop(self) -> None:
        try:
            self._analyze_batches()
        finally:
            # whatever happened here, never leave the detect thread blocked on
            # the full hand-off queue (run() joins it)
            while self._staged and not self._stage_drained:
                if self._stage_q.get() is _DONE:
                    self._stage_drained = True

    def _analyze_batches(self) -> None:
        analyzer: Any = self.analyzer
        # the analyzers of this package hand over plain column arrays, which the
        # writer takes as they are (a DataFrame costs ~1 ms a batch to build)
        run_batch = _columns_variant(
            analyzer, "complete" if self._staged else "analyze"
        )
        w = self.writer
        counts_tracks = isinstance(
            getattr(analyzer, "n_tracks", None), (int, np.integer)
        )
        while True:
            item = self._next_for_analysis()
            if item is None:
                break
            indices, t_host, work = item
            if self._analysis_stopped and not (
                0 <= indices[-1] < self._analysis_failed_at
            ):
                continue  # batches prepared before a failure are still done
            try:
                if self._staged:
                    table = run_batch(work)
                else:
                    table = run_batch(work[0], indices, work[1])
                if self._writer_failed:
                    # the store holds frames 0..frames_appended-1 only
                    table = _rows_before(table, w.frames_appended)
                n = _n_rows(table)
                if n:
                    w.append_localizations(table)
                    self._rows += n
                    if "refined" in table:
                        self._refined += int(np.count_nonzero(table["refined"]))
                    if (msg := self._psf_check.update(table)) is not None:
                        self._warn(msg)
                    # counted here only for an analyzer that does not count
                    # them (the set grows with every track of the run)
                    if not counts_tracks and "track_id" in table:
                        ids = np.unique(np.asarray(table["track_id"]))
                        self._track_ids.update(int(i) for i in ids if i >= 0)
            except Exception as exc:
                self._analysis_failed(indices, exc)
                continue
            t_done = time.perf_counter()
            self._t_last_analyzed = t_done
            with self._lat_lock:
                self._lat.extend(t_done - t for t in t_host)
            self._frames_analyzed += len(indices)
            self._last_analyzed_index = int(indices[-1])
            self._pending_analyzed.append(indices)
            self._flush_analyzed()
            if len(self.events.batchAnalyzed):
                # after the latency is taken: a subscriber's time is its own
                self._emit(
                    self.events.batchAnalyzed,
                    np.asarray(indices, dtype=np.int64),
                    _as_columns(table),
                )

    def _flush_analyzed(self) -> None:
        """Mark analyzed the frames the writer has (the rest: next time)."""
        if not self._pending_analyzed:
            return
        idx = np.concatenate(self._pending_analyzed)
        n = self.writer.frames_appended
        ready, rest = idx[idx < n], idx[idx >= n]
        self._pending_analyzed = [rest] if rest.size else []
        if ready.size:
            try:
                self.writer.set_analyzed(ready, True)
            except StoreError as exc:
                self._fail(exc)

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
        if (
            callable(summarize)
            and tracks_df is None
            and self._rows
            and not self._writer_failed
            and failure is None
            and (self._analysis_broken or getattr(analyzer, "keep_rows", True) is False)
        ):
            # an analyzer that keeps no rows (flat memory on long runs), or one
            # that failed: the tracks of the rows the store holds
            try:
                tracks_df = summarize(self._stored_localizations())
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

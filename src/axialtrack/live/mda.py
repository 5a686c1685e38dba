"""Live tracking of any ``useq`` sequence run through ``core.mda``.

:class:`TrackingHandler` is a pymmcore-plus MDA output handler::

    handler = TrackingHandler("run.zarr", analyzer, core=core)
    core.mda.run(sequence, output=handler)  # or core.run_mda(..., output=...)
    handler.metrics  # LiveMetrics of the run

Each frame the MDA delivers is split into its two focal planes, written to a run
store (every frame) and analyzed (as many as the analysis keeps up with; the rest
are skipped and marked ``analyzed = false``): the same :class:`LiveRunner`
threads as ``axialtrack live``, fed from the MDA's ``frameReady`` instead of the
camera buffer. ``frameReady`` only queues the frame (no copy, no I/O), so it
never holds up the acquisition, whether pymmcore-plus calls it from its relay
thread (``output=handler``) or from the acquisition thread (:meth:`attach`, for
sequences started elsewhere, e.g. pymmcore-widgets' MDA widget).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.events import RunSignals
from axialtrack.geometry import CameraPairs, SplitterGeometry, splitter_geometry
from axialtrack.live.runner import (
    FrameAnalyzer,
    LiveMetrics,
    LiveRunner,
    RunnerConfig,
    SourceFrame,
    open_live_writer,
)
from axialtrack.pipeline import TrackingAnalyzer
from axialtrack.store import RunWriter, StoreExistsError, WriterOptions

__all__ = [
    "CameraPairs",
    "TrackingHandler",
    "geometry_from_core",
    "live_sequence",
    "nominal_fps",
]

logger = logging.getLogger(__name__)

_TIME_KEYS = ("SimTime_s", "ReplayTime_s")
_Z_KEYS = ("SimStageZ_um", "ReplayStageZ_um")
_X_KEYS = ("SimStageX_um", "ReplayStageX_um")
_Y_KEYS = ("SimStageY_um", "ReplayStageY_um")


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first(md: Mapping[str, Any], keys: tuple[str, ...]) -> float:
    for k in keys:
        if k in md:
            v = _num(md[k])
            if math.isfinite(v):
                return v
    return math.nan


def _frame_perf_s(core: Any, md: Mapping[str, Any], default: float) -> float:
    """When the MDA took the frame, on ``time.perf_counter``'s clock: its
    ``runner_time_ms`` from the runner's sequence start
    (:func:`axialtrack._pymmcore_compat.mda_sequence_t0`); ``default`` where
    either is missing."""
    # imported here: the pipeline itself does not need pymmcore-plus
    from axialtrack._pymmcore_compat import mda_sequence_t0

    t0 = mda_sequence_t0(core)
    ms = _num(md.get("runner_time_ms"))
    if t0 is not None and math.isfinite(ms):
        return t0 + ms / 1e3
    return default


#: The splitter geometry of a core: :func:`axialtrack.geometry.splitter_geometry`
#: (the name this module had for it).
geometry_from_core = splitter_geometry


def nominal_fps(core: Any, interval_ms: float = 0.0) -> float:
    """The frame rate asked of the core's camera: its ``FrameRateHz`` where it
    has one (the replay camera; NaN when 0, as fast as it can), else
    ``1000 / max(exposure_ms, interval_ms)``, the fastest a camera whose
    frames follow one another can go; NaN if unknown."""
    period_ms = float(interval_ms)
    with contextlib.suppress(Exception):
        cam = core.getCameraDevice()
        if cam and core.hasProperty(cam, "FrameRateHz"):
            hz = float(core.getProperty(cam, "FrameRateHz"))
            if hz > 0:
                return 1e3 / max(period_ms, 1e3 / hz)
            return math.nan
        period_ms = max(period_ms, float(core.getExposure()))
    return 1e3 / period_ms if period_ms > 0 else math.nan


#: frames a duration-bound live sequence plans per second where the camera's
#: rate is unknown (an unpaced replay): the run stops at its duration first
#: unless the camera delivers more than this
UNKNOWN_RATE_FPS = 1000.0


def live_sequence(
    core: Any,
    *,
    n_frames: int | None = None,
    duration_s: float | None = None,
    interval_ms: float = 0.0,
) -> Any:
    """The ``useq.MDASequence`` of a live run: a time-lapse at the stage's
    current position.

    ``n_frames`` frames, or enough for ``duration_s`` seconds at 1.25 times
    the camera's :func:`nominal_fps` (:data:`UNKNOWN_RATE_FPS` where unknown;
    :class:`TrackingHandler` given the same ``duration_s`` stops the run at
    its duration and cancels the rest). ``interval_ms = 0`` lets
    pymmcore-plus's engine run the whole time-lapse as one hardware sequence
    (``startSequenceAcquisition``); a positive interval is timed by the MDA
    runner, one snap per frame (pymmcore-plus 0.18 does not sequence
    time-lapses with an interval).
    """
    import useq

    if n_frames is None:
        if duration_s is None or not duration_s > 0:
            raise ValueError("live_sequence needs n_frames or duration_s > 0")
        fps = nominal_fps(core, interval_ms)
        if not math.isfinite(fps):
            fps = UNKNOWN_RATE_FPS
        n_frames = math.ceil(1.25 * duration_s * fps) + 8
    if not n_frames > 0:
        raise ValueError(f"n_frames must be > 0, got {n_frames}")
    return useq.MDASequence(
        time_plan={"interval": float(interval_ms) / 1e3, "loops": int(n_frames)},
        metadata={"axialtrack": {"kind": "live"}},
    )


class _QueueSource:
    """A FrameSource fed by ``frameReady`` (unbounded; the runner drains it)."""

    natural_end = True  # the sequence ending is the end of the run
    #: how long the runner takes frames after a stop, until the canceled
    #: sequence ends: its frames come through the MDA's relay thread, which a
    #: loaded machine delays by seconds, and every one is stored
    drain_timeout_s = 120.0

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self._q: queue.SimpleQueue[SourceFrame] = queue.SimpleQueue()
        self._closed = False
        self._on_stop = on_stop
        self.requested_fps = math.nan  # what the runner reports and checks
        # why the sequence ended, when not by completing (the run's stop_reason)
        self.end_reason: str | None = None

    def put(self, frame: SourceFrame) -> None:
        self._q.put(frame)

    def close(self) -> None:
        self._closed = True

    def start(self, n_frames: int | None = None) -> None:
        """Nothing to start: the MDA runs the camera."""

    def stop(self) -> None:
        """The run stopped before the sequence ended (its duration, frame
        count or a signal): cancel the MDA, whose frames still queued are
        then taken until the sequence says it finished."""
        if not self._closed and self._on_stop is not None:
            self._on_stop()

    def next(self, timeout_s: float) -> SourceFrame | None:
        try:
            return self._q.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def finished(self) -> bool:
        return self._closed and self._q.empty()

    def depth(self) -> int:
        return self._q.qsize()


class TrackingHandler:
    """MDA output handler: store every frame, track live, without blocking.

    Parameters
    ----------
    out
        Run store path. With ``{n}`` in it (e.g. ``"mda-{n:03d}.zarr"``) each
        sequence gets its own store; otherwise sequences after the first get
        ``-1``, ``-2``, ... before the suffix.
    analyzer
        The :class:`~axialtrack.live.runner.FrameAnalyzer` (None: record
        only). A :class:`~axialtrack.pipeline.TrackingAnalyzer` is set
        to keep no rows (``keep_rows = False``): the store holds every row and
        the track table is made from them at the end, so memory stays flat over
        a sequence of any length. Make an
        :class:`~axialtrack.live.AnalysisProcess` with ``keep_rows=False``
        for the same.
    core
        The core running the MDA: gives the splitter geometry and pixel size if
        not given, and is asked to cancel the MDA if the store fails.
    geometry
        Splitter geometry (default: from ``core``'s splitter device).
    pixel_size_um
        Default: the frame metadata's, else ``core.getPixelSizeUm()``.
    overwrite
        Replace existing stores. Without it an existing ``out`` is refused
        here, before anything runs.
    config, writer_options, compression, model, rig
        Passed to the runner and the :class:`~axialtrack.store.RunWriter`.
    events
        The :class:`~axialtrack.events.RunSignals` every sequence's run
        emits (default: a new group); subscribe through :attr:`events`.
    frame_interval_s
        The nominal frame interval recorded in the store (default: none).
    writer
        An open :class:`~axialtrack.store.RunWriter` for the first sequence
        (its store is then the caller's: ``out`` should name it); later
        sequences open their own stores.
    duration_s, n_frames
        Stop each sequence's run after this many seconds from its first frame
        or this many frames (:meth:`LiveRunner.run`): the MDA is canceled,
        what it delivered is stored. ``None``: the sequence decides.
    channel
        The channel (preset of the sequence's channel group) whose frames are
        stored and tracked. A run store holds one channel: frames of the other
        channels are left out and counted in :attr:`frames_other_channels`;
        record them with a second output, e.g. ``core.mda.run(seq,
        output=[handler, "all.ome.zarr"])``. ``None``: the sequence's first
        channel (with a warning when it has several).

    Attributes
    ----------
    events
        The runs' signals (:class:`~axialtrack.events.RunSignals`):
        ``started`` (each sequence's store), ``status``, ``batchAnalyzed``,
        ``framesStored``, ``framesSkipped``, ``warning``, ``finished``,
        ``failed``, emitted from the handler's supervisor and analysis threads.
    metrics
        :class:`LiveMetrics` of the last finished sequence.
    error
        The exception that stopped the last sequence's run, if any.
    path
        The store of the current (or last) sequence.
    tracked_channel
        The channel tracked in the current (or last) sequence (None: the
        sequence has no channels).
    frames_other_channels
        Frames of the current (or last) sequence from other channels, not
        stored by this handler.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        analyzer: FrameAnalyzer | None = None,
        *,
        core: Any = None,
        geometry: SplitterGeometry | None = None,
        pixel_size_um: float | None = None,
        overwrite: bool = False,
        config: RunnerConfig | None = None,
        writer_options: WriterOptions | None = None,
        compression: Any = None,
        model: Mapping[str, Any] | None = None,
        rig: Mapping[str, Any] | None = None,
        events: RunSignals | None = None,
        channel: str | None = None,
        frame_interval_s: float | None = None,
        writer: RunWriter | None = None,
        duration_s: float | None = None,
        n_frames: int | None = None,
    ) -> None:
        self._out = os.fspath(out)
        self.frame_interval_s = frame_interval_s
        self._writer = writer
        self.duration_s = duration_s
        self.n_frames = n_frames
        self._stop_lock = threading.Lock()
        self._stop_reason: str | None = None
        # two cameras: each camera's frame of an event, until its pair comes
        self._pairs = CameraPairs()
        self._fields: dict[tuple[int, int, int], int] = {}
        self.channel = channel
        self.tracked_channel: str | None = channel
        self.frames_other_channels = 0
        self._no_channel_error: str | None = None
        if isinstance(analyzer, TrackingAnalyzer):
            analyzer.keep_rows = False  # the rows are in the store
        self.analyzer = analyzer
        self.core = core
        self.geometry = geometry
        self.pixel_size_um = pixel_size_um
        self.overwrite = overwrite
        base = config or RunnerConfig()
        # the MDA decides when frames come (intervals may be long): no stall check
        self.config = base.model_copy(update={"stall_timeout_s": None})
        self.writer_options = writer_options
        self.compression = compression
        self.model = dict(model or {})
        self.rig = dict(rig or {})
        self.events = events if events is not None else RunSignals()
        self.metrics: LiveMetrics | None = None
        self.error: BaseException | None = None
        self.path: Path | None = None
        self._count = 0
        self._source: _QueueSource | None = None
        self._runner: LiveRunner | None = None
        self._started = False  # the run of this sequence was started (or tried)
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._attached: Any = None
        first = self._path_for(0)
        if writer is None and first.exists() and not overwrite:
            raise StoreExistsError(
                f"{first} already exists. Pass overwrite=True to replace it, or "
                "choose another output path."
            )

    # ---------------------------------------------------------- paths
    def _path_for(self, n: int) -> Path:
        if "{" in self._out:
            return Path(self._out.format(n=n)).expanduser()
        p = Path(self._out).expanduser()
        if n == 0:
            return p
        return p.with_name(f"{p.stem}-{n}{p.suffix}")

    # ------------------------------------------------------ connection
    def attach(self, core: Any) -> None:
        """Track every sequence ``core.mda`` runs (e.g. from the MDA widget).

        Connects this handler to ``core.mda.events`` directly: ``frameReady``
        then runs on the acquisition thread, where it only queues the frame.
        """
        if self._attached is not None:
            self.detach()
        ev = core.mda.events
        ev.sequenceStarted.connect(self.sequenceStarted)
        ev.frameReady.connect(self.frameReady)
        ev.sequenceCanceled.connect(self.sequenceCanceled)
        ev.sequenceFinished.connect(self.sequenceFinished)
        self._attached = core
        if self.core is None:
            self.core = core

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        core, self._attached = self._attached, None
        if core is None:
            return
        ev = core.mda.events
        for name in (
            "sequenceStarted",
            "frameReady",
            "sequenceCanceled",
            "sequenceFinished",
        ):
            with contextlib.suppress(Exception):  # not connected
                getattr(ev, name).disconnect(getattr(self, name))

    # -------------------------------------------------------- control
    def stop(self, reason: str = "stopped") -> None:
        """Stop the current run as its duration would (safe from a signal
        handler): the MDA is canceled, every frame it delivered is stored,
        the tracks are written and the store is closed. ``reason`` becomes the
        run's ``stop_reason``. :class:`~axialtrack.live.runner.StopSignals`
        can be attached to a handler as to a runner."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            runner = self._runner
        if runner is not None:
            runner.stop(reason)
        else:
            self._cancel()

    @property
    def runner(self) -> LiveRunner | None:
        """The :class:`LiveRunner` of the current (or last) sequence."""
        return self._runner

    # -------------------------------------------------- MDA callbacks
    def sequenceStarted(self, sequence: Any = None, meta: Any = None) -> None:
        """Prepare a new run (the store is created with the first frame)."""
        self.wait()
        self.metrics = None
        self.error = None
        self._dropped = 0
        self._pairs = CameraPairs()
        self._fields = {}
        self._source = _QueueSource(on_stop=self._cancel)
        self._source.requested_fps = self._sequence_fps(sequence)
        self._runner = None
        self._started = False
        self._thread = None
        self.path = self._path_for(self._count)
        self._count += 1
        self.frames_other_channels = 0
        self._no_channel_error = None
        names = [
            str(getattr(c, "config", c))
            for c in (getattr(sequence, "channels", None) or ())
        ]
        self.tracked_channel = self.channel
        if self.channel is None and names:
            self.tracked_channel = names[0]
            if len(set(names)) > 1:
                logger.warning(
                    "the sequence has channels %s; %s stores and tracks only %r "
                    "(pass channel= to choose; record the others with a second "
                    "output handler)",
                    ", ".join(repr(n) for n in names),
                    self.path,
                    names[0],
                )
        elif self.channel is not None and names and self.channel not in names:
            self._no_channel_error = (
                f"channel {self.channel!r} is not in the sequence's channels "
                f"({', '.join(repr(n) for n in names)}); nothing is stored in "
                f"{self.path}. Pass one of them as channel="
            )
            self.error = ValueError(self._no_channel_error)
            logger.error(self._no_channel_error)

    def _field_of(self, index: Mapping[str, Any]) -> int:
        """The frame's field: its stage position ``p`` alone, or, where the
        sequence also has a grid (``g``) or a z plan (``z``), one number per
        ``(p, g, z)`` in the order first seen. Each field is linked on its
        own and its tracks step from one visit of it to the next."""
        p = int(index.get("p", 0))
        g, z = index.get("g"), index.get("z")
        if g is None and z is None:
            return p
        key = (p, int(g or 0), int(z or 0))
        return self._fields.setdefault(key, len(self._fields))

    @property
    def fields(self) -> dict[tuple[int, int, int], int]:
        """The current (or last) sequence's fields: ``(p, g, z)`` -> the
        ``position_index`` its frames are stored with (empty: no grid and no
        z plan, ``position_index`` is ``p``)."""
        return dict(self._fields)

    def _sequence_fps(self, sequence: Any) -> float:
        """The rate a time-lapse asks of the camera (see :func:`nominal_fps`);
        NaN for other sequences or without a core."""
        tp = getattr(sequence, "time_plan", None)
        interval = getattr(tp, "interval", None)
        if self.core is None or interval is None:
            return math.nan
        return nominal_fps(self.core, 1e3 * interval.total_seconds())

    def frameReady(
        self, img: np.ndarray, event: Any = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Queue the frame for the writer and the analysis; returns at once."""
        t_host = time.perf_counter()
        if self._source is None:  # frames without sequenceStarted (attach late)
            self.sequenceStarted()
        assert self._source is not None
        ch = getattr(getattr(event, "channel", None), "config", None)
        if self._no_channel_error is not None or (
            ch is not None
            and self.tracked_channel is not None
            and str(ch) != self.tracked_channel
        ):
            self.frames_other_channels += 1
            return
        cam_index = getattr(event, "index", {}).get("cam") if event else None
        pair_number = -1
        if cam_index is not None:
            # Multi Camera: one frame per camera and event; the planes of
            # one event go together, plane 0 from camera channel 0
            paired = self._pairs.add(int(cam_index), img, event, meta, t_host)
            if paired is None:
                return
            img, meta, t_host = paired
            # the core numbers the images of both cameras together: a pair's
            # number is its place in the sequence (missing frames are the
            # MDA engine's to count)
            pair_number = self._pairs.done - 1
        if not self._started:
            self._started = True  # once: a start that failed is not retried
            try:
                self._start_runner(np.asarray(img), meta or {})
            except BaseException as exc:
                self.error = exc
                logger.error("live tracking could not start: %s", exc)
                self._cancel()
                self._source = _QueueSource()
                self._source.close()
                self._runner = None
                self._dropped += 1
                return
        runner = self._runner
        if (
            self._thread is None
            or not self._thread.is_alive()
            or (runner is not None and runner.failure is not None)
        ):
            # the run failed to start or stopped (logged once): this frame is
            # not stored; the MDA is canceled at once, not once the run closed
            self._dropped += 1
            if self._dropped == 1:
                self._cancel()
            return
        md = dict(meta or {})
        cam: Mapping[str, Any] = md.get("camera_metadata") or {}
        t_s = _first(cam, _TIME_KEYS)
        if not math.isfinite(t_s):
            t_s = _num(md.get("runner_time_ms")) / 1e3
        pos = md.get("position") or {}
        z = _first(cam, _Z_KEYS)
        x = _first(cam, _X_KEYS)
        y = _first(cam, _Y_KEYS)
        if not math.isfinite(z):
            z = _num(pos.get("z"))
            if not math.isfinite(z) and event is not None:
                z = _num(getattr(event, "z_pos", None))
        if not math.isfinite(x):
            x = _num(pos.get("x"))
            if not math.isfinite(x) and event is not None:
                x = _num(getattr(event, "x_pos", None))
        if not math.isfinite(y):
            y = _num(pos.get("y"))
            if not math.isfinite(y) and event is not None:
                y = _num(getattr(event, "y_pos", None))
        num = _num(cam.get("ImageNumber")) if pair_number < 0 else pair_number
        # the latency is counted from when the frame was taken, not from when
        # it reached this handler (the MDA thread and its relay come between)
        due = _first(cam, ("ReplayDue_perf_s",))
        if math.isfinite(due):
            t_host = due
        else:
            t_host = min(t_host, _frame_perf_s(self.core, md, t_host))
        p_index = 0
        if event is not None:
            p_index = self._field_of(getattr(event, "index", None) or {})
        self._source.put(
            SourceFrame(
                raw=img,
                t_s=t_s,
                stage_z_um=z,
                stage_x_um=x,
                stage_y_um=y,
                image_number=int(num) if math.isfinite(num) else -1,
                position_index=p_index,
                t_host=t_host,
            )
        )

    @property
    def frames_unpaired(self) -> int:
        """Two cameras: frames still waiting for the other camera's."""
        return len(self._pairs)

    def sequenceCanceled(self, sequence: Any = None) -> None:
        """The sequence was canceled: the run's ``stop_reason`` says so
        (``"sequence-canceled"``); what was acquired is stored as usual."""
        if self._source is not None:
            self._source.end_reason = "sequence-canceled"

    def sequenceFinished(self, sequence: Any = None) -> None:
        """Let the runner drain, write tracks and metrics, and close the store."""
        # an output handler is not told of a cancel or an error: the MDA
        # runner's status says how the sequence ended
        status = getattr(getattr(self.core, "mda", None), "status", None)
        reason = str(getattr(status, "finish_reason", None) or "")
        if reason in ("canceled", "errored") and self._source is not None:
            self._source.end_reason = f"sequence-{reason}"
        if len(self._pairs):
            logger.warning(
                "%d frame(s) of one camera came without the other camera's "
                "frame of the same event and were not stored",
                len(self._pairs),
            )
        if self._source is not None:
            self._source.close()
        self.wait()
        if self._source is not None and self.error is not None:
            # frames queued that the stopped run never took
            self._dropped += self._source.depth()
        if self._dropped and self.error is not None:
            logger.error(
                "%d frame(s) of this sequence arrived after the run had stopped "
                "and were NOT stored (%s)",
                self._dropped,
                self.error,
            )
        self._source = None
        with self._stop_lock:
            self._stop_reason = None  # a stop ends one sequence's run

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run has closed its store."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --------------------------------------------------------- running
    def _start_runner(self, img: np.ndarray, meta: Mapping[str, Any]) -> None:
        geo = self.geometry
        if geo is None:
            if self.core is None:
                raise ValueError(
                    "TrackingHandler needs geometry= or core= (to read the "
                    "splitter device)"
                )
            geo = splitter_geometry(self.core)
            self.geometry = geo
        px = self.pixel_size_um
        if px is None:
            px = _num(meta.get("pixel_size_um"))
            if not (px > 0) and self.core is not None:
                px = float(self.core.getPixelSizeUm())
            if not (px > 0):
                raise ValueError(
                    "no pixel size: define a pixel-size preset in the hardware "
                    "config or pass pixel_size_um="
                )
        two = geo.layout == "two-cameras"
        plane_shape = img.shape[-2:] if two else geo.plane_shape(img.shape)
        given, self._writer = self._writer, None
        if given is not None:
            self.path = Path(given.path)
        assert self.path is not None
        path = self.path
        rig = (
            self.rig
            if self.tracked_channel is None
            else {**self.rig, "channel": self.tracked_channel}
        )
        source = self._source
        assert source is not None

        def _run() -> None:
            # the store is created here, not on the acquisition thread (it
            # takes 0.2 s, more when overwrite deletes an earlier run); the
            # frames wait in the queue meanwhile
            writer: RunWriter | None = given
            try:
                writer = given or open_live_writer(
                    path,
                    geometry=geo,
                    plane_shape=plane_shape,
                    pixel_size_um=px,
                    rig=rig,
                    model=self.model,
                    overwrite=self.overwrite,
                    compression=self.compression,
                    options=self.writer_options,
                    frame_interval_s=self.frame_interval_s,
                )
                runner = LiveRunner(
                    source,
                    self.analyzer,
                    writer,
                    geometry=geo,
                    config=self.config,
                    events=self.events,
                )
                with self._stop_lock:
                    self._runner = runner
                    if self._stop_reason is not None:
                        runner.stop(self._stop_reason)
                self.metrics = runner.run(
                    duration_s=self.duration_s, n_frames=self.n_frames
                )
            except BaseException as exc:
                self.error = exc
                logger.error("live tracking of the MDA stopped: %s", exc)
                self._cancel()
                if writer is not None:  # the runner closes it, unless it broke
                    with contextlib.suppress(Exception):
                        writer.close()

        self._thread = threading.Thread(target=_run, name="mda-tracking", daemon=True)
        self._thread.start()

    def _cancel(self) -> None:
        core = self.core
        if core is not None:
            try:
                if core.mda.is_running():
                    core.mda.cancel()
            except Exception:  # pragma: no cover - best effort
                logger.exception("could not cancel the MDA")

    @property
    def frames_queued(self) -> int:
        """Frames received by ``frameReady`` not yet taken by the runner."""
        return self._source.depth() if self._source is not None else 0

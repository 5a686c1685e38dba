"""A live run prepared and run the same way by ``axialtrack live`` and the
control panel's Live panel.

:class:`LiveRig` reads what the core says (splitter geometry, plane shape,
pixel size, exposure); :func:`analyzer_options` gives the analyzer's settings
for it; :class:`LiveRun` opens the run store (an existing store of ours is
set aside and put back if the new run stores no frame), builds the
time-lapse (:func:`~axialtrack.live.mda.live_sequence`) and the
:class:`~axialtrack.live.mda.TrackingHandler`, runs
``core.mda.run(sequence, output=handler)`` and, at the end, says how the run
ended (:class:`LiveOutcome`). The callers differ only in how they show it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from axialtrack.store.replace import Replacement

if TYPE_CHECKING:
    from axialtrack.events import RunSignals
    from axialtrack.geometry import SplitterGeometry

    from .config import RunnerConfig
    from .mda import TrackingHandler
    from .metrics import LiveMetrics

__all__ = [
    "FramePeek",
    "LiveOptions",
    "LiveOutcome",
    "LiveRig",
    "LiveRun",
    "analyzer_options",
    "make_live_analyzer",
]


@dataclass(frozen=True)
class LiveRig:
    """What a live run needs to know of the core's rig."""

    geometry: SplitterGeometry
    #: the shape of one plane (one camera's image with two cameras)
    plane_shape: tuple[int, int]
    pixel_size_um: float
    camera_device: str
    exposure_ms: float

    @property
    def two_cameras(self) -> bool:
        return self.geometry.layout == "two-cameras"

    @classmethod
    def from_core(cls, core: Any) -> LiveRig:
        """Read the rig loaded in ``core`` (``RigConfigError`` without a
        splitter that can be read)."""
        from axialtrack.rig import splitter_geometry

        geo = splitter_geometry(core)
        sensor = (int(core.getImageHeight()), int(core.getImageWidth()))
        two = geo.layout == "two-cameras"
        plane_shape = sensor if two else geo.plane_shape(sensor)
        return cls(
            geometry=geo,
            plane_shape=(int(plane_shape[0]), int(plane_shape[1])),
            pixel_size_um=float(core.getPixelSizeUm()),
            camera_device=str(core.getCameraDevice()),
            exposure_ms=float(core.getExposure()),
        )

    def frame_interval_s(self, interval_ms: float = 0.0) -> float:
        """The frame period of a time-lapse with this interval: the exposure
        where it is longer."""
        return max(self.exposure_ms, float(interval_ms)) / 1e3


def analyzer_options(
    rig: LiveRig,
    camera: Any,
    *,
    engine: str = "auto",
    interval_ms: float = 0.0,
    axial_scale: float = 1.0,
    refine: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of :func:`make_live_analyzer` for a run on
    ``rig`` with ``camera`` (a
    :class:`~axialtrack.pipeline.config.CameraCalibration`): the rows are not
    kept in memory (the track table is made from the stored rows at the end,
    so memory stays flat however long the run)."""
    from axialtrack.pipeline.config import LocalizerConfig

    period_s = rig.frame_interval_s(interval_ms)
    return {
        "plane_shape": rig.plane_shape,
        "pixel_size_um": rig.pixel_size_um,
        "geometry": rig.geometry,
        "frame_interval_s": period_s,
        "engine": engine,
        "axial_scale": axial_scale,
        "localizer": LocalizerConfig(
            saturation_adu=min(camera.max_adu, 65535),
            camera=camera,
            refine=refine,
            refine_budget_frame_s=0.5 * period_s if refine else None,
        ),
        "keep_rows": False,
    }


def make_live_analyzer(
    bundle: str | Path, *, process_batch: int | None = None, **kwargs: Any
) -> Any:
    """The analyzer of ``bundle``: in this process, or an
    :class:`~axialtrack.live.AnalysisProcess` for batches of up to
    ``process_batch`` frames. Raises ``BundleError``, ``EngineError``,
    ``SampledPSFError`` or ``AnalysisProcessError``."""
    if process_batch is not None:
        from .process import AnalysisProcess

        return AnalysisProcess(str(bundle), max_batch_frames=process_batch, **kwargs)
    from axialtrack.pipeline import make_analyzer

    return make_analyzer(str(bundle), **kwargs)


def model_metadata(bundle: str | Path | None, analyzer: Any) -> dict[str, Any]:
    """The store's ``model`` attributes: the bundle's path and the analyzer's
    provenance."""
    if bundle is None:
        return {}
    meta: dict[str, Any] = {"bundle": str(Path(bundle).expanduser().absolute())}
    meta.update(dict(getattr(analyzer, "provenance", None) or {}))
    return meta


class LiveOptions(BaseModel):
    """What a live run is asked to do (the options of ``axialtrack live``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path
    overwrite: bool = False
    n_frames: int | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    interval_ms: float = Field(0.0, ge=0)
    compression: Literal["zstd", "blosc-lz4", "blosc-zstd"] | None = None
    #: frames per file of the frame array (``WriterOptions.shard_frames``);
    #: ``None``: one file per frame
    shard_frames: int | None = Field(None, ge=2, le=255)
    #: the hardware config's name, recorded in the store
    config_name: str = "sim-dualplane"
    status_interval_s: float = Field(0.5, gt=0)


@dataclass
class LiveOutcome:
    """How a :class:`LiveRun` ended.

    Attributes
    ----------
    metrics
        The run's :class:`~axialtrack.live.LiveMetrics`; ``None`` when no
        frame came (the store was then closed empty, or the previous one put
        back).
    error
        What stopped the run's tracking (the camera, the store, the start of
        the analysis), if anything did.
    acquisition_error
        What the MDA itself raised (the camera, a timeout), if anything.
    put_back
        The store replaced was put back as it was (the new run stored no
        frame).
    """

    metrics: LiveMetrics | None
    error: BaseException | None = None
    acquisition_error: BaseException | None = None
    put_back: bool = False

    @property
    def failed(self) -> bool:
        """Whether the run or its acquisition stopped on an error."""
        return self.error is not None or self.acquisition_error is not None


class FramePeek:
    """An MDA output that keeps a reference to the last frame (per camera):
    what a window shows. One dictionary store per frame, nothing more;
    :meth:`last` gives it (two cameras: both, stacked)."""

    def __init__(self) -> None:
        self._last: dict[int, np.ndarray] = {}

    def frameReady(self, img: np.ndarray, event: Any = None, meta: Any = None) -> None:
        cam = getattr(event, "index", {}).get("cam", 0) if event is not None else 0
        self._last[int(cam or 0)] = img

    def last(self, two_cameras: bool) -> np.ndarray | None:
        last = dict(self._last)
        if not two_cameras:
            return last.get(0)
        if 0 in last and 1 in last and last[0].shape == last[1].shape:
            return np.stack([last[0], last[1]])
        return None


@dataclass
class LiveRun:
    """A live run on ``core``: the store opened, ready to :meth:`run`.

    Creating it opens the run store (with ``options.overwrite``, an existing
    store of ours is set aside first: :class:`~axialtrack.store.replace.Replacement`);
    if the store cannot be opened the analyzer is closed, the previous store
    put back and the ``StoreError`` raised: nothing is lost. Then
    :meth:`run` (blocking, any thread; :meth:`stop` from any other) and
    :meth:`finish`, which says how it ended and settles the replacement.
    """

    core: Any
    rig: LiveRig
    options: LiveOptions
    analyzer: Any = None
    camera: Any = None
    model: dict[str, Any] = field(default_factory=dict)
    events: RunSignals | None = None
    config: RunnerConfig | None = None
    handler: TrackingHandler = field(init=False)
    sequence: Any = field(init=False)
    acquisition_error: BaseException | None = field(init=False, default=None)
    _replacing: Replacement | None = field(init=False, default=None)
    _writer: Any = field(init=False, default=None)
    _peek: FramePeek = field(init=False, default_factory=FramePeek)

    def __post_init__(self) -> None:
        from axialtrack.store import StoreError, WriterOptions

        from .config import RunnerConfig
        from .mda import TrackingHandler, live_sequence
        from .runner import open_live_writer

        opts = self.options
        out = Path(opts.out).expanduser()
        rig = self.rig
        try:
            # before anything is moved: a sequence that cannot be built
            # (ValueError) leaves everything as it was
            self.sequence = live_sequence(
                self.core,
                n_frames=opts.n_frames,
                duration_s=opts.duration_s,
                interval_ms=opts.interval_ms,
            )
            self._replacing = Replacement(out) if opts.overwrite else None
            writer_options = (
                WriterOptions(shard_frames=opts.shard_frames)
                if opts.shard_frames
                else None
            )
            self._writer = open_live_writer(
                out,
                geometry=rig.geometry,
                plane_shape=rig.plane_shape,
                pixel_size_um=rig.pixel_size_um,
                rig={"config": opts.config_name, "camera": rig.camera_device},
                model=self.model,
                overwrite=opts.overwrite,
                compression=opts.compression,
                options=writer_options,
            )
            if self.camera is not None:
                self._writer.set_attrs(camera=self.camera.model_dump())
        except (StoreError, ValueError, OSError):
            self._close_analyzer()
            if self._writer is not None:
                with contextlib.suppress(StoreError):
                    self._writer.close()
            if self._replacing is not None:
                self._replacing.settle(keep_new=False)
            raise
        config = self.config or RunnerConfig(
            log_status=False, status_interval_s=opts.status_interval_s
        )
        self.handler = TrackingHandler(
            out,
            self.analyzer,
            core=self.core,
            geometry=rig.geometry,
            pixel_size_um=rig.pixel_size_um,
            config=config,
            writer=self._writer,
            events=self.events,
            duration_s=opts.duration_s,
            n_frames=opts.n_frames,
        )
        self.events = self.handler.events

    @property
    def out(self) -> Path:
        return Path(self.options.out).expanduser()

    def run(self) -> None:
        """Run the sequence until it ends, :meth:`stop` or the duration;
        blocks. The store is closed when it returns. An exception of the MDA
        itself is kept in :attr:`acquisition_error` (and in
        :meth:`finish`'s outcome), not raised."""
        core = self.core
        try:
            core.mda.run(self.sequence, output=[self.handler, self._peek])
        except Exception as exc:  # the MDA itself failed (camera, timeout)
            self.acquisition_error = exc
        finally:
            self.handler.wait()
            if core.isSequenceRunning():
                core.stopSequenceAcquisition()
            self._close_analyzer()

    def stop(self, reason: str = "stopped") -> None:
        """Stop the run as its duration would (any thread; safe from a signal
        handler): everything acquired is stored, the tracks written and the
        store closed."""
        self.handler.stop(reason)

    def last_frame(self) -> np.ndarray | None:
        """The raw sensor frame last delivered (two cameras: both, stacked)."""
        return self._peek.last(self.rig.two_cameras)

    def finish(self) -> LiveOutcome:
        """After :meth:`run`: how the run ended. Settles the replacement of a
        previous store (kept only if the new run stored a frame; else put
        back, :attr:`LiveOutcome.put_back`)."""
        from axialtrack.store import StoreError

        from .runner import AnalysisError, CameraStalledError

        handler = self.handler
        metrics = handler.metrics
        # a run the runner stopped (camera, storage, analysis) has its
        # metrics; one that broke otherwise has none
        told = (CameraStalledError, AnalysisError, StoreError)
        if (
            metrics is None
            and handler.runner is not None
            and (handler.error is None or isinstance(handler.error, told))
        ):
            metrics = handler.runner.metrics()
        if metrics is None:
            # no frame came: the store the run was given is closed empty
            with contextlib.suppress(StoreError):
                self._writer.close()
        put_back = False
        if self._replacing is not None:
            put_back = self._replacing.settle()
        return LiveOutcome(
            metrics=metrics,
            error=handler.error,
            acquisition_error=self.acquisition_error,
            put_back=put_back,
        )

    def _close_analyzer(self) -> None:
        close = getattr(self.analyzer, "close", None)
        if callable(close):
            close()

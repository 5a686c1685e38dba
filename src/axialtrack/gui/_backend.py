"""The panel's one door to acquisitions: loading a rig, calibration runs and
live runs.

Every acquisition the window starts goes through this module, built from the
same public functions the ``axialtrack`` commands call (``load_rig``,
``calibration_sequence`` / ``run_calibration`` / ``analyze`` / ``write_qc`` /
``write_rig``, ``make_analyzer`` / ``AnalysisProcess``, ``open_live_writer``,
``LiveRunner``). The panels only see :func:`load_config`,
:func:`run_calibration_job`, :func:`cancel_calibration` and
:class:`LiveSession` with its ``events`` (:class:`~axialtrack.events.RunSignals`),
so that a change of how acquisitions run touches this module only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from axialtrack.errors import AxialtrackError
from axialtrack.events import CalibrationSignals, RunSignals

if TYPE_CHECKING:
    import numpy as np

    from axialtrack.geometry import SplitterGeometry

__all__ = [
    "CalibrationOutcome",
    "CalibrationRequest",
    "InputError",
    "LiveSession",
    "PeekSource",
    "cancel_calibration",
    "check_output",
    "load_config",
    "prepare_core",
    "request_from_sequence",
    "run_calibration_job",
]


class InputError(AxialtrackError, ValueError):
    """A value given in the window cannot be used (one line: what and the fix);
    nothing was written."""


def prepare_core(core: Any) -> None:
    """Make ``core``'s MDA events psygnal signals, emitted in the MDA thread.

    With a Qt application running, pymmcore-plus gives a new core Qt signals;
    a handler that the acquisition code connects from a worker thread (the
    calibration's frame handler) then gets its calls queued to that thread,
    which runs no event loop: no frame ever arrived. The MDA runner's
    handlers expect to run in the MDA thread, as they do without Qt. The
    core's own events stay Qt signals (the device widgets update in the GUI
    thread).
    """
    from pymmcore_plus.mda.events import MDASignaler

    mda = core.mda
    if not isinstance(mda.events, MDASignaler):
        mda._signals = MDASignaler()


def load_config(core: Any, config: str | Path | None) -> None:
    """Load a hardware config into ``core`` (its previous devices unloaded);
    ``None``: the simulated rig. Raises ``RigConfigError`` (one line)."""
    from axialtrack.rig import load_rig

    load_rig(config, core=core)


def check_output(path: Path, overwrite: bool, kind: str = "store") -> None:
    """Refuse an output path the window may not write (:class:`InputError`):
    it exists and replacing it was not confirmed, or it is not an output of
    ours (only a run store or model bundle of ours is ever replaced)."""
    from axialtrack.store.replace import refusal

    why = refusal(path, overwrite, kind)  # type: ignore[arg-type]
    if why is not None:
        raise InputError(
            why.replace("Pass --overwrite to replace it", "Confirm to replace it")
        )


# ------------------------------------------------------------ calibration
class CalibrationRequest(BaseModel):
    """What the calibration panel asks for (the options of ``axialtrack
    calibrate``)."""

    model_config = ConfigDict(frozen=True)

    out: Path
    z_range_um: float = Field(1.5, gt=0)
    z_step_um: float = Field(0.05, gt=0)
    fields: int = Field(4, ge=1)
    spacing_um: float | None = Field(None, gt=0)
    exposure_ms: float | None = Field(None, gt=0)
    overwrite: bool = False
    psf_fit: bool = False
    #: the fields as ``(x, y, z)`` stage positions (um), e.g. from the MDA
    #: widget; ``None``: ``fields`` around the current position
    positions: tuple[tuple[float, float, float], ...] | None = None

    def sequence(self, core: Any) -> Any:
        """The calibration's ``useq.MDASequence``
        (:func:`~axialtrack.acquire.calibration_sequence`)."""
        from axialtrack.acquire import calibration_sequence

        return calibration_sequence(
            self.z_range_um,
            self.z_step_um,
            fields=list(self.positions) if self.positions else self.fields,
            spacing_um=None if self.positions else self.spacing_um,
            exposure_ms=self.exposure_ms,
            core=core,
        )


def request_from_sequence(seq: Any, base: CalibrationRequest) -> CalibrationRequest:
    """``base`` with the Z range, step and fields of an edited
    ``useq.MDASequence`` (a Z range around each position, as the calibration
    takes); :class:`InputError` for another Z plan or no position."""
    import useq

    z = seq.z_plan
    if not isinstance(z, useq.ZRangeAround) or z.step <= 0:
        raise InputError(
            "Calibration sequence: use a Z plan of a range around each position "
            "(range and step); the calibration scans +-range/2 around each field."
        )
    pos = tuple(
        (float(p.x or 0.0), float(p.y or 0.0), float(p.z or 0.0))
        for p in seq.stage_positions
    )
    if not pos:
        raise InputError("Calibration sequence: give at least one stage position.")
    return base.model_copy(
        update={
            "z_range_um": float(z.range) / 2.0,
            "z_step_um": float(z.step),
            "fields": len(pos),
            "positions": pos,
        }
    )


@dataclass
class CalibrationOutcome:
    """A calibration the panel ran: its store, the acquisition attributes and,
    unless cancelled, the analysis (``result``: a
    :class:`~axialtrack.calibrate.CalibrationResult`) and the PSF fit."""

    path: Path
    acquisition: dict[str, Any]
    result: Any = None
    stack: Any = None
    psf_fit: Any = None

    @property
    def cancelled(self) -> bool:
        return self.acquisition.get("status") == "cancelled"


def cancel_calibration(core: Any) -> None:
    """Cancel the calibration acquisition running on ``core`` (its frames are
    kept in the store, which is closed)."""
    core.mda.cancel()


def run_calibration_job(
    core: Any,
    req: CalibrationRequest,
    *,
    events: CalibrationSignals | None = None,
    config_name: str = "the simulated rig",
) -> CalibrationOutcome:
    """Acquire a calibration run on ``core`` and analyze it, as ``axialtrack
    calibrate`` does: registration, bead QC, reference Z, training examples,
    the QC and rig written into the store (and the PSF fit if asked).

    Blocking; run it off the GUI thread. Cancelled (:func:`cancel_calibration`):
    the store keeps its frames and is not analyzed.
    """
    from axialtrack.acquire import run_calibration
    from axialtrack.calibrate import analyze, write_qc, write_rig
    from axialtrack.calibrate.io import load_stack
    from axialtrack.camera import camera_from_core, resolve_camera
    from axialtrack.store import open_run

    out = Path(req.out).expanduser()
    check_output(out, req.overwrite)
    camera, origin = resolve_camera(
        [(f"the camera of {config_name}", camera_from_core(core))]
    )
    seq = req.sequence(core)
    store = run_calibration(
        core,
        out,
        seq,
        overwrite=req.overwrite,
        progress=False,
        events=events,
        camera=camera.model_dump(),
    )
    acq = dict(open_run(store).attrs.get("acquisition", {}))
    outcome = CalibrationOutcome(path=store, acquisition=acq)
    if outcome.cancelled:
        return outcome
    stack = load_stack(store)
    stack.meta.update(
        offset_adu=camera.offset_adu,
        gain_e_per_adu=camera.e_per_adu,
        read_noise_e=camera.read_noise_e,
    )
    result = analyze(stack)
    psf_fit = None
    if req.psf_fit:
        from axialtrack.calibrate.psf import fit_psf, psf_summary, write_psf

        psf_fit = fit_psf(result, result.stack or stack)
        result.qc["psf_fit"] = psf_summary(psf_fit)
    write_qc(result, store)
    write_rig(result, stack, store, camera=camera.model_dump(), camera_source=origin)
    if psf_fit is not None:
        write_psf(psf_fit, store)
    outcome.result, outcome.stack, outcome.psf_fit = result, stack, psf_fit
    return outcome


# ------------------------------------------------------------------- live
class PeekSource:
    """A frame source that keeps a reference to the last frame it handed out
    (what the window shows); one attribute store per frame, nothing more.
    :meth:`last_frame` gives its raw sensor frame."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.last: Any = None

    def start(self, n_frames: int | None = None) -> None:
        self._source.start(n_frames)

    def stop(self) -> None:
        self._source.stop()

    def finished(self) -> bool:
        return bool(self._source.finished())

    def last_frame(self) -> Any:
        frame = self.last
        return None if frame is None else frame.raw

    def next(self, timeout_s: float) -> Any:
        frame = self._source.next(timeout_s)
        if frame is not None:
            self.last = frame
        return frame


@dataclass
class LiveSession:
    """A live tracking run on the window's core, prepared and then run.

    :meth:`prepare` checks the output and the model and opens the store (it
    raises :class:`InputError`, ``BundleError`` or ``EngineError`` before
    anything is written); :meth:`run` blocks until :meth:`stop` (from any
    thread) or the duration, and closes the store; :attr:`events` are the
    run's :class:`~axialtrack.events.RunSignals`.
    """

    core: Any
    out: Path
    bundle: Path | None
    overwrite: bool = False
    config_name: str = "the simulated rig"
    engine: str = "auto"
    analysis: str = "process"
    status_interval_s: float = 0.25
    events: RunSignals = field(default_factory=RunSignals)
    geometry: SplitterGeometry | None = None
    pixel_size_um: float = 0.0
    _runner: Any = None
    _source: PeekSource | None = None
    _analyzer: Any = None
    _stop_early: threading.Event = field(default_factory=threading.Event)

    def prepare(self) -> None:
        """Check everything and open the run store (nothing is written on a
        refusal)."""
        from axialtrack.camera import camera_from_core, resolve_camera
        from axialtrack.live import (
            CoreSource,
            LiveRunner,
            RunnerConfig,
            open_live_writer,
        )
        from axialtrack.pipeline import LocalizerConfig, make_analyzer
        from axialtrack.rig import splitter_geometry

        core = self.core
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        self.out = Path(self.out).expanduser()
        check_output(self.out, self.overwrite)
        bundle_cam = None
        if self.bundle is not None:
            from axialtrack.model import load_bundle

            bundle_cam = load_bundle(self.bundle).camera  # BundleError: refused
        geo = splitter_geometry(core)
        two = geo.layout == "two-cameras"
        sensor = (core.getImageHeight(), core.getImageWidth())
        plane_shape = sensor if two else geo.plane_shape(sensor)
        px = float(core.getPixelSizeUm())
        sources = [(f"the camera of {self.config_name}", camera_from_core(core))]
        if bundle_cam is not None:
            sources.append(("the model bundle", bundle_cam.model_dump()))
        camera, _origin = resolve_camera(sources)
        config = RunnerConfig(
            log_status=False, status_interval_s=self.status_interval_s
        )
        analyzer: Any = None
        model_meta: dict[str, Any] = {}
        if self.bundle is not None:
            kwargs: dict[str, Any] = {
                "plane_shape": plane_shape,
                "pixel_size_um": px,
                "geometry": geo,
                "frame_interval_s": max(core.getExposure(), 1.0) / 1e3,
                "engine_prefer": self.engine,
                "localizer": LocalizerConfig(
                    saturation_adu=min(camera.max_adu, 65535), camera=camera
                ),
                "keep_rows": False,
            }
            if self.analysis == "process":
                from axialtrack.live import AnalysisProcess

                analyzer = AnalysisProcess(
                    self.bundle, max_batch_frames=config.max_batch_frames, **kwargs
                )
            else:
                analyzer = make_analyzer(self.bundle, **kwargs)
            model_meta = {"bundle": str(Path(self.bundle).expanduser().absolute())}
            model_meta.update(dict(getattr(analyzer, "provenance", {}) or {}))
        try:
            writer = open_live_writer(
                self.out,
                geometry=geo,
                plane_shape=plane_shape,
                pixel_size_um=px,
                rig={"config": self.config_name, "camera": core.getCameraDevice()},
                model=model_meta,
                overwrite=self.overwrite,
            )
            writer.set_attrs(camera=camera.model_dump())
        except BaseException:
            _close(analyzer)
            raise
        self._analyzer = analyzer
        self._source = PeekSource(CoreSource(core, two_cameras=two))
        self._runner = LiveRunner(
            self._source,
            analyzer,
            writer,
            geometry=geo,
            config=config,
            events=self.events,
        )
        self.geometry, self.pixel_size_um = geo, px

    def run(self, duration_s: float | None = None) -> Any:
        """Run until :meth:`stop` (or ``duration_s``), after :meth:`prepare`
        (called here if not yet); the final
        :class:`~axialtrack.pipeline.LiveMetrics`. The store is closed when it
        returns or raises."""
        if self._runner is None:
            self.prepare()
        runner = self._runner
        if self._stop_early.is_set():
            runner.stop("stopped from the window")
        try:
            return runner.run(duration_s=duration_s)
        finally:
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()
            _close(self._analyzer)

    def stop(self) -> None:
        """Ask the run to stop (any thread); :meth:`run` returns once
        everything is stored and the store closed."""
        self._stop_early.set()
        if self._runner is not None:
            self._runner.stop("stopped from the window")

    def last_frame(self) -> np.ndarray | None:
        """The raw sensor frame last taken from the camera (or ``None``)."""
        src = self._source
        frame = None if src is None else src.last
        return None if frame is None else frame.raw


def _close(analyzer: Any) -> None:
    close = getattr(analyzer, "close", None)
    if callable(close):
        close()

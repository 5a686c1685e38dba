"""The panel's one door to acquisitions: loading a rig, calibration runs and
live runs.

Every acquisition the window starts goes through this module, built from the
same public functions the ``axialtrack`` commands call (``load_rig``,
``calibration_sequence`` / ``run_calibration`` / ``analyze`` / ``write_qc`` /
``write_rig``, ``LiveRig`` / ``analyzer_options`` / ``make_live_analyzer`` /
:class:`~axialtrack.live.LiveRun`). The panels only see :func:`load_config`,
:func:`run_calibration_job`, :func:`cancel_calibration` and
:class:`LiveJob` with its ``events`` (:class:`~axialtrack.events.RunSignals`),
so that a change of how acquisitions run touches this module only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from axialtrack.events import CalibrationSignals, RunSignals

from ._errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from axialtrack.geometry import SplitterGeometry

__all__ = [
    "CalibrationImport",
    "CalibrationOutcome",
    "CalibrationRequest",
    "InputError",
    "LiveJob",
    "cancel_calibration",
    "check_output",
    "import_calibration_job",
    "load_config",
    "prepare_core",
    "qc_images",
    "request_from_sequence",
    "run_calibration_job",
]


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
    ``None``: the simulated rig. Raises ``RigConfigError`` (one line).

    The camera model is read here too: the simulated camera builds its
    renderer (torch imported, the PSF's focus table computed) with the
    config, where the window waits anyway, rather than in the first
    acquisition's worker thread, where those imports held the interpreter
    lock, and so the GUI thread, for up to 0.9 s at a time.
    """
    from axialtrack.camera import camera_from_core
    from axialtrack.rig import load_rig

    load_rig(config, core=core)
    camera_from_core(core)


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
    """A calibration the panel ran or imported: its store, the acquisition
    attributes and, unless cancelled, the quality control (``qc``: the
    ``axialtrack_calibration`` attributes written into the store) and its
    figures as RGBA images (:func:`qc_images`). The analysis runs in a child
    process; everything else it made is in the store."""

    path: Path
    acquisition: dict[str, Any]
    qc: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)

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
    the QC and rig written into the store (and the PSF fit if asked); the
    analysis in a child process (:func:`analyze_calibration`).

    Blocking; run it off the GUI thread. Cancelled (:func:`cancel_calibration`):
    the store keeps its frames and is not analyzed.
    """
    from axialtrack.acquire import run_calibration
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
    from ._train_process import call_in_process

    outcome.qc, outcome.figures = call_in_process(
        analyze_calibration, store, camera.model_dump(), origin, req.psf_fit
    )
    return outcome


def analyze_calibration(
    store: Path, camera: dict[str, Any], origin: dict[str, str], psf_fit: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Analyze an acquired calibration run store as ``axialtrack calibrate``
    does (registration, bead QC, reference Z, training examples, the QC and
    rig written into the store, and the PSF fit if asked); the QC and its
    figures (:func:`qc_images`). What :func:`run_calibration_job` runs in a
    child process."""
    from axialtrack.calibrate import analyze, write_qc, write_rig
    from axialtrack.calibrate.io import load_stack
    from axialtrack.camera import CameraCalibration

    cam = CameraCalibration(**camera)
    stack = load_stack(store)
    stack.meta.update(
        offset_adu=cam.offset_adu,
        gain_e_per_adu=cam.e_per_adu,
        read_noise_e=cam.read_noise_e,
    )
    result = analyze(stack)
    fit = None
    if psf_fit:
        from axialtrack.calibrate.psf import fit_psf, psf_summary, write_psf

        fit = fit_psf(result, result.stack or stack)
        result.qc["psf_fit"] = psf_summary(fit)
    write_qc(result, store)
    write_rig(result, stack, store, camera=camera, camera_source=origin)
    if fit is not None:
        write_psf(fit, store)
    return dict(result.qc), qc_images(result, result.stack or stack, fit)


class CalibrationImport(BaseModel):
    """A calibration from recorded stacks (the options of ``axialtrack
    calibrate --from``): each field ``None`` is found as the command finds it
    (Z step, pixel size and plane offset from the files' metadata, layout
    and plane-1 mirror from the beads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: files or globs (``field*.tif``), one field per file or several in one
    sources: tuple[str, ...] = Field(min_length=1)
    #: the calibration run store written (an imported run store: ``None``
    #: writes the QC into it)
    out: Path | None = None
    overwrite: bool = False
    layout: str | None = None
    #: plane-1 files (``two-files``), one per source
    second: tuple[str, ...] = ()
    fields: int | None = Field(None, ge=1)
    z_step_um: float | None = Field(None, gt=0)
    z_start_um: float = 0.0
    z_span_um: float | None = Field(None, gt=0)
    plane_offset_um: float | None = Field(None, gt=0)
    pixel_size_um: float | None = Field(None, gt=0)
    mirror: str = "auto"
    #: camera JSON file (``axialtrack camera``) and fields given in the window
    #: (``offset_adu``, ``e_per_adu``, ``read_noise_e``, ``qe``, ``bit_depth``)
    camera_file: Path | None = None
    camera: dict[str, float] = Field(default_factory=dict)
    psf_fit: bool = False


def import_calibration_job(req: CalibrationImport) -> CalibrationOutcome:
    """:func:`import_calibration` in a child process (its imports and
    analysis would hold this process's interpreter lock)."""
    from ._train_process import call_in_process

    return call_in_process(import_calibration, req)


def import_calibration(req: CalibrationImport) -> CalibrationOutcome:
    """Analyze recorded stacks as ``axialtrack calibrate --from`` does, with
    its functions (``load_stacks``, ``resolve_camera``, ``analyze``,
    ``fit_psf``, ``write_import_store``, ``write_qc``, ``write_rig``,
    ``write_psf``). Blocking; run it off the GUI thread. Raises the
    command's errors (``StackImportError``, ``CameraError``,
    ``CalibrationError``, :class:`InputError`) before anything is written."""
    import numpy as np

    from axialtrack.calibrate import analyze, write_qc, write_rig
    from axialtrack.calibrate.io import load_stacks, write_import_store
    from axialtrack.camera import (
        camera_of_attrs,
        check_fields,
        read_camera_file,
        resolve_camera,
    )

    sources: list[tuple[str, dict[str, Any]]] = []
    if req.camera:
        check_fields(dict(req.camera), "camera", "")
        sources.append(("the camera fields given", dict(req.camera)))
    if req.camera_file is not None:
        sources.append(
            (f"the camera file {req.camera_file}", read_camera_file(req.camera_file))
        )
    out = None if req.out is None else Path(req.out).expanduser()
    if out is not None:
        check_output(out, req.overwrite)
    stack = load_stacks(
        list(req.sources),
        layout=req.layout,
        z_step_um=req.z_step_um,
        plane_offset_um=req.plane_offset_um,
        pixel_size_um=req.pixel_size_um,
        z_start_um=req.z_start_um,
        z_range_um=req.z_span_um,
        second_paths=list(req.second) or None,
        mirror=req.mirror,
        fields=req.fields,
    )
    run_store = stack.meta.get("layout") == "run-store"
    if out is None:
        if not (run_store and len(req.sources) == 1):
            raise InputError(
                "Import: give the output run store (.zarr) for image files or "
                "several sources (where the calibration is written)."
            )
        out = Path(req.sources[0]).expanduser()
    if run_store:
        from axialtrack.store import read_attrs

        recorded = camera_of_attrs(read_attrs(Path(req.sources[0]).expanduser()))
        if recorded:
            sources.append((f"the run store {req.sources[0]}", recorded))
    if np.asarray(stack.frames[:1]).dtype == np.uint8:
        sources.append(("the 8-bit frames", {"bit_depth": 8}))
    camera, origin = resolve_camera(sources)
    stack.meta.update(
        offset_adu=camera.offset_adu,
        gain_e_per_adu=camera.e_per_adu,
        read_noise_e=camera.read_noise_e,
    )
    if origin["bit_depth"] != "default":
        stack.meta["bit_depth"] = camera.bit_depth
    result = analyze(stack)
    psf_fit = None
    if req.psf_fit:
        from axialtrack.calibrate.psf import fit_psf

        psf_fit = fit_psf(result, result.stack or stack)
    if not (run_store and out == Path(req.sources[0]).expanduser()):
        # an imported stack becomes a calibration run store of its own
        write_import_store(
            result.stack or stack,
            out,
            overwrite=req.overwrite,
            extra={"mirror_requested": str(stack.meta.get("mirror", "auto"))},
        )
    if psf_fit is not None:
        from axialtrack.calibrate.psf import psf_summary, write_psf

        result.qc["psf_fit"] = psf_summary(psf_fit)
    write_qc(result, out)
    write_rig(result, stack, out, camera=camera.model_dump(), camera_source=origin)
    if psf_fit is not None:
        write_psf(psf_fit, out)
    return CalibrationOutcome(
        path=out,
        acquisition={"status": "imported", "source": str(stack.source)},
        qc=dict(result.qc),
        figures=qc_images(result, result.stack or stack, psf_fit),
    )


def qc_images(result: Any, stack: Any, psf_fit: Any = None) -> dict[str, np.ndarray]:
    """The quality-control figures of ``axialtrack calibrate --report``
    (:func:`axialtrack.calibrate.report.qc_figures`: the bead map, and with a
    PSF fit the measured vs model slices and the residuals) rendered to RGBA
    images: in the worker, so that the GUI thread only shows them."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from axialtrack.calibrate.report import qc_figures

    images: dict[str, np.ndarray] = {}
    for name, fig in qc_figures(result, stack, psf_fit=psf_fit).items():
        fig.set_dpi(80)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        images[name] = np.asarray(canvas.buffer_rgba()).copy()
    return images


# ------------------------------------------------------------------- live
@dataclass
class LiveJob:
    """A live tracking run the window starts: prepared and run by
    :class:`~axialtrack.live.LiveRun`, as ``axialtrack live`` runs it (one
    useq time-lapse through pymmcore-plus's MDA runner, the
    :class:`~axialtrack.live.TrackingHandler` as its output).

    :meth:`prepare` checks the output and the model and opens the store
    (refusals raise :class:`InputError`, ``BundleError``, ``EngineError`` or
    ``StoreError`` with nothing written; a replaced store is put back);
    :meth:`run` blocks until :meth:`stop` (any thread) or the duration and
    returns the :class:`~axialtrack.live.LiveOutcome`; :attr:`events` are the
    run's :class:`~axialtrack.events.RunSignals`, connected before it starts.
    """

    core: Any
    out: Path
    bundle: Path | None
    overwrite: bool = False
    config_name: str = "the simulated rig"
    duration_s: float = 60.0
    engine: str = "auto"
    analysis: str = "process"
    shard_frames: int | None = None
    status_interval_s: float = 0.25
    events: RunSignals = field(default_factory=RunSignals)
    live: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False

    @property
    def geometry(self) -> SplitterGeometry | None:
        return None if self.live is None else self.live.rig.geometry

    @property
    def pixel_size_um(self) -> float:
        return 0.0 if self.live is None else float(self.live.rig.pixel_size_um)

    def prepare(self) -> None:
        """Check everything and open the run store (nothing is written on a
        refusal). Blocking (the analysis process starts): off the GUI thread."""
        from axialtrack.camera import camera_from_core, resolve_camera
        from axialtrack.live import (
            LiveOptions,
            LiveRig,
            LiveRun,
            RunnerConfig,
            analyzer_options,
            make_live_analyzer,
        )
        from axialtrack.live.session import model_metadata

        core = self.core
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        self.out = Path(self.out).expanduser()
        check_output(self.out, self.overwrite)
        try:
            options = LiveOptions(
                out=self.out,
                overwrite=self.overwrite,
                duration_s=self.duration_s,
                shard_frames=self.shard_frames,
                config_name=self.config_name,
                status_interval_s=self.status_interval_s,
            )
        except ValueError as exc:
            raise InputError(f"Live run: {_first_error(exc)}") from None
        sources = [(f"the camera of {self.config_name}", camera_from_core(core))]
        if self.bundle is not None:
            from axialtrack.model import load_bundle

            bundle_cam = load_bundle(self.bundle).camera  # BundleError: refused
            if bundle_cam is not None:
                sources.append(("the model bundle", bundle_cam.model_dump()))
        camera, _origin = resolve_camera(sources)
        rig = LiveRig.from_core(core)
        config = RunnerConfig(
            log_status=False, status_interval_s=self.status_interval_s
        )
        analyzer: Any = None
        if self.bundle is not None:
            analyzer = make_live_analyzer(
                self.bundle,
                process_batch=(
                    config.max_batch_frames if self.analysis == "process" else None
                ),
                **analyzer_options(rig, camera, engine=self.engine),
            )
        live = LiveRun(
            core,
            rig,
            options,
            analyzer=analyzer,
            camera=camera,
            model=model_metadata(self.bundle, analyzer),
            events=self.events,
            config=config,
        )
        with self._lock:
            self.live = live
            if self._stopped:
                live.stop("stopped from the window")

    def run(self) -> Any:
        """Run until :meth:`stop` or the duration, after :meth:`prepare`
        (called here if not yet); the :class:`~axialtrack.live.LiveOutcome`.
        The store is closed when it returns."""
        if self.live is None:
            self.prepare()
        live = self.live
        live.run()
        return live.finish()

    def stop(self) -> None:
        """Ask the run to stop (any thread); :meth:`run` returns once
        everything is stored and the store closed."""
        with self._lock:
            self._stopped = True
            live = self.live
        if live is not None:
            live.stop("stopped from the window")

    def last_frame(self) -> np.ndarray | None:
        """The raw sensor frame last delivered (or ``None``)."""
        return None if self.live is None else self.live.last_frame()


def _first_error(exc: ValueError) -> str:
    """The first message of a pydantic ``ValidationError`` (one line)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}"
    return " ".join(str(exc).split())

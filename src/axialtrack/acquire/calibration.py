"""Calibration runs: bead Z-stacks over several fields of view into a run store.

:func:`calibration_sequence` builds the :class:`useq.MDASequence` of a calibration
run: a Z range of ``+-z_range_um`` around the focus at ``z_step_um``, repeated at
several fields of view (stage positions that carry their Z, so the relative Z plan
gives absolute piezo positions). :func:`run_calibration` runs it through
``core.mda`` (hardware-sequenced Z where the focus device supports it), splits
every frame into its two focal planes and streams it, with its true stage
position, into a run store of kind ``"calibration"``
(:class:`~axialtrack.store.RunWriter`).

On the simulated rig the ground truth of the beads is recorded too, in the
store's ``truth/`` group (simulation only; see :data:`TRUTH_COLUMNS`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import useq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from axialtrack.geometry import SplitterGeometry
from axialtrack.store import RunWriter, StoreExistsError

from ._frame_handler import CalibrationFrameHandler

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus
    from rich.progress import Progress

    from axialtrack.events import CalibrationSignals

__all__ = [
    "TRUTH_COLUMNS",
    "TRUTH_GROUP",
    "CalibrationFrameHandler",
    "CalibrationPlan",
    "calibration_sequence",
    "read_truth",
    "run_calibration",
]

logger = logging.getLogger(__name__)

TRUTH_GROUP = "truth"
"""Name of the run-store group holding the simulation's bead ground truth."""

TRUTH_COLUMNS: dict[str, str] = {
    "field": "int64",
    "id": "int64",
    "x_um": "float64",
    "y_um": "float64",
    "depth_um": "float64",
    "z_focus_um": "float64",
    "photons": "float64",
    "x_px0": "float64",
    "y_px0": "float64",
    "x_px1": "float64",
    "y_px1": "float64",
}
"""Columns of the ``truth/`` group (one 1-D array each, one row per bead and field).

``field`` is the field (position) index, ``id`` the emitter id, ``x_um, y_um`` its
world position, ``depth_um`` its depth above the coverslip, ``z_focus_um`` the
stage Z at which it is in focus in plane 0, ``photons`` per frame in plane 0, and
``x_px0, y_px0`` / ``x_px1, y_px1`` its pixel position in plane 0 / plane 1.
"""

_META_KEY = "axialtrack"
_FIELD_FILL = 1.2  # field spacing in fields of view (20 % gap between fields)


# ---------------------------------------------------------------- the plan
class CalibrationPlan(BaseModel):
    """What a calibration run acquires.

    Parameters
    ----------
    z_range_um
        Half-range of the Z scan: from ``-z_range_um`` to ``+z_range_um`` around
        each field's focus.
    z_step_um
        Z step.
    fields
        Number of fields of view (laid out on a grid around ``center_um``), or
        explicit positions ``(x, y)`` or ``(x, y, z)`` in micrometres.
    grid
        ``(rows, columns)`` of the field grid when ``fields`` is a number (default:
        the most nearly square grid holding them).
    spacing_um
        Distance between neighbouring fields (default: 1.2 fields of view, from
        the core's camera size and pixel size).
    center_um
        ``(x, y, z)`` of the centre field; Z is the focus the scan is centred on
        (default: the core's current position).
    exposure_ms
        Camera exposure (``None``: leave the camera's).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    z_range_um: float = Field(1.5, gt=0, le=100)
    z_step_um: float = Field(0.05, gt=0, le=10)
    fields: int | tuple[tuple[float, ...], ...] = 4
    grid: tuple[int, int] | None = None
    spacing_um: float | None = Field(None, gt=0)
    center_um: tuple[float, float, float] | None = None
    exposure_ms: float | None = Field(None, gt=0, le=100_000)

    @field_validator("fields", mode="before")
    @classmethod
    def _coerce_fields(cls, v: Any) -> Any:
        if isinstance(v, (int, np.integer)):
            if v < 1:
                raise ValueError(f"fields must be >= 1; got {v}")
            return int(v)
        if isinstance(v, (str, bytes)):
            raise ValueError("fields must be a number or a list of (x, y[, z]) tuples")
        out = []
        for p in v:
            t = tuple(float(c) for c in p)
            if len(t) not in (2, 3):
                raise ValueError(
                    f"each field position must be (x, y) or (x, y, z) in um; got {p!r}"
                )
            out.append(t)
        if not out:
            raise ValueError("fields must name at least one position")
        return tuple(out)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 1 or v[1] < 1):
            raise ValueError(f"grid must be (rows, columns) >= 1; got {v}")
        return v

    @model_validator(mode="after")
    def _check_steps(self) -> CalibrationPlan:
        n = 2 * self.z_range_um / self.z_step_um
        if n > 100_000:
            raise ValueError(
                f"a Z range of +-{self.z_range_um} um at {self.z_step_um} um steps "
                f"is {n:.0f} frames per field; use a larger step"
            )
        if (
            isinstance(self.fields, int)
            and self.grid is not None
            and self.grid[0] * self.grid[1] < self.fields
        ):
            raise ValueError(
                f"grid {self.grid} holds {self.grid[0] * self.grid[1]} fields, "
                f"fewer than fields={self.fields}"
            )
        return self

    @property
    def n_z(self) -> int:
        """Z steps per field."""
        return round(2 * self.z_range_um / self.z_step_um) + 1

    def grid_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the field grid (numbered fields only)."""
        if not isinstance(self.fields, int):
            return (1, len(self.fields))
        if self.grid is not None:
            return self.grid
        cols = math.ceil(math.sqrt(self.fields))
        return (math.ceil(self.fields / cols), cols)


def _fov_um(core: CMMCorePlus) -> tuple[float, float]:
    """Field of view ``(width, height)`` of one plane, um."""
    px = float(core.getPixelSizeUm())
    if not px > 0:
        raise ValueError(
            "the core has no pixel size (no pixel-size preset is active); pass "
            "spacing_um= to calibration_sequence"
        )
    w, h = int(core.getImageWidth()), int(core.getImageHeight())
    # one plane of a dual-plane sensor: the wider side holds two planes
    if w >= h:
        w //= 2
    else:
        h //= 2
    return w * px, h * px


def calibration_sequence(
    z_range_um: float = 1.5,
    z_step_um: float = 0.05,
    *,
    fields: int | Sequence[Sequence[float]] = 4,
    grid: tuple[int, int] | None = None,
    spacing_um: float | None = None,
    center_um: tuple[float, float, float] | None = None,
    exposure_ms: float | None = None,
    core: CMMCorePlus | None = None,
) -> useq.MDASequence:
    """The MDA sequence of a calibration run.

    Each field is a stage position carrying its Z; the relative Z plan
    (:class:`useq.ZRangeAround`) scans ``+-z_range_um`` around it, Z innermost, so
    each field's Z-stack can run as one hardware-triggered sequence.

    Parameters
    ----------
    z_range_um, z_step_um
        The scan: ``-z_range_um .. +z_range_um`` around each field's Z, in steps.
    fields
        Number of fields (on a grid around the centre), or explicit positions
        ``(x, y)`` / ``(x, y, z)`` (um; a missing Z is the centre's Z).
    grid
        ``(rows, columns)`` of the grid (numbered fields).
    spacing_um
        Distance between grid fields (default: 1.2 fields of view, which needs
        ``core``).
    center_um
        ``(x, y, z)`` of the centre (default: the core's current position).
    exposure_ms
        Exposure time, stored in the sequence metadata and set by
        :func:`run_calibration` (``None``: leave the camera's).
    core
        The core to read the current position and the field of view from.

    Returns
    -------
    useq.MDASequence
        With ``metadata["axialtrack"]`` holding the plan (``kind: "calibration"``).

    Raises
    ------
    ValueError
        Bad parameters, or a needed value (centre, spacing) that neither the
        arguments nor ``core`` give.
    """
    plan = CalibrationPlan(
        z_range_um=z_range_um,
        z_step_um=z_step_um,
        fields=fields,
        grid=grid,
        spacing_um=spacing_um,
        center_um=center_um,
        exposure_ms=exposure_ms,
    )
    center = plan.center_um
    if center is None:
        if core is None:
            raise ValueError(
                "calibration_sequence needs center_um=(x, y, z) or core= to read the "
                "current stage position from"
            )
        x0, y0 = (0.0, 0.0)
        if core.getXYStageDevice():
            x0, y0 = (float(v) for v in core.getXYPosition())
        center = (x0, y0, float(core.getZPosition()))

    positions: list[useq.Position] = []
    if isinstance(plan.fields, int):
        spacing = plan.spacing_um
        if spacing is None and plan.fields > 1:
            if core is None:
                raise ValueError(
                    "calibration_sequence needs spacing_um= (or core= to derive it "
                    "from the field of view) for more than one field"
                )
            spacing = _FIELD_FILL * max(_fov_um(core))
        spacing = spacing or 0.0
        rows, cols = plan.grid_shape()
        k = 0
        for r in range(rows):
            order = range(cols) if r % 2 == 0 else range(cols - 1, -1, -1)  # snake
            for c in order:
                if k == plan.fields:
                    break
                x = center[0] + (c - (cols - 1) / 2.0) * spacing
                y = center[1] + (r - (rows - 1) / 2.0) * spacing
                positions.append(
                    useq.Position(x=x, y=y, z=center[2], name=f"field{k:03d}")
                )
                k += 1
    else:
        for k, p in enumerate(plan.fields):
            z = p[2] if len(p) == 3 else center[2]
            positions.append(useq.Position(x=p[0], y=p[1], z=z, name=f"field{k:03d}"))

    return useq.MDASequence(
        stage_positions=positions,
        z_plan=useq.ZRangeAround(range=2 * plan.z_range_um, step=plan.z_step_um),
        axis_order="pz",
        metadata={
            _META_KEY: {
                "kind": "calibration",
                "plan": plan.model_dump(mode="json"),
                "n_z": plan.n_z,
                "n_fields": len(positions),
            }
        },
    )


def _n_events(sequence: useq.MDASequence) -> int:
    return sum(1 for _ in sequence)


def _sim_camera(core: CMMCorePlus) -> Any:
    """The core's simulated camera device, or ``None`` on a real rig."""
    from axialtrack.devices import SimCamera, get_device

    labels: list[str] = [str(core.getCameraDevice())]
    # a multi camera's first physical camera renders the same sample (a Python
    # camera of a plain UniMMCore has no channel names)
    with contextlib.suppress(Exception):
        labels.append(core.getCameraChannelName(0))
    for label in labels:
        try:
            return get_device(core, label, SimCamera)
        except Exception:
            continue
    return None


def _rig_record(core: CMMCorePlus) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "camera": core.getCameraDevice(),
        "focus": core.getFocusDevice(),
        "xy_stage": core.getXYStageDevice(),
        "pixel_size_um": float(core.getPixelSizeUm()),
        "exposure_ms": float(core.getExposure()),
    }
    from axialtrack.optics.sampled import optics_record

    cam = _sim_camera(core)
    if cam is not None:
        # the simulated rig's nominal PSF: refinement and per-localization
        # uncertainty of models trained on this run use it
        try:
            renderer = cam.renderer()
            depths = [
                float(np.mean(b.depth_um))
                for b in renderer.sample.beads
                if getattr(b, "depth_um", None) is not None
            ]
            rec["optics"] = optics_record(
                renderer.optics,
                depth_um=float(np.median(depths)) if depths else 0.05,
            )
        except Exception:  # pragma: no cover - a sim camera without a sample
            logger.debug("no optics recorded for the simulated camera", exc_info=True)
    with_cfg = getattr(core, "systemConfigurationFile", None)
    if callable(with_cfg):
        try:
            rec["config"] = str(with_cfg() or "")
        except Exception:
            rec["config"] = ""
    return rec


def _write_truth(
    path: Path,
    camera: Any,
    field_stage: dict[int, tuple[float, float, float, float]],
    exposure_s: float,
) -> int:
    """Write the ground truth of each acquired field into ``path/truth``."""
    import zarr

    renderer = camera.renderer()
    cols: dict[str, list[np.ndarray]] = {k: [] for k in TRUTH_COLUMNS}
    for field in sorted(field_stage):
        t, x, y, z = field_stage[field]
        rows = renderer.truth(
            0.0 if not math.isfinite(t) else t, (x, y, z), exposure_s=exposure_s
        )
        n = len(rows)
        cols["field"].append(np.full(n, field, dtype=np.int64))
        cols["id"].append(rows["id"].astype(np.int64))
        cols["depth_um"].append(rows["z_um"].astype(np.float64))
        for k in ("x_um", "y_um", "z_focus_um", "photons"):
            cols[k].append(rows[k].astype(np.float64))
        for k in ("x_px0", "y_px0", "x_px1", "y_px1"):
            cols[k].append(rows[k].astype(np.float64))
    root = zarr.open_group(str(path), mode="a")
    group = root.require_group(TRUTH_GROUP)
    n_rows = 0
    for name, dtype in TRUTH_COLUMNS.items():
        data = (
            np.concatenate(cols[name]) if cols[name] else np.empty(0, dtype=dtype)
        ).astype(dtype)
        n_rows = len(data)
        group.create_array(name, data=data, overwrite=True)
    group.attrs.update(
        {
            "simulation_only": True,
            "description": (
                "Ground truth of the simulated beads per field of view: "
                "field (position index), emitter id, world x_um/y_um, depth_um above "
                "the coverslip, z_focus_um (stage Z in focus in plane 0), photons per "
                "frame, and pixel positions x_px0/y_px0 (plane 0), x_px1/y_px1 "
                "(plane 1)."
            ),
            "columns": list(TRUTH_COLUMNS),
            "n_rows": n_rows,
        }
    )
    return n_rows


def read_truth(path: str | Path) -> list[np.ndarray] | None:
    """The bead ground truth of a simulated calibration run, one array per field.

    Parameters
    ----------
    path
        A calibration run store.

    Returns
    -------
    list of numpy.ndarray or None
        Structured arrays with the :data:`TRUTH_COLUMNS` (``field`` dropped), one
        per field; ``None`` when the store has no ``truth/`` group (real data).
    """
    from axialtrack.calibrate.io import read_truth as _read

    return _read(path)


def run_calibration(
    core: CMMCorePlus,
    out_path: str | Path,
    sequence: useq.MDASequence | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    record_truth: bool = True,
    hardware_sequencing: bool = True,
    compression: str | None = None,
    events: CalibrationSignals | None = None,
    camera: Mapping[str, Any] | None = None,
) -> Path:
    """Acquire a calibration run into a run store.

    The sequence runs through ``core.mda`` on its own thread; every frame is split
    into its two planes and streamed into a run store (kind ``"calibration"``)
    with its true stage position. ``Ctrl-C`` (KeyboardInterrupt) cancels the
    acquisition cleanly (``core.mda.cancel()``) and keeps what was acquired, as
    does cancelling from elsewhere; the store is closed either way and its
    ``acquisition`` attributes say how many frames were acquired and whether the
    run was ``"complete"``, ``"cancelled"`` or ended with an ``"error"``.

    Parameters
    ----------
    core
        A loaded core (:func:`axialtrack.rig.load_rig`).
    out_path
        The run store to create (``<name>.zarr``).
    sequence
        The MDA sequence (default: :func:`calibration_sequence` with its defaults
        around the core's current position).
    overwrite
        Replace an existing store at ``out_path``.
    progress
        Show a progress bar with ETA.
    record_truth
        On the simulated rig, write the beads' ground truth to ``truth/``.
    hardware_sequencing
        Let the MDA engine run each Z-stack as one triggered sequence where the
        focus device supports it (``core.mda.engine.use_hardware_sequencing``).
    compression
        Frame compression of the store (``None``, ``"blosc-lz4"``, ...).
    events
        :class:`~axialtrack.events.CalibrationSignals` to emit (``started``,
        ``frameStored``, ``finished``), for a GUI's progress bar.
    camera
        The camera model (:class:`~axialtrack.pipeline.config.CameraCalibration`
        fields) recorded as the run's ``camera`` attribute; ``None``: the one
        :func:`axialtrack.camera.camera_from_core` reads from the core (with the
        defaults for what it does not know).

    Returns
    -------
    pathlib.Path
        The store path.

    Raises
    ------
    StoreExistsError
        ``out_path`` exists and ``overwrite`` is False.
    RuntimeError
        An MDA is already running, or the acquisition or storage failed (the
        store then holds, and says, what was acquired before).
    """
    from axialtrack.rig import splitter_geometry

    out = Path(out_path).expanduser().absolute()
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StoreExistsError(
            f"{out} already exists. Pass overwrite=True (--overwrite) to replace it, "
            "or choose another output path."
        )
    if core.mda.is_running():
        raise RuntimeError("an MDA is already running on this core; wait or cancel it")
    if sequence is None:
        sequence = calibration_sequence(core=core)
    geometry = splitter_geometry(core)
    plan_meta = dict(sequence.metadata.get(_META_KEY, {}))
    exposure_ms = (plan_meta.get("plan") or {}).get("exposure_ms")
    if exposure_ms is not None:
        core.setExposure(float(exposure_ms))
    exposure_s = float(core.getExposure()) / 1e3
    n_total = _n_events(sequence)
    writer = _open_store(core, out, geometry, overwrite, compression, camera)

    bar = _make_progress() if progress else None
    task = bar.add_task("calibration", total=n_total) if bar is not None else None
    handler = CalibrationFrameHandler(
        writer,
        geometry,
        progress=bar,
        task=task,
        on_error=lambda exc: core.mda.cancel(),
        events=events,
        n_planned=n_total,
    )
    if events is not None:
        events.started.emit(out, n_total)
    run = _run_mda(core, sequence, handler, bar, hardware_sequencing)

    n = handler.n_frames
    acq = _acquisition_record(
        handler, run, n_total, sequence, hardware_sequencing, exposure_s
    )
    status, reason = acq["status"], acq["reason"]
    try:
        writer.set_attrs(acquisition=acq)
    finally:
        writer.close()
    if events is not None:
        events.finished.emit(out, acq)

    sim = _sim_camera(core) if record_truth else None
    if sim is not None and handler.field_stage:
        _write_truth(out, sim, handler.field_stage, exposure_s)

    if status == "error":
        raise RuntimeError(
            f"calibration run {out}: {reason}. The store keeps the {n} frame(s) "
            "acquired before."
        ) from (handler.error or run.error)
    if run.interrupted:
        logger.warning("calibration run %s interrupted after %d frame(s)", out, n)
    return out


def _acquisition_record(
    handler: CalibrationFrameHandler,
    run: _MdaRun,
    n_total: int,
    sequence: useq.MDASequence,
    hardware_sequencing: bool,
    exposure_s: float,
) -> dict[str, Any]:
    """The run's ``acquisition`` attributes: how it ended (``status``,
    ``reason``), what it acquired, the plan and the rate."""
    n = handler.n_frames
    if handler.error is not None:
        status, reason = "error", f"storing a frame failed: {handler.error}"
    elif run.error is not None:
        status, reason = "error", f"the acquisition failed: {run.error}"
    elif run.cancelled:
        status = "cancelled"
        reason = "interrupted (Ctrl-C)" if run.interrupted else "cancelled"
    elif n < n_total:
        status, reason = "incomplete", f"{n_total - n} frame(s) never arrived"
    else:
        status, reason = "complete", ""
    span = (
        (handler.t_last - handler.t_first)
        if handler.t_first is not None and handler.t_last is not None
        else 0.0
    )
    plan_meta = dict(sequence.metadata.get(_META_KEY, {}))
    return {
        "status": status,
        "cancelled": status == "cancelled",
        "reason": reason,
        "n_frames": n,
        "n_planned": n_total,
        "n_fields": len(handler.field_index),
        "n_z": plan_meta.get("n_z"),
        "plan": plan_meta.get("plan"),
        "sequence": sequence.model_dump(mode="json", exclude={"metadata"}),
        "hardware_sequencing": bool(hardware_sequencing),
        "hardware_triggered_frames": handler.hardware_triggered,
        "exposure_ms": exposure_s * 1e3,
        "elapsed_s": run.elapsed_s,
        "frames_per_s": (n - 1) / span if n > 1 and span > 0 else None,
    }


def _open_store(
    core: CMMCorePlus,
    out: Path,
    geometry: SplitterGeometry,
    overwrite: bool,
    compression: str | None,
    camera: Mapping[str, Any] | None,
) -> RunWriter:
    """The calibration run store for the core's camera and splitter, with the
    camera model recorded (:func:`run_calibration`)."""
    pixel_size_um = float(core.getPixelSizeUm())
    if not pixel_size_um > 0:
        raise RuntimeError(
            "the core has no pixel size (no pixel-size preset is active); define "
            "one in the hardware config (ConfigPixelSize / PixelSize_um)"
        )
    sensor = (int(core.getImageHeight()), int(core.getImageWidth()))
    # two cameras (Multi Camera): each camera's image is one plane
    plane_shape = (
        sensor if geometry.layout == "two-cameras" else geometry.plane_shape(sensor)
    )
    writer = RunWriter(
        out,
        kind="calibration",
        plane_shape=plane_shape,
        pixel_size_um=pixel_size_um,
        rig=_rig_record(core),
        splitter=geometry,
        compression=compression,  # type: ignore[arg-type]
        overwrite=overwrite,
    )
    if camera is None:
        from axialtrack.camera import camera_from_core, resolve_camera

        camera = resolve_camera([("core", camera_from_core(core))])[0].model_dump()
    writer.set_attrs(camera=dict(camera))
    return writer


@dataclass
class _MdaRun:
    """How :func:`_run_mda` ended."""

    cancelled: bool
    interrupted: bool
    error: BaseException | None
    elapsed_s: float


def _run_mda(
    core: CMMCorePlus,
    sequence: useq.MDASequence,
    handler: CalibrationFrameHandler,
    bar: Progress | None,
    hardware_sequencing: bool,
) -> _MdaRun:
    """Run ``sequence`` through ``core.mda`` on its own thread into ``handler``
    until it ends; Ctrl-C cancels it (what was acquired stays)."""
    engine = core.mda.engine
    old_hw = getattr(engine, "use_hardware_sequencing", None)
    if engine is not None and old_hw is not None:
        engine.use_hardware_sequencing = bool(hardware_sequencing)
    cancelled = threading.Event()
    mda_error: list[BaseException] = []
    done = threading.Event()

    def _on_cancel(*_: Any) -> None:
        cancelled.set()

    def _run() -> None:
        try:
            # the handler is the MDA's output: pymmcore-plus hands it each
            # frame from its relay thread, never holding up the acquisition
            core.mda.run(sequence, output=handler)
        except BaseException as exc:
            mda_error.append(exc)
        finally:
            done.set()

    core.mda.events.sequenceCanceled.connect(_on_cancel)
    t0 = time.perf_counter()
    interrupted = False
    try:
        if bar is not None:
            bar.start()
        thread = threading.Thread(target=_run, name="calibration-mda", daemon=True)
        thread.start()
        # waits on an event the thread sets as it ends: a Thread.join()
        # interrupted by Ctrl-C can mark the thread as stopped (CPython 3.11),
        # and the store was then closed while the MDA's relay thread still
        # handed it the frames acquired before the cancel
        while not done.is_set():
            try:
                done.wait(0.1)
            except KeyboardInterrupt:
                interrupted = True
                cancelled.set()
                core.mda.cancel()
    finally:
        if bar is not None:
            bar.stop()
        core.mda.events.sequenceCanceled.disconnect(_on_cancel)
        if engine is not None and old_hw is not None:
            engine.use_hardware_sequencing = old_hw
    return _MdaRun(
        cancelled=cancelled.is_set(),
        interrupted=interrupted,
        error=mda_error[0] if mda_error else None,
        elapsed_s=time.perf_counter() - t0,
    )


def _make_progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )

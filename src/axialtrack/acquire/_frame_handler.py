"""The output handler of a calibration run: each MDA frame split into its two
planes (or paired across two cameras) and streamed into the run store with its
true stage position, the progress bar and events updated
(:class:`CalibrationFrameHandler`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import useq

from axialtrack.geometry import CameraPairs, SplitterGeometry, split_frame
from axialtrack.store import FrameMeta, RunWriter

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from axialtrack.events import CalibrationSignals

logger = logging.getLogger("axialtrack.acquire.calibration")


def _planes_view(raw: np.ndarray, geometry: SplitterGeometry) -> np.ndarray:
    """The ``(2, H, W)`` planes of a raw frame, as a view where the layout allows.

    Without mirroring both single-sensor layouts are a reshaped view of the
    C-contiguous sensor frame, so the writer's copy into its pool is the only
    copy; otherwise :func:`split_frame` copies once.
    """
    if geometry.mirror == "none" and raw.ndim == 2 and raw.flags.c_contiguous:
        h, w = geometry.plane_shape(raw.shape)
        if geometry.layout == "side-by-side":
            return raw.reshape(h, 2, w).transpose(1, 0, 2)
        if geometry.layout == "top-bottom":
            return raw.reshape(2, h, w)
    return split_frame(raw, geometry)


def _meta_float(meta: dict[str, Any], key: str) -> float | None:
    v = meta.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class CalibrationFrameHandler:
    """MDA output handler (``core.mda.run(sequence, output=handler)``): frames
    into a run store.

    Each frame is split into its two planes (a view where possible) and handed to
    :meth:`RunWriter.append_frame`, which copies it into the writer's pool and
    returns; encoding and writing happen on the writer's threads. The stage Z of
    a frame is the true position the device reports in the frame metadata
    (``SimStageZ_um``), else the event's Z.

    Parameters
    ----------
    writer
        The open run writer.
    geometry
        The splitter geometry.
    progress, task
        A rich progress bar and its task to advance per frame (optional).
    events, n_planned
        :class:`~axialtrack.events.CalibrationSignals` whose ``frameStored``
        is emitted per frame, with the frames planned (optional).
    on_error
        Called (once) with the exception if a frame cannot be stored; the run
        should then be cancelled.
    """

    def __init__(
        self,
        writer: RunWriter,
        geometry: SplitterGeometry,
        *,
        progress: Progress | None = None,
        task: TaskID | None = None,
        on_error: Any = None,
        events: CalibrationSignals | None = None,
        n_planned: int = 0,
    ) -> None:
        self.writer = writer
        self.events = events
        self.n_planned = int(n_planned)
        self.geometry = geometry
        self.progress = progress
        self.task = task
        self.on_error = on_error
        self.n_frames = 0
        self.error: BaseException | None = None
        self.hardware_triggered = 0
        self.field_index: dict[tuple[int, int], int] = {}
        self.field_stage: dict[int, tuple[float, float, float, float]] = {}
        self.t_first: float | None = None
        self.t_last: float | None = None
        self._lock = threading.Lock()
        self._pairs = CameraPairs()

    def _field(self, event: useq.MDAEvent) -> int:
        key = (int(event.index.get("p", 0)), int(event.index.get("g", 0)))
        if key not in self.field_index:
            self.field_index[key] = len(self.field_index)
        return self.field_index[key]

    def frameReady(
        self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping[str, Any]
    ) -> None:
        """Store one frame (called by the MDA runner for each frame)."""
        if self.error is not None:
            return
        try:
            cam = event.index.get("cam") if event is not None else None
            if cam is not None:
                # Multi Camera: the two planes come one per camera
                paired = self._pairs.add(int(cam), img, event, meta)
                if paired is None:
                    return
                img, meta = paired
            self._store(img, event, dict(meta or {}))
        except Exception as exc:
            self.error = exc
            logger.error("calibration run: cannot store a frame: %s", exc)
            if self.on_error is not None:
                self.on_error(exc)

    def _store(
        self, img: np.ndarray, event: useq.MDAEvent, meta: dict[str, Any]
    ) -> None:
        cam = meta.get("camera_metadata") or {}
        z = _meta_float(cam, "SimStageZ_um")
        if z is None:
            z = event.z_pos if event.z_pos is not None else math.nan
        t = _meta_float(cam, "SimTime_s")
        if t is None and (rt := _meta_float(meta, "runner_time_ms")) is not None:
            t = rt / 1e3
        number = cam.get("CameraFrameIndex", cam.get("ImageNumber", -1))
        try:
            image_number = int(number)
        except (TypeError, ValueError):
            image_number = -1
        with self._lock:
            field = self._field(event)
            if field not in self.field_stage:
                sx = _meta_float(cam, "SimStageX_um")
                sy = _meta_float(cam, "SimStageY_um")
                ex = event.x_pos if event.x_pos is not None else math.nan
                ey = event.y_pos if event.y_pos is not None else math.nan
                self.field_stage[field] = (
                    t if t is not None else math.nan,
                    sx if sx is not None else ex,
                    sy if sy is not None else ey,
                    float(z),
                )
            if meta.get("hardware_triggered"):
                self.hardware_triggered += 1
            self.writer.append_frame(
                _planes_view(np.asarray(img), self.geometry),
                FrameMeta(
                    t_s=t,
                    stage_z_um=float(z),
                    stage_x_um=event.x_pos if event.x_pos is not None else math.nan,
                    stage_y_um=event.y_pos if event.y_pos is not None else math.nan,
                    image_number=image_number,
                    position_index=field,
                ),
            )
            self.n_frames += 1
            now = time.perf_counter()
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        if self.events is not None:
            try:
                self.events.frameStored.emit(self.n_frames, self.n_planned)
            except Exception:  # a display problem must not stop the run
                logger.exception("a subscriber of frameStored failed")


# ------------------------------------------------------------------ the run

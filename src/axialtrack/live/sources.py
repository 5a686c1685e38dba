"""Frame sources of the live runner: :class:`CoreSource` polls a core's
sequence acquisition (the MDA path, :mod:`axialtrack.live.mda`, feeds the
runner from the MDA's frames instead)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._protocols import SourceFrame, _as_float

logger = logging.getLogger(__name__)


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

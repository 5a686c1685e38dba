"""Two Python cameras as one, as Micro-Manager's Utilities ``Multi Camera`` does.

UniMMCore cannot load the C++ ``Multi Camera`` over Python cameras, so the
simulated two-camera rig (``sim-twocam.cfg``) uses :class:`SimMultiCamera`:
the core's camera, with the Multi Camera's ``Physical Camera 1`` and ``2``
properties naming two :class:`~axialtrack.devices.SimCamera` (``Plane`` 0 and
1). In a sequence it delivers each frame of both cameras, tagged as Multi
Camera tags them (``Camera`` = the physical camera, ``<label>-CameraChannelIndex``
= 0 or 1), so pymmcore-plus's MDA engine pairs them into one event with index
``cam`` 0 and 1, as with a real Multi Camera. The core reports two camera
channels for it (:class:`~axialtrack.rig.RigCore`, see
:mod:`axialtrack._pymmcore_compat`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from pymmcore_plus.core._constants import Keyword
from pymmcore_plus.experimental.unicore import pymm_property

from ._base import PacedCamera, as_float, find_peer
from .camera import SimCamera

__all__ = ["SimMultiCamera"]


class SimMultiCamera(PacedCamera):
    """One logical camera over two simulated cameras, one per focal plane.

    Properties
    ----------
    Physical Camera 1, Physical Camera 2
        Labels of the cameras of plane 0 and plane 1 (Multi Camera's names).

    Exposure is set on both cameras. A snap takes one frame of each; the
    second is the core's ``getImage(1)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._physical = ["", ""]
        self.last_images: list[np.ndarray | None] = [None, None]

    # ------------------------------------------------------------ properties
    @pymm_property(name="Physical Camera 1")
    def physical_camera_1(self) -> str:
        """Label of the camera of plane 0."""
        return self._physical[0]

    @physical_camera_1.setter
    def _set_physical_camera_1(self, value: Any) -> None:
        self._physical[0] = str(value)
        self._emit_property("Physical Camera 1", self._physical[0])

    @pymm_property(name="Physical Camera 2")
    def physical_camera_2(self) -> str:
        """Label of the camera of plane 1."""
        return self._physical[1]

    @physical_camera_2.setter
    def _set_physical_camera_2(self, value: Any) -> None:
        self._physical[1] = str(value)
        self._emit_property("Physical Camera 2", self._physical[1])

    def physical_labels(self) -> tuple[str, str]:
        """The labels of the cameras of plane 0 and plane 1."""
        return self._physical[0], self._physical[1]

    def cameras(self) -> tuple[SimCamera, SimCamera]:
        """The two physical cameras."""
        out = []
        for i, label in enumerate(self._physical):
            if not label:
                raise RuntimeError(
                    f"camera {self.get_label()!r}: set Physical Camera {i + 1} to "
                    "the label of a loaded SimCamera"
                )
            try:
                out.append(find_peer(self, label, SimCamera))
            except LookupError as exc:
                raise RuntimeError(
                    f"camera {self.get_label()!r}: Physical Camera {i + 1} "
                    f"{label!r}: {exc}"
                ) from None
        return out[0], out[1]

    # -------------------------------------------------------- camera API
    def get_exposure(self) -> float:
        """Exposure of the cameras, ms (that of plane 0's)."""
        try:
            return float(self.cameras()[0].get_exposure())
        except RuntimeError:
            return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure of both cameras, ms."""
        value = as_float(exposure, "Exposure")
        self._exposure_ms = value
        for cam in self.cameras():
            cam.set_exposure(value)

    def set_interval_ms(self, value: Any) -> None:
        """Set ``Interval-ms`` of both cameras."""
        super().set_interval_ms(value)
        for cam in self.cameras():
            cam.set_interval_ms(value)

    def shape(self) -> tuple[int, int]:
        """One camera's frame shape (both are the same)."""
        s0, s1 = (tuple(c.shape()) for c in self.cameras())
        if s0 != s1:
            raise RuntimeError(
                f"camera {self.get_label()!r}: the physical cameras' frames differ "
                f"({s0} and {s1}); give them the same plane size"
            )
        return s0  # type: ignore[return-value]

    def set_roi(self, x: int, y: int, width: int, height: int) -> None:
        """Accept the full frame only (what pymmcore-plus's engine sets again
        when a sequence ends)."""
        h, w = self.shape()
        if (int(x), int(y), int(width), int(height)) != (0, 0, w, h):
            raise NotImplementedError(
                "SimMultiCamera does not crop; set the cameras' plane size instead"
            )

    def dtype(self) -> DTypeLike:
        """Pixel type: 16-bit unsigned."""
        return np.uint16

    def start_sequence(
        self,
        n: int | None,
        get_buffer: Callable[[Sequence[int], DTypeLike], np.ndarray],
    ) -> Iterator[Mapping]:
        """Both cameras' frames, alternately (``n`` images in all).

        ``n == 1`` is the core's snap: both frames are taken, plane 0's is
        returned and plane 1's kept in :attr:`last_images` (the core's
        ``getImage(1)``).
        """
        cams = self.cameras()
        keys = f"{self.get_label()}-CameraChannelIndex"
        frames: list[np.ndarray | None] = [None, None]

        def buffer_for(i: int) -> Callable[[Sequence[int], DTypeLike], np.ndarray]:
            def get(shape: Sequence[int], dtype: DTypeLike) -> np.ndarray:
                buf = np.empty(shape, dtype=dtype)
                frames[i] = buf
                return buf

            return get

        gens = [cam.start_sequence(None, buffer_for(i)) for i, cam in enumerate(cams)]
        try:
            if n == 1:
                metas = [next(g) for g in gens]
                self.last_images = [frames[0], frames[1]]
                out = get_buffer(frames[0].shape, frames[0].dtype)  # type: ignore[union-attr]
                out[...] = frames[0]
                yield self._tag(metas[0], cams[0], 0, keys)
                return
            k = 0
            while n is None or k < n:
                metas = [next(g) for g in gens]
                for i in (0, 1):
                    if n is not None and k >= n:
                        break
                    img = frames[i]
                    assert img is not None
                    out = get_buffer(img.shape, img.dtype)
                    out[...] = img
                    k += 1
                    yield self._tag(metas[i], cams[i], i, keys)
        finally:
            for g in gens:
                close = getattr(g, "close", None)
                if close is not None:
                    close()

    @staticmethod
    def _tag(meta: Mapping, cam: SimCamera, index: int, key: str) -> dict[str, Any]:
        return {
            **meta,
            Keyword.Metadata_CameraLabel.value: cam.get_label(),
            key: str(index),
        }

"""Dual-plane splitter geometry: how the two focal planes lie on the sensor(s).

A raw camera frame holds both focal planes: side by side, one above the other, or
(with two cameras) as two separate images. :func:`split_frame` turns a raw frame into
the ``(2, H, W)`` dual-plane array (plane 0 first) and :func:`compose_frame` does the
inverse, which the simulated camera uses to render a sensor image.

Splitting only cuts and un-mirrors. The small residual misalignment of plane 1
relative to plane 0 (shift, rotation, scale) is an affine map from plane-0 pixel
coordinates to plane-1 pixel coordinates, :meth:`SplitterGeometry.plane1_affine`;
calibration estimates it from beads, and the pipeline crops plane 1 at the mapped
positions rather than warping whole images.

Pixel coordinates are ``(x, y)`` = (column, row), with the centre of the first
pixel at ``(0, 0)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

Layout = Literal["side-by-side", "top-bottom", "two-cameras"]
Mirror = Literal["none", "horizontal", "vertical", "both"]

LAYOUTS: tuple[str, ...] = ("side-by-side", "top-bottom", "two-cameras")
MIRRORS: tuple[str, ...] = ("none", "horizontal", "vertical", "both")


#: What ``z_um`` and ``dz_um`` mean: recorded with a calibration
#: (:func:`axialtrack.calibrate.write_rig`) and a model bundle.
Z_CONVENTION = (
    "stage frame: z_um is the focus-stage position at which the particle is in "
    "focus in plane 0; dz_um = ref_z_um - stage_z_um (the bead's reference Z "
    "minus the stage Z of the frame); z_um = stage_z_um + dz_um; plane 1 is in "
    "focus at stage_z_um + plane_offset_um"
)


class SplitterGeometry(BaseModel):
    """How a dual-focal-plane splitter maps the two planes onto the sensor.

    Parameters
    ----------
    layout
        ``"side-by-side"`` (plane 0 on the sensor's left half, plane 1 on the right),
        ``"top-bottom"`` (plane 0 on top) or ``"two-cameras"`` (one image each).
    plane_offset_um
        Delta: plane 1 is in focus at ``stage_z + plane_offset_um`` (stage frame).
    mirror
        Flip of plane 1 on the sensor that the splitter optics introduce
        (``"horizontal"`` flips columns, ``"vertical"`` flips rows, ``"both"``
        flips both: a 180 degree rotation).
    shift_px
        Residual ``(dx, dy)`` of plane 1 relative to plane 0 after un-mirroring.
    rotation_deg
        Residual rotation of plane 1 about the plane centre, counter-clockwise in
        ``(x, y)`` pixel coordinates.
    scale
        Residual magnification of plane 1 relative to plane 0.
    transmission
        Photons reaching plane 1 relative to plane 0 (1.0 for a 50/50 splitter).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    layout: Layout = "side-by-side"
    plane_offset_um: float = Field(0.5, gt=-10.0, lt=10.0)
    mirror: Mirror = "none"
    shift_px: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = Field(0.0, ge=-45.0, le=45.0)
    scale: float = Field(1.0, gt=0.5, lt=2.0)
    transmission: float = Field(1.0, gt=0.0, le=10.0)

    @field_validator("layout", mode="before")
    @classmethod
    def _normalize_layout(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower().replace("_", "-").replace(" ", "-")
        if v not in LAYOUTS:
            raise ValueError(
                f"unknown splitter layout {v!r}; use one of {', '.join(LAYOUTS)}"
            )
        return v

    @field_validator("mirror", mode="before")
    @classmethod
    def _normalize_mirror(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower()
        if v not in MIRRORS:
            raise ValueError(
                f"unknown plane-1 mirror {v!r}; use one of {', '.join(MIRRORS)}"
            )
        return v

    # ------------------------------------------------------------------ shapes
    def plane_shape(self, sensor_shape: tuple[int, ...]) -> tuple[int, int]:
        """Shape ``(H, W)`` of one plane for a raw frame of ``sensor_shape``."""
        if self.layout == "two-cameras":
            if len(sensor_shape) != 3 or sensor_shape[0] != 2:
                raise ValueError(
                    "layout 'two-cameras' needs a raw frame of shape (2, H, W) "
                    f"(one image per camera); got {tuple(sensor_shape)}"
                )
            return int(sensor_shape[1]), int(sensor_shape[2])
        if len(sensor_shape) != 2:
            raise ValueError(
                f"layout {self.layout!r} needs a 2-D sensor frame; "
                f"got shape {tuple(sensor_shape)}"
            )
        h, w = int(sensor_shape[0]), int(sensor_shape[1])
        if self.layout == "side-by-side":
            if w % 2:
                raise ValueError(
                    f"layout 'side-by-side' needs an even sensor width; got {w} px "
                    "(crop the camera ROI to an even width)"
                )
            return h, w // 2
        if h % 2:
            raise ValueError(
                f"layout 'top-bottom' needs an even sensor height; got {h} px "
                "(crop the camera ROI to an even height)"
            )
        return h // 2, w

    def sensor_shape(self, plane_shape: tuple[int, int]) -> tuple[int, ...]:
        """Raw frame shape that holds two planes of ``plane_shape``."""
        h, w = plane_shape
        if self.layout == "side-by-side":
            return (h, 2 * w)
        if self.layout == "top-bottom":
            return (2 * h, w)
        return (2, h, w)

    # ----------------------------------------------------------------- affine
    def plane1_affine(self, plane_shape: tuple[int, int]) -> np.ndarray:
        """Affine ``(2, 3)`` matrix mapping plane-0 ``(x, y)`` to plane-1 ``(x, y)``.

        Rotation and scale act about the plane centre; the shift is added last.
        """
        h, w = plane_shape
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        th = np.deg2rad(self.rotation_deg)
        a = self.scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        t = c - a @ c + np.asarray(self.shift_px, dtype=float)
        return np.hstack([a, t[:, None]])


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine to points ``xy`` of shape ``(N, 2)``."""
    xy = np.asarray(xy, dtype=float)
    return xy @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine."""
    a_inv = np.linalg.inv(affine[:, :2])
    return np.hstack([a_inv, (-a_inv @ affine[:, 2])[:, None]])


def unmirror(plane: np.ndarray, mirror: str) -> np.ndarray:
    """Undo (or apply: it is its own inverse) a plane-1 mirror on the last two axes."""
    if mirror == "horizontal":
        return plane[..., ::-1]
    if mirror == "vertical":
        return plane[..., ::-1, :]
    if mirror == "both":
        return plane[..., ::-1, ::-1]
    return plane


def split_frame(raw: np.ndarray, geometry: SplitterGeometry) -> np.ndarray:
    """Split a raw camera frame into the ``(2, H, W)`` dual-plane array.

    Plane 1 is un-mirrored so both planes share orientation; the residual affine
    (:meth:`SplitterGeometry.plane1_affine`) is not applied here.

    Parameters
    ----------
    raw
        Sensor frame: ``(H, 2W)`` side-by-side, ``(2H, W)`` top-bottom, or
        ``(2, H, W)`` for two cameras. A leading time axis is allowed for the
        single-sensor layouts: ``(T, H, 2W)`` gives ``(T, 2, H, W)``.
    geometry
        The splitter geometry.

    Returns
    -------
    numpy.ndarray
        A contiguous array of the same dtype, plane 0 first.
    """
    raw = np.asarray(raw)
    if geometry.layout == "two-cameras":
        h, w = geometry.plane_shape(raw.shape)
        p0, p1 = raw[0], raw[1]
    else:
        lead = raw.shape[:-2]
        h, w = geometry.plane_shape(raw.shape[-2:])
        if geometry.layout == "side-by-side":
            p0, p1 = raw[..., :, :w], raw[..., :, w:]
        else:
            p0, p1 = raw[..., :h, :], raw[..., h:, :]
        if lead:
            out = np.empty((*lead, 2, h, w), dtype=raw.dtype)
            out[..., 0, :, :] = p0
            out[..., 1, :, :] = unmirror(p1, geometry.mirror)
            return out
    out = np.empty((2, h, w), dtype=raw.dtype)
    out[0] = p0
    out[1] = unmirror(p1, geometry.mirror)
    return out


def compose_frame(planes: np.ndarray, geometry: SplitterGeometry) -> np.ndarray:
    """Inverse of :func:`split_frame`: lay two planes out as the sensor sees them."""
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] != 2:
        raise ValueError(f"planes must have shape (2, H, W); got {planes.shape}")
    h, w = planes.shape[1:]
    out = np.empty(geometry.sensor_shape((h, w)), dtype=planes.dtype)
    p1 = unmirror(planes[1], geometry.mirror)
    if geometry.layout == "side-by-side":
        out[:, :w] = planes[0]
        out[:, w:] = p1
    elif geometry.layout == "top-bottom":
        out[:h] = planes[0]
        out[h:] = p1
    else:
        out[0] = planes[0]
        out[1] = p1
    return out


#: The properties of a dual-plane splitter device
#: (:class:`~axialtrack.devices.DualPlaneSplitter`).
SPLITTER_PROPERTIES = (
    "PlaneOffsetUm",
    "Layout",
    "Mirror",
    "ShiftXPx",
    "ShiftYPx",
    "RotationDeg",
    "Scale",
    "Transmission",
)


def splitter_label(core: Any) -> str:
    """Label of the dual-plane splitter device loaded in ``core`` (any device
    with the :data:`SPLITTER_PROPERTIES`).

    Raises
    ------
    LookupError
        If none, or more than one, is loaded.
    """
    found = [
        label
        for label in core.getLoadedDevices()
        if all(core.hasProperty(label, p) for p in SPLITTER_PROPERTIES)
    ]
    if not found:
        raise LookupError(
            "no DualPlaneSplitter device is loaded; add "
            "'#py pyDevice,Splitter,axialtrack.devices,DualPlaneSplitter' and its "
            "Property lines to the hardware config"
        )
    if len(found) > 1:
        raise LookupError(
            f"several splitter devices are loaded ({', '.join(found)}); pass "
            "label= to choose one"
        )
    return str(found[0])


def splitter_geometry(core: Any, label: str | None = None) -> SplitterGeometry:
    """The :class:`SplitterGeometry` the rig's splitter device describes.

    Parameters
    ----------
    core
        A loaded core (pymmcore-plus ``CMMCorePlus`` / ``UniMMCore``).
    label
        Splitter device label; found by :func:`splitter_label` if omitted.
    """
    return read_splitter_geometry(core, label or splitter_label(core))


def read_splitter_geometry(core: Any, label: str) -> SplitterGeometry:
    """The :class:`SplitterGeometry` of splitter ``label``, read through ``core``.

    ``core`` is any object with Micro-Manager's ``getProperty(label, name)`` (a
    pymmcore-plus core); the device's properties are ``Layout``, ``Mirror``,
    ``PlaneOffsetUm``, ``ShiftXPx``, ``ShiftYPx``, ``RotationDeg``, ``Scale`` and
    ``Transmission``.
    """

    def num(prop: str) -> float:
        return float(core.getProperty(label, prop))

    return SplitterGeometry(
        layout=str(core.getProperty(label, "Layout")),
        mirror=str(core.getProperty(label, "Mirror")),
        plane_offset_um=num("PlaneOffsetUm"),
        shift_px=(num("ShiftXPx"), num("ShiftYPx")),
        rotation_deg=num("RotationDeg"),
        scale=num("Scale"),
        transmission=num("Transmission"),
    )


class CameraPairs:
    """Pairs the frames of a two-camera rig (Multi Camera: each event's frames
    come one per camera, with index ``cam`` 0 and 1) into the two planes of
    one frame, whatever order they come in; plane 0 from camera channel 0."""

    def __init__(self) -> None:
        self._pending: dict[tuple[tuple[str, int], ...], dict[int, Any]] = {}
        #: pairs completed so far
        self.done = 0

    def add(self, cam: int, img: np.ndarray, event: Any, *extra: Any) -> Any:
        """Take one camera's frame; ``(planes, *extra of camera 0)`` once the
        other camera's frame of the same event is here, else None."""
        if cam not in (0, 1):
            raise ValueError(
                f"a frame of camera channel {cam}: a two-cameras rig has two "
                "(Multi Camera with Physical Camera 1 and 2 set, and no third)"
            )
        key = tuple(sorted((k, int(v)) for k, v in event.index.items() if k != "cam"))
        got = self._pending.setdefault(key, {})
        got[cam] = (img, *extra)
        if len(got) < 2:
            return None
        del self._pending[key]
        first, second = got[0], got[1]
        self.done += 1
        planes = np.stack([np.asarray(first[0]), np.asarray(second[0])])
        return (planes, *first[1:])

    def __len__(self) -> int:
        """Frames still waiting for the other camera's."""
        return len(self._pending)

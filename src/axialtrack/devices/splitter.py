"""The dual-focal-plane splitter as a (passive) Micro-Manager device.

A dual-plane image splitter has no electronics, but the software needs to know how
it lays the two planes on the sensor(s). :class:`DualPlaneSplitter` holds that
description as device properties, so it lives in the hardware config next to the
camera and the stages, is saved with the config, and is visible in any property
browser. Real rigs and the simulated rig load the same device.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pymmcore_plus.experimental.unicore import GenericDevice, pymm_property

from axialtrack.geometry import LAYOUTS, MIRRORS, SplitterGeometry

from ._base import AxialDevice, Choices, as_choice, as_float

__all__ = ["DualPlaneSplitter"]

# property name -> SplitterGeometry field (shift is split into two properties)
_FIELDS = {
    "PlaneOffsetUm": "plane_offset_um",
    "Layout": "layout",
    "Mirror": "mirror",
    "RotationDeg": "rotation_deg",
    "Scale": "scale",
    "Transmission": "transmission",
}


class DualPlaneSplitter(AxialDevice, GenericDevice):
    """Dual-focal-plane image splitter: how the two planes lie on the sensor(s).

    Properties
    ----------
    PlaneOffsetUm
        Delta: plane 1 is in focus at ``stage Z + PlaneOffsetUm`` (default 0.5).
    Layout
        ``side-by-side`` (plane 0 left), ``top-bottom`` (plane 0 on top) or
        ``two-cameras`` (one camera per plane, Utilities ``Multi Camera``).
    Mirror
        Flip of plane 1 on the sensor: ``none``, ``horizontal`` or ``vertical``.
    ShiftXPx, ShiftYPx
        Residual shift of plane 1 relative to plane 0 after un-mirroring (pixels).
    RotationDeg
        Residual rotation of plane 1 about the plane centre (degrees, CCW).
    Scale
        Residual magnification of plane 1 relative to plane 0.
    Transmission
        Photons reaching plane 1 relative to plane 0 (1.0 for a 50/50 splitter).

    Every setter accepts strings (as config files pass them).
    """

    def __init__(self, geometry: SplitterGeometry | None = None) -> None:
        super().__init__()
        self._geometry = geometry or SplitterGeometry()

    # ------------------------------------------------------------- public API
    def geometry(self) -> SplitterGeometry:
        """The current splitter geometry."""
        return self._geometry

    def set_geometry(self, geometry: SplitterGeometry) -> None:
        """Replace the whole geometry (e.g. with a calibration result)."""
        old = self._geometry
        self._geometry = geometry
        for prop in self.get_property_names():
            before, after = _prop_value(old, prop), _prop_value(geometry, prop)
            if before != after:
                self._emit_property(prop, after)

    def _update(self, prop: str, **changes: Any) -> None:
        data = {**self._geometry.model_dump(), **changes}
        try:
            new = SplitterGeometry(**data)
        except ValidationError as e:
            msgs = "; ".join(err["msg"] for err in e.errors())
            raise ValueError(f"invalid splitter {prop}: {msgs}") from None
        if new != self._geometry:
            self._geometry = new
            self._emit_property(prop, _prop_value(new, prop))

    # ------------------------------------------------------------- properties
    @pymm_property(name="PlaneOffsetUm", limits=(-10.0, 10.0))
    def plane_offset_um(self) -> float:
        """Plane-1 focus offset (delta) in um, stage frame."""
        return self._geometry.plane_offset_um

    @plane_offset_um.setter
    def _set_plane_offset_um(self, value: Any) -> None:
        self._update("PlaneOffsetUm", plane_offset_um=as_float(value, "PlaneOffsetUm"))

    @pymm_property(name="Layout", allowed_values=Choices.strings(LAYOUTS))
    def layout(self) -> str:
        """How the planes lie on the sensor(s)."""
        return self._geometry.layout

    @layout.setter
    def _set_layout(self, value: Any) -> None:
        self._update("Layout", layout=as_choice(value, LAYOUTS, "Layout"))

    @pymm_property(name="Mirror", allowed_values=Choices.strings(MIRRORS))
    def mirror(self) -> str:
        """Flip of plane 1 on the sensor."""
        return self._geometry.mirror

    @mirror.setter
    def _set_mirror(self, value: Any) -> None:
        self._update("Mirror", mirror=as_choice(value, MIRRORS, "Mirror"))

    @pymm_property(name="ShiftXPx", property_type=float)
    def shift_x_px(self) -> float:
        """Residual x shift of plane 1 (pixels)."""
        return float(self._geometry.shift_px[0])

    @shift_x_px.setter
    def _set_shift_x_px(self, value: Any) -> None:
        dx = as_float(value, "ShiftXPx")
        self._update("ShiftXPx", shift_px=(dx, self._geometry.shift_px[1]))

    @pymm_property(name="ShiftYPx", property_type=float)
    def shift_y_px(self) -> float:
        """Residual y shift of plane 1 (pixels)."""
        return float(self._geometry.shift_px[1])

    @shift_y_px.setter
    def _set_shift_y_px(self, value: Any) -> None:
        dy = as_float(value, "ShiftYPx")
        self._update("ShiftYPx", shift_px=(self._geometry.shift_px[0], dy))

    @pymm_property(name="RotationDeg", limits=(-45.0, 45.0))
    def rotation_deg(self) -> float:
        """Residual rotation of plane 1 (degrees)."""
        return self._geometry.rotation_deg

    @rotation_deg.setter
    def _set_rotation_deg(self, value: Any) -> None:
        self._update("RotationDeg", rotation_deg=as_float(value, "RotationDeg"))

    @pymm_property(name="Scale", limits=(0.5, 2.0))
    def scale(self) -> float:
        """Residual magnification of plane 1."""
        return self._geometry.scale

    @scale.setter
    def _set_scale(self, value: Any) -> None:
        self._update("Scale", scale=as_float(value, "Scale"))

    @pymm_property(name="Transmission", limits=(0.0, 10.0))
    def transmission(self) -> float:
        """Plane-1 photons relative to plane 0."""
        return self._geometry.transmission

    @transmission.setter
    def _set_transmission(self, value: Any) -> None:
        self._update("Transmission", transmission=as_float(value, "Transmission"))


def _prop_value(geometry: SplitterGeometry, prop: str) -> Any:
    if prop == "ShiftXPx":
        return float(geometry.shift_px[0])
    if prop == "ShiftYPx":
        return float(geometry.shift_px[1])
    return getattr(geometry, _FIELDS[prop])

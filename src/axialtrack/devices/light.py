"""Simulated excitation light source with a shutter."""

from __future__ import annotations

import threading
from typing import Any

from pymmcore_plus.experimental.unicore import ShutterDevice, pymm_property

from ._base import AxialDevice, Choices, as_bool, as_float

__all__ = ["SimLightSource"]


class SimLightSource(AxialDevice, ShutterDevice):
    """Excitation light source (laser or LED) with an on/off shutter.

    The simulated camera scales the fluorescence (emitters and background) by
    ``PowerPercent / 100`` while the shutter is open and renders dark frames
    (camera offset and read noise only) while it is closed.

    Properties
    ----------
    State
        1 open (light on), 0 closed; the same as ``core.setShutterOpen``.
    PowerPercent
        Output power in percent of the nominal power (0-100).
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.Lock()
        self._open = False
        self._power = 100.0

    def get_open(self) -> bool:
        """Whether the shutter is open."""
        return self._open

    def set_open(self, open: bool) -> None:
        """Open (``True``) or close the shutter."""
        value = as_bool(open, "shutter state")
        changed = value != self._open
        with self._state:
            self._open = value
        if changed:
            self._emit_property("State", int(value))

    @pymm_property(name="State", allowed_values=Choices.boolean())
    def state(self) -> int:
        """1 open, 0 closed."""
        return int(self._open)

    @state.setter
    def _set_state(self, value: Any) -> None:
        self.set_open(as_bool(value, "State"))

    @pymm_property(name="PowerPercent", limits=(0.0, 100.0))
    def power_percent(self) -> float:
        """Output power in percent of nominal."""
        return self._power

    @power_percent.setter
    def _set_power_percent(self, value: Any) -> None:
        with self._state:
            self._power = as_float(value, "PowerPercent")
        self._emit_property("PowerPercent", self._power)

    def illumination(self, force_open: bool = False) -> float:
        """Relative excitation reaching the sample, 0-1.

        Parameters
        ----------
        force_open
            Treat the shutter as open (a camera that opens it for its exposures,
            as Micro-Manager's autoshutter does).
        """
        with self._state:
            is_open = self._open or force_open
            return self._power / 100.0 if is_open else 0.0

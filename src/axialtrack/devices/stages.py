"""Simulated stages: a hardware-triggerable Z piezo and an XY stage."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from pymmcore_plus.core import FocusDirection
from pymmcore_plus.experimental.unicore import (
    StageDevice,
    XYStageDevice,
    pymm_property,
)

from ._base import AxialDevice, Choices, as_bool, as_float, as_int

__all__ = ["SimXYStage", "SimZPiezo"]


class SimZPiezo(AxialDevice, StageDevice):
    """Simulated closed-loop objective Z piezo (default range 0-100 um).

    - Moves outside ``[LowerLimitUm, UpperLimitUm]`` raise ``ValueError``.
    - After a move the device reports busy for ``SettleTimeMs``.
    - ``PositionNoiseNm`` is the rms jitter of the stage: each position reading and
      each camera frame sees an independent normal deviation from the target.
    - Hardware sequencing: ``loadStageSequence``/``startStageSequence`` arm a
      position list; while it runs, every camera frame start advances the stage to
      the next position (cyclically), as when the camera's trigger output drives
      the piezo controller's trigger input. ``UseSequences = 0`` turns sequencing
      off so acquisition engines fall back to software-timed moves.
    - ``setOrigin`` is refused: the capacitive sensor of a closed-loop piezo is
      absolute.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.Lock()
        self._target_um = 50.0
        self._lower_um = 0.0
        self._upper_um = 100.0
        self._settle_s = 0.005
        self._noise_um = 0.002
        self._settled_at = 0.0
        self._direction = FocusDirection.TowardSample
        self._max_seq = 10_000
        self._use_sequences = True
        self._sequence: tuple[float, ...] = ()
        self._seq_running = False
        self._seq_next = 0
        self._rng = np.random.default_rng()

    # ----------------------------------------------------------- properties
    @pymm_property(name="LowerLimitUm", property_type=float)
    def lower_limit_um(self) -> float:
        """Lowest allowed position (um)."""
        return self._lower_um

    @lower_limit_um.setter
    def _set_lower_limit_um(self, value: Any) -> None:
        v = as_float(value, "LowerLimitUm")
        if v >= self._upper_um:
            raise ValueError(
                f"LowerLimitUm ({v}) must be below UpperLimitUm ({self._upper_um})"
            )
        self._lower_um = v
        self._emit_property("LowerLimitUm", v)

    @pymm_property(name="UpperLimitUm", property_type=float)
    def upper_limit_um(self) -> float:
        """Highest allowed position (um)."""
        return self._upper_um

    @upper_limit_um.setter
    def _set_upper_limit_um(self, value: Any) -> None:
        v = as_float(value, "UpperLimitUm")
        if v <= self._lower_um:
            raise ValueError(
                f"UpperLimitUm ({v}) must be above LowerLimitUm ({self._lower_um})"
            )
        self._upper_um = v
        self._emit_property("UpperLimitUm", v)

    @pymm_property(name="SettleTimeMs", limits=(0.0, 10_000.0))
    def settle_time_ms(self) -> float:
        """Time the stage reports busy after a move (ms)."""
        return self._settle_s * 1e3

    @settle_time_ms.setter
    def _set_settle_time_ms(self, value: Any) -> None:
        self._settle_s = as_float(value, "SettleTimeMs") / 1e3
        self._emit_property("SettleTimeMs", self._settle_s * 1e3)

    @pymm_property(name="PositionNoiseNm", limits=(0.0, 1000.0))
    def position_noise_nm(self) -> float:
        """Rms jitter of the stage position (nm)."""
        return self._noise_um * 1e3

    @position_noise_nm.setter
    def _set_position_noise_nm(self, value: Any) -> None:
        self._noise_um = as_float(value, "PositionNoiseNm") / 1e3
        self._emit_property("PositionNoiseNm", self._noise_um * 1e3)

    @pymm_property(name="SequenceMaxLength", limits=(1, 1_000_000))
    def sequence_max_length(self) -> int:
        """Longest position sequence the controller stores."""
        return self._max_seq

    @sequence_max_length.setter
    def _set_sequence_max_length(self, value: Any) -> None:
        self._max_seq = as_int(value, "SequenceMaxLength")
        self._emit_property("SequenceMaxLength", self._max_seq)

    @pymm_property(name="UseSequences", allowed_values=Choices.boolean())
    def use_sequences(self) -> int:
        """1: hardware-triggered sequences are offered to the core; 0: not."""
        return int(self._use_sequences)

    @use_sequences.setter
    def _set_use_sequences(self, value: Any) -> None:
        self._use_sequences = as_bool(value, "UseSequences")
        self._emit_property("UseSequences", int(self._use_sequences))

    # ------------------------------------------------------------ position
    def _check_range(self, val: float) -> None:
        eps = 1e-9
        if not (self._lower_um - eps <= val <= self._upper_um + eps):
            raise ValueError(
                f"Z position {val:.4f} um is outside the range of piezo "
                f"{self.get_label()!r} [{self._lower_um:g}, {self._upper_um:g}] um"
            )

    def set_position_um(self, val: float) -> None:
        """Move to ``val`` um (absolute)."""
        v = as_float(val, "Z position")
        self._check_range(v)
        with self._state:
            self._target_um = v
            self._settled_at = time.perf_counter() + self._settle_s
        if (proxy := self._core_proxy_) is not None:
            proxy.events.stagePositionChanged.emit(self._label_, v)

    def get_position_um(self) -> float:
        """Sensor reading: the target plus the stage jitter."""
        with self._state:
            target = self._target_um
        return target + self._jitter()

    def target_um(self) -> float:
        """The commanded position, without jitter (um)."""
        with self._state:
            return self._target_um

    def _jitter(self) -> float:
        if self._noise_um <= 0:
            return 0.0
        return float(self._rng.normal(0.0, self._noise_um))

    def busy(self) -> bool:
        """``True`` until the settle time after the last move has passed."""
        return time.perf_counter() < self._settled_at

    def home(self) -> None:
        """Move to the lower end of the range."""
        self.set_position_um(self._lower_um)

    def stop(self) -> None:
        """Stop: moves complete within the settle time, so nothing is in flight."""
        with self._state:
            self._settled_at = time.perf_counter()

    def set_origin(self) -> None:
        """Refused: a closed-loop piezo's sensor is absolute."""
        raise NotImplementedError(
            f"piezo {self.get_label()!r} has an absolute position sensor and cannot "
            "be re-zeroed; use setAdapterOrigin on a motorized focus drive instead"
        )

    def get_focus_direction(self) -> FocusDirection:
        """Positive moves go toward the sample (deeper into it) by default."""
        return self._direction

    def set_focus_direction(self, sign: int) -> None:
        """Set the focus direction: 1 toward the sample, -1 away, 0 unknown."""
        s = as_int(sign, "focus direction")
        self._direction = (
            FocusDirection.TowardSample
            if s > 0
            else FocusDirection.AwayFromSample
            if s < 0
            else FocusDirection.Unknown
        )

    # ------------------------------------------------------------ sequences
    def get_sequence_max_length(self) -> int:
        """Maximum sequence length (0 when ``UseSequences`` is off)."""
        return self._max_seq if self._use_sequences else 0

    def send_sequence(self, sequence: tuple[float, ...]) -> None:
        """Store a position sequence (checked against the range)."""
        seq = tuple(as_float(v, "sequence position") for v in sequence)
        if not seq:
            raise ValueError("cannot load an empty position sequence")
        for v in seq:
            self._check_range(v)
        with self._state:
            self._sequence = seq
            self._seq_next = 0

    def start_sequence(self) -> None:
        """Arm the loaded sequence: the next frame goes to its first position."""
        with self._state:
            if not self._sequence:
                raise RuntimeError(
                    f"no position sequence loaded in piezo {self.get_label()!r}"
                )
            self._seq_running = True
            self._seq_next = 0

    def stop_sequence(self) -> None:
        """Disarm the sequence; the stage stays where it is."""
        with self._state:
            self._seq_running = False

    def is_linear_sequenceable(self) -> bool:
        """Linear sequences (step, count) are supported."""
        return self._use_sequences

    def set_linear_sequence(self, dZ_um: float, nSlices: int) -> None:
        """Load ``nSlices`` positions from the current target in steps of ``dZ_um``."""
        n = as_int(nSlices, "nSlices")
        dz = as_float(dZ_um, "dZ_um")
        if n > self._max_seq:
            raise ValueError(f"sequence of {n} exceeds the maximum of {self._max_seq}")
        z0 = self.target_um()
        self.send_sequence(tuple(z0 + i * dz for i in range(n)))

    @property
    def sequence_running(self) -> bool:
        """Whether a loaded sequence is armed."""
        return self._seq_running

    def loaded_sequence(self) -> tuple[float, ...]:
        """The loaded position sequence."""
        return self._sequence

    def on_frame_start(self) -> float:
        """Trigger input: called by the camera at each exposure start.

        Advances an armed sequence to its next position and returns the true stage
        position for the frame (target plus jitter), in um.
        """
        with self._state:
            if self._seq_running and self._sequence:
                self._target_um = self._sequence[self._seq_next % len(self._sequence)]
                self._seq_next += 1
            target = self._target_um
        return target + self._jitter()


class SimXYStage(AxialDevice, XYStageDevice):
    """Simulated motorized XY stage.

    Moves are immediate; the stage reports busy for ``SettleTimeMs`` after each
    move. Positions outside ``+-TravelUm`` (per axis) raise ``ValueError``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.Lock()
        self._xy = (0.0, 0.0)  # physical position, um
        self._origin = (0.0, 0.0)  # physical position of the user origin
        self._travel_um = 50_000.0
        self._settle_s = 0.0
        self._settled_at = 0.0

    @pymm_property(name="TravelUm", limits=(1.0, 1_000_000.0))
    def travel_um(self) -> float:
        """Half-range of each axis about the physical centre (um)."""
        return self._travel_um

    @travel_um.setter
    def _set_travel_um(self, value: Any) -> None:
        self._travel_um = as_float(value, "TravelUm")
        self._emit_property("TravelUm", self._travel_um)

    @pymm_property(name="SettleTimeMs", limits=(0.0, 10_000.0))
    def settle_time_ms(self) -> float:
        """Time the stage reports busy after a move (ms)."""
        return self._settle_s * 1e3

    @settle_time_ms.setter
    def _set_settle_time_ms(self, value: Any) -> None:
        self._settle_s = as_float(value, "SettleTimeMs") / 1e3
        self._emit_property("SettleTimeMs", self._settle_s * 1e3)

    def set_position_um(self, x: float, y: float) -> None:
        """Move to ``(x, y)`` um in user coordinates."""
        ux, uy = as_float(x, "X position"), as_float(y, "Y position")
        px, py = ux + self._origin[0], uy + self._origin[1]
        t = self._travel_um
        if abs(px) > t or abs(py) > t:
            raise ValueError(
                f"XY position ({ux:.1f}, {uy:.1f}) um is outside the travel of "
                f"stage {self.get_label()!r} (+-{t:g} um per axis)"
            )
        with self._state:
            self._xy = (px, py)
            self._settled_at = time.perf_counter() + self._settle_s
        if (proxy := self._core_proxy_) is not None:
            proxy.events.XYStagePositionChanged.emit(self._label_, ux, uy)

    def get_position_um(self) -> tuple[float, float]:
        """Position in user coordinates (um)."""
        with self._state:
            return (self._xy[0] - self._origin[0], self._xy[1] - self._origin[1])

    def physical_position_um(self) -> tuple[float, float]:
        """Position relative to the stage's physical centre (um)."""
        with self._state:
            return self._xy

    def busy(self) -> bool:
        """``True`` until the settle time after the last move has passed."""
        return time.perf_counter() < self._settled_at

    def home(self) -> None:
        """Move to the physical centre and make it the origin."""
        with self._state:
            self._xy = (0.0, 0.0)
            self._origin = (0.0, 0.0)
        if (proxy := self._core_proxy_) is not None:
            proxy.events.XYStagePositionChanged.emit(self._label_, 0.0, 0.0)

    def stop(self) -> None:
        """Stop: moves are immediate, so nothing is in flight."""
        with self._state:
            self._settled_at = time.perf_counter()

    def set_origin_x(self) -> None:
        """Make the current X the user origin."""
        with self._state:
            self._origin = (self._xy[0], self._origin[1])

    def set_origin_y(self) -> None:
        """Make the current Y the user origin."""
        with self._state:
            self._origin = (self._origin[0], self._xy[1])

    def set_adapter_origin_um(self, x: float, y: float) -> None:
        """Make the current position read as ``(x, y)``."""
        with self._state:
            self._origin = (
                self._xy[0] - as_float(x, "x"),
                self._xy[1] - as_float(y, "y"),
            )

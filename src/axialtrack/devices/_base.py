"""Shared machinery of the axialtrack Python devices.

- Value coercion: Micro-Manager config files (and many GUIs) pass every property
  value as a string, so every setter goes through :func:`as_float`, :func:`as_int`,
  :func:`as_bool` or :func:`as_choice`.
- :class:`Choices`: an allowed-values list for ``pymm_property`` that accepts every
  spelling of an allowed value (``"1"``, ``1`` and ``True`` for a 0/1 property;
  ``"Side-By-Side"`` for ``"side-by-side"``). UniMMCore checks allowed values with
  ``value in allowed_values`` *before* calling the setter, so without this a config
  line ``Property,Light,State,1`` would be refused for an integer property.
- Peer lookup and ``propertyChanged``: what UniMMCore does not give Python
  devices (a handle to the core's other devices, property-change reports) is in
  :mod:`axialtrack._pymmcore_compat`, with the pymmcore-plus version it is for;
  :func:`find_peer` and :func:`get_device` are re-exported here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pymmcore_plus.core import Keyword
from pymmcore_plus.experimental.unicore import CameraDevice, Device, pymm_property

from axialtrack._pymmcore_compat import (
    emit_property_changed,
    find_peer,
    get_device,
    register,
)

__all__ = [
    "AxialDevice",
    "Choices",
    "PacedCamera",
    "as_bool",
    "as_choice",
    "as_float",
    "as_int",
    "find_peer",
    "get_device",
    "stored_property",
]

_TRUE = frozenset({"1", "true", "yes", "on", "open", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "closed", "n", "f", ""})

T = TypeVar("T")
D = TypeVar("D", bound=Device)


# ----------------------------------------------------------------- coercion
def as_float(value: Any, name: str = "value") -> float:
    """Coerce ``value`` (number or numeric string) to ``float``.

    Raises
    ------
    ValueError
        If the value is not a finite number.
    """
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return out


def as_int(value: Any, name: str = "value") -> int:
    """Coerce ``value`` to ``int``; ``"3"``, ``"3.0"`` and ``3.0`` all give 3.

    Raises
    ------
    ValueError
        If the value is not a whole number.
    """
    f = as_float(value, name)
    if f != int(f):
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    return int(f)


def as_bool(value: Any, name: str = "value") -> bool:
    """Coerce ``value`` to ``bool``.

    Accepts booleans, the numbers 0 and 1 and the strings ``1/0``,
    ``true/false``, ``yes/no``, ``on/off``, ``open/closed`` in any case.

    Raises
    ------
    ValueError
        For anything else (including other numbers).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    try:
        f = as_float(value, name)
    except ValueError:
        f = None
    if f in (0.0, 1.0):
        return f == 1.0
    raise ValueError(
        f"{name} must be a boolean (1/0, true/false, yes/no, on/off); got {value!r}"
    )


def _norm_choice(value: str) -> str:
    return value.strip().lower().replace("_", "-").replace(" ", "-")


def as_choice(value: Any, choices: Iterable[str], name: str = "value") -> str:
    """Match ``value`` to one of ``choices`` ignoring case, ``_``/space vs ``-``.

    Returns the canonical spelling from ``choices``.

    Raises
    ------
    ValueError
        If nothing matches; the message lists the choices.
    """
    choices = tuple(choices)
    key = _norm_choice(str(value))
    for c in choices:
        if _norm_choice(c) == key:
            return c
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class Choices(tuple):
    """Allowed values of a property that recognise every spelling of each value.

    Parameters
    ----------
    values
        The canonical allowed values (what ``getAllowedPropertyValues`` shows).
    coerce
        Maps any accepted spelling to a canonical value; raises ``ValueError``
        for anything else.
    """

    _coerce: Callable[[Any], Any]

    def __new__(cls, values: Iterable[Any], coerce: Callable[[Any], Any]) -> Choices:
        obj = super().__new__(cls, tuple(values))
        obj._coerce = coerce
        return obj

    def __contains__(self, value: object) -> bool:
        try:
            return tuple.__contains__(self, self._coerce(value))
        except (TypeError, ValueError):
            return False

    @classmethod
    def boolean(cls) -> Choices:
        """``(0, 1)``, accepting any boolean spelling."""
        return cls((0, 1), lambda v: int(as_bool(v)))

    @classmethod
    def strings(cls, values: Iterable[str]) -> Choices:
        """String choices matched ignoring case and ``_``/space vs ``-``."""
        values = tuple(values)
        return cls(values, lambda v: as_choice(v, values))


def stored_property(
    name: str,
    attr: str,
    coerce: Callable[[Any, str], Any],
    doc: str,
    *,
    shown: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A device property kept in ``self.<attr>``: set through ``coerce(value,
    name)`` (config files pass strings), reported to the core's
    ``propertyChanged`` listeners on every set, read back as ``shown(value)``
    (default: as stored). ``kwargs`` go to ``pymm_property`` (``limits``,
    ``allowed_values``, ``property_type``).

    What one property of a Python device takes in pymmcore-plus: a getter, a
    setter that coerces the value and reports it
    (:meth:`AxialDevice._emit_property`).
    """
    show = shown if shown is not None else (lambda v: v)

    def fget(self: Any) -> Any:
        return show(getattr(self, attr))

    def fset(self: Any, value: Any) -> None:
        setattr(self, attr, coerce(value, name))
        self._emit_property(name, show(getattr(self, attr)))

    fget.__doc__ = doc
    return pymm_property(name=name, **kwargs)(fget).setter(fset)


class AxialDevice(Device):
    """Mixin for axialtrack devices: peer registry and a re-entrant device lock.

    The core holds a device's lock while it calls into the device. Stages emit
    ``stagePositionChanged`` from inside ``set_position_um`` (the Micro-Manager
    convention: the device reports its own moves); with a plain lock, a listener
    that calls ``core.getPosition()`` from the handler would deadlock. A re-entrant
    lock lets same-thread handlers query the device.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()  # type: ignore[assignment]
        register(self)

    def _emit_property(self, name: str, value: Any) -> None:
        """Report a property change to the core's listeners
        (:func:`axialtrack._pymmcore_compat.emit_property_changed`)."""
        emit_property_changed(self, name, value)

    def locked(self) -> bool:
        """Return ``True`` if another thread holds the device lock."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return False
        return True


class PacedCamera(AxialDevice, CameraDevice):
    """Base of the Python cameras that pace their own frames in real time.

    Holds what the simulated and the replay camera share: exposure and
    ``Interval-ms`` state and limits, binning 1 only, the measured
    ``ActualInterval-ms`` and a clock (seconds since :meth:`initialize`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 10.0
        self._interval_ms = 0.0
        self._actual_interval_ms = 0.0
        self._t0 = time.perf_counter()
        self._last_end_s = 0.0
        self.set_property_limits(Keyword.Exposure, (0.001, 100_000.0))
        self.set_property_limits(Keyword.Interval_ms, (0.0, 3_600_000.0))
        self.set_property_allowed_values(
            Keyword.Binning, Choices((1,), lambda v: as_int(v, "Binning"))
        )

    def get_binning(self) -> int:
        """Binning factor (always 1)."""
        return 1

    def set_binning(self, value: Any) -> None:
        """Accept binning 1 only."""
        if as_int(value, "Binning") != 1:
            raise ValueError(f"{type(self).__name__} supports binning 1 only")

    def get_interval_ms(self) -> float:
        """Minimum frame period of sequence acquisitions, ms."""
        return self._interval_ms

    def set_interval_ms(self, value: Any) -> None:
        """Set the minimum frame period of sequence acquisitions, ms."""
        v = as_float(value, "Interval-ms")
        if v < 0:
            raise ValueError(f"Interval-ms must be >= 0; got {v}")
        self._interval_ms = v

    def get_actual_interval_ms(self) -> float:
        """Mean frame period of the last sequence acquisition, ms."""
        return self._actual_interval_ms

    def now_s(self) -> float:
        """The camera clock: seconds since the camera was initialized."""
        return time.perf_counter() - self._t0

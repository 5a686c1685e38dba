"""Shared machinery of the axialtrack Python devices.

- Value coercion: Micro-Manager config files (and many GUIs) pass every property
  value as a string, so every setter goes through :func:`as_float`, :func:`as_int`,
  :func:`as_bool` or :func:`as_choice`.
- :class:`Choices`: an allowed-values list for ``pymm_property`` that accepts every
  spelling of an allowed value (``"1"``, ``1`` and ``True`` for a 0/1 property;
  ``"Side-By-Side"`` for ``"side-by-side"``). UniMMCore checks allowed values with
  ``value in allowed_values`` *before* calling the setter, so without this a config
  line ``Property,Light,State,1`` would be refused for an integer property.
- Peer lookup: a UniMMCore Python device sees only ``core.events`` (emit-only), not
  the core itself, so it cannot ask the core for another device. Our devices add
  themselves to a process-wide weak registry and find each other by label, scoped
  to the core that loaded them (see :func:`find_peer`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pymmcore_plus.core import Keyword
from pymmcore_plus.experimental.unicore import CameraDevice, Device, pymm_property

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


# ------------------------------------------------------------ peer registry
_REGISTRY_LOCK = threading.Lock()
_REGISTRY: weakref.WeakSet[Device] = weakref.WeakSet()


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
        with _REGISTRY_LOCK:
            _REGISTRY.add(self)

    def _emit_property(self, name: str, value: Any) -> None:
        """Report a property change to the core's listeners.

        UniMMCore does not emit ``propertyChanged`` for Python devices, so the
        device does it (as C++ adapters do through ``OnPropertyChanged``).
        """
        if (proxy := self._core_proxy_) is not None:
            if isinstance(value, bool):
                value = int(value)
            proxy.events.propertyChanged.emit(self._label_, name, str(value))

    def locked(self) -> bool:
        """Return ``True`` if another thread holds the device lock."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return False
        return True


def _core_token(dev: Device) -> object | None:
    """An object identifying the core a device is loaded in, or None if unknown.

    With psygnal events (the default outside Qt) every signal of a core's event
    group knows its group (``SignalInstance.instance``), which is one object per
    core. With Qt signals there is no such handle and lookup falls back to labels.
    """
    proxy = dev._core_proxy_
    if proxy is None:
        return None
    try:
        sig = proxy.events.propertyChanged
    except AttributeError:  # pragma: no cover - proxy always exposes events
        return None
    return getattr(sig, "instance", None)


def find_peer(requester: Device, label: str, kind: type[D]) -> D:
    """Find the device loaded as ``label`` in the same core as ``requester``.

    Parameters
    ----------
    requester
        The device asking (it must be loaded).
    label
        Device label to look for.
    kind
        Required device class.

    Raises
    ------
    LookupError
        If no such device is loaded, the label is ambiguous, or the device has the
        wrong type. The message says which property of ``requester`` to fix.
    """
    with _REGISTRY_LOCK:
        live = [
            d
            for d in _REGISTRY
            if d._core_proxy_ is not None and d._label_ == label and d is not requester
        ]
    token = _core_token(requester)
    if token is not None:
        live = [d for d in live if _core_token(d) is token]
    if not live:
        raise LookupError(f"no device labelled {label!r} is loaded in this core")
    if len(live) > 1:
        raise LookupError(
            f"{len(live)} devices labelled {label!r} are loaded in different cores "
            "and this core cannot be told apart (Qt signal backend); load the rig "
            "in one core per process"
        )
    dev = live[0]
    if not isinstance(dev, kind):
        raise LookupError(
            f"device {label!r} is a {type(dev).__name__}, not a {kind.__name__}"
        )
    return dev


def get_device(core: Any, label: str, kind: type[D] | None = None) -> Any:
    """The axialtrack device object loaded in ``core`` as ``label``.

    Gives direct access to a device's Python API (e.g. ``SimCamera.renderer()``
    for the ground truth) without reaching into the core's private state.

    Parameters
    ----------
    core
        A UniMMCore.
    label
        Device label.
    kind
        Optional required class.

    Raises
    ------
    LookupError
        If no axialtrack device with that label is loaded in ``core``.
    """
    token = getattr(core.events.propertyChanged, "instance", None)
    with _REGISTRY_LOCK:
        live = [
            d for d in _REGISTRY if d._core_proxy_ is not None and d._label_ == label
        ]
    if token is not None:
        live = [d for d in live if _core_token(d) is token]
    if len(live) != 1:
        what = "no" if not live else f"{len(live)}"
        raise LookupError(f"{what} axialtrack device labelled {label!r} in this core")
    dev = live[0]
    if kind is not None and not isinstance(dev, kind):
        raise LookupError(
            f"device {label!r} is a {type(dev).__name__}, not a {kind.__name__}"
        )
    return dev


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

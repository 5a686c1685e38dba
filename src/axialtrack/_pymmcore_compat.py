"""What axialtrack adds to pymmcore-plus, each for the version named, to drop
once pymmcore-plus does it itself.

Written for pymmcore-plus 0.18.1 (``PYMMCORE_PLUS_VERSION``). Each entry says
what the core lacks and what would remove it upstream:

- :class:`RigCore` (``UniMMCore``):

  - ``startSequenceAcquisition(n, intervalMs, stop)`` does not hand
    ``intervalMs`` to a Python camera: copied into its ``Interval-ms`` property
    first, so Python cameras pace themselves at ``max(exposure, interval)``.
    Upstream: pass the interval to ``CameraDevice.start_sequence``.
  - A Python camera is always one camera channel (``getCameraChannelName``
    raises) and the C++ Utilities ``Multi Camera`` cannot wrap Python cameras:
    for :class:`~axialtrack.devices.SimMultiCamera` it reports two channels,
    their physical cameras, ``n`` images of each per sequence and the second
    snap as ``getImage(1)``. Upstream: a Python multi-camera device protocol.

- :func:`emit_property_changed`: ``UniMMCore`` does not emit
  ``propertyChanged`` when a Python device changes a property itself (as C++
  adapters do through ``OnPropertyChanged``). Upstream: emit it from
  ``Device.set_property_value`` and a device-side notifier.
- The device peer registry (:func:`register`, :func:`find_peer`,
  :func:`get_device`): a Python device sees only ``core.events`` (emit-only),
  not the core, so it cannot ask for another device (the simulated camera
  follows the stages, the splitter and the light source). Devices register
  themselves and find each other by label, scoped to their core. Upstream: a
  device-side handle to the core's other Python devices.
- :func:`quiet_discovery`: creating a core logs that no "compatible
  Micro-Manager installation" was found, which Python-device rigs never need.
- :func:`mda_sequence_t0`: frames of an MDA carry ``runner_time_ms`` from the
  runner's sequence start, kept only in the private ``MDARunner._sequence_t0``;
  the latency of a frame needs it on ``time.perf_counter``'s clock. Upstream: a
  ``perf_counter`` stamp in the frame metadata.
- Python cameras accept their full-frame ROI (``set_roi(0, 0, w, h)``): at the
  end of every sequence the MDA engine sets the ROI it found at the start again,
  and a camera that refuses makes ``_finish_run`` fail before it emits
  ``sequenceFinished``, so ``mda.run(seq, output=handler)`` hangs in its relay
  thread forever. Upstream: restore the ROI only if it changed, and emit
  ``sequenceFinished`` whatever the teardown raised.
- Time-lapses with an interval are not hardware-sequenced by the MDA engine
  (events with different ``min_start_time`` are never merged): ``axialtrack
  live --interval-ms`` is timed by the runner, one snap per frame. Upstream:
  sequence a fixed-interval time-lapse as ``startSequenceAcquisition(n,
  interval)``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pymmcore_plus import Keyword
from pymmcore_plus.experimental.unicore import Device, UniMMCore

__all__ = [
    "PYMMCORE_PLUS_VERSION",
    "RigCore",
    "core_token",
    "emit_property_changed",
    "find_peer",
    "get_device",
    "mda_sequence_t0",
    "quiet_discovery",
    "register",
]

#: the pymmcore-plus version these workarounds were written and tested for
PYMMCORE_PLUS_VERSION = "0.18.1"

_INTERVAL = Keyword.Interval_ms.value  # "Interval-ms"

D = TypeVar("D", bound=Device)


# ------------------------------------------------------- propertyChanged
def emit_property_changed(device: Device, name: str, value: Any) -> None:
    """Report a property change of a Python ``device`` to its core's
    listeners (what C++ adapters do through ``OnPropertyChanged``)."""
    if (proxy := device._core_proxy_) is not None:
        if isinstance(value, bool):
            value = int(value)
        proxy.events.propertyChanged.emit(device._label_, name, str(value))


# ---------------------------------------------------------- peer registry
_REGISTRY_LOCK = threading.Lock()
_REGISTRY: weakref.WeakSet[Device] = weakref.WeakSet()


def register(device: Device) -> None:
    """Make ``device`` findable by :func:`find_peer` and :func:`get_device`."""
    with _REGISTRY_LOCK:
        _REGISTRY.add(device)


def core_token(dev: Device) -> object | None:
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
    token = core_token(requester)
    if token is not None:
        live = [d for d in live if core_token(d) is token]
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
        live = [d for d in live if core_token(d) is token]
    if len(live) != 1:
        what = "no" if not live else f"{len(live)}"
        raise LookupError(f"{what} axialtrack device labelled {label!r} in this core")
    dev = live[0]
    if kind is not None and not isinstance(dev, kind):
        raise LookupError(
            f"device {label!r} is a {type(dev).__name__}, not a {kind.__name__}"
        )
    return dev


# ------------------------------------------------------------------ MDA
def mda_sequence_t0(core: Any) -> float | None:
    """When the core's MDA runner started its sequence, on
    ``time.perf_counter``'s clock (its frames' ``runner_time_ms`` count from
    it); None where the runner does not keep it."""
    t0 = getattr(getattr(core, "mda", None), "_sequence_t0", None)
    return t0 if isinstance(t0, float) else None


# ----------------------------------------------------------------- core
class _DropNoInstallation(logging.Filter):
    """Drop the 'could not find a compatible Micro-Manager installation' record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "compatible Micro-Manager installation" not in record.getMessage()


@contextmanager
def quiet_discovery() -> Iterator[None]:
    log = logging.getLogger("pymmcore-plus")
    filt = _DropNoInstallation()
    log.addFilter(filt)
    try:
        yield
    finally:
        log.removeFilter(filt)


class RigCore(UniMMCore):
    """A UniMMCore that hands the sequence interval to Python cameras.

    ``UniMMCore.startSequenceAcquisition(n, intervalMs, stop)`` does not pass
    ``intervalMs`` to a Python camera (nor does any core event carry it). This
    core copies it into the camera's standard ``Interval-ms`` property first, so
    the simulated camera paces its frames at ``max(exposure, interval)``.
    """

    def _pass_interval(self, camera: str, interval_ms: float) -> None:
        if camera and self.isPyDevice(camera) and self.hasProperty(camera, _INTERVAL):
            self.setProperty(camera, _INTERVAL, max(float(interval_ms), 0.0))

    def _multi_camera(self, label: str | None = None) -> Any:
        """The Python multi camera (one with ``physical_labels()`` and
        ``last_images``, as :class:`~axialtrack.devices.SimMultiCamera`) that
        is the camera ``label`` (default: the core's camera), else None."""
        cam = self._py_camera(label)
        if callable(getattr(cam, "physical_labels", None)) and hasattr(
            cam, "last_images"
        ):
            return cam
        return None

    def startSequenceAcquisition(self, *args: Any) -> None:
        """Start a sequence acquisition (see ``CMMCorePlus``).

        Accepts ``(numImages, intervalMs, stopOnOverflow)`` or
        ``(cameraLabel, numImages, intervalMs, stopOnOverflow)``. A
        :class:`~axialtrack.devices.SimMultiCamera` delivers ``numImages``
        frames of each physical camera, as Micro-Manager's Multi Camera does.
        """
        if len(args) in (3, 4):
            camera = str(args[0]) if len(args) == 4 else self.getCameraDevice()
            self._pass_interval(camera, float(args[-2]))
            if self._multi_camera(camera) is not None:
                n = int(args[-3]) * 2
                args = (*args[:-3], n, *args[-2:])
        super().startSequenceAcquisition(*args)

    def getNumberOfCameraChannels(self) -> int:
        """Two for a :class:`~axialtrack.devices.SimMultiCamera`."""
        if self._multi_camera() is not None:
            return 2
        return int(super().getNumberOfCameraChannels())

    def getCameraChannelName(self, channelNr: int) -> str:
        """The physical camera of channel ``channelNr`` of a multi camera."""
        multi = self._multi_camera()
        if multi is not None:
            return str(multi.physical_labels()[int(channelNr)])
        return str(super().getCameraChannelName(channelNr))

    def getImage(self, *args: Any, **kwargs: Any) -> Any:
        """``getImage(1)`` of a multi camera: its second camera's last snap."""
        multi = self._multi_camera()
        if multi is not None and args and int(args[0]) == 1:
            img = multi.last_images[1]
            if img is None:
                raise RuntimeError("No image buffer available. Call snapImage() first.")
            return img
        if multi is not None and args:
            args = args[1:]
        return super().getImage(*args, **kwargs)

    def startContinuousSequenceAcquisition(self, intervalMs: float = 0) -> None:
        """Start a continuous acquisition at ``intervalMs`` (0: as fast as exposure)."""
        self._pass_interval(self.getCameraDevice(), intervalMs)
        super().startContinuousSequenceAcquisition(intervalMs)

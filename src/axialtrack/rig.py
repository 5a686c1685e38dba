"""Load a hardware config into a UniMMCore and describe the rig.

:func:`load_rig` checks a Micro-Manager config file line by line before the core
sees it, loads it, sets the core roles and wires the core to the simulated camera,
so that every failure names the file, the line and the fix (:class:`RigConfigError`).
:func:`splitter_geometry` reads the :class:`~axialtrack.devices.DualPlaneSplitter`
device back as a :class:`~axialtrack.geometry.SplitterGeometry`.

The configs shipped with axialtrack (``sim-dualplane.cfg``, the default, and the
real-rig templates) are found with :func:`config_dir`; :func:`resolve_config`
accepts either a path or the name of a shipped config.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pymmcore_plus import CFGCommand, DeviceType
from pymmcore_plus.core import DeviceInitializationState
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack._pymmcore_compat import RigCore
from axialtrack.geometry import (
    splitter_geometry,
    splitter_label,
)

from ._rig_check import check_config
from ._rig_config import (
    _PY_DEVICE,
    DEFAULT_CONFIG,
    ConfigLine,
    RigConfigError,
    config_dir,
    list_configs,
    new_core,
    parse_config,
    resolve_config,
)

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigLine",
    "RigConfigError",
    "RigCore",
    "check_config",
    "config_dir",
    "list_configs",
    "load_rig",
    "new_core",
    "parse_config",
    "resolve_config",
    "splitter_geometry",
    "splitter_label",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the core
_WIRED: weakref.WeakSet[UniMMCore] = weakref.WeakSet()


def _sim_camera_label(core: UniMMCore) -> str | None:
    cam = core.getCameraDevice()
    if cam and core.isPyDevice(cam) and core.hasProperty(cam, "AutoShutter"):
        return cam
    return None


def _wire(core: UniMMCore) -> None:
    """Autoshutter does not operate Python shutters: keep the simulated camera's
    ``AutoShutter`` (light on for each exposure) equal to the core's."""
    if core in _WIRED:
        return
    ref = weakref.ref(core)

    def _on_autoshutter(state: bool) -> None:
        c = ref()
        if c is not None and (cam := _sim_camera_label(c)):
            c.setProperty(cam, "AutoShutter", int(bool(state)))

    core.events.autoShutterSet.connect(_on_autoshutter)
    _WIRED.add(core)


def _assign_roles(core: UniMMCore) -> None:
    """Fill empty core roles when exactly one device can take them."""
    roles = (
        (core.getCameraDevice, core.setCameraDevice, DeviceType.Camera),
        (core.getFocusDevice, core.setFocusDevice, DeviceType.Stage),
        (core.getXYStageDevice, core.setXYStageDevice, DeviceType.XYStage),
        (core.getShutterDevice, core.setShutterDevice, DeviceType.Shutter),
    )
    for get, set_, dtype in roles:
        if get():
            continue
        candidates = core.getLoadedDevicesOfType(dtype)
        if len(candidates) == 1:
            set_(candidates[0])


_LINE_RE = re.compile(r"at line (\d+)")
_INIT_FAILED_RE = re.compile(r"Failed to initialize device '(.+)'")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


class _InitErrors(logging.Handler):
    """Collect the Python-device initialization errors UniMMCore only logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = _INIT_FAILED_RE.search(record.getMessage())
        if m and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.errors[m.group(1)] = f"{type(exc).__name__}: {exc}"


@contextmanager
def _capture_init_errors() -> Iterator[dict[str, str]]:
    log = logging.getLogger("pymmcore_plus.experimental.unicore._device_manager")
    handler = _InitErrors()
    log.addHandler(handler)
    try:
        yield handler.errors
    finally:
        log.removeHandler(handler)


def _fix_for(ln: ConfigLine | None, exc: BaseException) -> str:
    if ln is None:
        return "check the config against the Micro-Manager config format"
    if ln.command in (CFGCommand.Device.value, _PY_DEVICE):
        return (
            "check that the device is connected and powered, that the port and "
            "serial settings in the Property lines above are right, and that no "
            "other program holds the port"
        )
    if ln.command == CFGCommand.Property.value:
        return "check the property name and value against the device's properties"
    if ln.command == CFGCommand.ConfigGroup.value:
        return "check the device, property and value of this preset"
    return "check this line against the Micro-Manager config format"


def load_rig(
    path: str | Path | None = None,
    *,
    core: UniMMCore | None = None,
    mm_path: str | Path | None = None,
) -> UniMMCore:
    """Load a hardware config and return a ready core.

    Parameters
    ----------
    path
        A config file, or the name of a shipped config (``"sim-dualplane"``);
        ``None`` loads the simulated dual-plane rig.
    core
        Load into this core (its previous devices are unloaded); a new
        :class:`RigCore` is created if omitted. A plain UniMMCore works too, but
        does not pass the interval of ``startSequenceAcquisition`` to Python
        cameras (they then run at their exposure or ``Interval-ms``).
    mm_path
        Micro-Manager installation holding the C++ device adapters (real rigs);
        used only when a new core is created.

    Returns
    -------
    UniMMCore
        The core with every device loaded and initialized, the camera, focus, XY
        stage and shutter roles set (from the config, or to the only device of
        each type), and the simulated camera's ``AutoShutter`` following
        ``core.setAutoShutter``.

    Raises
    ------
    RigConfigError
        If the file is unreadable, a device or module is missing, a property or
        value is wrong, or a device fails to initialize. The message names the
        file, the line and the fix.
    """
    cfg = resolve_config(path)
    if core is None:
        core = new_core(mm_path)
    lines = check_config(cfg, core)
    by_lineno = {ln.lineno: ln for ln in lines}

    if core.isSequenceRunning():
        core.stopSequenceAcquisition()
    with _capture_init_errors() as init_errors:
        try:
            core.loadSystemConfiguration(str(cfg))
        except Exception as e:
            m = _LINE_RE.search(str(e))
            lineno = int(m.group(1)) if m else None
            ln = by_lineno.get(lineno) if lineno is not None else None
            cause = _root_cause(e)
            detail = " ".join(str(cause).split())
            raise RigConfigError(
                cfg,
                f"loading failed: {type(cause).__name__}: {detail}",
                _fix_for(ln, cause),
                line=lineno,
                text=ln.text if ln else None,
            ) from e

    for ln in lines:
        if ln.command not in (CFGCommand.Device.value, _PY_DEVICE):
            continue
        label = ln.args[0]
        try:
            state = core.getDeviceInitializationState(label)
        except Exception:  # not all cores report it for every device
            continue
        if state == DeviceInitializationState.InitializationFailed:
            why = init_errors.get(label, "see the log for the error")
            with suppress(Exception):
                core.unloadAllDevices()
            raise RigConfigError(
                cfg,
                f"device {label!r} failed to initialize: {why}",
                _fix_for(ln, RuntimeError()),
                line=ln.lineno,
                text=ln.text,
            )

    _assign_roles(core)
    _wire(core)
    if cam := _sim_camera_label(core):
        core.setProperty(cam, "AutoShutter", int(core.getAutoShutter()))
    core.updateSystemStateCache()
    return core


# ------------------------------------------------------------------ splitter

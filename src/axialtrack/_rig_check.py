"""The line-by-line check of a config before a core sees it
(:func:`check_config`: a table of per-command checks naming the file, the line
and the fix). :mod:`axialtrack.rig` hands it out.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pymmcore_plus import CFGCommand, DeviceType
from pymmcore_plus.experimental.unicore import Device, UniMMCore

from axialtrack.devices import AxialDevice

from ._rig_config import (
    _CORE,
    _CORE_OTHER,
    _CORE_ROLES,
    _PY_DEVICE,
    ConfigLine,
    RigConfigError,
    new_core,
    parse_config,
)

logger = logging.getLogger("axialtrack.rig")


# ----------------------------------------------------------------- checking
@dataclass
class _Declared:
    line: ConfigLine
    library: str
    name: str
    probe: Device | None  # an unloaded instance of a Python device class
    device_type: DeviceType | None


def _import_device_class(module: str, name: str) -> type[Device]:
    """Import ``module.name`` and check it is a unicore Device class."""
    mod = importlib.import_module(module)
    try:
        cls = getattr(mod, name)
    except AttributeError:
        devices = sorted(
            k
            for k, v in vars(mod).items()
            if isinstance(v, type) and issubclass(v, Device) and not k.startswith("_")
        )
        hint = f" (it has: {', '.join(devices)})" if devices else ""
        raise LookupError(f"module {module!r} has no class {name!r}{hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise TypeError(
            f"{module}.{name} is not a pymmcore-plus unicore Device subclass"
        )
    return cls


def _other_missing_adapters(
    lines: list[ConfigLine], first: ConfigLine, adapters: set[str]
) -> str:
    """Other adapters after ``first`` that are not installed, with their lines."""
    seen: dict[str, int] = {}
    for ln in lines:
        if ln.lineno <= first.lineno or ln.command != CFGCommand.Device.value:
            continue
        lib = ln.args[1]
        if lib in adapters or lib == first.args[1] or lib in seen:
            continue
        try:
            importlib.import_module(lib)
        except ImportError:
            seen[lib] = ln.lineno
    return ", ".join(f"{lib!r} (line {n})" for lib, n in seen.items())


def _validate(dev: Device, prop: str, value: str) -> None:
    """Check ``value`` against a Python-device property's allowed values/limits."""
    info = dev.get_property_info(prop)
    if info.allowed_values and value not in info.allowed_values:
        raise ValueError(f"{value!r} is not an allowed value")
    if info.limits:
        v = float(value)
        if not info.limits[0] <= v <= info.limits[1]:
            raise ValueError(f"{v:g} is outside the limits")


class _ConfigCheck:
    """The state of one :func:`check_config` pass and its per-command checks
    (:data:`_CHECKS` names which command each one checks)."""

    def __init__(self, path: Path, lines: list[ConfigLine], core: UniMMCore) -> None:
        self.path = path
        self.lines = lines
        self.core = core
        self.adapters: set[str] = {str(a) for a in core.getDeviceAdapterNames()}
        self.search = ", ".join(core.getDeviceAdapterSearchPaths()) or "(none)"
        self.declared: dict[str, _Declared] = {}
        self.pixel_presets: set[str] = set()
        # (device label, property) -> the line that set it last
        self.set_by: dict[tuple[str, str], ConfigLine] = {}

    def err(self, ln: ConfigLine, problem: str, fix: str) -> RigConfigError:
        return RigConfigError(self.path, problem, fix, line=ln.lineno, text=ln.text)

    def need_label(self, ln: ConfigLine, label: str) -> _Declared | None:
        if label == _CORE:
            return None
        if label not in self.declared:
            raise self.err(
                ln,
                f"device {label!r} is not loaded by any line above",
                f"load it first with a Device (C++) or '#py pyDevice' (Python) line, "
                "or fix the label (loaded so far: "
                f"{', '.join(self.declared) or 'none'})",
            )
        return self.declared[label]

    def check_property(
        self, ln: ConfigLine, d: _Declared, prop: str, value: str
    ) -> None:
        probe = d.probe
        if probe is None:
            return  # C++ device: its properties are only known once loaded
        if not probe.has_property(prop):
            names = ", ".join(sorted(probe.get_property_names()))
            raise self.err(
                ln,
                f"{d.name} device {d.line.args[0]!r} has no property {prop!r}",
                f"use one of its properties: {names}",
            )
        if probe.is_property_read_only(prop):
            raise self.err(
                ln,
                f"property {prop!r} of {d.line.args[0]!r} is read-only",
                "delete the line",
            )
        try:
            if isinstance(probe, AxialDevice):
                probe.set_property_value(prop, value)  # dry run on the probe
            else:
                _validate(probe, prop, value)
        except Exception as e:
            info = probe.get_property_info(prop)
            if info.allowed_values:
                hint = "allowed values: " + ", ".join(map(str, info.allowed_values))
            elif info.limits:
                hint = f"allowed range: {info.limits[0]:g} to {info.limits[1]:g}"
            else:
                hint = "see the device documentation"
            raise self.err(
                ln,
                f"value {value!r} is not valid for {d.line.args[0]}.{prop}: {e}",
                f"set a valid value ({hint})",
            ) from None

    def device(self, ln: ConfigLine) -> None:
        """``Device`` (C++) and ``#py pyDevice`` lines: the label, the class."""
        cmd, args = ln.command, ln.args
        label, library, name = args
        if not label or label == _CORE:
            raise self.err(ln, f"invalid device label {label!r}", "pick another label")
        if label in self.declared:
            raise self.err(
                ln,
                f"label {label!r} is already used on line "
                f"{self.declared[label].line.lineno}",
                "give each device its own label",
            )
        probe: Device | None = None
        dtype: DeviceType | None = None
        if cmd == CFGCommand.Device.value and library in self.adapters:
            try:
                available = tuple(self.core.getAvailableDevices(library))
            except Exception:  # adapter fails to load: the core reports it
                available = ()
            if available and name not in available:
                raise self.err(
                    ln,
                    f"adapter {library!r} has no device {name!r}",
                    f"use one of: {', '.join(available)}",
                )
        else:
            try:
                cls = _import_device_class(library, name)
            except ImportError as e:
                if cmd == CFGCommand.Device.value:
                    others = _other_missing_adapters(self.lines, ln, self.adapters)
                    also = f"; this config also needs {others}" if others else ""
                    raise self.err(
                        ln,
                        f"Micro-Manager device adapter {library!r} is not "
                        f"installed (adapter search path: {self.search}){also}",
                        "install Micro-Manager with this adapter (e.g. "
                        "'mmcore install', or the Micro-Manager nightly build "
                        "for your platform) and pass its folder as "
                        "load_rig(..., mm_path=...); check the adapter name "
                        "spelling (it is the DLL name without 'mmgr_dal_')",
                    ) from None
                raise self.err(
                    ln,
                    f"Python module {library!r} cannot be imported ({e})",
                    "install the package that provides it in this environment "
                    "and check the module path",
                ) from None
            except (LookupError, TypeError) as e:
                raise self.err(
                    ln, str(e), "check the class name in the config line"
                ) from None
            if cmd == CFGCommand.Device.value:
                logger.info(
                    "%s:%d: %r is not a C++ adapter here; loading the Python "
                    "class %s.%s",
                    self.path,
                    ln.lineno,
                    library,
                    library,
                    name,
                )
            try:
                probe = cls()
            except Exception as e:
                raise self.err(
                    ln,
                    f"creating {library}.{name} failed: {e}",
                    "check the device class; it must construct without arguments",
                ) from None
            dtype = probe.type()
        self.declared[label] = _Declared(ln, library, name, probe, dtype)

    def property(self, ln: ConfigLine) -> None:
        """``Property`` lines: core roles, device properties and values."""
        args = ln.args
        label, prop = args[0], args[1]
        value = args[2] if len(args) > 2 else ""
        if label == _CORE:
            if prop in _CORE_ROLES:
                if value:
                    d = self.need_label(ln, value)
                    want = _CORE_ROLES[prop]
                    if d and d.device_type is not None and d.device_type != want:
                        raise self.err(
                            ln,
                            f"{value!r} is a {d.device_type.name} device; the "
                            f"{prop} role needs a {want.name} device",
                            f"name a {want.name} device here",
                        )
            elif prop not in _CORE_OTHER:
                raise self.err(
                    ln,
                    f"the core has no property {prop!r}",
                    "use one of: " + ", ".join(sorted({*_CORE_ROLES, *_CORE_OTHER})),
                )
            return
        d = self.need_label(ln, label)
        if d is not None:
            self.check_property(ln, d, prop, value)
            self.set_by[(label, prop)] = ln

    def config_group(self, ln: ConfigLine) -> None:
        """``ConfigGroup`` lines: the device and its property."""
        args = ln.args
        if len(args) < 4:
            return
        d = self.need_label(ln, args[2])
        if d is not None and d.probe is not None and not d.probe.has_property(args[3]):
            names = ", ".join(sorted(d.probe.get_property_names()))
            raise self.err(
                ln,
                f"device {args[2]!r} has no property {args[3]!r}",
                f"use one of its properties: {names}",
            )

    def pixel_size_preset(self, ln: ConfigLine) -> None:
        """``ConfigPixelSize`` lines: keyed on what UniMMCore resolves."""
        args = ln.args
        preset, label = args[0], args[1]
        d = self.need_label(ln, label)
        if d is not None and d.probe is not None:
            raise self.err(
                ln,
                f"pixel-size preset {preset!r} is keyed on a property of the "
                f"Python device {label!r}; UniMMCore resolves pixel-size "
                "presets in the C++ core, which cannot read Python-device "
                "properties, so it would never become current",
                "key it on a C++ device property (e.g. the objective turret's "
                "Label) or, on a rig with one objective, on the always-empty "
                f"core image-processor slot: ConfigPixelSize,{preset},Core,"
                "ImageProcessor,",
            )
        self.pixel_presets.add(preset)

    def pixel_size_value(self, ln: ConfigLine) -> None:
        """``PixelSize_um`` and the other pixel-size lines: numbers, of a preset."""
        args = ln.args
        if args[0] not in self.pixel_presets:
            raise self.err(
                ln,
                f"pixel-size preset {args[0]!r} is not defined above",
                f"define it first: ConfigPixelSize,{args[0]},<device>,"
                "<property>,<value>",
            )
        try:
            [float(a) for a in args[1:]]
        except ValueError:
            raise self.err(
                ln, "pixel-size values must be numbers", "fix the numbers"
            ) from None

    def device_setting(self, ln: ConfigLine) -> None:
        """``Delay``, ``FocusDirection``, ``Label``, ``Parent`` lines."""
        cmd, args = ln.command, ln.args
        d = self.need_label(ln, args[0])
        if cmd == CFGCommand.Delay.value and d is not None and d.probe:
            try:
                delay = float(args[1])
            except ValueError:
                raise self.err(ln, "delay must be a number", "write it in ms") from None
            if delay != 0:
                raise self.err(
                    ln,
                    "UniMMCore does not support delays for Python devices",
                    "delete the line (use the device's own settle-time "
                    "property, e.g. SettleTimeMs)",
                )
        if cmd == CFGCommand.FocusDirection.value and args[1] not in {
            "1",
            "-1",
            "0",
        }:
            raise self.err(
                ln,
                f"focus direction must be 1, -1 or 0; got {args[1]!r}",
                "write 1 (positive moves toward the sample), -1 or 0 (unknown)",
            )


#: the check of each config command (commands not listed are not checked)
_CHECKS: dict[str, Callable[[_ConfigCheck, ConfigLine], None]] = {
    CFGCommand.Device.value: _ConfigCheck.device,
    _PY_DEVICE: _ConfigCheck.device,
    CFGCommand.Property.value: _ConfigCheck.property,
    CFGCommand.ConfigGroup.value: _ConfigCheck.config_group,
    CFGCommand.ConfigPixelSize.value: _ConfigCheck.pixel_size_preset,
    **{
        c.value: _ConfigCheck.pixel_size_value
        for c in (
            CFGCommand.PixelSize_um,
            CFGCommand.PixelSizeAffine,
            CFGCommand.PixelSize_dxdz,
            CFGCommand.PixelSize_dydz,
            CFGCommand.PixelSize_OptimalZUm,
        )
    },
    **{
        c.value: _ConfigCheck.device_setting
        for c in (
            CFGCommand.Delay,
            CFGCommand.FocusDirection,
            CFGCommand.Label,
            CFGCommand.ParentID,
        )
    },
}


def check_config(path: str | Path, core: UniMMCore | None = None) -> list[ConfigLine]:
    """Check a config file without loading it.

    Checks the syntax, that every device's adapter library or Python class is
    available, that labels are declared before use, that properties of Python
    devices exist and accept their values (axialtrack devices are dry-run on an
    unloaded instance), that core roles name devices of the right type, and that
    pixel-size presets are keyed on something UniMMCore can resolve.

    Parameters
    ----------
    path
        The config file.
    core
        Core whose adapter search paths decide which C++ adapters are installed
        (a fresh one if omitted).

    Returns
    -------
    list[ConfigLine]
        The parsed command lines.

    Raises
    ------
    RigConfigError
        At the first problem, naming the file, the line and the fix.
    """
    path = Path(path)
    lines = parse_config(path)
    check = _ConfigCheck(path, lines, core if core is not None else new_core())
    for ln in lines:
        step = _CHECKS.get(ln.command)
        if step is not None:
            step(check, ln)
    _check_peers(check.declared, check.set_by, check.err)
    return lines


def _check_peers(
    declared: dict[str, _Declared],
    set_by: dict[tuple[str, str], ConfigLine],
    err: Callable[[ConfigLine, str, str], RigConfigError],
) -> None:
    """Check the properties that name another device (``PEER_PROPERTIES`` of
    a device class, e.g. the simulated camera's ``ZStage``): each must name a
    device loaded by the config, of the right class, or be empty for none.

    A typo there loads fine and fails only once frames are acquired.
    """
    for label, d in declared.items():
        probe = d.probe
        peers: dict[str, type] = dict(getattr(type(probe), "PEER_PROPERTIES", {}))
        if probe is None or not peers:
            continue
        for prop, kind in peers.items():
            try:
                value = str(probe.get_property_value(prop)).strip()
            except Exception:
                continue
            if not value:
                continue
            ln = set_by.get((label, prop))
            where = ln if ln is not None else d.line
            said = "" if ln is not None else " (its default)"
            fix_line = f"#py Property,{label},{prop},<label>"
            target = declared.get(value)
            if target is None:
                loaded = ", ".join(
                    k
                    for k, v in declared.items()
                    if v.probe is not None and isinstance(v.probe, kind)
                )
                raise err(
                    where,
                    f"{label}.{prop} is {value!r}{said}, but no device {value!r} "
                    "is loaded",
                    f"name the {kind.__name__} to follow ({fix_line}; loaded: "
                    f"{loaded or 'none'}), or '' for none",
                )
            if not isinstance(target.probe, kind):
                raise err(
                    where,
                    f"{label}.{prop} is {value!r}{said}, a {target.name} device; "
                    f"it must name a {kind.__name__}",
                    f"name a {kind.__name__} ({fix_line}), or '' for none",
                )

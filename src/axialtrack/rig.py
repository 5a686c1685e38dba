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

import importlib
import logging
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from pymmcore_plus import CFGCommand, DeviceType, Keyword
from pymmcore_plus.core import DeviceInitializationState
from pymmcore_plus.experimental.unicore import Device, UniMMCore

from axialtrack._pymmcore_compat import RigCore
from axialtrack._pymmcore_compat import quiet_discovery as _quiet_discovery
from axialtrack.devices import AxialDevice
from axialtrack.errors import AxialtrackError
from axialtrack.geometry import (
    splitter_geometry,
    splitter_label,
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

DEFAULT_CONFIG = "sim-dualplane.cfg"
"""File name of the default (simulated) rig config."""

_PY_PREFIX = "#py "
_INTERVAL = Keyword.Interval_ms.value  # "Interval-ms"
_PY_DEVICE = "pyDevice"
_CORE = "Core"
# Core properties a config may set, and what each one does.
_CORE_ROLES = {
    Keyword.CoreCamera.value: DeviceType.Camera,
    Keyword.CoreShutter.value: DeviceType.Shutter,
    Keyword.CoreFocus.value: DeviceType.Stage,
    Keyword.CoreXYStage.value: DeviceType.XYStage,
    Keyword.CoreAutoFocus.value: DeviceType.AutoFocus,
    Keyword.CoreSLM.value: DeviceType.SLM,
    Keyword.CoreGalvo.value: DeviceType.Galvo,
}
_CORE_OTHER = {
    Keyword.CoreInitialize.value,
    Keyword.CoreAutoShutter.value,
    Keyword.CoreChannelGroup.value,
    Keyword.CoreImageProcessor.value,
    Keyword.CoreTimeoutMs.value,
}
# command -> allowed numbers of arguments (after the command itself)
_NARGS: dict[str, tuple[int, ...]] = {
    CFGCommand.Device.value: (3,),
    _PY_DEVICE: (3,),
    CFGCommand.Property.value: (2, 3),
    CFGCommand.Delay.value: (2,),
    CFGCommand.FocusDirection.value: (2,),
    CFGCommand.Label.value: (3,),
    CFGCommand.ConfigGroup.value: (1, 4, 5),
    CFGCommand.ConfigPixelSize.value: (4,),
    CFGCommand.PixelSize_um.value: (2,),
    CFGCommand.PixelSizeAffine.value: (7,),
    CFGCommand.ParentID.value: (2,),
    CFGCommand.PixelSize_dxdz.value: (2,),
    CFGCommand.PixelSize_dydz.value: (2,),
    CFGCommand.PixelSize_OptimalZUm.value: (2,),
    CFGCommand.Configuration.value: tuple(range(0, 16)),
}
_SYNTAX = {
    CFGCommand.Device.value: "Device,<label>,<adapter library>,<device name>",
    _PY_DEVICE: "#py pyDevice,<label>,<python module>,<class name>",
    CFGCommand.Property.value: "Property,<device label>,<property>,<value>",
    CFGCommand.Delay.value: "Delay,<device label>,<delay ms>",
    CFGCommand.FocusDirection.value: "FocusDirection,<stage label>,<1|-1|0>",
    CFGCommand.Label.value: "Label,<state device>,<state number>,<label>",
    CFGCommand.ConfigGroup.value: (
        "ConfigGroup,<group> or ConfigGroup,<group>,<preset>,<device>,<property>,"
        "<value>"
    ),
    CFGCommand.ConfigPixelSize.value: (
        "ConfigPixelSize,<preset>,<device>,<property>,<value>"
    ),
    CFGCommand.PixelSize_um.value: "PixelSize_um,<preset>,<um per pixel>",
    CFGCommand.PixelSizeAffine.value: "PixelSizeAffine,<preset>,<6 numbers>",
    CFGCommand.ParentID.value: "Parent,<device label>,<hub label>",
    CFGCommand.PixelSize_dxdz.value: "PixelSizeAngle_dxdz,<preset>,<value>",
    CFGCommand.PixelSize_dydz.value: "PixelSizeAngle_dydz,<preset>,<value>",
    CFGCommand.PixelSize_OptimalZUm.value: "PixelSizeOptimalZ_Um,<preset>,<um>",
}


# ---------------------------------------------------------------------- errors
class RigConfigError(AxialtrackError, RuntimeError):
    """A hardware config that cannot be loaded.

    Attributes
    ----------
    path
        The config file.
    line
        1-based line number of the offending line (``None`` if the problem is not
        one line, e.g. an unreadable file).
    problem
        What is wrong.
    fix
        What to do about it.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        fix: str,
        *,
        line: int | None = None,
        text: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.fix = fix
        self.text = text
        where = f"{self.path}, line {line}" if line is not None else f"{self.path}"
        msg = f"{where}: {problem}"
        if text:
            msg += f"\n    {text}"
        msg += f"\nFix: {fix}"
        super().__init__(msg)


# ---------------------------------------------------------------- config files
def config_dir() -> Path:
    """Folder holding the hardware configs shipped with axialtrack.

    An installed wheel carries them as ``axialtrack/hardware_configs``; a source
    checkout (or an editable install) has them at the repository root.
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "hardware_configs", here.parents[1] / "hardware_configs"):
        if (cand / DEFAULT_CONFIG).is_file():
            return cand
    raise FileNotFoundError(
        "the hardware configs shipped with axialtrack were not found (looked in "
        f"{here / 'hardware_configs'} and {here.parents[1] / 'hardware_configs'}); "
        "reinstall axialtrack or pass the path of a config file"
    )


def list_configs() -> list[Path]:
    """The shipped hardware configs."""
    return sorted(config_dir().glob("*.cfg"))


def resolve_config(path: str | Path | None = None) -> Path:
    """Resolve a config argument to a file path.

    ``None`` gives the default simulated rig. A path that exists is used as is;
    otherwise a bare name (with or without ``.cfg``) is looked up among the
    shipped configs. A path that exists nowhere is returned unchanged (loading it
    then fails with a clear :class:`RigConfigError`).
    """
    if path is None:
        return config_dir() / DEFAULT_CONFIG
    p = Path(path).expanduser()
    if p.exists() or p.parent != Path("."):
        return p
    with suppress(FileNotFoundError):
        d = config_dir()
        for name in (p.name, f"{p.name}.cfg"):
            if (d / name).is_file():
                return d / name
    return p


@dataclass(frozen=True)
class ConfigLine:
    """One command line of a Micro-Manager config file.

    Attributes
    ----------
    lineno
        1-based line number in the file.
    text
        The line as written (stripped).
    command
        ``Device``, ``Property``, ..., or ``pyDevice``.
    args
        The comma-separated fields after the command.
    python
        Whether the line carried the ``#py`` prefix (Python-device line, a comment
        for the C++ core and the Micro-Manager GUI).
    """

    lineno: int
    text: str
    command: str
    args: tuple[str, ...]
    python: bool


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RigConfigError(
            path,
            "config file not found",
            "check the path; shipped configs: "
            + ", ".join(p.name for p in _shipped_or_empty()),
        ) from None
    except IsADirectoryError:
        raise RigConfigError(
            path, "is a folder, not a config file", "pass the path of a .cfg file"
        ) from None
    except UnicodeDecodeError as e:
        raise RigConfigError(
            path,
            f"not a text file ({e.reason} at byte {e.start})",
            "pass a Micro-Manager .cfg file (plain text, UTF-8)",
        ) from None
    except OSError as e:
        raise RigConfigError(
            path,
            f"cannot read the config file ({e.strerror or e})",
            "check that the file exists and that you may read it",
        ) from None


def _shipped_or_empty() -> list[Path]:
    try:
        return list_configs()
    except FileNotFoundError:
        return []


def parse_config(path: str | Path) -> list[ConfigLine]:
    """Parse a config file into command lines, checking the syntax.

    Comments and blank lines are skipped; ``#py`` lines are Python-device lines.

    Raises
    ------
    RigConfigError
        For an unreadable file, an unknown command or a wrong number of fields.
    """
    path = Path(path)
    text = _read(path)
    out: list[ConfigLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r").strip()
        if not line:
            continue
        python = line.startswith(_PY_PREFIX)
        if python:
            line = line[len(_PY_PREFIX) :].lstrip()
        elif line.startswith("#"):
            body = line[1:].strip()
            if body.startswith((f"{_PY_DEVICE},", f"py {_PY_DEVICE},")) or (
                line.startswith("#py") and body[2:].startswith(",")
            ):
                raise RigConfigError(
                    path,
                    "this looks like a Python-device line, but without the exact "
                    "'#py ' prefix it is a comment and would be ignored",
                    "start the line with '#py ' (hash, 'py', one space)",
                    line=lineno,
                    text=raw.strip(),
                )
            continue
        fields = line.split(",")
        if any(f != f.strip() for f in fields):
            raise RigConfigError(
                path,
                "a field has spaces around it; Micro-Manager does not strip them, so "
                "labels and values would not match",
                "remove the spaces before and after the commas",
                line=lineno,
                text=raw.strip(),
            )
        command, *args = fields
        if command not in _NARGS:
            if command in (CFGCommand.Equipment.value, CFGCommand.ImageSynchro.value):
                fix = f"delete the line: {command!r} was removed from the format"
            else:
                close = [c for c in _NARGS if c.lower() == command.lower()]
                fix = (
                    f"write {close[0]!r} (commands are case-sensitive)"
                    if close
                    else "use one of: " + ", ".join(sorted(_NARGS))
                )
            raise RigConfigError(
                path,
                f"unknown command {command!r}",
                fix,
                line=lineno,
                text=raw.strip(),
            )
        if len(args) not in _NARGS[command]:
            raise RigConfigError(
                path,
                f"{command} takes {' or '.join(map(str, _NARGS[command]))} fields "
                f"after the command; found {len(args)}",
                f"write it as {_SYNTAX.get(command, command)}",
                line=lineno,
                text=raw.strip(),
            )
        out.append(ConfigLine(lineno, raw.strip(), command, tuple(args), python))
    return out


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


# ------------------------------------------------------------------ the core
def new_core(mm_path: str | Path | None = None) -> RigCore:
    """A new, empty core without the 'no Micro-Manager installation' log line.

    Parameters
    ----------
    mm_path
        Micro-Manager installation whose C++ device adapters to use; by default
        pymmcore-plus looks for one (``mmcore install`` puts one where it looks).
        Python devices need none.
    """
    with _quiet_discovery():
        if mm_path is not None:
            return RigCore(str(mm_path))
        return RigCore()


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

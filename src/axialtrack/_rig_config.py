"""Micro-Manager config files of a rig: where the shipped ones are
(:func:`config_dir`, :func:`resolve_config`), the grammar this project reads
(:class:`ConfigLine`, :func:`parse_config`) and its error
(:class:`RigConfigError`), and the empty core a config loads into
(:func:`new_core`). :mod:`axialtrack.rig` hands these out.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from pymmcore_plus import CFGCommand, DeviceType, Keyword

from axialtrack._pymmcore_compat import RigCore
from axialtrack._pymmcore_compat import quiet_discovery as _quiet_discovery
from axialtrack.errors import AxialtrackError

logger = logging.getLogger("axialtrack.rig")

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

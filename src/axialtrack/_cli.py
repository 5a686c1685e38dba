"""What the subcommands share: argument types, one-line errors, output checks.

Every refusal of the ``axialtrack`` command is one line on stderr naming the
option (or file), the value and the fix, with exit code 2 and nothing written:

- option values are checked by argparse ``type=`` validators
  (:func:`positive_float`, :func:`float_in`, ...) before anything runs;
- a pydantic :class:`~pydantic.ValidationError` that escapes a subcommand is
  turned into one line naming the option (:func:`validation_message`);
- an output folder is probed before a run starts (:func:`unwritable`).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

__all__ = [
    "CAMERA_OPTIONS",
    "ERROR_CONSOLE",
    "PIXEL_SIZE_RANGE_UM",
    "PIXEL_SIZE_UM",
    "PLANE_OFFSET_RANGE_UM",
    "PLANE_OFFSET_UM",
    "OneLineParser",
    "add_camera_options",
    "camera_origin_text",
    "camera_sources",
    "fail",
    "float_in",
    "nonnegative_float",
    "option_for_field",
    "oserror_message",
    "positive_float",
    "positive_int",
    "unwritable",
    "validation_message",
]

#: Where refusals go: stderr, never wrapped (a message stays one line).
ERROR_CONSOLE = Console(stderr=True, soft_wrap=True, highlight=False)

#: Units the option names leave out (``z_step_um`` is ``--z-step``).
_UNIT_SUFFIXES = ("_um", "_ms", "_s", "_hz", "_nm", "_px")


def fail(message: str, fix: str = "") -> int:
    """Print a one-line refusal (``message``, then ``fix``) and return 2."""
    text = " ".join(message.split())
    if fix:
        text += " " + " ".join(fix.split())
    ERROR_CONSOLE.print(f"[red]Error:[/red] {escape(text)}", markup=True)
    return 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and point to ``--help``)
    instead of the usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with 2."""
        ERROR_CONSOLE.print(
            f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)",
            markup=False,
        )
        raise SystemExit(2)


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        v = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = float(_number(text, float))
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return v


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    v = float(_number(text, float))
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(_number(text, int))
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text}")
    return v


def float_in(
    lo: float, hi: float, unit: str = "", why: str = ""
) -> Callable[[str], float]:
    """argparse type: a finite number in ``[lo, hi]`` (a plausible range).

    ``unit`` and ``why`` are added to the message of a value outside it.
    """
    u = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        v = float(_number(text, float))
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(
                f"{text}{u} is outside the plausible range {lo:g} to {hi:g}{u}"
                + (f" ({why})" if why else "")
            )
        return v

    parse.__name__ = f"number from {lo:g} to {hi:g}"
    return parse


def option_for_field(field: str, options: Iterable[str]) -> str | None:
    """The command-line option (``--z-step``) that sets a model field
    (``z_step_um``), if ``options`` has one."""
    opts = set(options)
    base = field
    for suffix in ("", *_UNIT_SUFFIXES):
        if suffix and not field.endswith(suffix):
            continue
        base = field[: len(field) - len(suffix)] if suffix else field
        name = "--" + base.replace("_", "-")
        if name in opts:
            return name
    return None


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _limits(err: dict[str, Any]) -> str:
    """What a pydantic error says is valid (``> 0``, ``<= 100``)."""
    ctx = err.get("ctx") or {}
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [f"{ops[k]} {_num(ctx[k])}" for k in ("gt", "ge", "lt", "le") if k in ctx]
    if parts:
        return "must be " + " and ".join(parts)
    msg = str(err.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ")


def validation_message(exc: Any, options: Iterable[str] = ()) -> str:
    """One line for a pydantic ``ValidationError``: the option (or field), the
    value given and what is valid, for each error."""
    opts = list(options)
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        field = loc[0] if loc else ""
        name = option_for_field(field, opts) if field else None
        label = name or (f"{exc.title}.{'.'.join(loc)}" if loc else exc.title)
        given = err.get("input")
        shown = _num(given) if isinstance(given, float) else repr(given)
        parts.append(f"{label} {_limits(err)}; got {shown}")
    return "; ".join(parts)


def oserror_message(exc: OSError) -> str:
    """One line for a file-system error: what, where, and the fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (
            f"DiskFullError: no space left on the device{where}. Free space or "
            "write to another disk; what was stored before is kept."
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where}: {what}. Choose a folder you can write to."
    return f"{type(exc).__name__}: {what}{where}"


def unwritable(path: str | Path) -> str | None:
    """Why ``path`` cannot be created (``None`` if it can).

    Probes the nearest existing folder above ``path`` by creating and removing
    a small file there, which is what a run store's creation needs first.
    """
    p = Path(path).expanduser().absolute()
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder, so {p} cannot be created in it"
    try:
        fd, probe = tempfile.mkstemp(prefix=".axialtrack-probe-", dir=parent)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return f"cannot create {p}: {parent} is not writable ({why})"
    os.close(fd)
    os.unlink(probe)
    return None


#: Plausible plane offset (delta) of a dual-focal-plane splitter (um): plane 1
#: in focus above plane 0, by less than a few depths of field.
PLANE_OFFSET_RANGE_UM = (0.05, 5.0)
#: Plausible pixel size in the sample (um): 100x to 4x objectives.
PIXEL_SIZE_RANGE_UM = (0.01, 5.0)

#: argparse type of ``--plane-offset``.
PLANE_OFFSET_UM = float_in(
    *PLANE_OFFSET_RANGE_UM, "um", "plane 1 in focus above plane 0 by delta"
)
#: argparse type of ``--pixel-size``.
PIXEL_SIZE_UM = float_in(*PIXEL_SIZE_RANGE_UM, "um", "the pixel size in the sample")


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def parse_args(parser: argparse.ArgumentParser, argv: Any) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code where it exits (a refused
    argument: 2; ``--help``, ``--version``: 0)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        sys.stdout.flush()
        return _exit_code(exc)


# ------------------------------------------------------------------- camera
def _bit_depth(text: str) -> int:
    v = int(_number(text, int))
    if not 8 <= v <= 32:
        raise argparse.ArgumentTypeError(f"must be from 8 to 32 bits; got {text}")
    return v


def _qe(text: str) -> float:
    v = float(_number(text, float))
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(
            f"must be > 0 and <= 1 (a fraction, not a percentage); got {text}"
        )
    return v


#: ``--camera-*`` option -> camera field.
CAMERA_OPTIONS = {
    "--camera-offset": "offset_adu",
    "--camera-gain": "e_per_adu",
    "--camera-read-noise": "read_noise_e",
    "--camera-qe": "qe",
    "--camera-bit-depth": "bit_depth",
}


def add_camera_options(parser: Any, default_source: str) -> None:
    """Add ``--camera FILE`` and the ``--camera-*`` field options (an argument
    group of ``parser``). ``default_source`` says in the help where the camera
    comes from without them."""
    g = parser.add_argument_group(
        "camera",
        "the camera model (ADU to photons, noise); each field from the first of: "
        f"its --camera-* option, --camera FILE, {default_source}, the defaults "
        "(offset 100 ADU, 0.5 e-/ADU, read noise 1.5 e-, QE 0.8, 16 bits)",
    )
    g.add_argument(
        "--camera",
        dest="camera_file",
        metavar="FILE",
        default=None,
        help="camera JSON file (offset_adu, e_per_adu, read_noise_e, qe, "
        "bit_depth), e.g. written by `axialtrack camera`",
    )
    g.add_argument(
        "--camera-offset",
        dest="camera_offset_adu",
        metavar="ADU",
        type=nonnegative_float,
        default=None,
        help="camera offset (bias), ADU",
    )
    g.add_argument(
        "--camera-gain",
        dest="camera_e_per_adu",
        metavar="E_PER_ADU",
        type=positive_float,
        default=None,
        help="conversion gain, electrons per ADU",
    )
    g.add_argument(
        "--camera-read-noise",
        dest="camera_read_noise_e",
        metavar="E",
        type=nonnegative_float,
        default=None,
        help="read noise, electrons rms",
    )
    g.add_argument(
        "--camera-qe",
        dest="camera_qe",
        metavar="QE",
        type=_qe,
        default=None,
        help="quantum efficiency at the emission wavelength (0-1)",
    )
    g.add_argument(
        "--camera-bit-depth",
        dest="camera_bit_depth",
        metavar="BITS",
        type=_bit_depth,
        default=None,
        help="digitizer bit depth (counts saturate at 2**BITS - 1)",
    )


def camera_sources(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The camera sources the options give, highest precedence first: the
    ``--camera-*`` options, then ``--camera FILE`` (read and checked).

    Raises :class:`axialtrack.camera.CameraError` (one line) for a bad file.
    """
    from axialtrack.camera import check_fields, read_camera_file

    opts: dict[str, Any] = {}
    for field in CAMERA_OPTIONS.values():
        v = getattr(args, "camera_" + field, None)
        if v is not None:
            opts[field] = v
    out: list[tuple[str, dict[str, Any]]] = []
    if opts:
        check_fields(opts, "--camera-*", "")
        out.append(("the --camera-* options", opts))
    if getattr(args, "camera_file", None):
        out.append((f"--camera {args.camera_file}", read_camera_file(args.camera_file)))
    return out


def camera_origin_text(origin: dict[str, str]) -> str:
    """``offset_adu, e_per_adu from X; qe from default`` for the per-field
    sources :func:`axialtrack.camera.resolve_camera` gives."""
    by: dict[str, list[str]] = {}
    for field, label in origin.items():
        by.setdefault(label, []).append(field)
    return "; ".join(f"{', '.join(v)} from {k}" for k, v in by.items())

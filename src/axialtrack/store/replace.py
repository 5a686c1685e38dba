"""Replacing outputs safely (``--overwrite``), and what an interrupted one leaves.

Only outputs of ours are ever replaced: a run store (a directory whose
``zarr.json`` has ``attributes["axialtrack"]``) by ``live``, ``localize`` and
``calibrate``; a model bundle (a directory whose ``model.json`` says
``"format": "axialtrack-model"``) by ``train``. Anything else at the path (a
directory of other files, a plain file, a symbolic link, another zarr store) is
refused, and nothing is touched.

A replaced output is not deleted at once: :class:`Replacement` renames it beside
itself, to ``.NAME.replaced-PID``, and deletes it only once the new output holds
something (a run store: a frame). If the new run stores nothing, the old output
is put back. A process killed in between leaves the hidden copy: ``axialtrack
info`` and the next run writing to that path report it, and ``axialtrack
recover`` restores or removes it (:func:`settle_replaced`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from axialtrack.store._registry import pid_alive
from axialtrack.store.layout import ATTRS_KEY

__all__ = [
    "Leftover",
    "OutputKind",
    "Replacement",
    "check_output",
    "find_leftovers_beside",
    "is_model_bundle",
    "is_run_store",
    "refusal",
    "remove_path",
]

OutputKind = Literal["store", "bundle"]

#: what an interrupted replacement or store creation leaves beside the output
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>replaced|creating)-(?P<pid>\d+)$")


def _read_json(path: Path) -> object:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_run_store(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) holding an axialtrack run
    store: ``zarr.json`` of a zarr v3 group with ``axialtrack`` attributes."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        meta = _read_json(path / "zarr.json")
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return False
    attrs = meta.get("attributes")
    return isinstance(attrs, dict) and isinstance(attrs.get(ATTRS_KEY), dict)


def is_model_bundle(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) holding an axialtrack model
    bundle (``model.json`` with ``"format": "axialtrack-model"``)."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        meta = _read_json(path / "model.json")
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == "axialtrack-model"


_WHAT = {"store": "an axialtrack run store", "bundle": "an axialtrack model bundle"}
_WHATS = {"store": "axialtrack run stores", "bundle": "axialtrack model bundles"}


def refusal(path: Path, overwrite: bool, kind: OutputKind = "store") -> str | None:
    """Why ``path`` may not be written (one line, naming the path and the fix),
    or ``None`` if it may: it does not exist, or ``overwrite`` is set and it is
    an output of ``kind``, or (for a store) an empty directory: no one's data,
    a run uses it without ``overwrite``."""
    if not (path.exists() or path.is_symlink()):
        return None
    if kind == "store" and _empty_dir(path):
        return None  # an empty directory holds nothing to lose
    if not overwrite:
        return (
            f"{path} already exists. Pass --overwrite to replace it, or choose "
            "another output path. Nothing was changed."
        )
    mine = is_run_store(path) if kind == "store" else is_model_bundle(path)
    if mine:
        return None
    if path.is_symlink():
        what = f"a symbolic link (to {os.readlink(path)})"
    elif path.is_file():
        what = "a file"
    elif path.is_dir():
        what = "a directory"
    else:
        what = "not a regular file or directory"
    return (
        f"{path} is {what}, not {_WHAT[kind]}; --overwrite replaces only "
        f"{_WHATS[kind]}. Nothing was changed: remove it yourself or choose "
        "another output path."
    )


def _empty_dir(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def check_output(
    path: Path, overwrite: bool, kind: OutputKind = "store"
) -> tuple[str | None, list[str]]:
    """What a command that writes ``path`` must say before it starts.

    Returns the refusal (one line, see :func:`refusal`; ``None`` if the path
    may be written) and notes about leftovers beside it: a previous output
    hidden by an interrupted ``--overwrite`` (``.NAME.replaced-PID``) or an
    interrupted creation, each naming ``axialtrack recover``.
    """
    notes = []
    for left in find_leftovers_beside(path):
        if left.alive:
            continue
        if left.what == "replaced":
            notes.append(
                f"{left.path} holds the previous {path.name}, set aside by an "
                f"--overwrite that was interrupted (process {left.pid}); it is "
                f"kept. Run `axialtrack recover {path}` to restore or delete it."
            )
        else:
            notes.append(
                f"{left.path} is a run store whose creation was interrupted "
                f"(process {left.pid}); `axialtrack recover {path}` removes it."
            )
    return refusal(path, overwrite, kind), notes


def remove_path(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a directory tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@dataclass(frozen=True)
class Leftover:
    """A hidden copy beside an output, left by an interrupted process.

    Attributes
    ----------
    path
        The hidden directory (``.NAME.replaced-PID`` or ``.NAME.creating-PID``).
    target
        The output it belongs to (``NAME`` in the same directory).
    what
        ``"replaced"``: the previous output, set aside by ``--overwrite``;
        ``"creating"``: a run store whose creation was interrupted.
    pid
        The process that left it.
    alive
        Whether that process still runs on this host (then it is not a
        leftover yet, but work in progress).
    """

    path: Path
    target: Path
    what: str
    pid: int
    alive: bool


def _pid_alive(pid: int) -> bool:
    return pid == os.getpid() or pid_alive(pid)


def find_leftovers_beside(path: str | os.PathLike[str]) -> list[Leftover]:
    """The hidden copies beside ``path`` (``.NAME.replaced-PID``,
    ``.NAME.creating-PID``), oldest process id first."""
    p = Path(path).expanduser().absolute()
    out: list[Leftover] = []
    try:
        entries = list(os.scandir(p.parent))
    except OSError:
        return out
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m is None or m["name"] != p.name:
            continue
        pid = int(m["pid"])
        out.append(Leftover(p.parent / entry.name, p, m["what"], pid, _pid_alive(pid)))
    return sorted(out, key=lambda x: (x.pid, x.what))


def hidden_name(path: Path, what: str, pid: int | None = None) -> Path:
    """``.NAME.<what>-PID`` beside ``path``."""
    return path.with_name(f".{path.name}.{what}-{os.getpid() if pid is None else pid}")


class Replacement:
    """``--overwrite`` without losing the old output to a run that never starts.

    The existing output is renamed beside itself (``.NAME.replaced-PID``)
    rather than deleted. :meth:`settle` deletes it once the new output holds
    something (``keep_new``: by default, a run store with at least one frame);
    otherwise the new output is removed and the old one put back.

    Call :func:`refusal` first: this class moves whatever is at ``out``.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.aside: Path | None = None
        if out.exists() or out.is_symlink():
            aside = hidden_name(out, "replaced")
            if aside.exists() or aside.is_symlink():
                remove_path(aside)  # ours, from this very process id
            os.replace(out, aside)
            self.aside = aside

    def settle(self, keep_new: bool | None = None) -> bool:
        """Keep the new output if it holds something, else restore the old one.

        Returns True if the old output was put back.
        """
        aside = self.aside
        if aside is None:
            return False
        self.aside = None
        if keep_new is None:
            keep_new = frames_in(self.out) > 0
        if keep_new:
            remove_path(aside)
            return False
        if self.out.exists() or self.out.is_symlink():
            remove_path(self.out)
        os.replace(aside, self.out)
        return True


def frames_in(path: Path) -> int:
    """Committed frames of the run store at ``path`` (0 if there is none or it
    is incomplete): its root's ``n_frames``, read without opening the run, so
    that this module needs nothing of the reader or the writer."""
    if not is_run_store(path) or not (path / "frames" / "0" / "zarr.json").is_file():
        return 0
    try:
        meta = _read_json(path / "zarr.json")
    except (OSError, ValueError):
        return 0
    attrs = (
        meta.get("attributes", {}).get(ATTRS_KEY) if isinstance(meta, dict) else None
    )
    n = attrs.get("n_frames") if isinstance(attrs, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def settle_leftover(
    left: Leftover, action: Literal["auto", "restore", "discard"] = "auto"
) -> str:
    """Restore or remove one leftover; return what was done, in words.

    ``"auto"`` (the default of ``axialtrack recover``) restores a replaced
    output when the output now at its place holds no frame (or is missing),
    and otherwise keeps both and does nothing: the caller must then choose.
    ``"restore"`` puts the old output back in place of the new one (which is
    deleted); ``"discard"`` deletes the old output. An interrupted creation
    (``.NAME.creating-PID``) is never a user's data: it is removed.
    """
    if left.alive:
        return f"{left.path} belongs to process {left.pid}, which still runs: left"
    if left.what == "creating":
        remove_path(left.path)
        return f"removed {left.path} (a run store whose creation was interrupted)"
    target = left.target
    present = target.exists() or target.is_symlink()
    empty_new = not present or (is_run_store(target) and frames_in(target) == 0)
    if action == "auto":
        if not empty_new:
            return (
                f"kept {left.path}: the previous output, while {target} holds a "
                "newer run with frames. Choose: axialtrack recover "
                f"{target} --restore (put the previous one back) or --discard "
                "(delete it)"
            )
        action = "restore"
    if action == "restore":
        if present:
            if not (is_run_store(target) or is_model_bundle(target)):
                return (
                    f"kept {left.path}: {target} is not an axialtrack output, so it "
                    "is not replaced; move it away and run recover again"
                )
            remove_path(target)
        os.replace(left.path, target)
        return f"restored the previous {target} from {left.path.name}"
    remove_path(left.path)
    return f"deleted {left.path} (the previous output)"


def clear_creating(path: Path) -> None:
    """Remove this process's own interrupted creation beside ``path`` (if any)."""
    with contextlib.suppress(FileNotFoundError):
        remove_path(hidden_name(path, "creating"))

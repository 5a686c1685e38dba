"""Which writers are open in this process (closed at interpreter exit), and
whether the process that writes a store is alive."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from axialtrack.store.writer import RunWriter

__all__ = ["OPEN_WRITERS", "pid_alive", "writer_alive"]

OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def _close_open_writers() -> None:  # pragma: no cover - interpreter exit
    for writer in list(OPEN_WRITERS):
        with contextlib.suppress(Exception):
            writer.close()


# Writers left open are closed (their queues written) when the interpreter exits.
# This must run before thread pools refuse new work at exit (zarr and the I/O
# threads need them), hence the hook ``concurrent.futures`` itself uses.
_register_exit = getattr(threading, "_register_atexit", atexit.register)
try:
    _register_exit(_close_open_writers)
except RuntimeError:  # pragma: no cover - registered while shutting down
    atexit.register(_close_open_writers)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    if os.name == "nt":  # pragma: no cover - Windows: os.kill(pid, 0) kills it
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    win: Any = ctypes  # WinDLL and get_last_error exist on Windows only
    kernel32 = win.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
    if not handle:
        return bool(win.get_last_error() == 5)  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def writer_alive(attrs: Mapping[str, Any], path: Path) -> bool | None:
    """Whether a run store at ``path`` (with these attrs) is still being written.

    True if the writing process runs (in this process: if a :class:`RunWriter`
    for ``path`` is open); ``None`` when it cannot be told (another host, or no
    writer record).
    """
    w = attrs.get("writer") or {}
    pid, host = w.get("pid"), w.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    if pid == os.getpid():
        target = Path(path).expanduser().absolute()
        return any(wr.path == target for wr in list(OPEN_WRITERS))
    return pid_alive(pid)

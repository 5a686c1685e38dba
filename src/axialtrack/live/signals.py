"""SIGTERM and SIGHUP stop a live run as Ctrl-C does (:class:`StopSignals`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- signals
#: The signals :class:`StopSignals` turns into a clean stop, with the
#: ``stop_reason`` each gives (SIGHUP only where the platform has it).
STOP_SIGNALS: dict[str, str] = {
    "SIGINT": "interrupted",
    "SIGTERM": "terminated",
    "SIGHUP": "hangup",
}


class Stoppable(Protocol):
    """What :class:`StopSignals` stops: a :class:`LiveRunner` or a
    :class:`~axialtrack.live.TrackingHandler`."""

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to stop, storing what was acquired."""


class StopSignals:
    """Stop a live run on SIGINT, SIGTERM or SIGHUP as on Ctrl-C.

    systemd, Docker, ``timeout`` and Slurm stop a job with SIGTERM; a closed
    terminal or SSH session sends SIGHUP. Inside the ``with`` block each of
    these only asks the attached :class:`LiveRunner` to stop
    (:meth:`LiveRunner.stop`, ``stop_reason`` ``"interrupted"``,
    ``"terminated"`` or ``"hangup"``): the run then ends as it does at its
    duration, with every frame received stored, the tracks written and the
    store closed. A signal that comes before a runner is attached is kept and
    stops the runner as soon as it is. Repeating the signal changes nothing
    but calls ``on_repeat`` (to tell the user the run is closing); SIGKILL
    remains the way to end the process at once.

    The handlers can only be installed from the main thread; elsewhere (and
    for signals the platform lacks: Windows has no SIGHUP, and delivers no
    SIGTERM from other processes) the block changes nothing. The previous
    handlers come back when it ends.

    Attributes
    ----------
    signum
        The first stop signal received (``None``: none).
    """

    def __init__(
        self,
        runner: Stoppable | None = None,
        *,
        on_repeat: Callable[[int], None] | None = None,
        names: Sequence[str] = tuple(STOP_SIGNALS),
    ) -> None:
        self.runner = runner
        self.on_repeat = on_repeat
        self.signum: int | None = None
        self.received = 0
        self._names = tuple(names)
        self._old: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """``128 + signum`` (the shell's convention: 130 for SIGINT, 143 for
        SIGTERM, 129 for SIGHUP), or ``None`` if no signal came."""
        return None if self.signum is None else 128 + int(self.signum)

    @property
    def reason(self) -> str | None:
        """The ``stop_reason`` of the first signal received."""
        if self.signum is None:
            return None
        import signal

        return STOP_SIGNALS.get(signal.Signals(self.signum).name, "stopped")

    def attach(self, runner: Stoppable) -> None:
        """Stop ``runner`` on a signal (at once if one came already)."""
        self.runner = runner
        reason = self.reason
        if reason is not None:
            runner.stop(reason)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        elif self.on_repeat is not None:
            with contextlib.suppress(Exception):
                self.on_repeat(signum)
        if self.runner is not None:
            self.runner.stop(self.reason or "stopped")

    def __enter__(self) -> StopSignals:
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self._names:
            num = getattr(signal, name, None)
            if num is None:
                continue
            try:
                self._old[num] = signal.signal(num, self._handle)
            except (OSError, ValueError):  # pragma: no cover - platform refuses
                continue
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for num, old in self._old.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(num, old if old is not None else signal.SIG_DFL)
        self._old = {}

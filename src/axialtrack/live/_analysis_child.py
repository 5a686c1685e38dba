"""The child side of :class:`~axialtrack.live.process.AnalysisProcess`.

Run as ``python -m axialtrack.live._analysis_child ADDRESS``: connects back
to the parent (authentication key in ``AXIALTRACK_ANALYSIS_KEY``), receives the
arguments of :func:`~axialtrack.pipeline.make_analyzer` and the shared-memory
block, then analyzes batches in order until told to stop or the parent is gone.
A fresh interpreter, not a fork or a ``multiprocessing`` spawn: it never
re-imports the parent's main script and works the same inside Qt, Jupyter or a
plain script without an ``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Client, Connection
from typing import Any

import numpy as np

KEY_ENV = "AXIALTRACK_ANALYSIS_KEY"
#: A directory: trace this process's allocations (:mod:`tracemalloc`) from the
#: end of the warm-up and dump a snapshot there every ``TRACE_PERIOD_S``
#: (``child-PID-K.snap``), to find what grows (``benchmarks/bench_soak.py
#: --tracemalloc DIR`` sets it and compares the first and last).
TRACE_ENV = "AXIALTRACK_ANALYSIS_TRACEMALLOC"
TRACE_PERIOD_S = 30.0


def _start_tracing(directory: str) -> None:
    import tracemalloc
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(12)

    def dump() -> None:
        k = 0
        while True:
            tracemalloc.take_snapshot().dump(str(out / f"child-{os.getpid()}-{k}.snap"))
            k += 1
            threading.Event().wait(TRACE_PERIOD_S)

    threading.Thread(target=dump, name="child-trace", daemon=True).start()


def describe(exc: BaseException) -> tuple[str, str, str]:
    """``(type name, message, traceback)`` of an exception, for the parent."""
    return (type(exc).__name__, str(exc), traceback.format_exc())


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name)
    with contextlib.suppress(Exception):
        # the parent owns (and unlinks) the block; this process only attaches
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def serve(conn: Connection) -> None:
    """Build the analyzer the parent describes, then answer its messages."""
    try:
        _, make_kwargs, shm_name, slot_shape, n_slots = conn.recv()
        shm = _attach(shm_name)
    except Exception as exc:
        conn.send(("error", -1, describe(exc)))
        return
    slots = np.ndarray((n_slots, *slot_shape), dtype=np.uint16, buffer=shm.buf)
    try:
        _serve(conn, make_kwargs, slots)
    finally:
        del slots
        shm.close()


class _Notices(logging.Handler):
    """Warnings and log records of WARNING and above, each distinct one once,
    to be sent to the parent with the next answer (it logs and warns them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.pending: list[tuple[str, str, int, str]] = []
        self._seen: set[tuple[str, str]] = set()
        self._guard = threading.Lock()  # both stages add, one takes

    def add(self, kind: str, name: str, level: int, msg: str) -> None:
        with self._guard:
            if (kind, msg) not in self._seen:
                self._seen.add((kind, msg))
                self.pending.append((kind, name, level, msg))

    def emit(self, record: logging.LogRecord) -> None:
        self.add("log", record.name, record.levelno, record.getMessage())

    def take(self) -> list[tuple[str, str, int, str]]:
        with self._guard:
            out, self.pending = self.pending, []
        return out


def _serve(conn: Connection, make_kwargs: dict[str, Any], slots: np.ndarray) -> None:
    notices = _Notices()
    logging.getLogger().addHandler(notices)  # the root logger: WARNING and above
    overlap = bool(make_kwargs.pop("overlap", False))
    try:
        from axialtrack.pipeline import make_analyzer

        kwargs = dict(make_kwargs)
        bundle = kwargs.pop("bundle_path")
        analyzer = make_analyzer(bundle, **kwargs)
        analyzer.warmup()
        # a full collection over the libraries' objects would stall batches
        # (see RunnerConfig.freeze_gc); only what the analysis allocates is walked
        gc.collect()
        gc.freeze()
        if os.environ.get(TRACE_ENV):
            _start_tracing(os.environ[TRACE_ENV])
        conn.send(
            (
                "ready",
                {
                    "engine_name": analyzer.engine.name,
                    "engine_reason": analyzer.engine.reason,
                    "crop_size": int(analyzer.engine.crop_size),
                },
            )
        )
    except BaseException as exc:
        # the parent may have given up already (and closed the connection)
        with contextlib.suppress(OSError):
            conn.send(("error", -1, describe(exc)))
        return
    if overlap:
        _serve_overlapped(conn, analyzer, slots, notices)
        return

    def analyze(n: int, slot: int, indices: Any, metas: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = analyzer.analyze_columns(slots[slot, :n], indices, metas)
        for w in caught:
            notices.add("warn", w.category.__name__, logging.WARNING, str(w.message))
        return table

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        kind = msg[0]
        if kind == "batch":
            _, seq, slot, n, indices, metas = msg
            try:
                cols = analyze(n, slot, indices, metas)
                conn.send(("rows", seq, cols, int(analyzer.n_tracks), notices.take()))
            except Exception as exc:
                conn.send(("error", seq, describe(exc)))
        elif kind == "finish":
            try:
                conn.send(("finished", *_finish(analyzer)))
            except Exception as exc:
                conn.send(("error", -1, describe(exc)))
        elif kind == "reset":
            analyzer.reset()
            conn.send(("reset",))
        elif kind == "stop":
            return


def _finish(analyzer: Any) -> tuple[Any, dict[str, float]]:
    summary = analyzer.finish()
    return summary, dict(analyzer.localizer.timings)


@dataclass(frozen=True)
class _Failed:
    """A batch whose ``prepare`` raised: ``(type, message, traceback)``."""

    error: tuple[str, str, str]


def _serve_overlapped(
    conn: Connection, analyzer: Any, slots: np.ndarray, notices: _Notices
) -> None:
    """Two stages one batch apart: ``prepare`` (detection, XY, crops) of batch
    *k + 1* in one thread while ``complete`` (inference, linking) of batch *k*
    runs in another. A slot is handed back (``"free"``) as soon as its batch is
    prepared; rows go back in batch order."""
    send_lock = threading.Lock()
    prep_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done_q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def send(msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    # warnings of both stages are caught by one process-wide hook (the
    # ``catch_warnings`` context manager is not thread-safe)
    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        notices.add("warn", category.__name__, logging.WARNING, str(message))

    warnings.simplefilter("always")
    warnings.showwarning = show

    def prepare_loop() -> None:
        while True:
            msg = prep_q.get()
            if msg is None or msg[0] != "batch":
                done_q.put(msg)
                if msg is None:
                    return
                continue
            _, seq, slot, n, indices, metas = msg
            try:
                got: Any = analyzer.prepare(slots[slot, :n], indices, metas)
            except Exception as exc:
                got = _Failed(describe(exc))
            try:
                send(("free", seq))
            except OSError:
                done_q.put(None)
                return
            done_q.put(("prepared", seq, got))

    def complete_loop() -> None:
        while True:
            msg = done_q.get()
            if msg is None:
                return
            try:
                if msg[0] == "prepared":
                    _, seq, got = msg
                    if isinstance(got, _Failed):
                        send(("error", seq, got.error))
                        continue
                    try:
                        cols = analyzer.complete_columns(got)
                    except Exception as exc:
                        send(("error", seq, describe(exc)))
                        continue
                    send(("rows", seq, cols, int(analyzer.n_tracks), notices.take()))
                elif msg[0] == "finish":
                    try:
                        send(("finished", *_finish(analyzer)))
                    except Exception as exc:
                        send(("error", -1, describe(exc)))
                elif msg[0] == "reset":  # after every batch sent before it
                    analyzer.reset()
                    send(("reset",))
            except OSError:  # the parent is gone
                return

    def guarded(loop: Any) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # a bug here: tell the parent, then exit
                with contextlib.suppress(BaseException):
                    send(("error", -1, describe(exc)))
                os._exit(1)

        return run

    workers = [
        threading.Thread(
            target=guarded(prepare_loop), name="child-prepare", daemon=True
        ),
        threading.Thread(
            target=guarded(complete_loop), name="child-complete", daemon=True
        ),
    ]
    for t in workers:
        t.start()
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if msg[0] == "stop":
                return
            prep_q.put(msg)
    finally:
        prep_q.put(None)
        for t in workers:
            t.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process."""
    args = sys.argv[1:] if argv is None else argv
    # the parent stops the run on Ctrl-C, SIGTERM and SIGHUP and collects the
    # last batches and the track summary from here before it closes this
    # process; the signals reach this one too when they go to the process
    # group (a terminal's Ctrl-C, systemd, Slurm), and must not end it first
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        num = getattr(signal, name, None)
        if num is not None:
            signal.signal(num, signal.SIG_IGN)
    key = bytes.fromhex(os.environ.pop(KEY_ENV))
    address: Any = args[0]
    if address.startswith("tcp:"):
        host, port = address[4:].rsplit(":", 1)
        address = (host, int(port))
    with Client(address, authkey=key) as conn:
        serve(conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())

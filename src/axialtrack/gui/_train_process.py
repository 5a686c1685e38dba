"""Training in a child process, so that the GUI thread never waits on it.

In a thread of the GUI's process the training held the interpreter for up to
4.2 s at a time (module imports, the ONNX export and its check at the end),
and the window froze that long. The child runs
:func:`~axialtrack.gui._training.train_bundle` (the same functions as
``axialtrack train``) and sends each epoch's history row, then the metrics
and the bundle path, through a queue. This module imports no Qt.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import threading
from pathlib import Path
from typing import Any

from axialtrack.errors import AxialtrackError

__all__ = ["TrainingProcessError", "call_in_process", "run_training"]


class TrainingProcessError(AxialtrackError, RuntimeError):
    """The training process ended without sending its result."""


def _child(
    q: Any,
    stop: Any,
    calibration: str,
    out: str,
    steps: int,
    max_time_s: float | None,
    overwrite: bool,
) -> None:
    try:
        from axialtrack.events import TrainSignals

        from ._training import train_bundle

        events = TrainSignals()
        events.epochFinished.connect(lambda row: q.put(("epoch", dict(row))))
        metrics, path = train_bundle(
            Path(calibration),
            Path(out),
            steps=steps,
            max_time_s=max_time_s,
            overwrite=overwrite,
            events=events,
            stop=stop,
        )
        q.put(("done", (metrics, None if path is None else str(path))))
    except BaseException as exc:
        try:
            pickle.dumps(exc)
            q.put(("error", exc))
        except Exception:
            q.put(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


_POOL: Any = None
_POOL_LOCK = threading.Lock()


def call_in_process(func: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` in a child process; its result (or its
    exception, raised here).

    For work that would hold this process's interpreter lock for long:
    importing torch, scipy or numba for the first time held it for up to
    0.5-0.9 s at a time in a worker thread, and the GUI thread waited that
    long. The children (spawned, up to two) are kept for the next jobs, so
    only the first pays for a Python start and the imports; a child that
    died is replaced at the next call. ``func`` must be importable (a
    module-level function) and its arguments and result picklable.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))
        pool = _POOL
    try:
        return pool.submit(func, *args, **kwargs).result()
    except BrokenProcessPool:
        with _POOL_LOCK:
            if _POOL is pool:
                _POOL = None
        raise


def run_training(
    calibration: Path,
    out: Path,
    *,
    steps: int,
    max_time_s: float | None,
    overwrite: bool,
    events: Any,
    stop: threading.Event,
) -> tuple[dict[str, Any], Path | None]:
    """Train in a child process; emit ``events.epochFinished`` here for each
    epoch; return the metrics and the bundle (``None``: cancelled with
    ``stop``, nothing written). An error in the child is raised here."""
    from ._training import bundle_output

    bundle_output(out, overwrite)  # refused here at once, before the child starts
    if not Path(calibration).expanduser().exists():
        from ._errors import InputError

        raise InputError(f"Calibration: {calibration} does not exist.")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child_stop = ctx.Event()
    proc = ctx.Process(
        target=_child,
        args=(q, child_stop, str(calibration), str(out), steps, max_time_s, overwrite),
        name="axialtrack-gui-train",
        daemon=True,
    )
    proc.start()
    try:
        while True:
            if stop.is_set():
                child_stop.set()
            try:
                kind, payload = q.get(timeout=0.1)
            except queue.Empty:
                if not proc.is_alive():
                    raise TrainingProcessError(
                        f"the training process ended (exit code {proc.exitcode}) "
                        "without a result; run `axialtrack train` to see why"
                    ) from None
                continue
            if kind == "epoch":
                events.epochFinished.emit(payload)
            elif kind == "error":
                raise payload
            else:
                metrics, path = payload
                return metrics, None if path is None else Path(path)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)

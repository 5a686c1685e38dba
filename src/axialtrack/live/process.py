"""The live analysis in its own process, fed through shared memory.

On a machine with few cores the analysis threads of a live run share one Python
interpreter (one GIL) with the camera, acquisition and writer threads. Every
stretch of Python those threads run delays the analysis, and handing the GIL back
and forth costs CPU of its own: on the 2-core benchmark machine the two analysis
threads used 1.3-1.9x the CPU per frame of the same code run in one thread.

:class:`AnalysisProcess` runs a :class:`~axialtrack.pipeline.TrackingAnalyzer`
in a child process instead. Batches of frames go into preallocated shared-memory
slots (one copy); the child analyzes them in order and sends back the
localization columns. It is a :class:`~axialtrack.live.runner.StagedAnalyzer`,
so :class:`~axialtrack.live.LiveRunner` takes it like any analyzer:
``prepare`` hands a batch to the child and returns at once, ``complete`` waits
for its rows.

The child is a fresh interpreter (``python -m
axialtrack.live._analysis_child``; a fork of a process running camera
threads is unsafe, and ``multiprocessing``'s spawn would re-run the user's main
script) that connects back over a local socket or pipe with a one-time key. It
builds its analyzer from the same arguments as
:func:`~axialtrack.pipeline.make_analyzer`, ignores Ctrl-C (the parent stops the
run and collects the last batches) and exits when the parent closes it or dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from axialtrack._deprecate import renamed_keyword
from axialtrack.errors import AxialtrackError

if TYPE_CHECKING:
    from axialtrack.store import FrameMeta

__all__ = ["AnalysisProcess", "AnalysisProcessError"]

#: Prefix of the shared-memory segments of analysis processes; the parent's
#: process id follows, so a segment a killed run left can be told and removed.
SHM_PREFIX = "axialtrack_"
_SHM_DIR = Path("/dev/shm")


def remove_stale_segments(shm_dir: Path = _SHM_DIR) -> list[str]:
    """Remove the shared-memory segments of analysis processes whose parent no
    longer runs (a run killed with SIGKILL, or with its resource tracker); the
    names removed.

    Only where segments are files (``/dev/shm`` on Linux); on Windows a
    segment lives only as long as a process holds it.
    """
    from axialtrack.store.writer import _pid_alive

    removed: list[str] = []
    if not shm_dir.is_dir():
        return removed
    for f in shm_dir.glob(f"{SHM_PREFIX}*"):
        parts = f.name[len(SHM_PREFIX) :].split("_")
        if not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        with contextlib.suppress(OSError):
            f.unlink()
            removed.append(f.name)
    return removed


logger = logging.getLogger(__name__)


class AnalysisProcessError(AxialtrackError, RuntimeError):
    """The analysis process failed to start, raised, or exited."""


@dataclass(frozen=True)
class _Ticket:
    """What :meth:`AnalysisProcess.prepare` returns: the batches sent."""

    seqs: tuple[int, ...]


def _cleanup(shm: shared_memory.SharedMemory, handles: dict[str, Any]) -> None:
    """Stop the child and free the shared memory (also at interpreter exit)."""
    conn = handles.get("conn")
    proc = handles.get("proc")
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.send(("stop",))
        with contextlib.suppress(Exception):
            conn.close()
    if proc is not None:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
    with contextlib.suppress(Exception):
        shm.close()
    with contextlib.suppress(FileNotFoundError):
        shm.unlink()


def _reissue(notices: Sequence[tuple[str, str, int, str]]) -> None:
    """Log (and warn) in this process what the analysis process logged or warned.

    Each distinct message comes once; log records keep their logger's name.
    """
    for kind, name, level, msg in notices:
        if kind == "warn":
            category = RuntimeWarning if name == "RuntimeWarning" else UserWarning
            warnings.warn(msg, category, stacklevel=2)
        else:
            logging.getLogger(name).log(level, "%s", msg)


class AnalysisProcess:
    """A :class:`~axialtrack.pipeline.TrackingAnalyzer` in a child process.

    Takes the arguments of :func:`~axialtrack.pipeline.make_analyzer` plus the
    frame geometry the shared memory is sized for. Use it as the ``analyzer``
    of a :class:`~axialtrack.live.LiveRunner` (or call :meth:`analyze`
    directly), then :meth:`finish` for the track summary and :meth:`close`
    (or a ``with`` block).

    Parameters
    ----------
    bundle_path
        The ``.axialmodel`` directory.
    plane_shape
        ``(H, W)`` of one plane.
    max_batch_frames
        Most frames of one batch a slot holds; larger batches are sent in parts.
        Match the runner's ``max_batch_frames``.
    slots
        Shared-memory slots, each holding one batch of frames until the child
        has prepared it (at least 2). :meth:`prepare` waits for a free slot.
    overlap
        The child runs the two stages of the analyzer in two threads one batch
        apart: ``prepare`` (detection, sub-pixel XY, crops) of batch *k + 1*
        while ``complete`` (inference, linking) of batch *k* runs, and hands
        each slot back as soon as its batch is prepared. Near the limit of one
        core this takes more frames per second through the child (rows still
        come back in batch order). ``False``: one thread, one batch at a time.
    start_timeout_s
        Longest wait for the child to load the model and warm up.
    answer_timeout_s
        Longest silence of a running child while rows are awaited (a batch takes
        milliseconds): beyond it the child is taken as hung (a wedged GPU, say),
        and the wait raises :class:`AnalysisProcessError` instead of blocking
        the caller, and with it the end of a live run, for good.
    **make_kwargs
        The other arguments of :func:`~axialtrack.pipeline.make_analyzer`
        (``pixel_size_um``, ``geometry``, ``engine``, ...). They are pickled
        to the child. The former ``engine_prefer`` is accepted with a
        ``DeprecationWarning`` (here, not in the child) and passed as ``engine``.

    Raises
    ------
    axialtrack.model.BundleError
        The bundle is unreadable or does not fit the rig (pixel size, plane
        offset); checked while the child builds its analyzer (the child is
        stopped).
    AnalysisProcessError
        The child could not build its analyzer (its error and traceback are in
        the message) or did not start within ``start_timeout_s``.
    """

    def __init__(
        self,
        bundle_path: str | Path,
        *,
        plane_shape: tuple[int, int],
        max_batch_frames: int = 8,
        slots: int = 2,
        overlap: bool = True,
        start_timeout_s: float = 120.0,
        answer_timeout_s: float = 60.0,
        **make_kwargs: Any,
    ) -> None:
        if "engine_prefer" in make_kwargs:
            old = str(make_kwargs.pop("engine_prefer"))
            now = str(make_kwargs.get("engine", "auto"))
            make_kwargs["engine"] = renamed_keyword(
                "engine_prefer", "engine", old, now, "auto"
            )
        if slots < 2:
            raise ValueError(f"slots must be >= 2, got {slots}")
        if max_batch_frames < 1:
            raise ValueError(f"max_batch_frames must be >= 1, got {max_batch_frames}")
        h, w = (int(v) for v in plane_shape)
        self.plane_shape = (h, w)
        self.max_batch_frames = int(max_batch_frames)
        self._slot_shape = (self.max_batch_frames, 2, h, w)
        nbytes = int(slots * np.prod(self._slot_shape) * 2)
        for name in remove_stale_segments():
            logger.info("removed shared memory %s left by a killed run", name)
        self._shm = shared_memory.SharedMemory(
            name=f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(6)}",
            create=True,
            size=nbytes,
        )
        self._slots = np.ndarray(
            (slots, *self._slot_shape), dtype=np.uint16, buffer=self._shm.buf
        )
        self.overlap = bool(overlap)
        # what the track summary needs, to make it here from a run's rows
        self.keep_rows = bool(make_kwargs.get("keep_rows", True))
        self.frame_interval_s = make_kwargs.get("frame_interval_s")
        self.axial_scale = float(make_kwargs.get("axial_scale", 1.0))
        kwargs = dict(
            make_kwargs,
            bundle_path=str(bundle_path),
            plane_shape=(h, w),
            overlap=self.overlap,
        )
        self._free: list[int] = list(range(slots))
        self._free_cv = threading.Condition()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._seq = 0
        self._slot_of: dict[int, int] = {}
        self._results: dict[int, Any] = {}
        # the child's own report of why it stopped (its last message)
        self._fatal: AnalysisProcessError | None = None
        self.answer_timeout_s = float(answer_timeout_s)
        self._last_answer = time.monotonic()
        self._closed = False
        self.n_tracks = 0
        self.n_localizations = 0
        self.timings: dict[str, float] = {}
        self.engine_name = ""
        self.engine_reason = ""
        self.crop_size = 0
        # what the finalizer needs (it must not hold self)
        self._handles: dict[str, Any] = {}
        self._conn: Connection | None = None
        self._finalizer = weakref.finalize(self, _cleanup, self._shm, self._handles)
        try:
            self._start_child(start_timeout_s)
            self._connection().send(
                ("init", kwargs, self._shm.name, self._slot_shape, slots)
            )
            # refuse a bundle that does not fit the rig here, with its own
            # error, while the child builds its analyzer (half the start-up)
            from axialtrack.model import load_bundle

            geometry = make_kwargs.get("geometry")
            load_bundle(
                bundle_path,
                expect_pixel_size_um=make_kwargs.get("pixel_size_um"),
                expect_plane_offset_um=(
                    None if geometry is None else geometry.plane_offset_um
                ),
            )
            info = self._expect("ready", start_timeout_s)
        except BaseException:
            # the child is of no use now: stop it at once rather than wait for
            # it to finish starting and read "stop"
            proc = self._handles.get("proc")
            if proc is not None and proc.poll() is None:
                proc.kill()
            self.close()
            raise
        self.engine_name = str(info["engine_name"])
        self.engine_reason = str(info["engine_reason"])
        self.crop_size = int(info["crop_size"])

    def _start_child(self, timeout_s: float) -> None:
        """Start ``python -m axialtrack.live._analysis_child`` and accept it."""
        # imported here: ``python -m`` must find it not yet imported in the child
        from axialtrack.live._analysis_child import KEY_ENV

        key = secrets.token_bytes(32)
        # loopback TCP (authenticated by the key): no socket file, so nothing
        # is left in the temporary folder by a killed run (a Unix socket lives
        # in a /tmp/pymp-* folder that only a clean exit removes), and the same
        # on every platform. Only control messages pass; frames go through
        # shared memory.
        listener = Listener(("127.0.0.1", 0), family="AF_INET", authkey=key)
        address = listener.address
        arg = (
            f"tcp:{address[0]}:{address[1]}"
            if isinstance(address, tuple)
            else str(address)
        )
        env = dict(os.environ, **{KEY_ENV: key.hex()})
        proc = subprocess.Popen(
            [sys.executable, "-m", "axialtrack.live._analysis_child", arg],
            env=env,
        )
        self._proc = proc
        self._handles["proc"] = proc
        got: dict[str, Any] = {}

        def accept() -> None:
            try:
                got["conn"] = listener.accept()
            except BaseException as exc:  # e.g. a failed authentication
                got["error"] = exc

        t = threading.Thread(target=accept, name="analysis-accept", daemon=True)
        t.start()
        t.join(0.05)
        waited = 0.0
        while t.is_alive():
            if proc.poll() is not None or waited >= timeout_s:
                # unblock accept() with a connection of our own, then give up
                with contextlib.suppress(Exception):
                    Client(address, authkey=key).close()
                t.join(5.0)
                listener.close()
                conn = got.get("conn")
                if conn is not None:
                    conn.close()
                raise AnalysisProcessError(
                    "the analysis process "
                    + (
                        f"exited with code {proc.returncode} before connecting"
                        if proc.returncode is not None
                        else f"did not connect within {timeout_s:g} s"
                    )
                    + f" ({sys.executable} -m axialtrack.live._analysis_child)"
                )
            t.join(0.1)
            waited += 0.1
        listener.close()
        if "error" in got:
            raise AnalysisProcessError(
                f"the analysis process could not connect: {got['error']}"
            )
        self._conn = got["conn"]
        self._handles["conn"] = self._conn

    # --------------------------------------------------------------- public
    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return None if self._proc is None else self._proc.pid

    def warmup(self) -> None:
        """Nothing to do: the child warmed up before the constructor returned."""

    def prepare(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> _Ticket:
        """Copy a batch into shared memory and hand it to the child.

        Waits while every slot is in the child's hands. Returns a ticket for
        :meth:`complete`.
        """
        self._check_open()
        planes = np.asarray(planes)
        if planes.ndim == 3:
            planes = planes[None]
        if planes.shape[1:] != self._slot_shape[1:]:
            raise ValueError(
                f"frames of shape {planes.shape[1:]} given to an analysis process "
                f"sized for {self._slot_shape[1:]} (2, H, W)"
            )
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.shape[0] != planes.shape[0] or len(meta) != planes.shape[0]:
            raise ValueError(
                f"{planes.shape[0]} frames but {idx.shape[0]} indices and "
                f"{len(meta)} metadata entries"
            )
        seqs = []
        step = self.max_batch_frames
        for s in range(0, planes.shape[0], step):
            part = planes[s : s + step]
            slot = self._take_slot()
            np.copyto(self._slots[slot, : part.shape[0]], part, casting="unsafe")
            with self._send_lock:
                seq = self._seq
                self._seq += 1
                self._slot_of[seq] = slot
                try:
                    self._connection().send(
                        (
                            "batch",
                            seq,
                            slot,
                            part.shape[0],
                            idx[s : s + step],
                            list(meta[s : s + step]),
                        )
                    )
                except OSError as exc:
                    self._give_slot(seq)
                    raise self._gone("taking a batch") from exc
            seqs.append(seq)
        return _Ticket(tuple(seqs))

    def complete(self, ticket: _Ticket) -> pd.DataFrame:
        """The localization rows of a :meth:`prepare`-d batch (waits for them)."""
        return pd.DataFrame(self.complete_columns(ticket))

    def complete_columns(self, ticket: _Ticket) -> dict[str, np.ndarray]:
        """:meth:`complete` as a dict of column arrays (no DataFrame built)."""
        parts: list[dict[str, np.ndarray]] = []
        first_error: AnalysisProcessError | None = None
        for seq in ticket.seqs:
            got = self._result(seq)
            if isinstance(got, AnalysisProcessError):
                first_error = first_error or got
            else:
                parts.append(got)
        if first_error is not None:
            raise first_error
        if len(parts) == 1:
            return parts[0]
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    def analyze(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> pd.DataFrame:
        """Localization rows, with track ids, of a batch (both stages at once)."""
        return self.complete(self.prepare(planes, indices, meta))

    def analyze_columns(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> dict[str, np.ndarray]:
        """:meth:`analyze` as a dict of column arrays."""
        return self.complete_columns(self.prepare(planes, indices, meta))

    def finish(self, timeout_s: float = 600.0) -> pd.DataFrame | None:
        """The per-track summary of the run; the child's stage timings land in
        :attr:`timings`. The process keeps running until :meth:`close`."""
        summary, timings = self._ask(
            ("finish",), "finished", timeout_s, "summarizing tracks"
        )
        self.timings = {k: float(v) for k, v in timings.items()}
        return summary

    def summarize(
        self, locs: pd.DataFrame, frame_positions: np.ndarray | None = None
    ) -> pd.DataFrame | None:
        """The per-track summary of localizations ``locs`` (e.g. those a run
        store holds), made in this process: it works when the child has died,
        and with ``keep_rows=False`` the child keeps no rows for
        :meth:`finish` (see :class:`~axialtrack.pipeline.TrackingAnalyzer`).
        ``frame_positions``: the field of every frame."""
        from axialtrack.pipeline import summarize_linked

        return summarize_linked(
            locs,
            frame_interval_s=self.frame_interval_s,
            axial_scale=self.axial_scale,
            frame_positions=frame_positions,
        )

    def reset(self, timeout_s: float = 60.0) -> None:
        """Start a new run in the child (see
        :meth:`TrackingAnalyzer.reset <axialtrack.pipeline.TrackingAnalyzer.reset>`),
        after the batches already sent."""
        self._ask(("reset",), "reset", timeout_s, "starting a new run")
        self.n_tracks = 0
        self.n_localizations = 0
        self.timings = {}

    def _ask(self, msg: tuple, kind: str, timeout_s: float, doing: str) -> Any:
        """Send ``msg`` to the child and wait for its ``kind`` answer (after the
        answers to the batches sent before it)."""
        self._check_open()
        with self._send_lock:
            try:
                self._connection().send(msg)
            except OSError as exc:
                raise self._gone(doing) from exc
        return self._expect(kind, timeout_s)

    def close(self) -> None:
        """Stop the child and free the shared memory (idempotent)."""
        self._closed = True
        with self._free_cv:
            self._free_cv.notify_all()
        self._finalizer()

    def __enter__(self) -> AnalysisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise AnalysisProcessError("the analysis process is closed")

    def _connection(self) -> Connection:
        if self._conn is None:
            raise AnalysisProcessError("the analysis process is not connected")
        return self._conn

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _gone(self, doing: str) -> AnalysisProcessError:
        if self._fatal is not None:  # the child said why before it went
            return self._fatal
        code = None if self._proc is None else self._proc.poll()
        return AnalysisProcessError(
            f"the analysis process (pid {self.pid}) exited"
            + (f" with code {code}" if code is not None else "")
            + f" while {doing}"
        )

    def _take_slot(self) -> int:
        """A free slot; while none is, read the child's answers (a slot comes
        back with a batch's rows, or earlier with ``"free"`` once the child has
        prepared it) unless another thread is reading them already."""
        while True:
            with self._free_cv:
                if self._free:
                    return self._free.pop()
                self._check_open()
            if self._fatal is not None:
                raise self._fatal
            if self._recv_lock.acquire(blocking=False):
                try:
                    # reads what the child sent before it went, else raises
                    self._pump(0.5, "waiting for a free slot")
                finally:
                    self._recv_lock.release()
            else:
                with self._free_cv:
                    if not self._free:
                        self._free_cv.wait(0.5)
                if not self._alive() and not self._free:
                    raise self._gone("waiting for a free slot")

    def _give_slot(self, seq: int) -> None:
        slot = self._slot_of.pop(seq, None)
        if slot is not None:
            with self._free_cv:
                self._free.append(slot)
                self._free_cv.notify()

    def _pump(self, timeout_s: float, doing: str) -> Any:
        """Read one message, if one comes within ``timeout_s`` (hold
        ``_recv_lock``). Batch answers are filed; any other message is
        returned."""
        conn = self._connection()
        if not conn.poll(timeout_s):
            if not self._alive() and not conn.poll(0):
                raise self._gone(doing)
            return None
        try:
            msg = conn.recv()
        except (EOFError, OSError) as exc:
            raise self._gone(doing) from exc
        self._last_answer = time.monotonic()
        kind = msg[0]
        if kind == "free":
            self._give_slot(msg[1])
        elif kind == "rows":
            _, got, cols, n_tracks, notices = msg
            self.n_tracks = n_tracks
            self.n_localizations += len(cols["frame"])
            self._results[got] = cols
            self._give_slot(got)
            # last: a warning turned into an error here loses nothing
            _reissue(notices)
        elif kind == "error" and msg[1] >= 0:
            _, got, err = msg
            self._results[got] = self._child_error(err)
            self._give_slot(got)
        else:
            if kind == "error":  # the child failed as a whole
                self._fatal = self._child_error(msg[2])
            return msg
        return None

    def _result(self, seq: int) -> dict[str, np.ndarray] | AnalysisProcessError:
        """The answer to batch ``seq`` (answers come in the order batches were
        sent)."""
        since = time.monotonic()
        while True:
            with self._recv_lock:
                if seq in self._results:
                    return self._results.pop(seq)
                msg = self._pump(0.5, f"analyzing batch {seq}")
                silent = time.monotonic() - max(since, self._last_answer)
            if msg is None and silent > self.answer_timeout_s:
                raise AnalysisProcessError(
                    f"the analysis process (pid {self.pid}) sent nothing for "
                    f"{silent:.0f} s while analyzing batch {seq}: it is taken as "
                    "hung (answer_timeout_s)"
                )
            if msg is not None and msg[0] == "error":  # the child failed as a whole
                raise self._child_error(msg[2])
            if msg is not None:  # pragma: no cover - protocol guard
                raise AnalysisProcessError(
                    f"unexpected message {msg[0]!r} from the analysis process"
                )

    def _expect(self, kind: str, timeout_s: float) -> Any:
        doing = f"waiting for {kind!r}"
        deadline = time.monotonic() + timeout_s
        msg = None
        while msg is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AnalysisProcessError(
                    f"the analysis process gave no answer in {timeout_s:g} s "
                    f"while {doing}"
                )
            with self._recv_lock:
                msg = self._pump(min(left, 0.5), doing)
        if msg[0] == "error":
            raise self._child_error(msg[2])
        if msg[0] != kind:  # pragma: no cover - protocol guard
            raise AnalysisProcessError(f"expected {kind!r} from child, got {msg[0]!r}")
        return msg[1] if len(msg) == 2 else msg[1:]

    @staticmethod
    def _child_error(err: tuple[str, str, str]) -> AnalysisProcessError:
        name, text, tb = err
        out = AnalysisProcessError(f"{name}: {text}")
        with contextlib.suppress(AttributeError):
            out.add_note(f"in the analysis process:\n{tb}")
        return out

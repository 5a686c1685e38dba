"""The writer's thread roles: the frame thread (dispatches frames to the I/O
threads and schedules commits), the I/O threads (encode and write one frame's
chunk each) and the table thread (writes localization batches once their frames
are committed). Functions of a :class:`~axialtrack.store.writer.RunWriter`.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

import numpy as np

from axialtrack.store._tables import round_up
from axialtrack.store.layout import (
    frame_window_sample,
)
from axialtrack.store.options import (
    _ANALYZED_COL,
)

if TYPE_CHECKING:
    from axialtrack.store.writer import RunWriter

_STOP = object()

_DONE = 1

_FRAME = 2

_ANALYZED = 3

_TICK = 4

_ROWS = 5


#: frames sampled for the display window: 0, 1, 2, 4, ... and then every N-th
_WINDOW_EVERY = 256


def fail(w: RunWriter, exc: BaseException, doing: str) -> None:
    with w._rows_cv:
        if w._failure is None:  # the first failure is the one reported
            w._failure = (exc, doing)
        w._rows_cv.notify_all()


def guarded(w: RunWriter, loop: Callable[[], None], doing: str) -> Callable[[], None]:
    """``loop`` for a writer thread: an error it does not handle itself is
    the writer's failure (reported by the next call and by close()), not a
    thread that ends in silence."""

    def run() -> None:
        try:
            loop()
        except BaseException as exc:
            w._fail(exc, doing)

    return run


def write_job(w: RunWriter, index: int, slot: int, t_in: float) -> None:
    t0 = time.perf_counter()
    try:
        if w._failure is None:
            nbytes = w._sink.write(index, w._pool[slot])
            t1 = time.perf_counter()
            if index & (index - 1) == 0 or index % _WINDOW_EVERY == 0:
                # frames 0, 1, 2, 4, 8, ... then every _WINDOW_EVERY-th
                sample = frame_window_sample(w._pool[slot])
                with w._stats_lock:
                    w._window_samples.append(sample)
                    w._ome_dirty = True
            with w._stats_lock:
                w._write_times.append(t1 - t0)
                w._latencies.append(t1 - t_in)
                w._bytes_written += nbytes
            err: BaseException | None = None
        else:
            err = None
            index = -1
    except BaseException as exc:  # reported through the frame thread
        err = exc
        # and recorded before the buffer is free again, so a frame that
        # waited for it is refused, not accepted and then dropped
        w._fail(exc, f"writing frame {index}")
    finally:
        w._free.put(slot)
    w._frame_q.put((_DONE, index, err))


def frame_loop(w: RunWriter) -> None:
    """Dispatch frames to the I/O threads; schedule commits on the committer.

    Commits run on their own thread so that a slow metadata write (a file
    system stall) never holds up frames on their way to the I/O threads.
    Frame metadata rows stay here (``pending``, starting at frame
    ``pending_base``) until the commit that writes them has succeeded.
    """
    _FrameLoop(w).run()


class _FrameLoop:
    """The frame thread's state and steps (see :func:`frame_loop`)."""

    def __init__(self, w: RunWriter) -> None:
        self.w = w
        self.interval = w.options.commit_interval_s
        self.block = w.options.time_block
        self.pending: list[tuple] = []
        self.pending_base = 0
        self.done: set[int] = set()
        self.next_done = 0  # frames [0, next_done) are on disk
        self.inflight = 0
        self.stopping = False
        self.last_commit = time.perf_counter()
        # flags of rows past pending
        self.deferred: list[tuple[np.ndarray, bool]] = []
        self.commit_fut: Future[None] | None = None
        self.commit_k = 0
        self.commit_updates: list[tuple[np.ndarray, bool]] = []
        self.grow_fut: Future[None] | None = None
        # flag changes waiting for the rows appended before them to be committed
        self.waiting: deque[tuple[int, np.ndarray, bool]] = deque()

    def apply_flags(self, idx: np.ndarray, value: bool) -> None:
        # rows of a commit in flight are written already: change them
        # with the next commit, like older rows
        first_free = self.pending_base + (self.commit_k if self.commit_fut else 0)
        rel = idx - self.pending_base
        mine = (idx >= first_free) & (rel < len(self.pending))
        pending = self.pending
        for r in rel[mine]:
            row = pending[r]
            pending[r] = (*row[:_ANALYZED_COL], value, *row[_ANALYZED_COL + 1 :])
        if (~mine).any():
            self.deferred.append((idx[~mine], value))

    def release_flags(self) -> None:
        # in order, so that later changes of a frame win
        rows = self.w._committed_rows
        while self.waiting and self.waiting[0][0] <= rows:
            _, idx, value = self.waiting.popleft()
            self.apply_flags(idx, value)

    def settle(self, wait: bool) -> bool:
        """Account for the commit in flight; True if none is in flight now."""
        fut = self.commit_fut
        if fut is None:
            return True
        if not wait and not fut.done():
            return False
        exc = fut.exception()
        self.commit_fut = None
        if exc is not None:
            self.w._fail(exc, "committing frames")
            # its rows stay pending and its flag changes deferred: the last
            # (best-effort) commit writes what this one did not, once
            self.deferred = self.commit_updates + self.deferred
            return True
        del self.pending[: self.commit_k]
        self.pending_base += self.commit_k
        return True

    def schedule(self) -> None:
        w = self.w
        k = self.next_done - self.pending_base
        if k <= 0 and not self.deferred and not w._attrs_dirty:
            return
        self.commit_k = max(k, 0)
        rows = self.pending[: self.commit_k]
        self.commit_updates, self.deferred = self.deferred, []
        fut = w._committer.submit(
            w._commit, self.next_done, rows, self.commit_updates, self.pending_base
        )
        self.commit_fut = fut
        # wake this loop when the commit is done
        fut.add_done_callback(lambda _: w._frame_q.put((_TICK,)))

    def next_item(self) -> object:
        """The next queue item; a tick when a commit is due and none came."""
        w = self.w
        if self.commit_fut is not None:
            self.settle(wait=False)
        uncommitted = (
            w._failure is None
            and self.commit_fut is None
            and (
                self.next_done > w._committed_frames
                or bool(self.deferred)
                or w._attrs_dirty
            )
        )
        timeout = None  # a commit in flight wakes the loop when done
        if uncommitted:
            timeout = max(0.0, self.last_commit + self.interval - time.perf_counter())
        try:
            return w._frame_q.get(timeout=timeout)
        except queue.Empty:
            return (_TICK,)

    def grow_for(self, index: int) -> None:
        """Make room for frame ``index``: grow ahead, on the committer thread,
        so that a slow metadata write does not hold up frames."""
        w = self.w
        if self.grow_fut is None and index >= w._capacity - self.block // 2:
            self.grow_fut = w._committer.submit(w._grow_frames, w._capacity + 1)
        if index >= w._capacity and self.grow_fut is not None:
            self.grow_fut.result()
        if self.grow_fut is not None and self.grow_fut.done():
            self.grow_fut.result()
            self.grow_fut = None
        if index >= w._capacity:
            w._grow_frames(index + 1)

    def on_frame(self, item: tuple) -> bool:
        """Send a frame to the I/O threads; False if it is refused (the
        writer failed)."""
        w = self.w
        _, index, slot, row, t_in = item
        if w._failure is not None:
            w._free.put(slot)
            return False
        try:
            self.grow_for(index)
        except BaseException as exc:
            self.grow_fut = None
            w._fail(exc, f"growing the frame array to frame {index}")
            w._free.put(slot)
            return False
        self.pending.append(row)
        self.inflight += 1
        w._io.submit(w._write_job, index, slot, t_in)
        return True

    def on_done(self, item: tuple) -> None:
        w = self.w
        self.inflight -= 1
        _, index, err = item
        if err is not None:
            w._fail(err, f"writing frame {index}")
        elif index >= 0:
            self.done.add(index)
            w._n_written += 1
            while self.next_done in self.done:
                self.done.discard(self.next_done)
                self.next_done += 1

    def finish(self) -> None:
        """The last commit, once every frame is written: after a failure too
        (best effort) for the frames fully written before it; a failed commit
        changes nothing."""
        # flags still waiting for their rows: close() commits them after the
        # last rows (or never, if those are not written)
        self.w._late_flags = list(self.waiting)
        self.settle(wait=True)
        failed = self.w._failure is not None
        self.schedule()
        if self.commit_fut is not None:
            if failed:
                with contextlib.suppress(BaseException):
                    self.commit_fut.result()
                self.commit_fut = None
            else:
                self.settle(wait=True)

    def run(self) -> None:
        w = self.w
        while True:
            item = self.next_item()
            if item is _STOP:
                self.stopping = True
            else:
                assert isinstance(item, tuple)
                if item[0] == _FRAME:
                    if not self.on_frame(item):
                        continue  # refused: its buffer is free again
                elif item[0] == _DONE:
                    self.on_done(item)
                elif item[0] == _ANALYZED:
                    self.waiting.append((item[3], item[1], item[2]))
            self.release_flags()
            now = time.perf_counter()
            if self.stopping and self.inflight == 0 and w._frame_q.empty():
                self.finish()
                return
            if (
                w._failure is None
                and now - self.last_commit >= self.interval
                and self.settle(wait=False)
            ):
                self.schedule()
                self.last_commit = now


def grow_frames(w: RunWriter, need: int) -> None:
    block = w.options.time_block
    new = round_up(max(need, w._capacity + block), block)
    # the sink's handle grows; the shape on disk stays the committed one
    # (set by _commit), so that readers never see uncommitted frames
    w._sink.resized(new)
    w._capacity = new


def table_loop(w: RunWriter) -> None:
    """Write localization batches, in order, once their frames are committed.

    A batch is written only when every frame it refers to is committed
    (``frame < n_frames``), so a reader (or a crash) never has rows of a
    frame it cannot read. When the writer stops (after its last frame
    commit) every batch left is written; after a failure, only those of
    committed frames.
    """
    interval = w.options.table_flush_interval_s
    batches: deque[tuple[dict[str, np.ndarray], int, int]] = deque()
    last_flush = time.perf_counter()
    stopping = False

    def ready() -> int:
        """How many of the first batches may be written now."""
        n_frames = w._committed_frames
        count = 0
        for _, _, last in batches:
            if last >= n_frames and not (stopping and w._failure is None):
                break
            count += 1
        return count

    while True:
        n_ready = ready()
        timeout = None  # woken by new batches, frame commits and the stop
        if n_ready and w._failure is None:
            timeout = max(0.0, last_flush + interval - time.perf_counter())
        try:
            item = w._table_q.get(timeout=timeout)
        except queue.Empty:
            item = None
        if item is _STOP:
            stopping = True
        elif item is not None:
            batches.append((item[1], item[2], item[3]))
        n_ready = ready()
        now = time.perf_counter()
        rows_ready = sum(batches[i][1] for i in range(n_ready))
        due = now - last_flush >= interval or rows_ready >= w.options.table_chunk
        if n_ready and (due or stopping):
            out = [batches.popleft() for _ in range(n_ready)]
            k = sum(b[1] for b in out)
            if w._failure is None:
                try:
                    w._flush_rows(out, k)
                except BaseException as exc:
                    w._fail(exc, "writing localizations")
            else:
                # best effort, as for frames (a failed flush changes nothing)
                with contextlib.suppress(BaseException):
                    w._flush_rows(out, k)
            with w._rows_cv:
                w._pending_rows -= k
                w._rows_cv.notify_all()
            last_flush = now
            w._frame_q.put((_TICK,))  # flags waiting for these rows
        if stopping and w._table_q.empty() and not ready():
            # what is left belongs to frames that were never committed
            # (the writer failed): it is not written
            k = sum(b[1] for b in batches)
            batches.clear()
            with w._rows_cv:
                w._pending_rows -= k
                w._rows_cv.notify_all()
            break


def flush_rows(
    w: RunWriter, batches: Sequence[tuple[dict[str, np.ndarray], int, int]], k: int
) -> None:
    locs = w._locs
    for name in w._loc_schema:
        if name not in locs.arrays:
            locs.add_column(name, w._loc_schema[name])
    cols = {
        name: np.concatenate([b[name] for b, _, _ in batches]) for name in locs.columns
    }
    locs.append(cols, k)
    locs.group.update_attributes(w._table_attrs(locs))
    w._committed_rows = locs.n

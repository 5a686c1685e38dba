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
    interval = w.options.commit_interval_s
    pending: list[tuple] = []
    pending_base = 0
    done: set[int] = set()
    next_done = 0  # frames [0, next_done) are on disk
    inflight = 0
    stopping = False
    last_commit = time.perf_counter()
    deferred: list[tuple[np.ndarray, bool]] = []  # flags of rows past pending
    commit_fut: Future[None] | None = None
    commit_k = 0
    commit_updates: list[tuple[np.ndarray, bool]] = []
    grow_fut: Future[None] | None = None
    block = w.options.time_block
    # flag changes waiting for the rows appended before them to be committed
    waiting: deque[tuple[int, np.ndarray, bool]] = deque()

    def apply_flags(idx: np.ndarray, value: bool) -> None:
        # rows of a commit in flight are written already: change them
        # with the next commit, like older rows
        first_free = pending_base + (commit_k if commit_fut else 0)
        rel = idx - pending_base
        mine = (idx >= first_free) & (rel < len(pending))
        for r in rel[mine]:
            row = pending[r]
            pending[r] = (*row[:_ANALYZED_COL], value, *row[_ANALYZED_COL + 1 :])
        if (~mine).any():
            deferred.append((idx[~mine], value))

    def release_flags() -> None:
        # in order, so that later changes of a frame win
        rows = w._committed_rows
        while waiting and waiting[0][0] <= rows:
            _, idx, value = waiting.popleft()
            apply_flags(idx, value)

    def settle(wait: bool) -> bool:
        """Account for the commit in flight; True if none is in flight now."""
        nonlocal commit_fut, pending_base, deferred
        if commit_fut is None:
            return True
        if not wait and not commit_fut.done():
            return False
        exc = commit_fut.exception()
        commit_fut = None
        if exc is not None:
            w._fail(exc, "committing frames")
            # its rows stay pending and its flag changes deferred: the last
            # (best-effort) commit writes what this one did not, once
            deferred = commit_updates + deferred
            return True
        del pending[:commit_k]
        pending_base += commit_k
        return True

    def schedule() -> None:
        nonlocal commit_fut, commit_k, deferred, commit_updates
        k = next_done - pending_base
        if k <= 0 and not deferred and not w._attrs_dirty:
            return
        commit_k = max(k, 0)
        rows = pending[:commit_k]
        commit_updates, deferred = deferred, []
        commit_fut = w._committer.submit(
            w._commit, next_done, rows, commit_updates, pending_base
        )
        # wake this loop when the commit is done
        commit_fut.add_done_callback(lambda _: w._frame_q.put((_TICK,)))

    while True:
        if commit_fut is not None:
            settle(wait=False)
        uncommitted = (
            w._failure is None
            and commit_fut is None
            and (next_done > w._committed_frames or bool(deferred) or w._attrs_dirty)
        )
        timeout = None  # a commit in flight wakes the loop when done
        if uncommitted:
            timeout = max(0.0, last_commit + interval - time.perf_counter())
        try:
            item = w._frame_q.get(timeout=timeout)
        except queue.Empty:
            item = (_TICK,)
        if item is _STOP:
            stopping = True
        elif item[0] == _FRAME:
            _, index, slot, row, t_in = item
            if w._failure is not None:
                w._free.put(slot)
                continue
            try:
                # grow ahead, on the committer thread, so that a slow
                # metadata write does not hold up frames
                if grow_fut is None and index >= w._capacity - block // 2:
                    grow_fut = w._committer.submit(w._grow_frames, w._capacity + 1)
                if index >= w._capacity and grow_fut is not None:
                    grow_fut.result()
                if grow_fut is not None and grow_fut.done():
                    grow_fut.result()
                    grow_fut = None
                if index >= w._capacity:
                    w._grow_frames(index + 1)
            except BaseException as exc:
                grow_fut = None
                w._fail(exc, f"growing the frame array to frame {index}")
                w._free.put(slot)
                continue
            pending.append(row)
            inflight += 1
            w._io.submit(w._write_job, index, slot, t_in)
        elif item[0] == _DONE:
            inflight -= 1
            _, index, err = item
            if err is not None:
                w._fail(err, f"writing frame {index}")
            elif index >= 0:
                done.add(index)
                w._n_written += 1
                while next_done in done:
                    done.discard(next_done)
                    next_done += 1
        elif item[0] == _ANALYZED:
            waiting.append((item[3], item[1], item[2]))
        release_flags()
        now = time.perf_counter()
        drained = stopping and inflight == 0 and w._frame_q.empty()
        if drained:
            # flags still waiting for their rows: close() commits them after
            # the last rows (or never, if those are not written)
            w._late_flags = list(waiting)
            # the last commit: after a failure too (best effort) for the
            # frames fully written before it; a failed commit changes nothing
            settle(wait=True)
            failed = w._failure is not None
            schedule()
            if commit_fut is not None:
                if failed:
                    with contextlib.suppress(BaseException):
                        commit_fut.result()
                    commit_fut = None
                else:
                    settle(wait=True)
            break
        if w._failure is None and now - last_commit >= interval and settle(wait=False):
            schedule()
            last_commit = now


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

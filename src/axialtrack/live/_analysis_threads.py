"""The analysis threads of the live runner: batches taken from the ring by
deadline, ``live-detect`` (a staged analyzer's ``prepare``) one batch ahead of
``live-analyze`` (inference, linking, rows to the writer, frames marked
analyzed); a failure stops the analysis, never the recording.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from axialtrack.store import (
    FrameMeta,
    StoreClosedError,
    StoreError,
    StoreWriteError,
)

from ._protocols import (
    _as_columns,
    _columns_variant,
    _n_rows,
    _rows_before,
)
from ._state import _RunState

logger = logging.getLogger("axialtrack.live.runner")

#: end of a thread's queue
_DONE = object()


class _AnalysisThreads(_RunState):
    """The runner's analysis stages (a base of
    :class:`~axialtrack.live.LiveRunner`)."""

    def _take_batch(self) -> list[tuple[int, int, FrameMeta, float]]:
        cfg = self.config
        cv = self._ana_cv
        q = self._ana_q
        with cv:
            while not q and not self._acq_done:
                cv.wait(0.1)
            if not q:
                return []
            # the oldest queued frame waits at most batch_deadline_s (from its
            # arrival, not from now: frames queued while the previous batch was
            # analyzed are taken at once)
            now = time.perf_counter()
            deadline = min(q[0][3], now) + cfg.batch_deadline_s
            while len(q) < cfg.max_batch_frames and not self._acq_done:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                cv.wait(left)
            n = min(len(q), cfg.max_batch_frames)
            return [q.popleft() for _ in range(n)]

    def _take_planes(
        self,
    ) -> tuple[np.ndarray, np.ndarray, list[FrameMeta], list[float]] | None:
        """The next batch copied out of the ring (slots freed); None at the end."""
        ring = self._ring
        while True:
            batch = self._take_batch()
            if not batch:
                return None
            slots = [b[1] for b in batch]
            try:
                planes = ring.frames[slots]  # a copy: the slots are free at once
            finally:
                for s in slots:
                    ring.release(s)
            if self._analysis_stopped:
                continue  # drain the queue; nothing more is analyzed
            indices = np.array([b[0] for b in batch], dtype=np.int64)
            return planes, indices, [b[2] for b in batch], [b[3] for b in batch]

    def _analysis_failed(self, indices: np.ndarray, exc: Exception) -> None:
        if isinstance(exc, (StoreWriteError, StoreClosedError)):
            self._analysis_stopped = True
            self._analysis_broken = True
            self._fail(exc)  # the store itself failed: no frame can be written
            return
        self._analysis_down(
            f"the analyzer failed on frames {indices[0]}..{indices[-1]}",
            exc,
            int(indices[0]),
        )

    def _analysis_down(
        self, what: str, exc: BaseException, first: int | None = None
    ) -> None:
        """The analysis stopped for good: the recording goes on without it.

        Frames from ``first`` (the failed batch's first; default: the one after
        the last analyzed) on keep ``analyzed = false``; batches before it that
        are already prepared are still completed; queued frames are let go
        (their ring slots freed).
        """
        with self._fail_lock:
            if self._analysis_error is not None:
                logger.error("live: the analysis also failed: %r", exc)
                return
            self._analysis_stopped = True
            self._analysis_broken = True
            at = self._last_analyzed_index + 1 if first is None else first
            self._analysis_failed_at = at
            self._analysis_error = f"{type(exc).__name__}: {exc}"
        with self._ana_cv:
            while self._ana_q:
                self._ring.release(self._ana_q.popleft()[1])
            self._ana_cv.notify_all()
        logger.error("live: %s: %r", what, exc)
        self._warn(
            f"The analysis stopped at frame {at} ({what}: {type(exc).__name__}: "
            f"{exc}). The recording goes on: every frame is stored, frames from "
            f"{at} on unanalyzed; run `axialtrack localize {self.writer.path} "
            "--model MODEL` afterwards to analyze them."
        )

    def _prepare_loop(self) -> None:
        """First analysis stage (staged analyzers): detection, one batch ahead."""
        analyzer: Any = self.analyzer
        try:
            while True:
                got = self._take_planes()
                if got is None:
                    break
                planes, indices, metas, t_host = got
                try:
                    prepared = analyzer.prepare(planes, indices, metas)
                except Exception as exc:
                    self._analysis_failed(indices, exc)
                    continue
                self._stage_q.put((indices, t_host, prepared))
        finally:
            self._stage_q.put(_DONE)

    def _next_for_analysis(self) -> tuple[np.ndarray, list[float], Any] | None:
        if self._staged:
            item = self._stage_q.get()
            if item is _DONE:
                self._stage_drained = True
                return None
            return item
        got = self._take_planes()
        if got is None:
            return None
        planes, indices, metas, t_host = got
        return indices, t_host, (planes, metas)

    def _analyze_loop(self) -> None:
        try:
            self._analyze_batches()
        finally:
            # whatever happened here, never leave the detect thread blocked on
            # the full hand-off queue (run() joins it)
            while self._staged and not self._stage_drained:
                if self._stage_q.get() is _DONE:
                    self._stage_drained = True

    def _analyze_batches(self) -> None:
        analyzer: Any = self.analyzer
        # the analyzers of this package hand over plain column arrays, which the
        # writer takes as they are (no DataFrame to build per batch)
        run_batch = _columns_variant(
            analyzer, "complete" if self._staged else "analyze"
        )
        w = self.writer
        counts_tracks = isinstance(
            getattr(analyzer, "n_tracks", None), (int, np.integer)
        )
        while True:
            item = self._next_for_analysis()
            if item is None:
                break
            indices, t_host, work = item
            if self._analysis_stopped and not (
                0 <= indices[-1] < self._analysis_failed_at
            ):
                continue  # batches prepared before a failure are still done
            try:
                if self._staged:
                    table = run_batch(work)
                else:
                    table = run_batch(work[0], indices, work[1])
                if self._writer_failed:
                    # the store holds frames 0..frames_appended-1 only
                    table = _rows_before(table, w.frames_appended)
                n = _n_rows(table)
                if n:
                    w.append_localizations(table)
                    self._rows += n
                    if "refined" in table:
                        self._refined += int(np.count_nonzero(table["refined"]))
                    if (msg := self._psf_check.update(table)) is not None:
                        self._warn(msg)
                    # counted here only for an analyzer that does not count
                    # them (the set grows with every track of the run)
                    if not counts_tracks and "track_id" in table:
                        ids = np.unique(np.asarray(table["track_id"]))
                        self._track_ids.update(int(i) for i in ids if i >= 0)
            except Exception as exc:
                self._analysis_failed(indices, exc)
                continue
            t_done = time.perf_counter()
            self._t_last_analyzed = t_done
            with self._lat_lock:
                self._lat.extend(t_done - t for t in t_host)
            self._frames_analyzed += len(indices)
            self._last_analyzed_index = int(indices[-1])
            self._pending_analyzed.append(indices)
            self._flush_analyzed()
            if len(self.events.batchAnalyzed):
                # after the latency is taken: a subscriber's time is its own
                self._emit(
                    self.events.batchAnalyzed,
                    np.asarray(indices, dtype=np.int64),
                    _as_columns(table),
                )

    def _flush_analyzed(self) -> None:
        """Mark analyzed the frames the writer has (the rest: next time)."""
        if not self._pending_analyzed:
            return
        idx = np.concatenate(self._pending_analyzed)
        n = self.writer.frames_appended
        ready, rest = idx[idx < n], idx[idx >= n]
        self._pending_analyzed = [rest] if rest.size else []
        if ready.size:
            try:
                self.writer.set_analyzed(ready, True)
            except StoreError as exc:
                self._fail(exc)

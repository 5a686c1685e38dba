"""Online linking of 3D localizations into tracks.

:class:`OnlineLinker` takes the localizations of one frame at a time and returns
their track ids at once (no look-ahead, no lag), so ids can be written with the
localizations while the camera runs. Between consecutive pushes it solves a global
frame-to-frame assignment:

- candidates: every (open track, new localization) pair within
  ``search_range_um``, the distance measured in ``(x, y, z / z_scale)``;
- cost of a link: the squared (scaled) distance, also across a gap (dividing it
  by the gap length, as a diffusion likelihood would, favoured gap-bridging over
  present tracks and linked slightly worse on dense simulated data: 99.77% vs
  99.79% of links correct);
- cost of not linking: ``search_range_um**2`` for a track left open, nothing
  for a localization that starts a new track (trackpy's null candidate), so
  any candidate link beats leaving both ends open and only competition between
  candidates decides;
- isolated candidates (one track, one localization, no competitor) are linked
  directly; the rest are solved jointly as one rectangular assignment problem
  (:func:`scipy.optimize.linear_sum_assignment` on the usual augmented
  ``(n + m) x (m + n)`` matrix).

A track that gets no localization stays open for ``memory`` more frames (gap
closing); frame numbers, not pushes, count, so a gap in the frame numbers counts
as missed frames, except the frames declared not analyzed (``skipped=`` of
:meth:`OnlineLinker.push`, ``analyzed=`` of :meth:`OnlineLinker.push_rows`). No
motion predictor is used: for Brownian motion the best prediction of the next
position is the last one.

Why not :class:`trackpy.linking.Linker`: its track counter is a class attribute
shared by every linker in the process and reset by ``init_level``, so starting a second
linker (a second live run, a reprocessing job) makes the first one issue duplicate
ids; its memory counts pushes rather than frame numbers; and it keeps a Python
object per point, which makes it 2-3x slower per frame than this vectorized
linker with 100 particles (``benchmarks/bench_link.py``, ``docs/tracks.md``).
:func:`trackpy.link` is used as the offline reference in the benchmark.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = [
    "LinkConfig",
    "OnlineLinker",
    "PositionLinker",
    "drop_short_tracks",
    "link_table",
]

_POS_COLUMNS = ("x_um", "y_um", "z_um")
# above this many (track, localization) pairs, candidates come from a k-d tree
_BRUTE_FORCE_PAIRS = 40_000
_BIG = 1e12


class LinkConfig(BaseModel):
    """Settings of the online linker.

    Attributes
    ----------
    search_range_um : float
        Maximum displacement between two linked localizations (also across a gap),
        measured in ``(x, y, z / z_scale)``. For diffusion, a few times the RMS 3D
        step ``sqrt(6 D dt)`` of the fastest particle, and well below the typical
        distance between particles.
    memory : int
        Number of consecutive frames a particle may be missing and keep its id: a
        track last seen in frame ``f`` can continue in frames up to
        ``f + memory + 1``. Frames declared skipped (not analyzed, see
        :meth:`OnlineLinker.push`) do not count.
    z_scale : float
        Distances use ``z / z_scale``: with ``z_scale > 1`` an axial displacement
        counts less than a lateral one of the same size (use it when the axial
        localization error is much larger than the lateral one, e.g. 3-5x). The
        search range is then an ellipsoid with semi-axes
        ``(r, r, r * z_scale)``.
    min_track_length : int
        Used by :func:`link_table` only (offline): tracks with fewer localizations
        get ``track_id = -1``. The online linker cannot know a track's final
        length when it issues the id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    search_range_um: float = Field(default=1.0, gt=0)
    memory: int = Field(default=3, ge=0)
    z_scale: float = Field(default=1.0, gt=0)
    min_track_length: int = Field(default=1, ge=1)


class OnlineLinker:
    """Frame-by-frame 3D linker with gap closing; ids are assigned immediately.

    Parameters
    ----------
    config : LinkConfig, optional
        Linking settings; defaults to ``LinkConfig()``.

    Examples
    --------
    >>> linker = OnlineLinker(LinkConfig(search_range_um=0.8, memory=2))
    >>> ids0 = linker.push(0, np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0]]))
    >>> ids1 = linker.push(1, np.array([[5.1, 5.0, 0.0], [0.1, 0.0, 0.1]]))
    >>> ids1.tolist()
    [1, 0]
    """

    def __init__(self, config: LinkConfig | None = None) -> None:
        self.config = config if config is not None else LinkConfig()
        self._scale = np.array([1.0, 1.0, 1.0 / self.config.z_scale])
        self._r = float(self.config.search_range_um)
        self._r2 = self._r * self._r
        self.reset()

    def reset(self) -> None:
        """Forget all tracks; the next id issued is 0 again."""
        self._pos = np.empty((0, 3))  # scaled position of each open track
        self._ids = np.empty(0, dtype=np.int64)
        self._last = np.empty(0, dtype=np.int64)  # frame each open track was seen
        self._next_id = 0
        self._frame: int | None = None
        self._offset = 0  # frames declared skipped so far

    def end_tracks(self) -> None:
        """End every open track: the next push starts new ones (ids go on from
        :attr:`n_tracks`). For a jump over frames analyzed elsewhere, which
        no track may cross."""
        self._pos = np.empty((0, 3))
        self._ids = np.empty(0, dtype=np.int64)
        self._last = np.empty(0, dtype=np.int64)

    @property
    def n_tracks(self) -> int:
        """Number of track ids issued so far (ids are ``0 .. n_tracks - 1``)."""
        return self._next_id

    @property
    def n_open(self) -> int:
        """Number of tracks that can still be continued (seen within ``memory``)."""
        return len(self._ids)

    @property
    def last_frame(self) -> int | None:
        """The frame of the latest push, or None before the first."""
        return self._frame

    def push(self, frame: int, xyz_um: np.ndarray, skipped: int = 0) -> np.ndarray:
        """Link the localizations of one frame to the open tracks.

        Parameters
        ----------
        frame : int
            Frame number; strictly larger than the previous push's (gaps allowed).
        xyz_um : np.ndarray
            ``(N, 3)`` positions ``(x, y, z)`` in micrometres; ``N`` may be 0. Rows
            with a non-finite coordinate are not linked (id ``-1``).
        skipped : int
            How many of the frames just before ``frame`` were not analyzed (the
            live runner skipped them): they do not count against ``memory``, so
            tracks continue across them.

        Returns
        -------
        np.ndarray
            ``(N,)`` int64 track ids in the order of ``xyz_um``.
        """
        frame = int(frame)
        if self._frame is not None and frame <= self._frame:
            raise ValueError(
                f"frames must be pushed in increasing order: got {frame} after "
                f"{self._frame}"
            )
        skipped = int(skipped)
        if skipped < 0 or (
            self._frame is not None and skipped > frame - self._frame - 1
        ):
            raise ValueError(
                f"skipped={skipped} frames before frame {frame} but the previous "
                f"push was frame {self._frame}"
            )
        self._frame = frame
        self._offset += skipped
        frame -= self._offset  # frames counted without the skipped ones
        xyz = np.asarray(xyz_um, dtype=np.float64)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            if xyz.size == 0:
                xyz = xyz.reshape(0, 3)
            else:
                raise ValueError(f"xyz_um must have shape (N, 3), got {xyz.shape}")
        n = len(xyz)

        # close tracks that have been missing for longer than memory
        if len(self._ids):
            keep = frame - self._last <= self.config.memory + 1
            if not keep.all():
                self._pos = self._pos[keep]
                self._ids = self._ids[keep]
                self._last = self._last[keep]
        out = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return out

        finite = np.isfinite(xyz).all(axis=1)
        det_idx = np.flatnonzero(finite)
        pts = xyz[det_idx] * self._scale
        m = len(pts)
        det_track = np.full(m, -1, dtype=np.int64)  # open-track row of each det

        k = len(self._ids)
        if k and m:
            rows, cols, cost = self._candidates(pts)
            if len(rows):
                r_link, c_link = self._assign(rows, cols, cost, k, m)
                det_track[c_link] = r_link

        linked = det_track >= 0
        ids = np.empty(m, dtype=np.int64)
        ids[linked] = self._ids[det_track[linked]]
        n_new = m - int(linked.sum())
        new_ids = self._new_ids(n_new)
        ids[~linked] = new_ids

        # update open tracks: continued ones move, new ones are appended
        t = det_track[linked]
        self._pos[t] = pts[linked]
        self._last[t] = frame
        if n_new:
            self._pos = np.concatenate([self._pos, pts[~linked]])
            self._ids = np.concatenate([self._ids, new_ids])
            self._last = np.concatenate(
                [self._last, np.full(n_new, frame, dtype=np.int64)]
            )
        out[det_idx] = ids
        return out

    def _new_ids(self, n: int) -> np.ndarray:
        """Ids for ``n`` new tracks (:class:`PositionLinker` shares one
        counter among its linkers)."""
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        return ids

    def _candidates(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate (track row, det column, cost) triplets within the search range."""
        k, m = len(self._pos), len(pts)
        if k * m <= _BRUTE_FORCE_PAIRS:
            # |p|^2 + |q|^2 - 2 p.q: one small matrix product, no (k, m, 3)
            # temporary; about a common origin, since positions include the
            # stage's (tens of mm), which would cancel away the precision
            origin = pts.mean(axis=0) if m else 0.0
            tp = self._pos - origin
            q = pts - origin
            d2 = (tp * tp).sum(axis=1)[:, None] + (q * q).sum(axis=1)[None, :]
            d2 -= 2.0 * (tp @ q.T)
            rows, cols = np.nonzero(d2 <= self._r2)
            # the exact distances of the candidates (the expansion rounds)
            diff = tp[rows] - q[cols]
            dist2 = (diff * diff).sum(axis=1)
            keep = dist2 <= self._r2
            rows, cols, dist2 = rows[keep], cols[keep], dist2[keep]
        else:
            tree_t = cKDTree(self._pos)
            tree_d = cKDTree(pts)
            sdm = tree_t.sparse_distance_matrix(tree_d, self._r, output_type="ndarray")
            rows = sdm["i"].astype(np.intp)
            cols = sdm["j"].astype(np.intp)
            dist2 = sdm["v"] ** 2
        return rows, cols, dist2

    def _assign(
        self, rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, k: int, m: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-cost assignment; returns linked (track rows, det columns)."""
        deg_r = np.bincount(rows, minlength=k)
        deg_c = np.bincount(cols, minlength=m)
        simple = (deg_r[rows] == 1) & (deg_c[cols] == 1)
        if simple.all():
            return rows, cols
        r_out = [rows[simple]]
        c_out = [cols[simple]]
        hard = ~simple
        ur, ri = _compact(rows[hard], k)
        uc, ci = _compact(cols[hard], m)
        nr, nc = len(ur), len(uc)
        big = np.full((nr + nc, nc + nr), _BIG)
        big[ri, ci] = cost[hard]
        big[np.arange(nr), nc + np.arange(nr)] = self._r2  # track left open
        big[nr + np.arange(nc), np.arange(nc)] = 0.0  # localization starts one
        big[nr:, nc:] = 0.0
        a, b = linear_sum_assignment(big)
        sel = (a < nr) & (b < nc)
        sel &= big[a, b] < _BIG
        r_out.append(ur[a[sel]])
        c_out.append(uc[b[sel]])
        return np.concatenate(r_out), np.concatenate(c_out)

    def push_rows(
        self,
        frames: np.ndarray,
        xyz_um: np.ndarray,
        analyzed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Track ids of localization rows of one or more frames (frame order).

        ``frames`` ``(N,)`` and ``xyz_um`` ``(N, 3)``; rows may come in any order
        within the frames; all frames must be later than the last one pushed.

        ``analyzed``: every frame analyzed in this batch, with or without rows
        (increasing). Frames missing from it between analyzed frames, and
        between the previous push and the first of them, were skipped and do
        not count against ``memory``. ``None``: only the frames with rows are
        pushed and every gap counts.
        """
        frames = np.asarray(frames).astype(np.int64, copy=False).reshape(-1)
        n = frames.shape[0]
        ids = np.full(n, -1, dtype=np.int64)
        order = np.argsort(frames, kind="stable")
        f_sorted = frames[order]
        groups: dict[int, np.ndarray] = {}
        if n:
            starts = np.flatnonzero(np.r_[True, f_sorted[1:] != f_sorted[:-1]])
            ends = np.r_[starts[1:], n]
            for s, e in zip(starts, ends, strict=True):
                groups[int(f_sorted[s])] = order[s:e]
        if analyzed is None:
            for f, idx in groups.items():
                ids[idx] = self.push(f, xyz_um[idx])
            return ids
        todo = np.asarray(analyzed, dtype=np.int64).reshape(-1)
        if not set(groups) <= set(todo.tolist()):
            raise ValueError("rows of frames that are not in `analyzed`")
        empty = np.zeros((0, 3))
        for f in todo.tolist():
            skipped = 0 if self._frame is None else f - self._frame - 1
            rows = groups.get(f)
            got = self.push(f, empty if rows is None else xyz_um[rows], skipped=skipped)
            if rows is not None:
                ids[rows] = got
        return ids

    def push_table(self, table: pd.DataFrame) -> pd.DataFrame:
        """Link the localizations of one or more frames, in frame order.

        Parameters
        ----------
        table : pd.DataFrame
            Localization rows with at least ``frame``, ``x_um``, ``y_um``, ``z_um``.
            All frames must be later than the last one pushed.

        Returns
        -------
        pd.DataFrame
            A copy of ``table`` (same index and row order) with ``track_id``
            (int64) filled.
        """
        out = table.copy()
        if len(out):
            frames = out["frame"].to_numpy()
            xyz = out[list(_POS_COLUMNS)].to_numpy(dtype=np.float64)
            ids = self.push_rows(frames, xyz)
        else:
            ids = np.zeros(0, dtype=np.int64)
        out["track_id"] = ids
        return out


def _compact(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique values of ``idx`` (all in ``[0, size)``) and each entry's rank."""
    mask = np.zeros(size, dtype=bool)
    mask[idx] = True
    rank = np.cumsum(mask) - 1
    return np.flatnonzero(mask), rank[idx]


def drop_short_tracks(table: pd.DataFrame, min_length: int) -> pd.DataFrame:
    """Set ``track_id = -1`` for tracks with fewer than ``min_length`` rows.

    Parameters
    ----------
    table : pd.DataFrame
        Localizations with a ``track_id`` column.
    min_length : int
        Minimum number of localizations a track keeps its id with.

    Returns
    -------
    pd.DataFrame
        A copy with short tracks unlinked; other ids are unchanged.
    """
    out = table.copy()
    tid = out["track_id"].to_numpy().astype(np.int64)
    ok = tid >= 0
    if min_length > 1 and ok.any():
        uniq, inv, counts = np.unique(tid[ok], return_inverse=True, return_counts=True)
        short = counts[inv] < min_length
        tid_ok = tid[ok]
        tid_ok[short] = -1
        tid[ok] = tid_ok
        del uniq
    out["track_id"] = tid
    return out


class PositionLinker:
    """One :class:`OnlineLinker` per position (field) of a multi-position run.

    A multi-position sequence visits its fields in turn; a particle of one field
    must never be linked to one of another, and a track's ``memory`` counts the
    frames of its own field only. Each position gets its own linker; the frames
    of the other positions between two of its frames count as skipped (as the
    live runner's skipped frames do), so frame gaps are counted in visits. Track
    ids are unique over all positions. With one position it behaves exactly as
    one :class:`OnlineLinker`.

    Parameters
    ----------
    config : LinkConfig, optional
        Linking settings, shared by every position.
    """

    def __init__(self, config: LinkConfig | None = None) -> None:
        self.config = config if config is not None else LinkConfig()
        self.reset()

    def reset(self) -> None:
        """Forget every position and track; the next id issued is 0 again."""
        self._linkers: dict[int, OnlineLinker] = {}
        self._next_id = 0

    def _alloc(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        return ids

    def linker(self, position: int) -> OnlineLinker:
        """The linker of ``position`` (made on first use)."""
        lk = self._linkers.get(position)
        if lk is None:
            lk = OnlineLinker(self.config)
            lk._new_ids = self._alloc  # type: ignore[method-assign]
            self._linkers[position] = lk
        return lk

    @property
    def n_tracks(self) -> int:
        """Number of track ids issued so far, over all positions."""
        return self._next_id

    @property
    def n_open(self) -> int:
        """Tracks that can still be continued, over all positions."""
        return sum(lk.n_open for lk in self._linkers.values())

    def end_tracks(self) -> None:
        """End every open track of every position (ids go on)."""
        for lk in self._linkers.values():
            lk.end_tracks()

    def push_rows(
        self,
        frames: np.ndarray,
        xyz_um: np.ndarray,
        analyzed: np.ndarray | None = None,
        positions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Track ids of localization rows (see :meth:`OnlineLinker.push_rows`).

        ``positions``: the position of each frame of ``analyzed`` (same
        length); ``None``, or ``analyzed`` ``None``: all at position 0.
        """
        frames = np.asarray(frames).astype(np.int64, copy=False).reshape(-1)
        if analyzed is None or positions is None:
            return self.linker(0).push_rows(frames, xyz_um, analyzed)
        todo = np.asarray(analyzed, dtype=np.int64).reshape(-1)
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.shape != todo.shape:
            raise ValueError(f"{len(pos)} positions for {len(todo)} analyzed frames")
        if len(pos) and (pos == pos[0]).all():
            return self.linker(int(pos[0])).push_rows(frames, xyz_um, todo)
        if len(frames) and not np.isin(frames, todo).all():
            raise ValueError("rows of frames that are not in `analyzed`")
        ids = np.full(frames.shape[0], -1, dtype=np.int64)
        # in frame order, a run of frames of one position at a time: the ids are
        # issued in the order a live run, batch by batch, issues them
        row_of = np.searchsorted(todo, frames)  # each row's place in `todo`
        order = np.argsort(row_of, kind="stable")
        bounds = np.searchsorted(row_of[order], np.arange(len(todo) + 1))
        cuts = np.r_[0, np.flatnonzero(pos[1:] != pos[:-1]) + 1, len(todo)]
        for a, b in itertools.pairwise(cuts):
            rows = order[bounds[a] : bounds[b]]
            ids[rows] = self.linker(int(pos[a])).push_rows(
                frames[rows], xyz_um[rows], todo[a:b]
            )
        return ids


def link_table(
    table: pd.DataFrame,
    config: LinkConfig | None = None,
    frame_positions: np.ndarray | None = None,
) -> pd.DataFrame:
    """Link a whole localization table offline with the online linker.

    Runs a fresh :class:`OnlineLinker` over all frames in order, so the ids equal
    those a live run with the same settings would have issued, then unlinks tracks
    shorter than ``config.min_track_length``.

    Parameters
    ----------
    table : pd.DataFrame
        Localizations (columns ``frame``, ``x_um``, ``y_um``, ``z_um``).
    config : LinkConfig, optional
        Linking settings.
    frame_positions : np.ndarray, optional
        The position (field) of every frame of the run, indexed by frame (e.g.
        a run store's ``frame_meta["position_index"]``): each position is
        linked on its own (:class:`PositionLinker`), every frame counting as
        analyzed.

    Returns
    -------
    pd.DataFrame
        A copy of ``table`` with ``track_id`` filled.
    """
    config = config if config is not None else LinkConfig()
    if frame_positions is None:
        out = OnlineLinker(config).push_table(table)
    else:
        positions = np.asarray(frame_positions, dtype=np.int64).reshape(-1)
        out = table.copy()
        frames = out["frame"].to_numpy().astype(np.int64)
        if len(frames) and frames.max() >= len(positions):
            raise ValueError(
                f"frame {frames.max()} has no position ({len(positions)} given)"
            )
        xyz = out[list(_POS_COLUMNS)].to_numpy(dtype=np.float64)
        out["track_id"] = PositionLinker(config).push_rows(
            frames, xyz, np.arange(len(positions)), positions
        )
    if config.min_track_length > 1:
        out = drop_short_tracks(out, config.min_track_length)
    return out

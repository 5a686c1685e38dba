"""How a virtual sample moves: the drift random walk and the diffusing
particles on one fixed time grid, generated lazily in chunks from the seed,
with Brownian-bridge refinement between grid points (see
:mod:`axialtrack.sim.sample`, "Time evolution").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:
    from collections.abc import Sequence


from ._emitters import DiffusingParticles, Drift

# depth of the Brownian-bridge refinement between simulation steps
_BRIDGE_LEVELS = 7


def _hash_mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _DriftEngine:
    """Lazily generated drift random walk on a fixed grid (full history)."""

    _CHUNK = 256

    def __init__(self, drift: Drift | None, rng: np.random.Generator) -> None:
        self.drift = drift or Drift()
        self._rng = rng
        self._d = self.drift.walk_d
        self._walk = np.zeros((1, 3))
        self._active = bool(np.any(self._d > 0))

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        t = np.asarray(t_s, dtype=float).reshape(-1)
        out = np.asarray(self.drift.velocity_um_s, dtype=float)[None, :] * t[:, None]
        if not self._active or t.size == 0:
            return out
        dt = self.drift.dt_s
        s = t / dt
        need = int(np.floor(s.max())) + 2
        if need > 50_000_000:
            raise ValueError(
                f"time {t.max():.6g} s is too far for the drift random walk; times "
                "are seconds since the start of the simulation"
            )
        while self._walk.shape[0] < need:
            steps = self._rng.standard_normal((self._CHUNK, 3)) * np.sqrt(
                2.0 * self._d * dt
            )
            self._walk = np.vstack([self._walk, self._walk[-1] + np.cumsum(steps, 0)])
        k = np.floor(s).astype(np.int64)
        f = (s - k)[:, None]
        out += (1.0 - f) * self._walk[k] + f * self._walk[k + 1]
        return out


@dataclass
class _Chunk:
    k0: int  # first grid step
    free: np.ndarray  # (C, N, 3) unwrapped positions
    ids: np.ndarray  # (C, N)


class _ParticleEngine:
    """All diffusing particles of a sample on one fixed time grid."""

    def __init__(
        self,
        groups: Sequence[DiffusingParticles],
        *,
        first_id: int,
        dt_s: float,
        history_s: float,
        max_gap_s: float,
        seed_seq: np.random.SeedSequence,
    ) -> None:
        self.dt = float(dt_s)
        self.chunk_steps = max(16, round(0.1 / self.dt))
        self.history_steps = math.ceil(history_s / self.dt)
        self.max_gap_steps = math.ceil(max_gap_s / self.dt)
        s_init, s_step, s_attr, s_restart, s_bridge = seed_seq.spawn(5)
        self._bridge_key = np.uint64(s_bridge.generate_state(1, dtype=np.uint64)[0])
        self._rng_init = np.random.default_rng(s_init)
        self._rng_step = np.random.default_rng(s_step)
        self._rng_attr = np.random.default_rng(s_attr)
        self._rng_restart = np.random.default_rng(s_restart)

        n = sum(g.n for g in groups)
        self.n = n
        lo, hi, d, med, sig = [], [], [], [], []
        for g in groups:
            cx, cy = g.center_um
            sx, sy = g.size_um
            lo.append(np.tile([cx - sx / 2, cy - sy / 2, g.depth_um[0]], (g.n, 1)))
            hi.append(np.tile([cx + sx / 2, cy + sy / 2, g.depth_um[1]], (g.n, 1)))
            d.append(g.draw_diffusion(self._rng_init, g.n))
            med.append(np.full(g.n, g.photons_per_s))
            sig.append(np.full(g.n, g.brightness_sigma))
        self.lo = np.concatenate(lo) if lo else np.zeros((0, 3))
        self.hi = np.concatenate(hi) if hi else np.zeros((0, 3))
        self.span = self.hi - self.lo
        self.d_slot = np.concatenate(d) if d else np.zeros(0)
        self._step_sd = np.repeat(np.sqrt(2.0 * self.d_slot * self.dt)[:, None], 3, 1)
        self._step_sd[:, 2] *= self.span[:, 2] > 0  # no z motion in a plane
        self._med = np.concatenate(med) if med else np.zeros(0)
        self._sig = np.concatenate(sig) if sig else np.zeros(0)

        # per-id attributes (index = id - first_id)
        self.first_id = int(first_id)
        self._n_ids = 0
        self._phot_arr = np.zeros(max(2 * n, 16))  # grown by doubling
        self._d_arr = np.zeros(max(2 * n, 16))

        self._chunks: list[_Chunk] = []
        self._next_chunk = 0
        self._restart_pending = False
        self._last_free = np.zeros((n, 3))
        self._last_ids = np.zeros(n, dtype=np.int64)
        self._last_cells = np.zeros((n, 2), dtype=np.int64)

    # -- ids
    def _new_ids(self, slots: np.ndarray) -> np.ndarray:
        """Ids (and brightness draws) for new particles entering ``slots``."""
        m = len(slots)
        start = self._n_ids
        ids = self.first_id + start + np.arange(m, dtype=np.int64)
        if start + m > self._phot_arr.size:
            cap = max(2 * self._phot_arr.size, start + m)
            self._phot_arr = np.resize(self._phot_arr, cap)
            self._d_arr = np.resize(self._d_arr, cap)
        self._phot_arr[start : start + m] = self._med[slots] * np.exp(
            self._sig[slots] * self._rng_attr.standard_normal(m)
        )
        self._d_arr[start : start + m] = self.d_slot[slots]
        self._n_ids = start + m
        return ids

    def _attr_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._phot_arr[: self._n_ids], self._d_arr[: self._n_ids]

    def _cells(self, free: np.ndarray) -> np.ndarray:
        return np.floor((free[..., :2] - self.lo[:, :2]) / self.span[:, :2]).astype(
            np.int64
        )

    def _fresh_positions(self, rng: np.random.Generator) -> np.ndarray:
        return self.lo + self.span * rng.random((self.n, 3))

    # -- generation
    def _generate_chunk(self) -> None:
        c = self._next_chunk
        C = self.chunk_steps
        n = self.n
        if c == 0 or self._restart_pending:
            start = self._fresh_positions(
                self._rng_init if c == 0 else self._rng_restart
            )
            self._restart_pending = False
            incr = self._rng_step.standard_normal((C - 1, n, 3)) * self._step_sd
            free = np.empty((C, n, 3))
            free[0] = start
            np.cumsum(incr, axis=0, out=free[1:])
            free[1:] += start
            prev_cells = self._cells(start)
            first_ids = self._new_ids(np.arange(n))
            cells = self._cells(free[1:])
            ids = np.empty((C, n), dtype=np.int64)
            ids[0] = first_ids
            ids[1:] = self._assign_ids(cells, prev_cells, first_ids)
        else:
            incr = self._rng_step.standard_normal((C, n, 3)) * self._step_sd
            free = np.cumsum(incr, axis=0)
            free += self._last_free
            cells = self._cells(free)
            ids = self._assign_ids(cells, self._last_cells, self._last_ids)
        self._chunks.append(_Chunk(k0=c * C, free=free, ids=ids))
        self._last_free = free[-1].copy()
        self._last_ids = ids[-1].copy()
        self._last_cells = self._cells(free[-1])
        self._next_chunk = c + 1

    def _assign_ids(
        self, cells: np.ndarray, prev_cells: np.ndarray, prev_ids: np.ndarray
    ) -> np.ndarray:
        """Ids ``(K, N)``: a new id wherever a particle changed periodic cell."""
        k, n = cells.shape[:2]
        shifted = np.concatenate([prev_cells[None], cells[:-1]], axis=0)
        changed = np.any(cells != shifted, axis=-1)  # (K, N)
        ids = np.broadcast_to(prev_ids, (k, n)).copy()
        if not changed.any():
            return ids
        steps, slots = np.nonzero(changed)  # step-major order
        new = self._new_ids(slots)
        marker = np.full((k, n), -1, dtype=np.int64)
        marker[steps, slots] = np.arange(len(new))
        # forward-fill the index of the latest change along time
        pos = np.where(marker >= 0, np.arange(k)[:, None], -1)
        np.maximum.accumulate(pos, axis=0, out=pos)
        has = pos >= 0
        latest = marker[np.where(has, pos, 0), np.arange(n)[None, :]]
        ids[has] = new[latest[has]]
        return ids

    def _ensure(self, k_max: int) -> None:
        C = self.chunk_steps
        need_chunk = k_max // C
        if need_chunk - self._next_chunk > self.max_gap_steps // C + 1:
            # far jump: restart from fresh positions rather than simulate the gap
            self._chunks.clear()
            self._next_chunk = need_chunk
            self._restart_pending = True
        while self._next_chunk <= need_chunk:
            self._generate_chunk()

    def _trim(self, k_latest: int) -> None:
        keep_from = k_latest - self.history_steps
        while (
            len(self._chunks) > 2
            and self._chunks[0].k0 + self.chunk_steps - 1 < keep_from
        ):
            self._chunks.pop(0)

    def _gather(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Free positions (T, N, 3) and ids (T, N) at grid steps ``k``."""
        first = self._chunks[0].k0
        if k.size and k.min() < first:
            raise ValueError(
                f"time {k.min() * self.dt:.6g} s is no longer available: the sample "
                f"keeps {self.history_steps * self.dt:.3g} s of history before the "
                "latest time queried (query times in order, or raise history_s)"
            )
        C = self.chunk_steps
        ci = (k - first) // C
        off = (k - first) % C
        free = np.empty((len(k), self.n, 3))
        ids = np.empty((len(k), self.n), dtype=np.int64)
        for j in np.unique(ci):
            sel = ci == j
            ch = self._chunks[int(j)]
            free[sel] = ch.free[off[sel]]
            ids[sel] = ch.ids[off[sel]]
        return free, ids

    def _wrap(self, free: np.ndarray) -> np.ndarray:
        out = np.empty_like(free)
        span_xy = self.span[:, :2]
        out[..., :2] = self.lo[:, :2] + np.mod(free[..., :2] - self.lo[:, :2], span_xy)
        lz = self.span[:, 2]
        z0 = self.lo[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.mod(free[..., 2] - z0, 2.0 * lz)
            folded = lz - np.abs(w - lz)
        out[..., 2] = np.where(lz > 0, z0 + folded, z0)
        return out

    def query(
        self, t_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Positions (T,N,3), ids (T,N), photon rates (T,N), D (T,N)."""
        t = np.asarray(t_s, dtype=float).reshape(-1)
        n_t = t.size
        pos = np.zeros((n_t, self.n, 3))
        ids = np.zeros((n_t, self.n), dtype=np.int64)
        if self.n == 0 or n_t == 0:
            z = np.zeros((n_t, self.n))
            return pos, ids, z, z.copy()
        k_all = np.floor(t / self.dt).astype(np.int64)
        # walk through the times in order, in segments shorter than the history
        order = np.argsort(k_all, kind="stable")
        seg = max(1, self.history_steps // 2)
        i = 0
        while i < n_t:
            j = int(np.searchsorted(k_all[order], k_all[order[i]] + seg, side="right"))
            j = max(j, i + 1)
            sel = order[i:j]
            pos[sel], ids[sel] = self._query_segment(t[sel])
            i = j
        phot, dcoef = self._attr_arrays()
        local = ids - self.first_id
        return pos, ids, phot[local], dcoef[local]

    def _query_segment(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = t / self.dt
        k = np.floor(s).astype(np.int64)
        f = s - k
        self._ensure(int(k.max()) + 1)
        free0, ids0 = self._gather(k)
        free1, ids1 = self._gather(k + 1)
        self._trim(int(k.max()))
        free = self._bridge(free0, free1, k, f)
        same = np.all(self._cells(free) == self._cells(free0), axis=-1)
        return self._wrap(free), np.where(same, ids0, ids1)

    def _bridge(
        self, free0: np.ndarray, free1: np.ndarray, k: np.ndarray, f: np.ndarray
    ) -> np.ndarray:
        """Positions between grid steps ``k`` and ``k + 1`` at fractions ``f``.

        Brownian bridge by midpoint refinement (Levy construction) down to
        ``dt / 2**_BRIDGE_LEVELS``, then linear. Each midpoint's normal deviate is
        a hash of (seed, step, level, node, particle, axis), so a time gives the
        same position however and whenever it is queried.
        """
        n_t, n = free0.shape[:2]
        a = np.zeros(n_t)
        b = np.ones(n_t)
        xa = free0.copy()
        xb = free1.copy()
        node = np.zeros(n_t, dtype=np.uint64)
        base = _hash_mix(
            self._bridge_key
            ^ (k.astype(np.uint64)[:, None, None] * np.uint64(0x9E3779B97F4A7C15))
            ^ (np.arange(n, dtype=np.uint64)[None, :, None] << np.uint64(2))
            ^ np.arange(3, dtype=np.uint64)[None, None, :]
        )
        for level in range(1, _BRIDGE_LEVELS + 1):
            m = 0.5 * (a + b)
            h = _hash_mix(
                base
                ^ ((node << np.uint64(8)) + np.uint64(level))[:, None, None]
                * np.uint64(0xD1B54A32D192ED03)
            )
            u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
            sd = self._step_sd[None] * np.sqrt((b - a) / 4.0)[:, None, None]
            xm = 0.5 * (xa + xb) + sd * special.ndtri(u)
            right = f >= m
            r3 = right[:, None, None]
            xa = np.where(r3, xm, xa)
            xb = np.where(r3, xb, xm)
            a = np.where(right, m, a)
            b = np.where(right, b, m)
            node = (node << np.uint64(1)) | right.astype(np.uint64)
        w = ((f - a) / (b - a))[:, None, None]
        return (1.0 - w) * xa + w * xb

"""Virtual sample: static beads, diffusing particles and slow drift.

World frame
-----------
``x, y`` are stage coordinates in micrometres; ``z`` is the *depth* of an emitter
above the coverslip (um, >= 0). The coverslip sits at stage Z
:attr:`Sample.coverslip_z_um`. Drift moves the whole sample relative to the stage:
its ``x, y`` components shift every emitter and its ``z`` component moves the
coverslip (depths above the coverslip do not change).

Brightness
----------
Emitter brightness is a *rate*: photons per second arriving at the sensor in plane
0 (plane 1 receives ``SplitterGeometry.transmission`` times as many). A renderer
multiplies it by the exposure time, so 2000 photons in a 10 ms frame is
``photons_per_s=2e5``.

Time evolution
--------------
Diffusing particles are simulated on a fixed time grid of ``dt_s`` (default 1 ms),
generated lazily in fixed chunks from the sample's seed, so the trajectories are a
function of the seed only (not of which times are queried): the same seed gives the
same trajectories. Between grid points a position is drawn from the Brownian bridge
(midpoint refinement down to ``dt_s / 128`` with deviates hashed from the seed, the
step and the time), so sub-steps at any spacing have the right variance and a time
gives the same position whenever it is queried. Only the last ``history_s``
seconds before the latest queried time are kept, so times must be queried (roughly)
in order; a jump far into the future (more than ``max_gap_s``) restarts the
particles from fresh uniform positions instead of simulating every step in between.

Particles move in a box: periodic in ``x, y`` (a particle leaving through a side is
replaced by a new one, with a new id and brightness and the same diffusion
coefficient, entering through the opposite side, so the number of particles is
constant and their density uniform) and reflecting at the bottom and top of the
depth range (the coverslip and the top of the chamber).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import special

from .background import Background

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pandas as pd
    from numpy.typing import ArrayLike

__all__ = [
    "BEAD",
    "PARTICLE",
    "TRAJECTORY_DTYPE",
    "Beads",
    "DiffusingParticles",
    "Drift",
    "Emitters",
    "Sample",
]

#: ``kind`` code of a static bead.
BEAD = 0
#: ``kind`` code of a diffusing particle.
PARTICLE = 1

#: Fields of :meth:`Sample.trajectories`.
TRAJECTORY_DTYPE = np.dtype(
    [
        ("id", np.int64),
        ("kind", np.int8),
        ("t_s", np.float64),
        ("x_um", np.float64),
        ("y_um", np.float64),
        ("z_um", np.float64),
        ("coverslip_z_um", np.float64),
        ("z_focus_um", np.float64),
        ("photons_per_s", np.float64),
        ("diffusion_um2_s", np.float64),
    ]
)


def _check_depth_range(cls: type, v: tuple[float, float]) -> tuple[float, float]:
    """Validator of ``depth_um``: an ordered range above the coverslip."""
    lo, hi = _check_range(v, "depth_um")
    if lo < 0:
        raise ValueError(f"depth_um must be >= 0 (above the coverslip); got {v}")
    return lo, hi


def _check_range(v: tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = float(v[0]), float(v[1])
    if lo > hi:
        raise ValueError(f"{name} must be (min, max) with min <= max; got {v}")
    return lo, hi


class Beads(BaseModel):
    """Static beads at random (or given) positions.

    Positions are uniform in a lateral rectangle and a depth range (or given
    explicitly); brightness is lognormal about a median.

    Parameters
    ----------
    n
        Number of beads (ignored when ``positions_um`` is given).
    center_um
        Centre ``(x, y)`` of the rectangle the beads are spread over (stage frame).
    size_um
        Width and height ``(sx, sy)`` of that rectangle.
    depth_um
        ``(min, max)`` depth of the bead centres above the coverslip. Beads lying on
        the coverslip have a depth equal to their radius.
    photons_per_s
        Median brightness: photons per second reaching the sensor in plane 0.
    brightness_sigma
        Sigma of the lognormal brightness spread (0 for identical beads).
    min_separation_um
        Minimum lateral distance between bead centres (rejection sampling), so
        that beads do not overlap in the image; 0 for none.
    positions_um
        Explicit ``(x, y, depth)`` per bead; overrides the random placement.
    brightness
        Explicit photons per second per bead; overrides the lognormal draw.
    seed
        Seed for the placement and brightness; ``None`` derives one from the
        :class:`Sample` seed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(50, ge=0)
    center_um: tuple[float, float] = (0.0, 0.0)
    size_um: tuple[float, float] = (50.0, 50.0)
    depth_um: tuple[float, float] = (0.05, 0.05)
    photons_per_s: float = Field(2e5, ge=0.0)
    brightness_sigma: float = Field(0.3, ge=0.0)
    min_separation_um: float = Field(0.0, ge=0.0)
    positions_um: tuple[tuple[float, float, float], ...] | None = None
    brightness: tuple[float, ...] | None = None
    seed: int | None = None

    @field_validator("size_um")
    @classmethod
    def _check_size(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0 or v[1] < 0:
            raise ValueError(f"size_um must be non-negative; got {v}")
        return v

    _check_depth = field_validator("depth_um")(_check_depth_range)

    @model_validator(mode="after")
    def _check_explicit(self) -> Beads:
        if self.positions_um is not None:
            if any(p[2] < 0 for p in self.positions_um):
                raise ValueError("bead depths (third coordinate) must be >= 0")
            if self.brightness is not None and len(self.brightness) != len(
                self.positions_um
            ):
                raise ValueError(
                    f"brightness has {len(self.brightness)} values for "
                    f"{len(self.positions_um)} positions"
                )
        elif self.brightness is not None and len(self.brightness) != self.n:
            raise ValueError(
                f"brightness has {len(self.brightness)} values for n={self.n}"
            )
        return self

    # ---------------------------------------------------------------- builders
    @classmethod
    def on_coverslip(
        cls,
        n: int = 50,
        *,
        size_um: tuple[float, float] = (50.0, 50.0),
        center_um: tuple[float, float] = (0.0, 0.0),
        radius_um: float = 0.05,
        **kwargs: object,
    ) -> Beads:
        """Beads lying on the coverslip (depth = bead radius)."""
        return cls(
            n=n,
            size_um=size_um,
            center_um=center_um,
            depth_um=(radius_um, radius_um),
            **kwargs,
        )

    @classmethod
    def in_volume(
        cls,
        n: int = 50,
        *,
        depth_um: tuple[float, float] = (0.0, 5.0),
        size_um: tuple[float, float] = (50.0, 50.0),
        center_um: tuple[float, float] = (0.0, 0.0),
        **kwargs: object,
    ) -> Beads:
        """Beads immobilized at random depths (e.g. in a gel)."""
        return cls(
            n=n,
            size_um=size_um,
            center_um=center_um,
            depth_um=depth_um,
            **kwargs,
        )

    @classmethod
    def at(
        cls,
        positions_um: ArrayLike,
        photons_per_s: float | ArrayLike = 2e5,
    ) -> Beads:
        """Beads at explicit ``(x, y, depth)`` positions with given brightness."""
        pos = np.asarray(positions_um, dtype=float).reshape(-1, 3)
        phot = np.broadcast_to(np.asarray(photons_per_s, dtype=float), (len(pos),))
        return cls(
            n=len(pos),
            positions_um=tuple(tuple(map(float, p)) for p in pos),
            brightness=tuple(map(float, phot)),
        )

    # -------------------------------------------------------------- generation
    def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(n, 3)`` (x, y, depth) and photon rates ``(n,)``."""
        if self.positions_um is not None:
            pos = np.asarray(self.positions_um, dtype=float).reshape(-1, 3)
        else:
            pos = self._random_positions(rng)
        n = len(pos)
        if self.brightness is not None:
            phot = np.asarray(self.brightness, dtype=float)
        else:
            phot = self.photons_per_s * np.exp(
                self.brightness_sigma * rng.standard_normal(n)
            )
        return pos, phot

    def _random_positions(self, rng: np.random.Generator) -> np.ndarray:
        cx, cy = self.center_um
        sx, sy = self.size_um
        lo = np.array([cx - sx / 2, cy - sy / 2, self.depth_um[0]])
        hi = np.array([cx + sx / 2, cy + sy / 2, self.depth_um[1]])
        if self.min_separation_um <= 0:
            return lo + (hi - lo) * rng.random((self.n, 3))
        # greedy rejection sampling in batches of candidates
        d2 = self.min_separation_um**2
        accepted: list[np.ndarray] = []
        arr = np.empty((0, 3))
        tries = 0
        while len(accepted) < self.n:
            tries += 1
            if tries > 50:
                raise ValueError(
                    f"cannot place {self.n} beads {self.min_separation_um} um apart in "
                    f"{sx} x {sy} um; lower n or min_separation_um"
                )
            for p in lo + (hi - lo) * rng.random((4 * self.n, 3)):
                if arr.size and np.min(np.sum((arr[:, :2] - p[:2]) ** 2, axis=1)) < d2:
                    continue
                accepted.append(p)
                arr = np.asarray(accepted)
                if len(accepted) == self.n:
                    break
        return arr


class DiffusingParticles(BaseModel):
    """Particles undergoing 3D Brownian motion in a box.

    Parameters
    ----------
    n
        Number of particles in the box (constant: one leaves, one enters).
    diffusion_um2_s
        Diffusion coefficient D in um^2/s, or a ``(min, max)`` range from which
        each particle's D is drawn log-uniformly. The mean squared displacement is
        ``6 D t`` in 3D (``4 D t`` when the depth range has zero width).
    center_um
        Centre ``(x, y)`` of the box. Make the box larger than the field of view so
        particles enter and leave the field naturally.
    size_um
        Lateral size ``(sx, sy)`` of the box (periodic boundaries).
    depth_um
        ``(min, max)`` depth range (reflecting walls); equal values confine the
        particles to a plane at that depth (2D diffusion).
    photons_per_s
        Median brightness: photons per second reaching the sensor in plane 0.
    brightness_sigma
        Sigma of the lognormal brightness spread.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(20, ge=0)
    diffusion_um2_s: float | tuple[float, float] = 0.5
    center_um: tuple[float, float] = (0.0, 0.0)
    size_um: tuple[float, float] = (70.0, 70.0)
    depth_um: tuple[float, float] = (0.0, 5.0)
    photons_per_s: float = Field(2e5, ge=0.0)
    brightness_sigma: float = Field(0.3, ge=0.0)

    @field_validator("diffusion_um2_s")
    @classmethod
    def _check_d(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        vals = (v,) if isinstance(v, (int, float)) else v
        if any(x < 0 for x in vals):
            raise ValueError(f"diffusion_um2_s must be >= 0; got {v}")
        if isinstance(v, tuple):
            lo, hi = _check_range(v, "diffusion_um2_s")
            if lo == 0 and hi > 0:
                raise ValueError(
                    "a diffusion range is drawn log-uniformly: its minimum must be > 0"
                )
        return v

    @field_validator("size_um")
    @classmethod
    def _check_size(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"size_um must be positive; got {v}")
        return v

    _check_depth = field_validator("depth_um")(_check_depth_range)

    @property
    def max_diffusion_um2_s(self) -> float:
        """Largest diffusion coefficient a particle can have."""
        v = self.diffusion_um2_s
        return float(max(v) if isinstance(v, tuple) else v)

    def draw_diffusion(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Diffusion coefficients for ``n`` particles."""
        v = self.diffusion_um2_s
        if isinstance(v, tuple):
            lo, hi = v
            if lo == hi:
                return np.full(n, float(lo))
            return np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        return np.full(n, float(v))


class Drift(BaseModel):
    """Slow drift of the sample relative to the stage.

    ``drift(t) = velocity * t + W(t)``, with ``W`` a random walk (per-axis diffusion
    coefficient ``random_walk_um2_s``) sampled every ``dt_s`` and linearly
    interpolated. ``x, y`` shift all emitters; ``z`` moves the coverslip.

    Parameters
    ----------
    velocity_um_s
        Linear drift ``(vx, vy, vz)`` in um/s.
    random_walk_um2_s
        Diffusion coefficient of the random part, per axis (or one for all).
    dt_s
        Time step of the random walk.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    velocity_um_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    random_walk_um2_s: float | tuple[float, float, float] = 0.0
    dt_s: float = Field(0.1, gt=0.0)

    @field_validator("random_walk_um2_s")
    @classmethod
    def _check_rw(
        cls, v: float | tuple[float, float, float]
    ) -> float | tuple[float, float, float]:
        vals = (v,) if isinstance(v, (int, float)) else v
        if any(x < 0 for x in vals):
            raise ValueError(f"random_walk_um2_s must be >= 0; got {v}")
        return v

    @property
    def walk_d(self) -> np.ndarray:
        """Per-axis diffusion coefficient of the random part, ``(3,)``."""
        return np.broadcast_to(
            np.asarray(self.random_walk_um2_s, dtype=float), (3,)
        ).copy()


@dataclass(frozen=True)
class Emitters:
    """Emitters of a sample at a set of times.

    Attributes
    ----------
    t_s
        Times ``(T,)``.
    ids
        ``(T, N)`` emitter ids. Column ``j`` is one "slot": a static bead, or a
        particle slot whose id changes when a particle leaves and another enters.
    kind
        ``(N,)`` :data:`BEAD` or :data:`PARTICLE`.
    xyz_um
        ``(T, N, 3)``: world ``x, y`` (stage frame, drift included) and depth above
        the coverslip.
    photons_per_s
        ``(T, N)`` photon rate reaching the sensor in plane 0.
    diffusion_um2_s
        ``(T, N)`` diffusion coefficient (0 for beads).
    coverslip_z_um
        ``(T,)`` stage Z of the coverslip (axial drift included).
    """

    t_s: np.ndarray
    ids: np.ndarray
    kind: np.ndarray
    xyz_um: np.ndarray
    photons_per_s: np.ndarray
    diffusion_um2_s: np.ndarray
    coverslip_z_um: np.ndarray

    @property
    def n(self) -> int:
        """Number of emitter slots ``N``."""
        return int(self.kind.shape[0])


# --------------------------------------------------------------------- engines
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


# ---------------------------------------------------------------------- sample
class Sample:
    """A virtual sample: beads, diffusing particles, drift and background.

    Parameters
    ----------
    beads
        One or more :class:`Beads` groups (static).
    particles
        One or more :class:`DiffusingParticles` groups.
    drift
        Slow drift of the sample relative to the stage.
    background
        Background light; ``None`` for no background.
    coverslip_z_um
        Stage Z at which the objective's nominal focus is on the coverslip.
    seed
        Seed for everything random in the sample (bead placement, trajectories,
        brightness, drift walk).
    dt_s
        Time step of the Brownian simulation.
    history_s
        How much trajectory history before the latest queried time is kept.
    max_gap_s
        A query further than this ahead of the simulated time restarts the
        particles from fresh uniform positions instead of simulating the gap.

    Examples
    --------
    >>> sample = Sample(
    ...     beads=Beads.on_coverslip(30),
    ...     particles=DiffusingParticles(n=20, diffusion_um2_s=(0.1, 1.0)),
    ...     drift=Drift(velocity_um_s=(0.01, 0.0, 0.002)),
    ...     background=Background(photons_per_px_s=1000.0, structure=0.2),
    ... )
    >>> em = sample.emitters([0.0, 0.01])
    >>> em.xyz_um.shape
    (2, 50, 3)
    """

    def __init__(
        self,
        *,
        beads: Beads | Sequence[Beads] = (),
        particles: DiffusingParticles | Sequence[DiffusingParticles] = (),
        drift: Drift | None = None,
        background: Background | None = None,
        coverslip_z_um: float = 50.0,
        seed: int = 0,
        dt_s: float = 1e-3,
        history_s: float = 2.0,
        max_gap_s: float = 60.0,
    ) -> None:
        if dt_s <= 0:
            raise ValueError(f"dt_s must be > 0; got {dt_s}")
        if history_s < 0 or max_gap_s <= 0:
            raise ValueError("history_s must be >= 0 and max_gap_s > 0")
        self.beads: tuple[Beads, ...] = (
            (beads,) if isinstance(beads, Beads) else tuple(beads)
        )
        self.particles: tuple[DiffusingParticles, ...] = (
            (particles,)
            if isinstance(particles, DiffusingParticles)
            else tuple(particles)
        )
        self.drift = drift or Drift()
        self.background = background
        self.coverslip_z_um = float(coverslip_z_um)
        self.seed = int(seed)
        self.dt_s = float(dt_s)

        root = np.random.SeedSequence(self.seed)
        s_beads, s_particles, s_drift = root.spawn(3)
        bead_seeds = s_beads.spawn(max(1, len(self.beads)))
        pos, phot = [], []
        for b, ss in zip(self.beads, bead_seeds, strict=False):
            rng = np.random.default_rng(b.seed if b.seed is not None else ss)
            p, f = b.generate(rng)
            pos.append(p)
            phot.append(f)
        self._bead_xyz = np.concatenate(pos) if pos else np.zeros((0, 3))
        self._bead_phot = np.concatenate(phot) if phot else np.zeros(0)
        self.n_beads = len(self._bead_xyz)
        self._particles = _ParticleEngine(
            self.particles,
            first_id=self.n_beads,
            dt_s=self.dt_s,
            history_s=history_s,
            max_gap_s=max_gap_s,
            seed_seq=s_particles,
        )
        self._drift = _DriftEngine(self.drift, np.random.default_rng(s_drift))
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"Sample(beads={self.n_beads}, particles={self.n_particles}, "
            f"coverslip_z_um={self.coverslip_z_um}, seed={self.seed})"
        )

    # -------------------------------------------------------------- properties
    @property
    def n_particles(self) -> int:
        """Number of diffusing particles (constant over time)."""
        return self._particles.n

    @property
    def n_emitters(self) -> int:
        """Number of emitter slots (beads + particles)."""
        return self.n_beads + self.n_particles

    @property
    def bead_positions_um(self) -> np.ndarray:
        """``(n_beads, 3)`` bead positions ``(x, y, depth)`` without drift."""
        return self._bead_xyz.copy()

    @property
    def bead_photons_per_s(self) -> np.ndarray:
        """``(n_beads,)`` bead photon rates."""
        return self._bead_phot.copy()

    @property
    def depth_range_um(self) -> tuple[float, float]:
        """``(min, max)`` depth any emitter of the sample can have."""
        lo, hi = [], []
        if self.n_beads:
            lo.append(float(self._bead_xyz[:, 2].min()))
            hi.append(float(self._bead_xyz[:, 2].max()))
        for g in self.particles:
            if g.n:
                lo.append(g.depth_um[0])
                hi.append(g.depth_um[1])
        if not lo:
            return 0.0, 0.0
        return min(lo), max(hi)

    @property
    def max_diffusion_um2_s(self) -> float:
        """Largest diffusion coefficient among the particles (0 without any)."""
        return max((g.max_diffusion_um2_s for g in self.particles if g.n), default=0.0)

    # ----------------------------------------------------------------- queries
    def drift_um(self, t_s: ArrayLike) -> np.ndarray:
        """Drift ``(T, 3)`` at times ``t_s``: x, y shift and coverslip Z shift."""
        return self._drift(np.asarray(t_s, dtype=float))

    def emitters(self, t_s: ArrayLike) -> Emitters:
        """All emitters at times ``t_s`` (world frame, drift included).

        Parameters
        ----------
        t_s
            Times in seconds (>= 0), scalar or 1-D. Query in (roughly) increasing
            order; see the module notes on history.
        """
        t = np.atleast_1d(np.asarray(t_s, dtype=float)).reshape(-1)
        if t.size and (not np.all(np.isfinite(t)) or t.min() < 0):
            raise ValueError("times must be finite and >= 0")
        T, nb, npart = t.size, self.n_beads, self.n_particles
        with self._lock:
            drift = self._drift(t)
            if npart:
                p_xyz, p_ids, p_phot, p_d = self._particles.query(t)
        xyz = np.empty((T, nb + npart, 3))
        ids = np.empty((T, nb + npart), dtype=np.int64)
        phot = np.empty((T, nb + npart))
        dcoef = np.zeros((T, nb + npart))
        xyz[:, :nb] = self._bead_xyz[None]
        ids[:, :nb] = np.arange(nb)[None]
        phot[:, :nb] = self._bead_phot[None]
        if npart:
            xyz[:, nb:] = p_xyz
            ids[:, nb:] = p_ids
            phot[:, nb:] = p_phot
            dcoef[:, nb:] = p_d
        xyz[:, :, :2] += drift[:, None, :2]
        kind = np.concatenate(
            [np.full(nb, BEAD, dtype=np.int8), np.full(npart, PARTICLE, dtype=np.int8)]
        )
        return Emitters(
            t_s=t,
            ids=ids,
            kind=kind,
            xyz_um=xyz,
            photons_per_s=phot,
            diffusion_um2_s=dcoef,
            coverslip_z_um=self.coverslip_z_um + drift[:, 2],
        )

    def trajectories(
        self,
        t_s: ArrayLike,
        in_focus_offset: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Ground-truth rows (one per emitter per time) as a structured array.

        Fields are :data:`TRAJECTORY_DTYPE`: ``id, kind, t_s, x_um, y_um`` (world,
        drift included), ``z_um`` (depth above the coverslip), ``coverslip_z_um``
        (stage Z of the coverslip, drift included), ``z_focus_um``,
        ``photons_per_s``, ``diffusion_um2_s``. Use :func:`to_dataframe` for a
        pandas DataFrame.

        Parameters
        ----------
        t_s
            Times, s.
        in_focus_offset
            Depth -> focus position relative to the coverslip at which an emitter
            is in focus (e.g. :meth:`PSFModel.in_focus_offset`); gives
            ``z_focus_um = coverslip_z_um + in_focus_offset(z_um)``, the stage Z at
            which the emitter is in focus in plane 0. Without it ``z_focus_um`` is
            NaN (:meth:`Renderer.sample_trajectories` fills it in).
        """
        em = self.emitters(t_s)
        T, N = em.ids.shape
        out = np.empty(T * N, dtype=TRAJECTORY_DTYPE)
        out["id"] = em.ids.ravel()
        out["kind"] = np.broadcast_to(em.kind, (T, N)).ravel()
        out["t_s"] = np.repeat(em.t_s, N)
        out["x_um"] = em.xyz_um[..., 0].ravel()
        out["y_um"] = em.xyz_um[..., 1].ravel()
        out["z_um"] = em.xyz_um[..., 2].ravel()
        out["coverslip_z_um"] = np.repeat(em.coverslip_z_um, N)
        if in_focus_offset is None:
            out["z_focus_um"] = np.nan
        else:
            out["z_focus_um"] = out["coverslip_z_um"] + np.asarray(
                in_focus_offset(out["z_um"])
            )
        out["photons_per_s"] = em.photons_per_s.ravel()
        out["diffusion_um2_s"] = em.diffusion_um2_s.ravel()
        return out


def to_dataframe(records: np.ndarray) -> pd.DataFrame:
    """A pandas ``DataFrame`` from a structured array (needs pandas installed)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_dataframe needs pandas; install it or use the structured array"
        ) from e
    return pd.DataFrame.from_records(records)

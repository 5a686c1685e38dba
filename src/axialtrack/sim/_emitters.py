"""What a virtual sample holds: :class:`Beads`, :class:`DiffusingParticles`,
:class:`Drift` (their configuration) and :class:`Emitters` (all of them at a
set of times), in the world frame of :mod:`axialtrack.sim.sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

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

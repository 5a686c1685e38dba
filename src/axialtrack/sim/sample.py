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

The emitter groups and :class:`Emitters` are in :mod:`._emitters`, the motion
(drift walk, particle grid, Brownian bridge) in :mod:`._motion`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from ._emitters import (
    BEAD,
    PARTICLE,
    TRAJECTORY_DTYPE,
    Beads,
    DiffusingParticles,
    Drift,
    Emitters,
)
from ._motion import _DriftEngine, _ParticleEngine
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

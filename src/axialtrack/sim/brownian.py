"""Localizations of 3D Brownian particles with ground truth, for linking and MSD.

No images: positions with motion blur and localization noise, as a localizer
would report them, to test and benchmark linking and diffusion estimates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["brownian_localizations"]


def brownian_localizations(
    n_particles: int = 100,
    n_frames: int = 300,
    *,
    box_um: tuple[float, float, float] = (40.0, 40.0, 3.0),
    walls: bool = True,
    d_range: tuple[float, float] = (0.1, 1.0),
    sigma_xy: float = 0.02,
    sigma_z: float = 0.05,
    mean_life: float = 200.0,
    p_miss: float = 0.02,
    n_sub: int = 5,
    dt: float = 0.01,
    seed: int = 0,
) -> pd.DataFrame:
    """3D Brownian motion with ground truth (``true_id``, ``true_D``).

    ``n_particles`` at a time in a box (reflecting walls, or free diffusion), each
    replaced by a new one at a random place after a geometric lifetime; positions
    are averaged over ``n_sub`` sub-steps per frame (motion blur, exposure = frame
    interval) and get Gaussian localization noise; a fraction ``p_miss`` of the
    detections is dropped. ``dt`` is the frame interval (s). Columns: the
    localization table's ``frame, t_s, x_um, y_um, z_um, dz_um, photons,
    track_id`` (-1) plus the truth ``true_id`` and ``true_D``.
    """
    rng = np.random.default_rng(seed)
    box = np.asarray(box_um, dtype=np.float64)
    born = rng.random((n_particles, n_frames)) < 1.0 / mean_life
    born[:, 0] = True
    seg = np.cumsum(born, axis=1) - 1
    n_seg = seg[:, -1] + 1
    pid = seg + np.r_[0, np.cumsum(n_seg)[:-1]][:, None]
    n_tot = int(n_seg.sum())
    d = np.exp(rng.uniform(np.log(d_range[0]), np.log(d_range[1]), n_tot))
    start = rng.random((n_tot, 3)) * box
    pid_sub = np.repeat(pid, n_sub, axis=1)
    steps = rng.standard_normal((n_particles, n_frames * n_sub, 3))
    steps *= np.sqrt(2 * d[pid_sub] * dt / n_sub)[..., None]
    born_sub = np.zeros(pid_sub.shape, dtype=bool)
    born_sub[:, ::n_sub] = born
    steps[born_sub] = 0.0
    cum = np.cumsum(steps, axis=1)
    idx = np.where(born_sub, np.arange(n_frames * n_sub)[None, :], 0)
    idx = np.maximum.accumulate(idx, axis=1)
    pos = start[pid_sub] + cum - np.take_along_axis(cum, idx[..., None], axis=1)
    if walls:
        pos = np.mod(pos, 2 * box)
        pos = np.where(pos > box, 2 * box - pos, pos)
    pos = pos.reshape(n_particles, n_frames, n_sub, 3).mean(axis=2)
    pos += rng.standard_normal(pos.shape) * np.array([sigma_xy, sigma_xy, sigma_z])
    p_i, f_i = np.nonzero(rng.random((n_particles, n_frames)) >= p_miss)
    df = pd.DataFrame(
        {
            "frame": f_i.astype(np.int64),
            "t_s": f_i * dt,
            "x_um": pos[p_i, f_i, 0],
            "y_um": pos[p_i, f_i, 1],
            "z_um": pos[p_i, f_i, 2],
            "dz_um": pos[p_i, f_i, 2] - 1.0,
            "photons": rng.uniform(1000, 3000, len(p_i)),
            "track_id": np.full(len(p_i), -1, dtype=np.int64),
            "true_id": pid[p_i, f_i].astype(np.int64),
            "true_D": d[pid[p_i, f_i]],
        }
    )
    return df.sort_values(["frame", "x_um"], kind="stable").reset_index(drop=True)

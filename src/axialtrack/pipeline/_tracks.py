"""Track analysis and export: diffusion coefficients, per-track summary, napari, GEFF.

Diffusion estimator
-------------------
Localization error adds ``2 sigma^2`` to every squared displacement and motion blur
(the particle moves during the exposure) removes a fraction of it, so a plain MSD
slope or ``MSD(1) / (2 dt)`` is biased, most for slow particles and for the axial
axis, whose error is several times larger than the lateral one. We use the
covariance-based estimator (CVE) of Vestergaard, Blainey & Flyvbjerg, Phys. Rev. E
89, 022726 (2014), per axis ``a``::

    D_a = <dx_n^2> / (2 dt) + <dx_n dx_(n+1)> / dt
    sigma_a^2 = R <dx_n^2> + (2R - 1) <dx_n dx_(n+1)>

where ``dx_n`` are displacements between consecutive frames and ``R`` the motion
blur coefficient (``R = t_exposure / (6 dt)`` for a uniformly lit exposure; 1/6 when
the exposure fills the frame interval, 0 for instantaneous sampling). ``D_a`` is
unbiased whatever the localization error and blur; ``R`` enters only the
localization error estimate and the standard error. Its variance (eq. 16 of the
paper, with ``eps = sigma^2 / (D dt) - 2R``) is::

    var(D_a) = D^2 [(6 + 4 eps + 2 eps^2) / N + 4 (1 + eps)^2 / N^2]

Tracks with gaps (missed detections bridged by the linker) use only displacements
between consecutive frames, and only pairs of consecutive such displacements for
the covariance term. The combined 3D value is the mean of the three axes
(``D_xy``: mean of x and y); its standard error follows from the per-axis
variances, which are independent. The population estimate pools the displacement
sums of all tracks (each track weighted by its number of steps) and gets its
standard error from a delete-one-track jackknife, which stays valid when the
particles have different D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DiffusionEstimate",
    "estimate_diffusion",
    "estimate_diffusion_population",
    "read_geff",
    "summarize_tracks",
    "to_napari_tracks",
    "write_geff",
]

_POS = ("x_um", "y_um", "z_um")
SUMMARY_COLUMNS: dict[str, str] = {
    "track_id": "int64",
    "n_localizations": "int64",
    "first_frame": "int64",
    "last_frame": "int64",
    "duration_s": "float64",
    "x_um": "float64",
    "y_um": "float64",
    "z_um": "float64",
    "D_um2_s": "float64",
    "D_se_um2_s": "float64",
    "D_xy_um2_s": "float64",
    "D_z_um2_s": "float64",
    "loc_error_xy_um": "float64",
    "loc_error_z_um": "float64",
}


@dataclass(frozen=True)
class DiffusionEstimate:
    """Diffusion coefficient of one track, or pooled over many.

    Attributes
    ----------
    D_um2_s, D_se_um2_s : float
        3D diffusion coefficient (mean of the three axes) and its standard error.
    D_xy_um2_s, D_xy_se_um2_s : float
        Lateral coefficient (mean of x and y) and its standard error.
    D_z_um2_s, D_z_se_um2_s : float
        Axial coefficient and its standard error.
    D_axes_um2_s, D_axes_se_um2_s : tuple of float
        Per-axis ``(x, y, z)`` coefficients and standard errors.
    loc_error_um : tuple of float
        Estimated localization error (standard deviation) per axis ``(x, y, z)``;
        NaN where the estimate of its square is negative (noise dominated).
    n_steps : int
        Number of single-frame displacements used.
    n_tracks : int
        Number of tracks contributing (1 for :func:`estimate_diffusion`).
    """

    D_um2_s: float
    D_se_um2_s: float
    D_xy_um2_s: float
    D_xy_se_um2_s: float
    D_z_um2_s: float
    D_z_se_um2_s: float
    D_axes_um2_s: tuple[float, float, float]
    D_axes_se_um2_s: tuple[float, float, float]
    loc_error_um: tuple[float, float, float]
    n_steps: int
    n_tracks: int = 1


def _blur_r(frame_interval_s: float, exposure_s: float | None) -> float:
    if frame_interval_s <= 0 or not np.isfinite(frame_interval_s):
        raise ValueError(f"frame_interval_s must be positive; got {frame_interval_s}")
    if exposure_s is None:
        return 1.0 / 6.0
    if exposure_s < 0 or exposure_s > frame_interval_s * (1 + 1e-9):
        raise ValueError(
            f"exposure_s must be in [0, frame_interval_s]; got {exposure_s} "
            f"(frame_interval_s {frame_interval_s})"
        )
    return float(exposure_s) / (6.0 * float(frame_interval_s))


def _step_sums(
    track_key: np.ndarray,
    frames: np.ndarray,
    xyz: np.ndarray,
    n_groups: int,
    t_s: np.ndarray | None = None,
    dt: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-group CVE sums from rows sorted by (group, frame).

    Returns ``s2`` (G, 3) sum of squared single-frame steps, ``n1`` (G,) their
    count, ``s11`` (G, 3) sum of products of consecutive steps and ``n2`` (G,).
    With the rows' times ``t_s`` and the frame interval ``dt``, a step between
    consecutive frames whose times are not ``dt`` apart (within 10 %: a pause
    in the acquisition) is not a single-frame step and is left out.
    """
    s2 = np.zeros((n_groups, 3))
    s11 = np.zeros((n_groups, 3))
    if len(frames) < 2:
        return s2, np.zeros(n_groups), s11, np.zeros(n_groups)
    step_ok = (track_key[1:] == track_key[:-1]) & (frames[1:] - frames[:-1] == 1)
    if t_s is not None and dt is not None and np.isfinite(dt) and dt > 0:
        step_t = np.diff(t_s)
        paused = np.isfinite(step_t) & (np.abs(step_t - dt) > 0.1 * dt)
        step_ok &= ~paused
    d = xyz[1:] - xyz[:-1]
    g1 = track_key[1:]
    w = step_ok.astype(np.float64)
    n1 = np.bincount(g1, weights=w, minlength=n_groups)
    pair_ok = step_ok[1:] & step_ok[:-1]  # steps k and k+1 both valid, same track
    prod = d[1:] * d[:-1]
    g2 = track_key[2:]
    w2 = pair_ok.astype(np.float64)
    n2 = np.bincount(g2, weights=w2, minlength=n_groups)
    for a in range(3):
        w_sq = np.where(step_ok, d[:, a] ** 2, 0.0)
        s2[:, a] = np.bincount(g1, weights=w_sq, minlength=n_groups)
        w_pr = np.where(pair_ok, prod[:, a], 0.0)
        s11[:, a] = np.bincount(g2, weights=w_pr, minlength=n_groups)
    return s2, n1, s11, n2


def _cve(
    s2: np.ndarray,
    n1: np.ndarray,
    s11: np.ndarray,
    n2: np.ndarray,
    dt: float,
    r: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis CVE: D (G, 3), its variance (G, 3), sigma^2 (G, 3)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        msd1 = s2 / n1[:, None]
        cov1 = s11 / n2[:, None]
        d = msd1 / (2 * dt) + cov1 / dt
        sig2 = r * msd1 + (2 * r - 1) * cov1
        dpos = np.maximum(d, 0.0)
        a = np.maximum(sig2, 0.0) / dt - 2 * r * dpos  # eps * D
        n = n1[:, None]
        var = (6 * dpos**2 + 4 * dpos * a + 2 * a**2) / n + 4 * (dpos + a) ** 2 / n**2
    return d, var, sig2


def _combine(
    d: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3D, xy and z values with standard errors from per-axis (G, 3) arrays."""
    d3 = d.mean(axis=1)
    se3 = np.sqrt(var.sum(axis=1)) / 3
    dxy = d[:, :2].mean(axis=1)
    sexy = np.sqrt(var[:, :2].sum(axis=1)) / 2
    return d3, se3, dxy, sexy, d[:, 2], np.sqrt(var[:, 2])


def _as_arrays(
    track: pd.DataFrame | np.ndarray, frames: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(track, pd.DataFrame):
        xyz = track[list(_POS)].to_numpy(dtype=np.float64)
        if frames is None:
            frames = (
                track["frame"].to_numpy()
                if "frame" in track.columns
                else np.arange(len(track))
            )
    else:
        xyz = np.asarray(track, dtype=np.float64)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"track array must have shape (N, 3); got {xyz.shape}")
        if frames is None:
            frames = np.arange(len(xyz))
    f = np.asarray(frames).astype(np.int64)
    order = np.argsort(f, kind="stable")
    return f[order], xyz[order]


def _estimate(
    s2: np.ndarray,
    n1: np.ndarray,
    s11: np.ndarray,
    n2: np.ndarray,
    dt: float,
    r: float,
    n_tracks: int,
    var_override: np.ndarray | None = None,
) -> DiffusionEstimate:
    d, var, sig2 = _cve(s2[None], n1[None], s11[None], n2[None], dt, r)
    if var_override is not None:
        var = var_override[None]
    d3, se3, dxy, sexy, dz, sez = _combine(d, var)
    with np.errstate(invalid="ignore"):
        loc = np.where(sig2[0] >= 0, np.sqrt(np.abs(sig2[0])), np.nan)
    return DiffusionEstimate(
        D_um2_s=float(d3[0]),
        D_se_um2_s=float(se3[0]),
        D_xy_um2_s=float(dxy[0]),
        D_xy_se_um2_s=float(sexy[0]),
        D_z_um2_s=float(dz[0]),
        D_z_se_um2_s=float(sez[0]),
        D_axes_um2_s=(float(d[0, 0]), float(d[0, 1]), float(d[0, 2])),
        D_axes_se_um2_s=tuple(float(v) for v in np.sqrt(var[0])),  # type: ignore[arg-type]
        loc_error_um=(float(loc[0]), float(loc[1]), float(loc[2])),
        n_steps=int(n1),
        n_tracks=n_tracks,
    )


def estimate_diffusion(
    track: pd.DataFrame | np.ndarray,
    frame_interval_s: float,
    *,
    exposure_s: float | None = None,
    frames: np.ndarray | None = None,
) -> DiffusionEstimate:
    """Diffusion coefficient of one track by the covariance-based estimator.

    Parameters
    ----------
    track : pd.DataFrame or np.ndarray
        The track's localizations: a DataFrame with ``x_um``, ``y_um``, ``z_um``
        (and ``frame``), or an ``(N, 3)`` array of positions in micrometres.
    frame_interval_s : float
        Time between consecutive frames.
    exposure_s : float, optional
        Exposure time, for the motion-blur coefficient ``R = exposure_s / (6
        frame_interval_s)``; None means the exposure fills the frame interval
        (``R = 1/6``). Affects the localization error estimate and the standard
        error, not D.
    frames : np.ndarray, optional
        Frame numbers of the rows (default: the ``frame`` column, or consecutive
        frames for an array). Only steps between consecutive frames are used.

    Returns
    -------
    DiffusionEstimate
        NaN values when the track has fewer than 2 consecutive steps.
    """
    dt = float(frame_interval_s)
    r = _blur_r(dt, exposure_s)
    f, xyz = _as_arrays(track, frames)
    key = np.zeros(len(f), dtype=np.intp)
    s2, n1, s11, n2 = _step_sums(key, f, xyz, 1)
    return _estimate(s2[0], n1[0], s11[0], n2[0], dt, r, 1)


def _sorted_tracks(
    locs: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linked rows sorted by (track, frame): uniq ids, key, frames, xyz, row index."""
    tid = locs["track_id"].to_numpy().astype(np.int64)
    frames = locs["frame"].to_numpy().astype(np.int64)
    rows = np.flatnonzero(tid >= 0)
    order = rows[np.lexsort((frames[rows], tid[rows]))]
    uniq, key = np.unique(tid[order], return_inverse=True)
    xyz = locs[list(_POS)].to_numpy(dtype=np.float64)[order]
    return uniq, key.astype(np.intp), frames[order], xyz, order


def estimate_diffusion_population(
    locs: pd.DataFrame,
    frame_interval_s: float,
    *,
    exposure_s: float | None = None,
    min_length: int = 5,
) -> DiffusionEstimate:
    """Diffusion coefficient pooled over all tracks of a localization table.

    Parameters
    ----------
    locs : pd.DataFrame
        Localizations with ``frame``, ``x_um``, ``y_um``, ``z_um``, ``track_id``.
    frame_interval_s : float
        Time between consecutive frames.
    exposure_s : float, optional
        Exposure time (motion blur), see :func:`estimate_diffusion`.
    min_length : int
        Tracks with fewer localizations are ignored.

    Returns
    -------
    DiffusionEstimate
        The step-weighted population D; standard errors from a delete-one-track
        jackknife (the analytical one for a single track).
    """
    dt = float(frame_interval_s)
    r = _blur_r(dt, exposure_s)
    uniq, key, f, xyz, order = _sorted_tracks(locs)
    g = len(uniq)
    t = locs["t_s"].to_numpy(dtype=np.float64)[order] if "t_s" in locs else None
    s2, n1, s11, n2 = _step_sums(key, f, xyz, g, t_s=t, dt=dt)
    length = np.bincount(key, minlength=g)
    use = (length >= min_length) & (n1 > 0) & (n2 > 0)
    s2, n1, s11, n2 = s2[use], n1[use], s11[use], n2[use]
    t = int(use.sum())
    tot = (s2.sum(axis=0), n1.sum(), s11.sum(axis=0), n2.sum())
    if t >= 2:
        # jackknife: leave each track out in turn
        d_loo, _, _ = _cve(
            tot[0][None] - s2, tot[1] - n1, tot[2][None] - s11, tot[3] - n2, dt, r
        )
        var = (t - 1) / t * ((d_loo - d_loo.mean(axis=0)) ** 2).sum(axis=0)
        return _estimate(*tot, dt, r, t, var_override=var)
    return _estimate(*tot, dt, r, t)  # one track: the analytical variance


def _frame_interval_from_t(locs: pd.DataFrame) -> float:
    if "t_s" not in locs.columns:
        raise ValueError("frame_interval_s not given and the table has no t_s column")
    ft = locs[["frame", "t_s"]].dropna().drop_duplicates("frame").sort_values("frame")
    df = np.diff(ft["frame"].to_numpy().astype(np.int64))
    dtt = np.diff(ft["t_s"].to_numpy(dtype=np.float64))
    ok = df > 0
    if not ok.any():
        return float("nan")
    return float(np.median(dtt[ok] / df[ok]))


def _visits(frame_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's position and its visit number there (0, 1, ... counting
    only that position's frames)."""
    pos = np.asarray(frame_positions, dtype=np.int64).reshape(-1)
    visit = np.empty(len(pos), dtype=np.int64)
    for p in np.unique(pos):
        idx = np.flatnonzero(pos == p)
        visit[idx] = np.arange(len(idx))
    return pos, visit


def _visit_interval(
    locs: pd.DataFrame,
    pos: np.ndarray,
    visit: np.ndarray,
    frame_interval_s: float | None,
) -> float:
    """The median time between consecutive visits of a position: from the
    rows' ``t_s`` where there are any, else ``frame_interval_s`` times the
    median number of frames between them."""
    if "t_s" in locs.columns:
        ft = locs[["frame", "t_s"]].dropna().drop_duplicates("frame")
        f = ft["frame"].to_numpy().astype(np.int64)
        f = f[(f >= 0) & (f < len(pos))]
        t = ft.set_index("frame").loc[f, "t_s"].to_numpy(dtype=np.float64)
        order = np.lexsort((visit[f], pos[f]))
        f, t = f[order], t[order]
        same = pos[f][1:] == pos[f][:-1]
        dv = np.diff(visit[f])
        ok = same & (dv > 0)
        if ok.any():
            return float(np.median(np.diff(t)[ok] / dv[ok]))
    if frame_interval_s is None:
        return float("nan")
    gaps = [np.diff(np.flatnonzero(pos == p)) for p in np.unique(pos)]
    all_gaps = np.concatenate(gaps) if gaps else np.zeros(0)
    if not len(all_gaps):
        return float(frame_interval_s)
    return float(frame_interval_s) * float(np.median(all_gaps))


def summarize_tracks(
    locs: pd.DataFrame,
    *,
    frame_interval_s: float | None = None,
    min_length: int = 5,
    exposure_s: float | None = None,
    axial_scale: float = 1.0,
    frame_positions: np.ndarray | None = None,
) -> pd.DataFrame:
    """One summary row per track.

    Parameters
    ----------
    locs : pd.DataFrame
        Localizations (``frame``, ``x_um``, ``y_um``, ``z_um``, ``track_id``, and
        ``t_s`` when ``frame_interval_s`` is None). Rows with ``track_id < 0`` are
        ignored.
    frame_interval_s : float, optional
        Time between frames; None takes the median interval of the ``t_s`` column.
    min_length : int
        Tracks with fewer localizations get NaN diffusion columns.
    exposure_s : float, optional
        Exposure time (motion blur), see :func:`estimate_diffusion`.
    axial_scale : float
        Sample depth per unit of ``z_um``. ``z_um`` is a focus-stage position;
        with an oil objective imaging into water, a particle that moves 1 um in
        depth moves its in-focus stage position by ``1 / axial_scale`` um (the
        focal shift; about 0.7-0.8 at NA 1.4-1.5, see
        :func:`axialtrack.optics.axial_scale`). The diffusion columns and
        ``loc_error_z_um`` use ``z_um * axial_scale`` (sample units); the mean
        ``z_um`` stays in the stage frame. 1: no conversion.
    frame_positions : np.ndarray, optional
        The field of every frame of the run (a run store's
        ``frame_meta["position_index"]``, indexed by frame). Each field's
        tracks step from one visit of that field to its next: the lags of the
        diffusion estimate count the field's own frames, and the frame
        interval is the time between visits (from ``t_s``, else
        ``frame_interval_s`` times the frames between visits). None: every
        frame is of one field.

    Returns
    -------
    pd.DataFrame
        Columns ``track_id``, ``n_localizations``, ``first_frame``, ``last_frame``
        (int64), ``duration_s``, mean ``x_um``, ``y_um``, ``z_um``, ``D_um2_s``,
        ``D_se_um2_s``, ``D_xy_um2_s``, ``D_z_um2_s`` and the localization error
        estimates ``loc_error_xy_um``, ``loc_error_z_um`` (float64), sorted by
        ``track_id``.
    """
    step_of, dt = _steps_and_interval(locs, frame_positions, frame_interval_s)
    if not (axial_scale > 0 and math.isfinite(axial_scale)):
        raise ValueError(f"axial_scale must be finite and > 0; got {axial_scale}")
    uniq, key, f, xyz, order = _sorted_tracks(locs)
    g = len(uniq)
    if g == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in SUMMARY_COLUMNS.items()})
    length = np.bincount(key, minlength=g)
    starts = np.r_[0, np.cumsum(length)[:-1]]
    ends = starts + length - 1
    means = np.stack(
        [np.bincount(key, weights=xyz[:, a], minlength=g) / length for a in range(3)],
        axis=1,
    )
    if "t_s" in locs.columns:
        t = locs["t_s"].to_numpy(dtype=np.float64)[order]
        duration = t[ends] - t[starts]
    else:
        duration = (f[ends] - f[starts]) * dt

    d3, se3, dxy, dz, lxy, lz = _diffusion_columns(
        key,
        f if step_of is None else step_of[f],
        xyz,
        length,
        t_s=t if "t_s" in locs.columns else None,
        dt=dt,
        exposure_s=exposure_s,
        axial_scale=axial_scale,
        min_length=min_length,
    )
    out = pd.DataFrame(
        {
            "track_id": uniq.astype(np.int64),
            "n_localizations": length.astype(np.int64),
            "first_frame": f[starts].astype(np.int64),
            "last_frame": f[ends].astype(np.int64),
            "duration_s": duration.astype(np.float64),
            "x_um": means[:, 0],
            "y_um": means[:, 1],
            "z_um": means[:, 2],
            "D_um2_s": d3,
            "D_se_um2_s": se3,
            "D_xy_um2_s": dxy,
            "D_z_um2_s": dz,
            "loc_error_xy_um": lxy,
            "loc_error_z_um": lz,
        }
    )
    return out.astype(SUMMARY_COLUMNS)


def _steps_and_interval(
    locs: pd.DataFrame,
    frame_positions: np.ndarray | None,
    frame_interval_s: float | None,
) -> tuple[np.ndarray | None, float]:
    """The step index of each frame (``None``: the frame number, one field) and
    the time of one step, for :func:`summarize_tracks`."""
    if frame_positions is not None and len(np.unique(frame_positions)) > 1:
        pos, visit = _visits(frame_positions)
        n_frames = len(pos)
        if len(locs) and int(locs["frame"].max()) >= n_frames:
            raise ValueError(
                f"frame_positions holds {n_frames} frames; the table has frame "
                f"{int(locs['frame'].max())}"
            )
        # a field's consecutive visits are one step apart, other fields'
        # frames never are
        return visit + pos * (n_frames + 2), _visit_interval(
            locs, pos, visit, frame_interval_s
        )
    if frame_interval_s is None:
        return None, _frame_interval_from_t(locs) if len(locs) else float("nan")
    return None, float(frame_interval_s)


def _diffusion_columns(
    key: np.ndarray,
    steps: np.ndarray,
    xyz: np.ndarray,
    length: np.ndarray,
    *,
    t_s: np.ndarray | None,
    dt: float,
    exposure_s: float | None,
    axial_scale: float,
    min_length: int,
) -> tuple[np.ndarray, ...]:
    """``D``, its standard error, ``D_xy``, ``D_z`` and the localization errors
    in xy and z of each track (NaN where the track is short or ``dt`` unknown)."""
    g = len(length)
    nan = np.full(g, np.nan)
    if not (np.isfinite(dt) and dt > 0):
        return nan, nan, nan, nan, nan, nan
    r = _blur_r(dt, exposure_s)
    sample = xyz if axial_scale == 1.0 else xyz * np.array([1.0, 1.0, axial_scale])
    s2, n1, s11, n2 = _step_sums(key, steps, sample, g, t_s=t_s, dt=dt)
    d, var, sig2 = _cve(s2, n1, s11, n2, dt, r)
    d3, se3, dxy, _, dz, _ = _combine(d, var)
    with np.errstate(invalid="ignore"):
        sxy = sig2[:, :2].mean(axis=1)
        lxy = np.where(sxy >= 0, np.sqrt(np.abs(sxy)), np.nan)
        lz = np.where(sig2[:, 2] >= 0, np.sqrt(np.abs(sig2[:, 2])), np.nan)
    short = (length < min_length) | (n2 < 1)
    return tuple(np.where(short, np.nan, v) for v in (d3, se3, dxy, dz, lxy, lz))


# ----------------------------------------------------------------------- exports

_NAPARI_SKIP = {"track_id", "frame", *_POS}


def to_napari_tracks(locs: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Tracks as the data and properties of a napari ``Tracks`` layer.

    Parameters
    ----------
    locs : pd.DataFrame
        Localizations with ``track_id``, ``frame``, ``x_um``, ``y_um``, ``z_um``;
        rows with ``track_id < 0`` are dropped.

    Returns
    -------
    data : np.ndarray
        ``(N, 5)`` float64 ``[track_id, t, z, y, x]``: ``t`` is the frame number and
        positions are in micrometres, sorted by track then frame. Use
        ``viewer.add_tracks(data, properties=props)``; to overlay on an image in
        pixels, give the layer ``scale=(1, 1, 1, 1)`` and the image
        ``scale=(1, dz, pixel_um, pixel_um)``.
    properties : dict of str to np.ndarray
        Every other numeric column of ``locs`` (``t_s``, ``dz_um``, ``photons``,
        ...), aligned with ``data``.
    """
    tid = locs["track_id"].to_numpy().astype(np.int64)
    frames = locs["frame"].to_numpy().astype(np.int64)
    rows = np.flatnonzero(tid >= 0)
    order = rows[np.lexsort((frames[rows], tid[rows]))]
    xyz = locs[list(_POS)].to_numpy(dtype=np.float64)[order]
    data = np.column_stack(
        [tid[order], frames[order], xyz[:, 2], xyz[:, 1], xyz[:, 0]]
    ).astype(np.float64)
    props: dict[str, np.ndarray] = {}
    for col in locs.columns:
        if col in _NAPARI_SKIP:
            continue
        values = locs[col].to_numpy()
        if np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_:
            props[str(col)] = values[order]
    return data.reshape(-1, 5), props


_GEFF_RENAME = {"t_s": "t", "x_um": "x", "y_um": "y", "z_um": "z"}


def write_geff(
    locs: pd.DataFrame,
    path: str | Path,
    *,
    overwrite: bool = False,
    frame_interval_s: float | None = None,
    zarr_format: int = 2,
) -> Path:
    """Write linked localizations as a GEFF graph (``geff`` package).

    Nodes are the localizations with ``track_id >= 0``; a node's id is its row
    position in ``locs`` (``0 .. len(locs) - 1``). Edges join consecutive
    localizations of a track (directed, earlier to later; across bridged gaps
    too). Node properties: axes ``t`` (seconds), ``z``, ``y``, ``x``
    (micrometres), then ``frame``, ``track_id`` (declared as the tracklet
    property) and every other numeric column under its own name. Edges carry no
    properties.

    Parameters
    ----------
    locs : pd.DataFrame
        Localizations (``frame``, ``x_um``, ``y_um``, ``z_um``, ``track_id``;
        ``t_s`` for times).
    path : str or Path
        The ``.geff`` (zarr) directory to write.
    overwrite : bool
        Replace an existing GEFF at ``path``; otherwise raise FileExistsError.
    frame_interval_s : float, optional
        Used for ``t = frame * frame_interval_s`` when ``locs`` has no ``t_s``.
        With neither, ``t`` is the frame number and its axis has no unit.
    zarr_format : int
        Zarr format of the store (2 or 3).

    Returns
    -------
    Path
        ``path``.
    """
    from geff import GeffMetadata
    from geff.core_io import write_arrays
    from geff_spec import Axis

    path = Path(path)
    tid = locs["track_id"].to_numpy().astype(np.int64)
    frames = locs["frame"].to_numpy().astype(np.int64)
    rows = np.flatnonzero(tid >= 0)
    order = rows[np.lexsort((frames[rows], tid[rows]))]
    node_ids = order.astype(np.int64)
    same = tid[order][1:] == tid[order][:-1]
    edge_ids = np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)
    edge_ids = edge_ids.reshape(-1, 2)

    if "t_s" in locs.columns:
        t = locs["t_s"].to_numpy(dtype=np.float64)[order]
        t_unit: str | None = "second"
    elif frame_interval_s is not None:
        t = frames[order] * float(frame_interval_s)
        t_unit = "second"
    else:
        t = frames[order].astype(np.float64)
        t_unit = None

    def prop(values: np.ndarray) -> Any:
        return {"values": np.ascontiguousarray(values), "missing": None}

    node_props: dict[str, Any] = {"t": prop(t)}
    for col in ("z_um", "y_um", "x_um"):
        node_props[_GEFF_RENAME[col]] = prop(
            locs[col].to_numpy(dtype=np.float64)[order]
        )
    node_props["frame"] = prop(frames[order])
    node_props["track_id"] = prop(tid[order])
    for col in locs.columns:
        if col in node_props or col in _GEFF_RENAME or col in ("frame", "track_id"):
            continue
        values = locs[col].to_numpy()
        if np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_:
            node_props[str(col)] = prop(values[order])

    axes = [Axis(name="t", type="time", unit=t_unit)]
    axes += [Axis(name=a, type="space", unit="micrometer") for a in ("z", "y", "x")]
    metadata = GeffMetadata(
        directed=True,
        axes=axes,
        node_props_metadata={},
        edge_props_metadata={},
        track_node_props={"tracklet": "track_id"},
        extra={"axialtrack": {"node_id": "row position in the localization table"}},
    )
    write_arrays(
        str(path),
        node_ids=node_ids,
        node_props=node_props,
        edge_ids=edge_ids,
        edge_props=None,
        metadata=metadata,
        zarr_format=2 if zarr_format == 2 else 3,
        overwrite=overwrite,
    )
    return path


def read_geff(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a GEFF written by :func:`write_geff` back into a localization table.

    Parameters
    ----------
    path : str or Path
        The GEFF directory.

    Returns
    -------
    nodes : pd.DataFrame
        One row per node, indexed by node id, with ``t_s`` (when ``t`` is in
        seconds), ``x_um``, ``y_um``, ``z_um`` and the other node properties.
    edges : np.ndarray
        ``(E, 2)`` int64 (source, target) node ids.
    """
    from geff.core_io import read_to_memory

    g = read_to_memory(str(path))
    cols: dict[str, np.ndarray] = {}
    t_axis = next((a for a in g["metadata"].axes or [] if a.name == "t"), None)
    back = {v: k for k, v in _GEFF_RENAME.items()}
    for name, p in g["node_props"].items():
        values = np.asarray(p["values"])
        missing = p.get("missing")
        if missing is not None and np.asarray(missing).any():
            values = values.astype(np.float64)
            values[np.asarray(missing, dtype=bool)] = np.nan
        out_name = back.get(name, name)
        if name == "t" and t_axis is not None and t_axis.unit != "second":
            out_name = "t"  # frame numbers, not seconds
        cols[out_name] = values
    nodes = pd.DataFrame(
        cols, index=pd.Index(np.asarray(g["node_ids"]), name="node_id")
    )
    edges = np.asarray(g["edge_ids"]).astype(np.int64).reshape(-1, 2)
    return nodes, edges

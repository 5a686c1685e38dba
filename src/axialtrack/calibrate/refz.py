"""Reference Z of each bead, in the stage frame of plane 0.

The reference Z of a bead is the focus-stage position at which it is in focus in
plane 0 (the DESIGN Z convention, ``z_focus_um`` of the simulator). Best focus is
where the on-axis image intensity peaks, so the brightness ``b_ij`` of bead ``i``
in frame ``j`` is its on-axis intensity: the background-subtracted crop weighted by
a narrow Gaussian aperture (``sigma = 0.5`` px) centred on the bead's sub-pixel
position. Wider apertures collect the axially asymmetric wings of the defocused
PSF and pull the estimate off focus (+11 nm for a 3x3 sum, +30 nm for 5x5 on the
simulated rig).

Plane 1 is in focus ``delta`` (``plane_offset_um``) lower on the stage than plane
0, so a plane-1 estimate is mapped to the plane-0 frame by adding ``delta``; the
two planes' estimates are averaged (same as the weighted mean of the summed
profiles shifted by ``delta / 2``, but keeping each plane's own window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "APERTURE_SIGMAS_PX",
    "RefZ",
    "aperture_intensity",
    "ref_z_mean",
    "ref_z_msd",
]

#: Gaussian aperture widths (px) of the features of the MSD alignment; the first
#: is the on-axis brightness of the weighted mean.
APERTURE_SIGMAS_PX: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass
class RefZ:
    """Reference Z per bead (``(N,)`` arrays, um) from one method."""

    z_um: np.ndarray
    sigma_um: np.ndarray
    z_plane_um: np.ndarray | None = None  # (N, 2) per-plane estimates (mean)


def aperture_intensity(
    crops: np.ndarray,
    background: np.ndarray,
    offsets_px: np.ndarray,
    sigmas_px: tuple[float, ...] = APERTURE_SIGMAS_PX,
    camera: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Background-subtracted Gaussian-aperture intensities.

    Parameters
    ----------
    crops
        ``(N, Z, 2, S, S)`` bead crops (counts).
    background
        ``(Z, 2)`` background per frame and plane.
    offsets_px
        ``(N, 2, 2)`` sub-pixel position of the bead relative to each plane's crop
        centre, ``(x, y)``.
    sigmas_px
        Aperture widths.
    camera
        ``(offset_adu, gain_e_per_adu, read_noise_e)`` when known: the variance of
        the first feature is then computed from the camera noise model, pixel
        variance ``(adu - offset) / gain + (read_noise / gain) ** 2``.

    Returns
    -------
    features : numpy.ndarray
        ``(N, Z, 2, F)`` intensities, one feature per aperture width.
    variance : numpy.ndarray or None
        ``(N, Z, 2)`` variance of the first feature, if ``camera`` is given.
    """
    s = crops.shape[-1]
    c = s // 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) - c
    dx = xx[None, None] - offsets_px[..., 0, None, None].astype(np.float32)
    dy = yy[None, None] - offsets_px[..., 1, None, None].astype(np.float32)
    r2 = dx * dx + dy * dy  # (N, 2, S, S)
    out = []
    var = None
    for k, sig in enumerate(sigmas_px):
        w = np.exp(-r2 / (2.0 * sig * sig)).astype(np.float32)
        tot = np.einsum("nzcij,ncij->nzc", crops, w)
        out.append(tot - background[None] * w.sum(axis=(2, 3))[:, None, :])
        if k == 0 and camera is not None:
            off, gain, rn = camera
            pix = np.clip(crops - np.float32(off), 0, None) / np.float32(gain) + (
                np.float32(rn / gain) ** 2
            )
            var = np.einsum("nzcij,ncij->nzc", pix, w * w).astype(float)
    return np.stack(out, axis=-1), var


def _noise_sigma(b: np.ndarray) -> np.ndarray:
    """Per-profile noise from the robust spread of second differences."""
    d2 = b[:, 1:-1] - 0.5 * (b[:, :-2] + b[:, 2:])
    med = np.median(d2, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(d2 - med), axis=1) / np.sqrt(1.5)


def _weighted_mean_plane(
    b: np.ndarray,
    z: np.ndarray,
    window_um: float,
    power: float,
    stage_sigma_um: float,
    var_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windowed weighted mean of one plane's profiles ``b`` ``(N, Z)``."""
    step = float(np.median(np.diff(z))) if len(z) > 1 else 1.0
    smooth = ndimage.uniform_filter1d(b, max(1, round(0.25 / step)), axis=1)
    zc = z[np.argmax(smooth, axis=1)]
    bp = np.clip(b, 0.0, None) ** power
    for _ in range(3):
        win = np.clip((window_um - np.abs(z[None] - zc[:, None])) / step + 0.5, 0, 1)
        w = bp * win
        tot = w.sum(axis=1)
        zc = np.where(tot > 0, (w * z[None]).sum(axis=1) / np.maximum(tot, 1e-30), zc)
    # propagated uncertainty: pixel noise on b (power 1: dz/db_j = win_j (z_j-z)/B)
    vb = _noise_sigma(b)[:, None] ** 2 if var_b is None else var_b
    grad = power * np.clip(b, 1e-30, None) ** (power - 1) * win
    var_pix = (
        (grad * (z[None] - zc[:, None]) / np.maximum(tot, 1e-30)[:, None]) ** 2 * vb
    ).sum(axis=1)
    var_stage = ((w / np.maximum(tot, 1e-30)[:, None]) ** 2).sum(axis=1) * (
        stage_sigma_um**2
    )
    return zc, var_pix, var_stage, tot


def ref_z_mean(
    features: np.ndarray,
    z_um: np.ndarray,
    plane_offset_um: float,
    *,
    window_um: float = 0.4,
    power: float = 2.0,
    stage_sigma_um: float = 0.005,
    variance: np.ndarray | None = None,
) -> RefZ:
    """Brightness-weighted mean Z, ``z_i = sum_j b_ij z_j / sum_j b_ij``.

    ``b_ij`` is the on-axis brightness (first feature of
    :func:`aperture_intensity`), clipped at zero, raised to ``power`` and restricted
    to ``+-window_um`` around the estimate (iterated from the profile maximum, with
    soft window edges). Plane 1's estimate plus ``plane_offset_um`` and plane 0's
    are averaged.

    The uncertainty combines the pixel noise of ``b`` (``variance`` from the
    camera model when given, else estimated from each profile's second
    differences) propagated through the weighted mean, and an
    independent stage position error of ``stage_sigma_um`` per frame (fully
    correlated between the two planes, which share the frames).
    """
    z = np.asarray(z_um, dtype=float)
    zs, vp, vs = [], [], []
    for c in range(2):
        zc, var_pix, var_stage, _ = _weighted_mean_plane(
            features[:, :, c, 0].astype(float),
            z,
            window_um,
            power,
            stage_sigma_um,
            None if variance is None else variance[:, :, c],
        )
        zs.append(zc + c * plane_offset_um)
        vp.append(var_pix)
        vs.append(var_stage)
    zp = np.stack(zs, axis=1)
    sigma = np.sqrt((vp[0] + vp[1]) / 4.0 + (np.sqrt(vs[0]) + np.sqrt(vs[1])) ** 2 / 4)
    return RefZ(z_um=zp.mean(axis=1), sigma_um=sigma, z_plane_um=zp)


def _align(
    feat: np.ndarray, ref: np.ndarray, z: np.ndarray, max_shift_um: float, substep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift ``s`` (um), its variance and the scale of each bead against ``ref``."""
    n, n_z, _ = feat.shape
    step = float(np.median(np.diff(z)))
    ds = step / substep
    shifts = np.arange(-max_shift_um, max_shift_um + ds / 2, ds)
    t = (z[None, :] - shifts[:, None] - z[0]) / step  # ref evaluated at z_j - s
    valid = (t >= 0) & (t <= n_z - 1)
    i0 = np.clip(np.floor(t).astype(np.int64), 0, n_z - 2)
    fr = np.clip(t - i0, 0, 1)[..., None]
    rs = (ref[i0] * (1 - fr) + ref[i0 + 1] * fr) * valid[..., None]  # (n_s, Z, F)
    ff = np.einsum("nzf,sz->ns", feat**2, valid.astype(float))
    fr_ = np.einsum("nzf,szf->ns", feat, rs)
    rr = np.einsum("szf->s", rs**2)[None]
    nv = (valid.sum(axis=1) * feat.shape[2]).astype(float)
    cost = (ff - fr_**2 / np.maximum(rr, 1e-30)) / np.maximum(nv, 1)[None]
    k = np.clip(np.argmin(cost, axis=1), 1, len(shifts) - 2)
    rows = np.arange(n)
    c0, c1, c2 = cost[rows, k - 1], cost[rows, k], cost[rows, k + 1]
    den = c0 - 2 * c1 + c2
    frac = np.where(den > 0, 0.5 * (c0 - c2) / np.where(den > 0, den, 1), 0.0)
    s = shifts[k] + np.clip(frac, -1, 1) * ds
    scale = fr_[rows, k] / np.maximum(rr[0, k], 1e-30)
    # least squares: var(s) = 2 sigma^2 / C'' with C the sum of squares; the
    # reference is as noisy as the bead, hence the factor 2
    curv = np.maximum(den, 1e-30) / ds**2 * nv[k]
    sig2 = c1 * nv[k] / np.maximum(nv[k] - 2, 1)
    var_s = 2.0 * 2.0 * sig2 / curv
    return s, var_s, scale


def ref_z_msd(
    features: np.ndarray,
    z_um: np.ndarray,
    anchor: RefZ,
    *,
    reference: int,
    max_shift_um: float | None = None,
    substep: int = 10,
    n_iter: int = 2,
    stage_sigma_um: float = 0.005,
) -> RefZ:
    """Reference Z by alignment to a reference bead (minimum squared difference).

    Each bead's profile features (both planes, all apertures: insensitive to the
    bead's sub-pixel position) are compared with the reference, shifted in Z by
    linear interpolation on a grid of ``step / substep`` and scaled by the
    least-squares brightness factor; the mean squared difference over the
    overlapping frames is minimized and refined by a parabola through the three
    best grid points. The first reference is the bead ``reference``; later
    iterations align to the mean of all aligned beads (a template with less
    noise). The shift ``s_i`` says bead ``i`` is in focus ``s_i`` above the
    reference. The absolute offset is the median over beads of
    ``z_mean_i - s_i`` (the method-(a) values of all beads, so one reference
    bead's noise does not offset every bead).

    Parameters
    ----------
    features
        ``(N, Z, 2, F)`` from :func:`aperture_intensity`.
    z_um
        ``(Z,)`` stage positions (monotonic increasing).
    anchor
        Method-(a) result giving the absolute offset.
    reference
        Index of the reference bead.
    max_shift_um
        Largest shift searched; default: the largest method-(a) distance from
        the reference bead plus 0.5 um.
    substep
        Shift grid points per Z step.
    n_iter
        Alignment rounds (1: reference bead only).
    stage_sigma_um
        Stage position error per frame.
    """
    z = np.asarray(z_um, dtype=float)
    n, n_z = features.shape[:2]
    feat = features.reshape(n, n_z, -1).astype(float)
    # per-feature scaling so each aperture counts alike
    feat = feat / np.maximum(np.abs(feat).max(axis=1, keepdims=True), 1e-30)
    ref = feat[reference]
    if max_shift_um is None:
        spread = float(np.max(np.abs(anchor.z_um - anchor.z_um[reference])))
        max_shift_um = spread + 0.5
    s = np.zeros(n)
    var_s = np.zeros(n)
    for it in range(max(1, n_iter)):
        s, var_s, scale = _align(feat, ref, z, max_shift_um, substep)
        if it == n_iter - 1 or n < 3:
            break
        # template in the frame of the current reference: R(u) = F_i(u + s_i) / a_i
        acc = np.zeros_like(ref)
        cnt = np.zeros_like(ref)
        for i in range(n):
            u = z + s[i]
            inside = (u >= z[0]) & (u <= z[-1])
            for f in range(feat.shape[2]):
                val = np.interp(u, z, feat[i, :, f]) / max(scale[i], 1e-30)
                acc[inside, f] += val[inside]
                cnt[inside, f] += 1
        ref = np.where(cnt > 0, acc / np.maximum(cnt, 1), ref)
    off = anchor.z_um - s
    offset = float(np.median(off))
    var_off = (1.4826 * np.median(np.abs(off - offset))) ** 2 / max(n, 1)
    sigma = np.sqrt(var_s + var_off + stage_sigma_um**2 / max(n_z, 1))
    return RefZ(z_um=offset + s, sigma_um=sigma)

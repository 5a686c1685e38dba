"""Plane registration: the affine map from plane-0 to plane-1 pixel coordinates.

The convention is that of :meth:`axialtrack.geometry.SplitterGeometry.plane1_affine`:
a ``(2, 3)`` matrix ``A`` with ``xy1 = A[:, :2] @ xy0 + A[:, 2]``, mapping a
position in plane 0 to where the same bead appears in plane 1 (split and
un-mirrored). Its inverse (:func:`axialtrack.geometry.invert_affine`) maps plane 1
to plane 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import spatial

from axialtrack.geometry import apply_affine

__all__ = [
    "Registration",
    "affine_rotation_deg",
    "fit_affine",
    "phase_correlation_shift",
    "register_points",
]


@dataclass
class Registration:
    """Result of the plane registration.

    Attributes
    ----------
    affine
        ``(2, 3)`` plane-0 -> plane-1 affine.
    residual_nm
        RMS distance between the mapped plane-0 and the plane-1 positions of the
        matched inlier beads, in nm.
    n_matched
        Number of inlier bead pairs used.
    pairs
        ``(M, 5)`` rows ``field, x0, y0, x1, y1`` of the inlier pairs.
    coarse_shift_px
        Translation from phase correlation that seeded the matching.
    """

    affine: np.ndarray
    residual_nm: float
    n_matched: int
    pairs: np.ndarray
    coarse_shift_px: tuple[float, float]

    @property
    def rotation_deg(self) -> float:
        """Rotation part of the affine (counter-clockwise, degrees)."""
        return affine_rotation_deg(self.affine)

    @property
    def residual_vectors_px(self) -> np.ndarray:
        """``(M, 2)`` plane-1 position minus the mapped plane-0 position (px)."""
        return self.pairs[:, 3:5] - apply_affine(self.affine, self.pairs[:, 1:3])


def affine_rotation_deg(affine: np.ndarray) -> float:
    """Rotation angle of the linear part of a ``(2, 3)`` affine, in degrees."""
    a = np.asarray(affine, dtype=float)
    return float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares ``(2, 3)`` affine with ``dst ~ A @ src``; needs 3+ points."""
    src = np.asarray(src, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst, dtype=float).reshape(-1, 2)
    if len(src) < 3:
        raise ValueError(f"an affine fit needs at least 3 point pairs; got {len(src)}")
    design = np.hstack([src, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return np.asarray(sol.T)


def phase_correlation_shift(
    planes0: Sequence[np.ndarray], planes1: Sequence[np.ndarray]
) -> tuple[float, float]:
    """Translation ``(dx, dy)`` of plane 1 relative to plane 0 (integer pixels).

    The normalized cross-power spectra of all image pairs are summed, so sparse
    bead fields pool their evidence.
    """
    acc: np.ndarray | None = None
    for a, b in zip(planes0, planes1, strict=True):
        fa = np.fft.rfft2(a - np.mean(a))
        fb = np.fft.rfft2(b - np.mean(b))
        cross = fb * np.conj(fa)
        cross /= np.abs(cross) + 1e-12
        acc = cross if acc is None else acc + cross
    if acc is None:
        return 0.0, 0.0
    shape = np.shape(planes0[0])
    corr = np.fft.irfft2(acc, s=shape)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = shape
    dy = iy - h if iy > h // 2 else iy
    dx = ix - w if ix > w // 2 else ix
    return float(dx), float(dy)


def _match(
    xy0: np.ndarray, xy1: np.ndarray, affine: np.ndarray, tol_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of mapped plane-0 points and plane-1 points."""
    if len(xy0) == 0 or len(xy1) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    mapped = apply_affine(affine, xy0)
    tree1 = spatial.cKDTree(xy1)
    d01, j = tree1.query(mapped, distance_upper_bound=tol_px)
    tree0 = spatial.cKDTree(mapped)
    _, i_back = tree0.query(xy1)
    i = np.arange(len(xy0))
    ok = np.isfinite(d01)
    ok[ok] &= i_back[j[ok]] == i[ok]
    return i[ok], j[ok]


def register_points(
    xy0: Sequence[np.ndarray],
    xy1: Sequence[np.ndarray],
    coarse_shift_px: tuple[float, float],
    *,
    pixel_size_um: float,
    tol_px: float = 4.0,
    n_iter: int = 4,
    outlier_sigma: float = 4.0,
) -> Registration:
    """Estimate the plane-0 -> plane-1 affine from bead positions of many fields.

    Starting from the coarse translation, beads are matched by mutual nearest
    neighbour within ``tol_px``, an affine is fitted by least squares, pairs with
    residuals beyond ``outlier_sigma`` robust standard deviations are dropped, and
    matching and fitting repeat with a tighter tolerance.

    Parameters
    ----------
    xy0, xy1
        Per field, ``(N, 2)`` sub-pixel bead positions in plane 0 and plane 1.
    coarse_shift_px
        Initial translation ``(dx, dy)`` of plane 1.
    pixel_size_um
        Pixel size, for the residual in nm.
    tol_px
        Initial matching tolerance.
    n_iter
        Match/fit rounds.
    outlier_sigma
        Outlier cut on the residual distance.

    Raises
    ------
    ValueError
        Fewer than 3 bead pairs could be matched.
    """
    affine = np.array([[1.0, 0.0, coarse_shift_px[0]], [0.0, 1.0, coarse_shift_px[1]]])
    tol = float(tol_px)
    pairs = np.zeros((0, 5))
    for it in range(n_iter):
        rows = []
        for f, (a, b) in enumerate(zip(xy0, xy1, strict=True)):
            i, j = _match(np.asarray(a), np.asarray(b), affine, tol)
            if len(i):
                rows.append(np.column_stack([np.full(len(i), f, float), a[i], b[j]]))
        pairs = np.concatenate(rows) if rows else np.zeros((0, 5))
        if len(pairs) < 3:
            raise ValueError(
                f"only {len(pairs)} bead pair(s) matched between the planes "
                f"(tolerance {tol:.1f} px)"
            )
        # translation-only first round when few pairs, full affine otherwise
        keep = np.ones(len(pairs), dtype=bool)
        for _ in range(3):
            affine_new = fit_affine(pairs[keep, 1:3], pairs[keep, 3:5])
            res = np.linalg.norm(
                pairs[:, 3:5] - apply_affine(affine_new, pairs[:, 1:3]), axis=1
            )
            scale = max(1.4826 * float(np.median(res[keep])), 0.01)
            new_keep = res < outlier_sigma * scale + 0.05
            if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        affine = affine_new
        pairs = pairs[keep]
        tol = max(1.0, min(tol, 6.0 * float(np.sqrt(np.mean(res[keep] ** 2))) + 0.5))
        if it == n_iter - 1:
            break
    res = pairs[:, 3:5] - apply_affine(affine, pairs[:, 1:3])
    resid_nm = float(np.sqrt(np.mean(np.sum(res**2, axis=1)))) * pixel_size_um * 1e3
    return Registration(
        affine=affine,
        residual_nm=resid_nm,
        n_matched=len(pairs),
        pairs=pairs,
        coarse_shift_px=(float(coarse_shift_px[0]), float(coarse_shift_px[1])),
    )

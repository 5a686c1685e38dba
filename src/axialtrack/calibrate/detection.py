"""Per-field bead detection and localization at best focus in both planes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .beads import band_pass, crop_stack, detect_peaks, fit_gaussian

__all__ = ["FieldDetections", "detect_field"]

#: Half-size of the window of the Gaussian fit.
FIT_HALF = 4
#: Frames on each side of the best-focus frame averaged for the fit.
FIT_FRAMES = 2


@dataclass
class FieldDetections:
    """Detections of one field.

    Attributes
    ----------
    background
        ``(Z, 2)`` background level of every frame and plane (counts).
    max_projection
        ``(2, H, W)`` maximum projection over Z (float32).
    peaks
        Per plane, ``(N, 2)`` integer peak positions ``(x, y)``.
    xy
        Per plane, ``(N, 2)`` sub-pixel positions (NaN where the fit failed or
        the fit window left the image).
    best_frame
        Per plane, ``(N,)`` index of the best-focus frame.
    """

    background: np.ndarray
    max_projection: np.ndarray
    peaks: list[np.ndarray]
    xy: list[np.ndarray]
    best_frame: list[np.ndarray]


def frame_background(frames: np.ndarray) -> np.ndarray:
    """``(Z, 2)`` median of each frame and plane (subsampled), as float."""
    z, c, h, w = frames.shape
    step = max(1, int(np.sqrt(h * w / 16384)))
    sub = np.asarray(frames[:, :, ::step, ::step], dtype=np.float32).reshape(z, c, -1)
    return np.median(sub, axis=-1).astype(float)


def detect_field(
    frames: np.ndarray,
    *,
    threshold_sigma: float = 8.0,
    min_distance_px: int = 3,
) -> FieldDetections:
    """Detect and localize beads of one field in both planes.

    Parameters
    ----------
    frames
        ``(Z, 2, H, W)`` stack of one field.
    threshold_sigma
        Detection threshold on the band-passed maximum projection.
    min_distance_px
        Minimum distance between peaks.
    """
    n_z, _, h, w = frames.shape
    bg = frame_background(frames)
    mp = np.asarray(frames.max(axis=0), dtype=np.float32)
    peaks, xys, bests = [], [], []
    for c in range(2):
        pk, _ = detect_peaks(
            mp[c], threshold_sigma=threshold_sigma, min_distance_px=min_distance_px
        )
        xy = np.full((len(pk), 2), np.nan)
        best = np.zeros(len(pk), dtype=np.int64)
        inside = (
            (pk[:, 0] >= FIT_HALF)
            & (pk[:, 0] < w - FIT_HALF)
            & (pk[:, 1] >= FIT_HALF)
            & (pk[:, 1] < h - FIT_HALF)
        )
        idx = np.nonzero(inside)[0]
        if len(idx):
            plane = frames[:, c]
            small = crop_stack(plane, pk[idx], 3).astype(np.float32)  # (N, Z, 3, 3)
            prof = small.sum(axis=(2, 3)) - 9.0 * bg[None, :, c]
            prof = ndimage.uniform_filter1d(prof, 5, axis=1, mode="nearest")
            b = np.argmax(prof, axis=1)
            best[idx] = b
            win = crop_stack(plane, pk[idx], 2 * FIT_HALF + 1)  # (N, Z, k, k)
            lo = np.clip(b - FIT_FRAMES, 0, n_z - 1)
            hi = np.clip(b + FIT_FRAMES + 1, 1, n_z)
            sel = np.arange(n_z)[None, :]
            mask = (sel >= lo[:, None]) & (sel < hi[:, None])
            avg = np.einsum(
                "nz,nzij->nij", mask.astype(np.float32), win.astype(np.float32)
            )
            avg /= mask.sum(axis=1)[:, None, None]
            params, ok = fit_gaussian(avg)
            good = idx[ok]
            xy[good, 0] = pk[good, 0] - FIT_HALF + params[ok, 0]
            xy[good, 1] = pk[good, 1] - FIT_HALF + params[ok, 1]
        peaks.append(pk)
        xys.append(xy)
        bests.append(best)
    return FieldDetections(bg, mp, peaks, xys, bests)


def band_passed_projection(det: FieldDetections) -> list[np.ndarray]:
    """Band-passed maximum projections of both planes (for phase correlation)."""
    return [band_pass(det.max_projection[c]) for c in range(2)]

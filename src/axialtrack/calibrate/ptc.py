"""Camera offset, gain and read noise from dark and flat frames (photon
transfer curve).

For a camera with offset ``o`` (ADU), conversion gain ``g`` (e-/ADU) and read
noise ``r`` (e- rms), a pixel receiving ``s`` photo-electrons reads
``adu = o + s / g`` on average with variance ``s / g**2 + r**2 / g**2 + 1/12``
(shot noise, read noise, rounding to whole counts), so

    var = (mean - o) / g + r**2 / g**2 + 1/12.

The variance of a frame is measured from the difference of two frames of the
same level (``var(a - b) / 2``), which removes what is the same in both: the
fixed pattern of the sensor (offset and gain per pixel), uneven illumination,
static sample. Each pair of frames gives one ``(mean, var)`` point per tile of
the sensor (``tile_px`` square): in a tile of uneven light the mean and the
variance are both averages over its pixels, so the relation stays linear.

- ``offset_adu``: the mean of the dark frames;
- ``e_per_adu``: ``1 / slope`` of the robust (Theil-Sen) straight line through
  the dark and flat points, with its 95 % confidence interval;
- ``read_noise_e``: ``g * sqrt(var_dark - 1/12)`` from the dark pairs.

Tiles holding a saturated pixel (at ``2**bit_depth - 1``) or a zero are left
out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axialtrack.errors import AxialtrackError

__all__ = ["PTCError", "PTCResult", "measure_ptc", "pair_points", "plot_ptc"]

#: Variance of rounding to whole counts (ADU^2).
QUANTIZATION_VAR = 1.0 / 12.0
#: Most points the Theil-Sen fit takes (an even subsample of the rest).
MAX_FIT_POINTS = 3000


class PTCError(AxialtrackError, ValueError):
    """Frames from which the photon transfer curve cannot be measured."""


@dataclass
class PTCResult:
    """What :func:`measure_ptc` measured.

    Attributes
    ----------
    offset_adu, offset_stderr_adu
        Offset (mean of the dark frames) and its standard error.
    e_per_adu, e_per_adu_ci95
        Conversion gain (e-/ADU) and its 95 % confidence interval.
    read_noise_e, read_noise_stderr_e
        Read noise (e- rms) and its standard error (from the dark tiles' scatter
        and the gain's uncertainty).
    slope, intercept
        The fitted line ``var = slope * mean + intercept`` (ADU, ADU^2).
    dark_var_adu2
        Temporal variance of the dark frames (ADU^2), rounding included.
    points
        ``(N, 3)``: mean (ADU), variance (ADU^2), level (0: dark, 1.. flats) of
        every tile of every pair used.
    levels
        Per level: ``mean_adu``, ``var_adu2`` (medians over tiles), ``n_pairs``.
    n_points
        Points in the fit.
    """

    offset_adu: float
    offset_stderr_adu: float
    e_per_adu: float
    e_per_adu_ci95: tuple[float, float]
    read_noise_e: float
    read_noise_stderr_e: float
    slope: float
    intercept: float
    dark_var_adu2: float
    points: np.ndarray
    levels: list[dict[str, Any]] = field(default_factory=list)
    n_points: int = 0

    def camera_fields(self) -> dict[str, float]:
        """``offset_adu``, ``e_per_adu``, ``read_noise_e`` (camera file fields)."""
        return {
            "offset_adu": float(self.offset_adu),
            "e_per_adu": float(self.e_per_adu),
            "read_noise_e": float(self.read_noise_e),
        }

    def measured(self) -> dict[str, Any]:
        """The measurement with its uncertainties (JSON-able), for the camera
        file's ``"measured"`` entry."""
        return {
            "method": "photon transfer curve: var(a - b)/2 vs mean of frame pairs "
            "per tile, Theil-Sen line; offset = dark mean; read noise from dark "
            "pairs",
            "offset_adu": {"value": self.offset_adu, "stderr": self.offset_stderr_adu},
            "e_per_adu": {"value": self.e_per_adu, "ci95": list(self.e_per_adu_ci95)},
            "read_noise_e": {
                "value": self.read_noise_e,
                "stderr": self.read_noise_stderr_e,
            },
            "fit": {
                "slope_per_adu": self.slope,
                "intercept_adu2": self.intercept,
                "n_points": self.n_points,
            },
            "dark_var_adu2": self.dark_var_adu2,
            "levels": self.levels,
        }


def _as_stack(frames: Any, what: str) -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim == 2:
        a = a[None]
    if a.ndim > 3:
        a = a.reshape(-1, *a.shape[-2:])
    if a.ndim != 3 or a.shape[0] < 2:
        raise PTCError(
            f"{what}: {a.shape[0] if a.ndim == 3 else 1} frame(s) of shape "
            f"{a.shape[-2:]}; need at least 2 frames of one level (frame pairs "
            "give the noise). Record 2 or more frames at each level"
        )
    if not np.issubdtype(a.dtype, np.number):
        raise PTCError(f"{what}: frames of {a.dtype}, not camera counts")
    return a


def pair_points(
    frames: Any,
    *,
    tile_px: int = 32,
    max_adu: float = 65535.0,
    what: str = "frames",
) -> np.ndarray:
    """``(N, 2)`` mean (ADU) and variance (ADU^2) per tile of each pair of
    consecutive frames (0-1, 2-3, ...) of one level."""
    a = _as_stack(frames, what)
    h, w = a.shape[-2:]
    t = int(min(tile_px, h, w))
    ny, nx = h // t, w // t
    out = []
    for k in range(0, a.shape[0] - 1, 2):
        f0 = a[k, : ny * t, : nx * t].astype(np.float64)
        f1 = a[k + 1, : ny * t, : nx * t].astype(np.float64)
        bad = (f0 >= max_adu) | (f1 >= max_adu) | (f0 <= 0) | (f1 <= 0)
        m = ((f0 + f1) / 2).reshape(ny, t, nx, t).mean(axis=(1, 3))
        d = (f0 - f1).reshape(ny, t, nx, t)
        v = d.var(axis=(1, 3), ddof=1) / 2
        ok = ~bad.reshape(ny, t, nx, t).any(axis=(1, 3))
        out.append(np.stack([m[ok], v[ok]], axis=1))
    pts = np.concatenate(out) if out else np.zeros((0, 2))
    if not len(pts):
        raise PTCError(
            f"{what}: every tile holds a saturated or zero pixel; lower the light "
            "or the exposure"
        )
    return pts


def measure_ptc(
    dark: Any,
    flats: Sequence[Any],
    *,
    tile_px: int = 32,
    bit_depth: int = 16,
) -> PTCResult:
    """Offset, gain and read noise from dark frames and flats of several levels.

    Parameters
    ----------
    dark
        ``(N, H, W)`` frames with no light (N >= 2).
    flats
        One ``(N, H, W)`` stack per light level (exposure or intensity), N >= 2;
        at least 2 levels, best spread from a little above the dark level to
        half the full scale.
    tile_px
        Side of the tiles each pair is measured in.
    bit_depth
        Counts at ``2**bit_depth - 1`` are saturated.

    Raises
    ------
    PTCError
        Too few frames or levels, or flats no brighter than the dark.
    """
    from scipy.stats import theilslopes

    max_adu = float(2**bit_depth - 1)
    d = _as_stack(dark, "dark frames")
    if len(flats) < 2:
        raise PTCError(
            f"{len(flats)} flat level(s); need flats at 2 or more light levels "
            "(exposures or intensities) for the slope of variance vs mean"
        )
    dark_pts = pair_points(d, tile_px=tile_px, max_adu=max_adu, what="dark frames")
    offset = float(d.astype(np.float64).mean())
    dmeans = d.astype(np.float64).mean(axis=0)
    offset_se = float(dmeans.std() / np.sqrt(dmeans.size))
    dark_var = float(np.median(dark_pts[:, 1]))
    levels: list[dict[str, Any]] = [
        {
            "level": "dark",
            "mean_adu": float(np.median(dark_pts[:, 0])),
            "var_adu2": dark_var,
            "n_pairs": d.shape[0] // 2,
        }
    ]
    pts = [np.column_stack([dark_pts, np.zeros(len(dark_pts))])]
    for i, f in enumerate(flats, start=1):
        fp = pair_points(f, tile_px=tile_px, max_adu=max_adu, what=f"flat level {i}")
        levels.append(
            {
                "level": f"flat {i}",
                "mean_adu": float(np.median(fp[:, 0])),
                "var_adu2": float(np.median(fp[:, 1])),
                "n_pairs": np.asarray(f).reshape(-1, *d.shape[-2:]).shape[0] // 2,
            }
        )
        pts.append(np.column_stack([fp, np.full(len(fp), i)]))
    allp = np.concatenate(pts)
    span = max(lv["mean_adu"] for lv in levels[1:]) - levels[0]["mean_adu"]
    if not span > 4 * np.sqrt(max(dark_var, QUANTIZATION_VAR)):
        raise PTCError(
            f"the flats (mean up to {levels[0]['mean_adu'] + span:.1f} ADU) are no "
            f"brighter than the dark frames ({levels[0]['mean_adu']:.1f} ADU); "
            "give flats with light on the sensor"
        )
    fit = allp
    if len(fit) > MAX_FIT_POINTS:
        fit = fit[np.linspace(0, len(fit) - 1, MAX_FIT_POINTS).astype(int)]
    slope, intercept, lo, hi = theilslopes(fit[:, 1], fit[:, 0], alpha=0.95)
    if not slope > 0:
        raise PTCError(
            f"the variance does not grow with the mean (slope {slope:.3g}); the "
            "flats may be saturated or the frames not of one level per file"
        )
    gain = 1.0 / float(slope)
    ci = (1.0 / float(hi), 1.0 / float(lo) if lo > 0 else float("inf"))
    rn_adu2 = max(dark_var - QUANTIZATION_VAR, 0.0)
    rn = gain * float(np.sqrt(rn_adu2))
    # scatter of the dark tiles' variance, and the gain's half-width (~2 sigma)
    var_se = float(1.2533 * dark_pts[:, 1].std() / np.sqrt(len(dark_pts)))
    rn_adu_se = var_se / (2 * np.sqrt(rn_adu2)) if rn_adu2 > 0 else 0.0
    gain_se = (ci[1] - ci[0]) / (2 * 1.96) if np.isfinite(ci[1]) else float("inf")
    rn_se = float(np.hypot(gain * rn_adu_se, np.sqrt(rn_adu2) * gain_se))
    return PTCResult(
        offset_adu=offset,
        offset_stderr_adu=offset_se,
        e_per_adu=gain,
        e_per_adu_ci95=ci,
        read_noise_e=rn,
        read_noise_stderr_e=rn_se,
        slope=float(slope),
        intercept=float(intercept),
        dark_var_adu2=dark_var,
        points=allp,
        levels=levels,
        n_points=len(fit),
    )


def plot_ptc(result: PTCResult, path: str | Path) -> Path:
    """Write the photon transfer curve (variance vs mean, the tiles of each
    level and the fitted line) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path).expanduser()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    pts = result.points
    for lv in np.unique(pts[:, 2]).astype(int):
        sel = pts[pts[:, 2] == lv]
        ax.plot(
            sel[:, 0],
            sel[:, 1],
            ".",
            ms=2,
            alpha=0.4,
            label="dark" if lv == 0 else None,
        )
    x = np.linspace(pts[:, 0].min(), pts[:, 0].max(), 50)
    ax.plot(
        x,
        result.slope * x + result.intercept,
        "k-",
        lw=1,
        label=(
            f"gain {result.e_per_adu:.3g} e-/ADU "
            f"[{result.e_per_adu_ci95[0]:.3g}, {result.e_per_adu_ci95[1]:.3g}]"
        ),
    )
    ax.axvline(result.offset_adu, color="0.5", ls=":", lw=1)
    ax.set_xlabel("mean (ADU)")
    ax.set_ylabel("variance of a frame, var(a - b) / 2 (ADU$^2$)")
    ax.set_title(
        f"offset {result.offset_adu:.1f} ADU, read noise {result.read_noise_e:.2f} e-",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p

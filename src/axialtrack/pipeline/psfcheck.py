"""Does the calibrated PSF still describe the microscope? A live check.

A model bundle carries the PSF fitted to the calibration beads
(:func:`axialtrack.optics.psf_for_bundle`). Alignment drifts, the temperature
changes, a correction collar is turned, the sample is deeper than the beads
were: the PSF of the particles then differs from the fitted one, and both the
network (trained on the calibration) and the MLE refinement (which uses the
fitted PSF) return biased positions without saying so.

The check runs on a few *isolated* localizations of every batch (no other
detection within ``min_separation_px``, not saturated, network ``dz`` in the
calibrated range). Each is fitted by maximum likelihood with the fitted PSF
(:func:`~axialtrack.pipeline.refine.mle_refine`; a row the refinement already
fitted is taken as it is) and is *out of bounds* when

- its log-likelihood ratio has a chi-square tail probability below
  ``p_value`` (the fitted PSF cannot explain the pixels: :data:`MISFIT`), or
- the network's ``dz`` and the MLE's disagree by more than
  ``dz_floor_um + dz_sigmas * sigma_z`` (``sigma_z`` the MLE's Cramer-Rao
  bound: :data:`DISAGREE`), or
- the fit does not converge inside the PSF's grid (:data:`NO_FIT`).

Each row gets the result in the ``psf_check`` column (int8: -1 not checked,
0 within bounds, else the bits above). :class:`PSFChangeMonitor` keeps the
fraction of out-of-bounds rows among the last ``window`` checked ones; when it
rises above ``max_fraction`` (with at least ``min_checked`` rows) the run says
that the PSF has changed and recalibration is due (the live runner's status
line, ``LiveMetrics.psf_changed`` and a ``warning`` event), and says so again
when it falls back below half of that.

A single row's bound is loose (1 % of the rows of a PSF that fits are out by
chance); the run's fraction is what matters. Measured on simulated beads (20
per frame, 8 frames over dz -0.6..0.9 um, the network of a short training,
``tests/test_psfcheck.py``): with the optics of the calibration 0 of 155
isolated rows were out of bounds (1.3 % at p < 0.01 alone); with 0.05 / 0.1
waves RMS of astigmatism more 40 % / 86 %, 0.05 waves of spherical aberration
22 %, plane 1 0.25 um further out 19 %, 0.2 um nearer 8 % (below the bound:
a change of the plane offset alone is the hardest to see, the fit moves ``z``
to share the difference between the planes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "DISAGREE",
    "MISFIT",
    "NOT_CHECKED",
    "NO_FIT",
    "PSFChangeMonitor",
    "PSFCheckConfig",
    "classify",
    "select_isolated",
]

NOT_CHECKED = -1
#: The log-likelihood ratio is out of bounds.
MISFIT = 1
#: The network's ``dz`` and the MLE's disagree.
DISAGREE = 2
#: The fit did not converge on the PSF's grid.
NO_FIT = 4


class PSFCheckConfig(BaseModel):
    """Settings of the per-localization PSF check (``LocalizerConfig.psf_check``).

    Parameters
    ----------
    per_batch
        Isolated localizations fitted for the check in each batch, besides
        those the refinement fits anyway (``0``: the check only looks at refined
        rows; with the refinement off it is then off). They are spread over the
        batch's candidates, not the brightest: the check should see the whole
        axial range.
    min_separation_px
        Isolated: the nearest other detection is farther than this (px);
        ``None``: the refinement crop's side.
    p_value
        Chi-square tail probability of the log-likelihood ratio below which a
        row is out of bounds.
    dz_sigmas, dz_floor_um
        The network and the MLE disagree when
        ``|dz_net - dz_mle| > dz_floor_um + dz_sigmas * sigma_z`` (the MLE's
        CRLB). The floor absorbs the network's own error (a network at 2-4x
        the CRLB, with its bias at the ends of the range).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_batch: int = Field(8, ge=0, le=10_000)
    min_separation_px: float | None = Field(None, gt=0.0)
    p_value: float = Field(0.01, gt=0.0, lt=1.0)
    dz_sigmas: float = Field(5.0, ge=0.0)
    dz_floor_um: float = Field(0.25, ge=0.0)


def select_isolated(
    neighbour_px: ArrayLike,
    usable: ArrayLike,
    *,
    min_separation_px: float,
    already: ArrayLike,
    per_batch: int,
) -> np.ndarray:
    """Rows to check: isolated and ``usable`` ones; those in ``already`` (rows
    fitted anyway) all, and of the rest ``per_batch`` spread evenly over the
    batch. Returns sorted row indices."""
    nn = np.asarray(neighbour_px, dtype=float)
    cand = np.flatnonzero(np.asarray(usable, bool) & ~(nn <= min_separation_px))
    fitted = np.asarray(already, dtype=np.int64)
    inside = np.isin(cand, fitted)
    rest = cand[~inside]
    if rest.size > per_batch:
        rest = rest[np.linspace(0, rest.size - 1, per_batch).round().astype(int)]
    return np.union1d(cand[inside], rest)


def classify(
    llr: ArrayLike,
    dof: int | np.ndarray,
    dz_net_um: ArrayLike,
    dz_mle_um: ArrayLike,
    sigma_z_um: ArrayLike,
    fitted: ArrayLike,
    config: PSFCheckConfig,
) -> np.ndarray:
    """``psf_check`` codes (int8 bits :data:`MISFIT`, :data:`DISAGREE`,
    :data:`NO_FIT`; 0 within bounds) of checked rows.

    ``fitted``: the MLE converged (or ran to its iteration limit) with a finite
    bound; the others are :data:`NO_FIT`.
    """
    # scipy.special, not scipy.stats: importing the latter takes over a second,
    # which the first batch of a live analysis process would wait for
    from scipy.special import chdtrc

    llr = np.asarray(llr, dtype=float)
    ok = np.asarray(fitted, bool) & np.isfinite(llr)
    code = np.zeros(llr.shape, dtype=np.int8)
    code[~ok] = NO_FIT
    p = np.asarray(chdtrc(dof, np.where(ok, llr, 0.0)), dtype=float)
    code[ok & (p < config.p_value)] |= MISFIT
    gap = np.abs(np.asarray(dz_net_um, float) - np.asarray(dz_mle_um, float))
    bound = config.dz_floor_um + config.dz_sigmas * np.asarray(sigma_z_um, float)
    code[ok & (gap > bound)] |= DISAGREE
    return code


class PSFChangeMonitor:
    """The run-level fraction of checked localizations out of bounds.

    Feed it every batch's rows (:meth:`update`); it reads their ``psf_check``
    column and keeps the last ``window`` checked rows.

    Parameters
    ----------
    window
        Checked rows the fraction is taken over (the most recent).
    min_checked
        Rows needed in the window before it says anything.
    max_fraction
        Above this fraction the PSF has changed; it is clear again below half
        of it (so a fraction near the bound does not flap).
    """

    def __init__(
        self, *, window: int = 200, min_checked: int = 50, max_fraction: float = 0.1
    ) -> None:
        if not 0 < min_checked <= window:
            raise ValueError(
                f"need 0 < min_checked <= window; got {min_checked}, {window}"
            )
        if not 0.0 < max_fraction < 1.0:
            raise ValueError(f"max_fraction must be in (0, 1); got {max_fraction}")
        self.window = int(window)
        self.min_checked = int(min_checked)
        self.max_fraction = float(max_fraction)
        self._recent: deque[bool] = deque(maxlen=self.window)
        self._n_out = 0
        self.checked = 0
        self.out_of_bounds = 0
        self.changed = False

    @property
    def fraction(self) -> float:
        """Out-of-bounds fraction of the last ``window`` checked rows (NaN
        before any)."""
        return self._n_out / len(self._recent) if self._recent else float("nan")

    def update(self, rows: Mapping[str, ArrayLike]) -> str | None:
        """Take a batch's rows; a one-line message when the verdict changes."""
        if "psf_check" not in rows:
            return None
        code = np.asarray(rows["psf_check"]).reshape(-1)
        code = code[code >= 0]
        for bad in (code > 0).tolist():
            if len(self._recent) == self.window and self._recent[0]:
                self._n_out -= 1
            self._recent.append(bad)
            self._n_out += bad
        self.checked += int(code.size)
        self.out_of_bounds += int(np.count_nonzero(code))
        if len(self._recent) < self.min_checked:
            return None
        f = self.fraction
        if not self.changed and f > self.max_fraction:
            self.changed = True
            return (
                f"the PSF has changed: {100 * f:.0f} % of the last "
                f"{len(self._recent)} isolated localizations do not fit the "
                f"calibrated PSF (bound {100 * self.max_fraction:.0f} %); Z is "
                "biased until the microscope is recalibrated (axialtrack calibrate)"
            )
        if self.changed and f < 0.5 * self.max_fraction:
            self.changed = False
            return (
                f"the PSF fits again: {100 * f:.1f} % of the last "
                f"{len(self._recent)} isolated localizations out of bounds"
            )
        return None

    def status(self) -> str:
        """A status-line fragment: empty unless the PSF has changed."""
        if not self.changed:
            return ""
        return f"PSF CHANGED ({100 * self.fraction:.0f} % misfit): recalibration due"

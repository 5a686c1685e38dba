"""Focal shift: sample depth per unit of focus-stage travel."""

from __future__ import annotations

from .psf import PSFModel

__all__ = ["axial_scale"]


def axial_scale(
    depth_um: tuple[float, float] = (0.0, 2.0), model: PSFModel | None = None
) -> float:
    """Depth in the sample per um of focus-stage travel, over a depth range.

    ``z_um`` of a localization is the focus-stage position at which the particle
    is in focus. Imaging into a medium of lower refractive index than the
    immersion oil (water), the stage travels further than the particle moves:
    the focal shift. Multiply Z displacements by this factor to get them in the
    sample (e.g. for axial diffusion coefficients,
    :func:`axialtrack.pipeline.summarize_tracks`).

    Parameters
    ----------
    depth_um
        ``(lo, hi)`` depths above the coverslip where the particles are (um); the
        factor is the mean over this range (it drifts slowly with depth).
    model
        The optics (default :class:`PSFModel` with its default optics: NA 1.45
        oil objective, water sample: 0.73 over 0-1 um, 0.79 over 1-3 um).

    Returns
    -------
    float
        ``(hi - lo) / (in_focus_offset(hi) - in_focus_offset(lo))``.
    """
    lo, hi = (float(d) for d in depth_um)
    if not 0.0 <= lo < hi:
        raise ValueError(f"depth_um must be (lo, hi) with 0 <= lo < hi; got {depth_um}")
    m = model if model is not None else PSFModel()
    f_lo, f_hi = (float(v) for v in m.in_focus_offset([lo, hi]))
    if not f_hi > f_lo:
        raise ValueError(f"the focus does not move between depths {lo:g} and {hi:g} um")
    return (hi - lo) / (f_hi - f_lo)

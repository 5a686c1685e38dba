"""Which way plane 1 is mirrored: the planes registered for each flip of
plane 1, the flip chosen (or a mirror given checked) and the residual bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from axialtrack.geometry import MIRRORS, unmirror

from .detection import FieldDetections, band_passed_projection
from .errors import RegistrationError
from .registration import Registration, phase_correlation_shift, register_points

#: A plane registration with a larger RMS residual (nm) is refused: the planes'
#: beads do not map onto each other by one affine (wrong layout or mirror,
#: beads that moved, a distorted splitter). The simulated rig registers to
#: under 20 nm; beads rendered by psfmodels to 2 nm.
MAX_RESIDUAL_NM = 30.0
#: Fewest bead pairs a registration may rest on (an affine has 6 parameters).
MIN_MATCHED = 5
#: A flip given (``mirror``) is refused when another flip registers with a
#: residual this many times smaller (and at least 10 nm better) or matches
#: twice as many beads.
MIRROR_MARGIN = 2.0


def compose_mirrors(a: str, b: str) -> str:
    """The single flip equal to flip ``a`` then flip ``b``."""
    bits = {"none": (0, 0), "horizontal": (1, 0), "vertical": (0, 1), "both": (1, 1)}
    x, y = (i ^ j for i, j in zip(bits[a], bits[b], strict=True))
    return {v: k for k, v in bits.items()}[(x, y)]


def _flip_xy(xy: np.ndarray, flip: str, h: int, w: int) -> np.ndarray:
    out = np.array(xy, dtype=float, copy=True)
    if flip in ("horizontal", "both"):
        out[:, 0] = w - 1 - out[:, 0]
    if flip in ("vertical", "both"):
        out[:, 1] = h - 1 - out[:, 1]
    return out


def _flip_detections(d: FieldDetections, flip: str, h: int, w: int) -> FieldDetections:
    """The detections of a field with plane 1 flipped by ``flip``."""
    mp = d.max_projection.copy()
    mp[1] = unmirror(mp[1], flip)
    peaks1 = _flip_xy(d.peaks[1], flip, h, w).astype(d.peaks[1].dtype)
    return FieldDetections(
        d.background,
        mp,
        [d.peaks[0], peaks1],
        [d.xy[0], _flip_xy(d.xy[1], flip, h, w)],
        d.best_frame,
    )


def _register_flips(
    dets: list[FieldDetections], pixel_size_um: float, shape: tuple[int, int]
) -> tuple[dict[str, Registration], dict[str, dict[str, Any]]]:
    """Register the planes for each flip of plane 1 (relative to the stack).

    A registration whose affine turns by more than 45 degrees or flips (as the
    splitter geometry allows: rotation within +-45 degrees, scale 0.5-2) is
    not counted for its flip.
    """
    h, w = shape
    regs: dict[str, Registration] = {}
    trials: dict[str, dict[str, Any]] = {}
    xy0 = [d.xy[0][np.isfinite(d.xy[0][:, 0])] for d in dets]
    for flip in MIRRORS:
        fd = [_flip_detections(d, flip, h, w) for d in dets]
        bps = [band_passed_projection(d) for d in fd]
        coarse = phase_correlation_shift([b[0] for b in bps], [b[1] for b in bps])
        xy1 = [d.xy[1][np.isfinite(d.xy[1][:, 0])] for d in fd]
        try:
            r = register_points(xy0, xy1, coarse, pixel_size_um=pixel_size_um)
        except ValueError as e:
            trials[flip] = {"residual_nm": None, "n_matched": 0, "error": str(e)}
            continue
        lin = r.affine[:, :2]
        det = float(np.linalg.det(lin))
        if not (det > 0.25 and det < 4.0 and abs(r.rotation_deg) <= 45.0):
            # a flip or half turn absorbed by the affine: that is another
            # flip's registration, not this one's
            trials[flip] = {
                "residual_nm": None,
                "n_matched": 0,
                "error": f"affine rotation {r.rotation_deg:.1f} deg, det {det:.2f}",
            }
            continue
        regs[flip] = r
        trials[flip] = {"residual_nm": r.residual_nm, "n_matched": r.n_matched}
    return regs, trials


def _trials_text(trials: dict[str, dict[str, Any]], base: str) -> str:
    parts = []
    for flip, t in trials.items():
        name = compose_mirrors(base, flip)
        if t["residual_nm"] is None:
            parts.append(f"{name}: no match")
        else:
            parts.append(f"{name}: {t['residual_nm']:.1f} nm ({t['n_matched']} beads)")
    return ", ".join(parts)


def _choose_flip(
    regs: dict[str, Registration],
    trials: dict[str, dict[str, Any]],
    asked: str,
    loaded: str,
) -> str:
    """The flip of plane 1 to apply (relative to the stack), or a refusal.

    The best flip has the smallest residual among those matching at least half
    as many beads as the flip that matches most. With ``asked`` ``"auto"`` it is
    taken; with a mirror given, the given one (no flip) is kept unless the best
    beats it by :data:`MIRROR_MARGIN`. The registration kept must rest on
    :data:`MIN_MATCHED` beads.

    Raises
    ------
    RegistrationError
    """
    text = _trials_text(trials, loaded)
    most = max((r.n_matched for r in regs.values()), default=0)
    if most < MIN_MATCHED:
        raise RegistrationError(
            f"plane registration matched at most {most} bead pair(s) (need "
            f"{MIN_MATCHED}) for any plane-1 flip ({text}); likely cause: a wrong "
            "--layout, too few beads seen in both planes, or a Z range that misses "
            "focus in one plane"
        )
    ok = {k: r for k, r in regs.items() if r.n_matched >= max(MIN_MATCHED, most / 2)}
    flip = min(ok, key=lambda k: ok[k].residual_nm)
    if asked != "auto" and flip != "none":
        best = regs[flip]
        given = regs.get("none")
        clearly = (
            given is None
            or given.n_matched < MIN_MATCHED
            or given.n_matched * MIRROR_MARGIN <= best.n_matched
            or (
                given.residual_nm > MIRROR_MARGIN * best.residual_nm
                and given.residual_nm - best.residual_nm > 10.0
            )
        )
        found = compose_mirrors(loaded, flip)
        if clearly:
            raise RegistrationError(
                f"plane-1 mirror {asked!r} fits the beads clearly worse than "
                f"{found!r} (residuals {text}); pass --mirror {found}, or --mirror "
                "auto"
            )
        flip = "none"
    return flip


def _check_residual(reg: Registration, trials: dict[str, Any], loaded: str) -> None:
    """Refuse a registration residual above :data:`MAX_RESIDUAL_NM`."""
    if reg.residual_nm > MAX_RESIDUAL_NM:
        raise RegistrationError(
            f"plane registration residual {reg.residual_nm:.1f} nm over "
            f"{reg.n_matched} beads is above {MAX_RESIDUAL_NM:g} nm (flips tried: "
            f"{_trials_text(trials, loaded)}); likely cause: a wrong --layout or "
            "pixel size, beads that moved during the stack, or a splitter "
            "distortion beyond an affine"
        )

"""Benchmark of the pupil fit: time, recovered aberrations, held-out likelihood.

Beads are rendered by the project's PSFModel with known Zernike aberrations baked
into its pupil (numpy), relative plane-1 aberrations, a plane-1 transmission and
a bead depth, with Poisson + read noise through a camera offset and gain; the fit
uses its own torch parametrization (Zernike phase and amplitude on the
unaberrated pupil, depth, plane offset and transmission fitted). Held-out beads
(rendered separately) are scored with the fitted and with the true model, each
bead's position, photons and backgrounds fitted.

    python benchmarks/bench_psf_fit.py --beads 20 --out fit.json

Prints and writes JSON: fit time, iterations, the plane-0 phase RMS error
(waves, piston/tilt/focus removed), the largest coefficient error, and the
held-out NLL and deviance ratios fitted / true.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beads", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=6)
    ap.add_argument("--frames", type=int, default=9, help="frames per bead")
    ap.add_argument("--fast", action="store_true", help="the tests' fast settings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import test_psf_fit as t

    from axialtrack.optics import Optics
    from axialtrack.optics.fit import (
        FitConfig,
        fit_beads,
        heldout_nll,
        phase_rms_error_waves,
    )

    if not args.fast:
        t.FAST = {"pupil_samples": 64, "oversample": 3}
        t.SIZE = 15
    cfg = FitConfig(**t.FAST, max_frames=args.frames, dz_range_um=0.8, max_iter=300)
    data, pos = t.render_beads(args.beads, seed=11)
    t0 = time.perf_counter()
    fit = fit_beads(
        *data, pos, optics=Optics(), plane_offset_um=0.45, camera=t.CAMERA, config=cfg
    )
    fit_s = time.perf_counter() - t0
    err = phase_rms_error_waves(
        fit.model(), (fit.depth_um, fit.zernike), (t.DEPTH, t.TRUE_ZERNIKE)
    )
    coef = max(abs(fit.zernike[j] - t.TRUE_ZERNIKE.get(j, 0.0)) for j in fit.zernike)
    hd, hpos = t.render_beads(args.heldout, seed=12)
    nll_fit = heldout_nll(fit, *hd, hpos, config=cfg)
    nll_true = heldout_nll(t.truth_fit(fit), *hd, hpos, config=cfg)
    out = {
        "beads": args.beads,
        "frames_per_bead": args.frames,
        "crop_px": t.SIZE,
        "pupil_samples": cfg.pupil_samples,
        "oversample": cfg.oversample,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "fit_time_s": round(fit_s, 1),
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        "zernike_rms_error_waves": round(err, 5),
        "max_coefficient_error_waves": round(coef, 5),
        "heldout_beads": args.heldout,
        "heldout_nll_ratio_fit_over_true": round(nll_fit / nll_true, 6),
        "median_reduced_deviance": round(
            float(fit.beads["reduced_deviance"].median()), 4
        ),
        "transmission": round(fit.transmission, 4),
        "plane_offset_um": round(fit.plane_offset_um, 4),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Emitters closer than 8 px: recall and Z RMSE of the two-emitter fit.

Crop pairs (15 x 15 px, both planes, the nominal PSF of the simulated rig,
2000 photons per emitter in plane 0, 10 background photons per pixel, Poisson
noise) hold either one emitter (isolated: within 0.5 px of the central pixel)
or two at a separation drawn uniformly in ``[--min-px, 8)`` px around the
centre, each at its own ``dz`` in ``[-0.6, 0.6]`` um. Each crop is fitted by
single-emitter MLE (:func:`axialtrack.pipeline.refine.mle_refine`, started at
the centre and a network-like ``dz``: the (first) emitter's plus 50 nm of
Gaussian noise); the pair crops then by the two-emitter fit
(``axialtrack.pipeline._pairfit``: started from the single fit's largest
residual, the second at the first's ``dz`` and at -0.5, 0 and 0.5 um, the best
likelihood kept), kept when the likelihood-ratio statistic falls by more than
``PAIR_LLR_GAIN``. An emitter is recalled when an estimate lies within 1 px of
it (one estimate per emitter). Prints JSON: recall and Z RMSE of the pair
emitters against the isolated ones.

Usage::

    python benchmarks/bench_crowded.py [--n 300] [--quick] [--out crowded.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from axialtrack.optics import Optics, PSFModel, SampledPSF
from axialtrack.pipeline._pairfit import (
    PAIR_LLR_GAIN,
    fit_pairs_multistart,
    split_start,
)
from axialtrack.pipeline.refine import mle_refine

SIZE = 15
PHOTONS = 2000.0
BG = 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="crops of each kind")
    ap.add_argument("--min-px", type=float, default=2.0, help="closest pair, px")
    ap.add_argument("--quick", action="store_true", help="coarse PSF sampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    opt = Optics(pupil_samples=32, oversample=2) if a.quick else Optics()
    psf = SampledPSF.from_model(
        PSFModel(opt),
        (0.0, 0.5),
        z_um=np.round(np.arange(-1.0, 1.0 + 1e-9, 0.02), 6),
        size=31,
    )
    t_psf = time.perf_counter() - t0
    pix = psf.pixel_size_um
    rng = np.random.default_rng(a.seed)
    n = a.n
    # isolated
    iso = np.column_stack(
        [rng.uniform(-0.5, 0.5, (n, 2)) * pix, rng.uniform(-0.6, 0.6, n)]
    )
    mu = psf.expected(iso, SIZE, PHOTONS, [BG, BG])
    # started as the localizer starts it: the crop centre and the network's dz
    # (here the truth plus 50 nm of noise)
    start = np.column_stack([np.zeros((n, 2)), iso[:, 2] + rng.normal(0, 0.05, n)])
    r_iso = mle_refine(psf, rng.poisson(mu).astype(float), start)
    ok_iso = np.isfinite(r_iso.llr)
    # isolated crops through the same pair decision: false splits
    c_iso = rng.poisson(psf.expected(iso, SIZE, PHOTONS, [BG, BG])).astype(float)
    r_iso2 = mle_refine(psf, c_iso, start)
    i1, i2 = split_start(
        psf, c_iso, r_iso2.theta[:, :3], r_iso2.photons, r_iso2.background
    )
    p_iso = fit_pairs_multistart(psf, c_iso, i1, i2, photons=2 * r_iso2.photons)
    false_split = float(np.mean(p_iso.ok & (r_iso2.llr - p_iso.llr > PAIR_LLR_GAIN)))
    z_iso = r_iso.z_um[ok_iso] - iso[ok_iso, 2]
    rec_iso = float(np.mean(np.hypot(*(r_iso.theta[:, :2] - iso[:, :2]).T) < pix))
    # pairs
    sep = rng.uniform(a.min_px, 8.0, n) * pix
    ang = rng.uniform(0, np.pi, n)
    mid = rng.uniform(-0.5, 0.5, (n, 2)) * pix
    off = 0.5 * sep[:, None] * np.column_stack([np.cos(ang), np.sin(ang)])
    e1 = np.column_stack([mid + off, rng.uniform(-0.6, 0.6, n)])
    e2 = np.column_stack([mid - off, rng.uniform(-0.6, 0.6, n)])
    mu = psf.expected(e1, SIZE, PHOTONS, [BG, BG]) + psf.expected(
        e2, SIZE, PHOTONS, [0.0, 0.0]
    )
    crops = rng.poisson(mu).astype(float)
    t1 = time.perf_counter()
    # the network's dz is the centre emitter's (the first, here), 50 nm noise
    start = np.column_stack([np.zeros((n, 2)), e1[:, 2] + rng.normal(0, 0.05, n)])
    single = mle_refine(psf, crops, start)
    s1, s2 = split_start(
        psf, crops, single.theta[:, :3], single.photons, single.background
    )
    pair = fit_pairs_multistart(psf, crops, s1, s2, photons=2 * single.photons)
    t_fit = time.perf_counter() - t1
    use_pair = pair.ok & (single.llr - pair.llr > PAIR_LLR_GAIN)
    found, errs = 0, []
    for i in range(n):
        truth = [e1[i], e2[i]]
        est = [pair.xyz1[i], pair.xyz2[i]] if use_pair[i] else [single.theta[i, :3]]
        # best one-to-one assignment by lateral distance
        best: list[tuple[int, int]] = []
        cost = np.inf
        for perm in ((0, 1), (1, 0)):
            pairs = [(t, e) for t, e in zip(perm, range(len(est)), strict=False)]
            c = sum(np.hypot(*(truth[t][:2] - est[e][:2])) for t, e in pairs)
            if c < cost:
                cost, best = c, pairs
        for t, e in best:
            if np.hypot(*(truth[t][:2] - est[e][:2])) < pix:
                found += 1
                errs.append(est[e][2] - truth[t][2])
    errs_a = np.asarray(errs)
    rmse_iso = float(np.sqrt(np.mean(z_iso**2)))
    rmse_pair = float(np.sqrt(np.mean(errs_a**2))) if errs_a.size else float("nan")
    out = {
        "crop_px": SIZE,
        "photons": PHOTONS,
        "background": BG,
        "n": n,
        "separation_px": [a.min_px, 8.0],
        "quick": a.quick,
        "isolated": {
            "recall": rec_iso,
            "z_rmse_nm": rmse_iso * 1e3,
            "fitted_as_pairs": false_split,
        },
        "pairs": {
            "recall": found / (2 * n),
            "z_rmse_nm": rmse_pair * 1e3,
            "z_rmse_over_isolated": rmse_pair / rmse_iso,
            "fitted_as_pairs": float(use_pair.mean()),
        },
        "single_fit_only": {
            "recall": float(
                np.mean(
                    [
                        min(
                            np.hypot(*(e1[i, :2] - single.theta[i, :2])),
                            np.hypot(*(e2[i, :2] - single.theta[i, :2])),
                        )
                        < pix
                        for i in range(n)
                    ]
                )
                / 2
            )
        },
        "targets": {"recall": 0.8, "z_rmse_over_isolated": 2.0},
        "time_s": {"psf": t_psf, "fits": t_fit},
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()

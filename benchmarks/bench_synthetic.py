"""How close a network trained only on synthetic examples gets to the CRLB.

The PSF is known exactly (the project's nominal pupil, sampled), so the bound is
exact: crop pairs are rendered from it (:mod:`axialtrack.sim.synthetic`) with
photons and background drawn around the test level, a network is trained on
them alone, and isolated emitters at fixed ``dz`` (0.1 um bins over
``|dz| <= 0.55 um``) are read; the precision of each bin is compared with the
CRLB of the same PSF, photons, background and read noise over the crop.

Usage::

    python benchmarks/bench_synthetic.py [--steps 1000] [--examples 20000]
        [--crop 15] [--physics W]

prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from axialtrack.calibrate.examples import Examples
from axialtrack.model import CalibrationData, ModelConfig, predict, train
from axialtrack.optics import Optics, PSFModel
from axialtrack.optics.sampled import SampledPSF
from axialtrack.sim.synthetic import (
    Distribution,
    SyntheticConfig,
    SyntheticExamples,
    SyntheticRenderer,
)

CAMERA = {
    "offset_adu": 100.0,
    "e_per_adu": 0.5,
    "qe": 0.8,
    "read_noise_e": 1.5,
    "bit_depth": 16,
}


def _examples(s: SyntheticExamples, split: int) -> Examples:
    n = len(s)
    return Examples(
        crops=s.crops,
        dz_um=s.dz_um,
        stage_z_um=np.zeros(n),
        ref_z_um=s.dz_um.copy(),
        xy_norm=s.xy_norm,
        bead=np.arange(n) + 100000 * split,
        field=np.zeros(n, np.int64),
        split=np.full(n, split, np.int8),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--crop", type=int, default=15)
    ap.add_argument("--photons", type=float, default=2000.0)
    ap.add_argument("--background", type=float, default=10.0)
    ap.add_argument("--physics", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    psf = SampledPSF.from_model(
        PSFModel(Optics()),
        (0.0, 0.5),
        z_um=np.round(np.arange(-1.0, 1.0 + 1e-9, 0.02), 10),
        size=args.crop + 2,
    )
    p, b = args.photons, args.background
    test_cfg = SyntheticConfig(
        crop_size=args.crop,
        dz_range_um=(-0.6, 0.6),
        photons=Distribution(kind="uniform", low=p, high=p),
        background=Distribution(kind="uniform", low=b, high=b),
        plane1_background_ratio=(1.0, 1.0),
        neighbours_mean=0.0,
    )
    train_cfg = test_cfg.model_copy(
        update={
            "photons": Distribution(kind="loguniform", low=p / 2, high=2 * p),
            "background": Distribution(kind="uniform", low=b / 2, high=2 * b),
        }
    )
    syn = SyntheticRenderer(psf, CAMERA, train_cfg).render(args.examples, args.seed)
    r = SyntheticRenderer(psf, CAMERA, test_cfg)
    val = _examples(r.render(500, args.seed + 1), 1)
    tr = _examples(r.render(8, args.seed + 2), 0)
    data = CalibrationData(
        examples=Examples(
            **{
                k: np.concatenate([getattr(tr, k), getattr(val, k)])
                for k in tr.__dataclass_fields__
            }
        ),
        camera=dict(CAMERA),
    )
    t_render = time.perf_counter() - t0
    res = train(
        data,
        config=ModelConfig(crop_size=args.crop, dropout=args.dropout),
        steps=args.steps,
        synthetic=syn,
        synthetic_fraction=1.0,
        augmentation=False,
        recalibrate=False,
        progress=False,
        seed=args.seed,
        physics_weight=args.physics,
        physics_psf=psf if args.physics > 0 else None,
    )
    zs = np.round(np.arange(-0.55, 0.55 + 1e-9, 0.1), 3)
    crlb = psf.crlb(
        zs,
        photons=p,
        background=b,
        size=args.crop,
        read_noise=CAMERA["read_noise_e"] / CAMERA["qe"],
    )
    bins = []
    for i, z in enumerate(zs):
        r.dz_range_um = (z - 1e-6, z + 1e-6)
        test = r.render(150, 1000 + i)
        err = (predict(res.model, test.crops, test.xy_norm)[:, 0] - z) * 1000
        c = float(crlb.sigma_z_um[i]) * 1000
        bins.append(
            {
                "dz_um": float(z),
                "bias_nm": float(err.mean()),
                "precision_nm": float(err.std(ddof=1)),
                "crlb_nm": c,
                "ratio": float(err.std(ddof=1) / c),
            }
        )
    report = {
        "benchmark": "bench_synthetic",
        "settings": vars(args),
        "platform": platform.platform(),
        "render_s": round(t_render, 1),
        "train_s": round(res.metrics["train_time_s"], 1),
        "val_rmse_nm": res.metrics["val_rmse_nm"],
        "median_precision_over_crlb": float(np.median([b["ratio"] for b in bins])),
        "max_abs_bias_nm_dz_le_0.45": float(
            max(abs(b["bias_nm"]) for b in bins if abs(b["dz_um"]) <= 0.45)
        ),
        "bins": bins,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

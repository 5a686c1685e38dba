"""MLE refinement: speed, precision / CRLB and bias against the network alone.

Isolated emitters (2000 detected photons in plane 0, 10 background photons per
pixel in each plane, read noise 1.5 e-, the simulated camera's gain and offset)
are drawn from the nominal PSF of the simulated rig
(:class:`axialtrack.optics.SampledPSF` of the default optics, beads on the
coverslip, delta 0.5 um) at uniform ``dz`` in 0.1 um bins over ``|dz| <= 0.8``:

- ``network``: the crops (the bundle's crop size, ADU) go through a model
  trained on the simulated calibration (``tests/sim_model.py``:
  ``train_sim_bundle``, or ``--bundle``); its ``dz`` error per bin: bias and
  standard deviation over the CRLB (the CRLB of its own crop size);
- ``mle``: :func:`axialtrack.pipeline.refine.mle_refine_sized` on the central
  ``--crop`` px of the same crops (``--far-crop`` px where the network's ``dz``
  is more than ``--far-um`` from the focus of both planes, as the localizer
  does), initialized at the crop centre (the detection's integer position, up
  to 0.5 px off) and the network's ``dz``; errors of x, y and z per bin, over
  the CRLB of each emitter's crop;
- ``single_vs_dual``: the same MLE on plane 0 alone (single-plane PSF) and on
  both planes, from the true position: z precision per bin and the ratio;
- ``speed``: refined localizations per second on this CPU (``--crop`` px crops
  of both planes, 20,000 emitters, 1 and 2 threads, wall and CPU time), and the
  CRLB-only evaluation (:func:`crlb_at`) per second.

Prints JSON (and writes it to ``--out``).

Usage::

    python benchmarks/bench_refine.py [--bundle sim.axialmodel] [--per-bin 300]
        [--crop 11] [--out refine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PHOTONS = 2000.0
BACKGROUND = 10.0
READ_NOISE_E = 1.5


def _bins(per_bin: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = np.round(np.arange(-0.8, 0.8 + 1e-9, 0.1), 3)
    z = np.concatenate([c + rng.uniform(-0.05, 0.05, per_bin) for c in centres])
    return centres, z


def _per_bin(
    centres: np.ndarray, z: np.ndarray, err: np.ndarray, bound: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    for c in centres:
        s = np.abs(z - c) <= 0.05 + 1e-9
        e = err[s]
        b = np.median(bound[s], axis=0)
        mad = 1.4826 * np.median(np.abs(e - np.median(e, axis=0)), axis=0)
        rows.append(
            {
                "dz_um": float(c),
                "n": int(s.sum()),
                "bias_nm": np.round(1e3 * e.mean(axis=0), 2).tolist(),
                "precision_nm": np.round(1e3 * e.std(axis=0), 2).tolist(),
                "robust_precision_nm": np.round(1e3 * mad, 2).tolist(),
                "crlb_nm": np.round(1e3 * b, 2).tolist(),
                "precision_over_crlb": np.round(e.std(axis=0) / b, 3).tolist(),
            }
        )
    return rows


def _summary(rows: list[dict[str, Any]], axes: list[str]) -> dict[str, Any]:
    ratio = np.array([r["precision_over_crlb"] for r in rows])
    bias = np.array([r["bias_nm"] for r in rows])
    return {
        f"{a}": {
            "median_precision_over_crlb": float(np.median(ratio[:, i])),
            "max_precision_over_crlb": float(ratio[:, i].max()),
            "max_abs_bias_nm": float(np.abs(bias[:, i]).max()),
            "bins_with_abs_bias_over_5nm": [
                r["dz_um"] for r in rows if abs(r["bias_nm"][i]) >= 5.0
            ],
        }
        for i, a in enumerate(axes)
    }


def _adu(
    mu_e: np.ndarray, rng: np.random.Generator, camera: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Camera counts (ADU, uint16) and the photoelectrons they stand for."""
    e = rng.poisson(mu_e) + rng.normal(0.0, READ_NOISE_E, mu_e.shape)
    adu = np.clip(np.round(e / camera.e_per_adu + camera.offset_adu), 0, 65535)
    adu = adu.astype(np.uint16)
    return adu, (adu - camera.offset_adu) * camera.e_per_adu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="model bundle (.axialmodel)")
    ap.add_argument("--per-bin", type=int, default=300)
    ap.add_argument("--crop", type=int, default=11)
    ap.add_argument(
        "--far-crop",
        type=int,
        default=15,
        help="crop of emitters far from both planes' focus (--crop: none)",
    )
    ap.add_argument("--far-um", type=float, default=0.55)
    ap.add_argument("--speed-n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from axialtrack.model import load_bundle
    from axialtrack.optics import PSFModel
    from axialtrack.optics.sampled import SampledPSF
    from axialtrack.pipeline.config import CameraCalibration
    from axialtrack.pipeline.refine import (
        crlb_at,
        far_from_focus,
        mle_refine,
        mle_refine_sized,
    )

    out: dict[str, Any] = {
        "benchmark": "refine",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "emitters": {
            "photons": PHOTONS,
            "background_per_px": BACKGROUND,
            "read_noise_e": READ_NOISE_E,
            "psf": "nominal (default Optics, beads at 0.05 um, delta 0.5 um)",
        },
        "mle_crop_px": args.crop,
        "mle_far_crop_px": args.far_crop,
        "mle_far_um": args.far_um,
    }
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    if args.bundle is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from sim_model import train_sim_bundle

        tmp = Path(tempfile.mkdtemp(prefix="bench_refine_"))
        bundle_path = train_sim_bundle(tmp / "sim")
        out["bundle"] = "trained: tests/sim_model.py train_sim_bundle (2 fields)"
        out["train_s"] = round(time.perf_counter() - t0, 1)
    else:
        bundle_path = Path(args.bundle)
        out["bundle"] = str(bundle_path)
    bundle = load_bundle(bundle_path)
    s_net = int(bundle.crop_size)
    t0 = time.perf_counter()
    psf = SampledPSF.from_model(
        PSFModel(),
        (0.0, float(bundle.plane_offset_um or 0.5)),
        depth_um=0.05,
        z_um=np.round(np.arange(-1.2, 1.2 + 1e-9, 0.02), 10),
        size=s_net + 4,
    )
    out["psf_build_s"] = round(time.perf_counter() - t0, 2)
    camera = CameraCalibration()
    var_e = float(np.sqrt(READ_NOISE_E**2 + camera.e_per_adu**2 / 12))
    px = psf.pixel_size_um

    # ------------------------------------------------------- network vs MLE
    centres, z = _bins(args.per_bin, rng)
    n = z.size
    xy = rng.uniform(-0.5, 0.5, (n, 2)) * px  # offset from the crop centre pixel
    truth = np.column_stack([xy, z])
    mu = psf.expected(truth, s_net, PHOTONS, BACKGROUND)
    adu, data_e = _adu(mu, rng, camera)
    t0 = time.perf_counter()
    pred = bundle.predict(adu.astype(np.float32))
    t_net = time.perf_counter() - t0
    dz_net = pred[:, bundle.output_names.index("dz_um")].astype(float)
    bound_net = crlb_at(psf, truth, PHOTONS, BACKGROUND, size=s_net, read_noise_e=var_e)
    net_rows = _per_bin(centres, z, (dz_net - z)[:, None], bound_net[:, 2:3])
    init = np.column_stack([np.zeros((n, 2)), dz_net])

    def sizes_of(z_init: np.ndarray) -> np.ndarray:
        far = far_from_focus(psf, z_init, args.far_um)
        return np.where(far, args.far_crop, args.crop)

    def bound_of(t: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        b = np.empty((len(t), 6))
        for w in np.unique(sizes).tolist():
            i = sizes == w
            b[i] = crlb_at(
                psf, t[i], PHOTONS, BACKGROUND, size=int(w), read_noise_e=var_e
            )
        return b

    big = max(args.crop, args.far_crop)
    lo = s_net // 2 - big // 2
    crops = data_e[:, :, lo : lo + big, lo : lo + big]
    sizes = sizes_of(dz_net)
    t0 = time.perf_counter()
    res = mle_refine_sized(psf, crops, init, sizes, read_noise_e=var_e)
    t_mle = time.perf_counter() - t0
    bound = bound_of(truth, sizes)
    mle_rows = _per_bin(centres, z, res.theta[:, :3] - truth, bound[:, :3])
    out["network"] = {
        "crop_px": s_net,
        "infer_s": round(t_net, 3),
        "summary": _summary(net_rows, ["z"]),
        "bins": net_rows,
    }
    out["mle"] = {
        "crop_px": args.crop,
        "far_crop_px": args.far_crop,
        "far_fraction": round(float(np.mean(sizes != args.crop)), 4),
        "init": "crop centre (x, y) and the network's dz",
        "converged_fraction": float(np.mean(res.converged)),
        "median_iterations": float(np.median(res.n_iter)),
        "fit_s": round(t_mle, 3),
        "summary": _summary(mle_rows, ["x", "y", "z"]),
        "bins": mle_rows,
    }

    # ---------------------------------------------- single vs dual plane
    one = psf.single_plane(0)
    mu1 = one.expected(truth, args.crop, PHOTONS, BACKGROUND)
    _, d1 = _adu(mu1, rng, camera)
    mu2 = psf.expected(truth, args.crop, PHOTONS, BACKGROUND)
    _, d2 = _adu(mu2, rng, camera)
    r1 = mle_refine(one, d1, truth, read_noise_e=var_e)
    r2 = mle_refine(psf, d2, truth, read_noise_e=var_e)
    b1 = crlb_at(one, truth, PHOTONS, BACKGROUND, size=args.crop, read_noise_e=var_e)
    rows1 = _per_bin(centres, z, (r1.z_um - z)[:, None], b1[:, 2:3])
    b2 = crlb_at(psf, truth, PHOTONS, BACKGROUND, size=args.crop, read_noise_e=var_e)
    rows2 = _per_bin(centres, z, (r2.z_um - z)[:, None], b2[:, 2:3])
    sd = []
    for a, b in zip(rows1, rows2, strict=True):
        sd.append(
            {
                "dz_um": a["dz_um"],
                "single_z_precision_nm": a["precision_nm"][0],
                "single_z_robust_precision_nm": a["robust_precision_nm"][0],
                "single_z_crlb_nm": a["crlb_nm"][0],
                "dual_z_precision_nm": b["precision_nm"][0],
                "dual_z_crlb_nm": b["crlb_nm"][0],
                "single_over_dual_precision": round(
                    a["precision_nm"][0] / b["precision_nm"][0], 2
                ),
            }
        )
    near = [r for r in sd if abs(r["dz_um"]) <= 0.3 + 1e-9]
    out["single_vs_dual"] = {
        "fit": "mle_refine from the true position, same PSF, same crop",
        "median_single_over_dual_near_focus": float(
            np.median([r["single_over_dual_precision"] for r in near])
        ),
        "bins": sd,
    }

    # ------------------------------------------------------------- speed
    ns = args.speed_n
    zs = rng.uniform(-0.6, 0.8, ns)
    ts = np.column_stack([rng.uniform(-0.5, 0.5, (ns, 2)) * px, zs])
    _, ds = _adu(psf.expected(ts, args.crop, PHOTONS, BACKGROUND), rng, camera)
    init_s = ts + rng.normal(0.0, [0.03, 0.03, 0.08], (ns, 3))
    mle_refine(psf, ds[:8], init_s[:8], read_noise_e=var_e)  # compiled
    speed: dict[str, Any] = {"crop_px": args.crop, "planes": 2, "n": ns}
    for threads in (1, 2):
        w0, c0 = time.perf_counter(), time.process_time()
        rs = mle_refine(psf, ds, init_s, read_noise_e=var_e, threads=threads)
        w1, c1 = time.perf_counter(), time.process_time()
        speed[f"threads_{threads}"] = {
            "localizations_per_s_wall": round(ns / (w1 - w0)),
            "localizations_per_s_cpu": round(ns / max(c1 - c0, 1e-9)),
            "mean_iterations": round(float(rs.n_iter.mean()), 2),
        }
    w0 = time.perf_counter()
    crlb_at(psf, ts, PHOTONS, BACKGROUND, size=args.crop, read_noise_e=var_e)
    speed["crlb_only_per_s_wall"] = round(ns / (time.perf_counter() - w0))
    out["speed"] = speed
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

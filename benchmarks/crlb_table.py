"""CRLB of 3D localization for single- and dual-focal-plane detection.

Default optics (NA 1.45 oil, 670 nm, aqueous sample, 108 nm pixels, vectorial PSF).
Plane 0 is focused on a reference depth (1 um above the coverslip by default);
emitters sit at ``depth + dz`` for ``dz`` in -0.8..0.8 um (sample frame), plane 1
is focused ``delta`` further into the sample (stage frame). Photons are per plane
(a 50/50 splitter), background 10 photons/pixel/plane, Poisson noise, 21x21 ROI.

Prints a readable table, then the full results as JSON (``--json PATH`` writes the
JSON to a file instead).

    python benchmarks/crlb_table.py [--depth 1.0] [--roi 21] [--matched]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from axialtrack.optics import Optics, PSFModel, crlb_from_derivatives, psf_derivatives

PHOTONS = (500.0, 2000.0, 5000.0)
DELTAS_UM = (0.25, 0.5, 0.75)
BACKGROUND = 10.0
TABLE_DZ = np.round(np.arange(-0.8, 0.8001, 0.2), 3) + 0.0


def _fmt(v: float) -> str:
    if not np.isfinite(v) or v >= 1e4:
        return "  inf"
    return f"{v:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=float, default=1.0, help="reference depth, um")
    parser.add_argument("--roi", type=int, default=21, help="ROI size, pixels (odd)")
    parser.add_argument(
        "--matched", action="store_true", help="index-matched sample (n_s = n_i)"
    )
    parser.add_argument("--json", default=None, help="write the JSON to this path")
    args = parser.parse_args()

    t0 = time.perf_counter()
    optics = Optics(n_sample=1.518) if args.matched else Optics()
    if args.depth < 0.8 and optics.na > optics.n_sample:
        parser.error("--depth must be >= 0.8 um so that depth + dz stays >= 0")
    model = PSFModel(optics, dtype=torch.float64)
    dz = np.round(np.arange(-0.8, 0.8001, 0.1), 3) + 0.0
    depth = args.depth + dz
    focus0 = float(model.in_focus_offset(args.depth))
    slope = float(np.gradient(model.in_focus_offset(depth), depth)[dz.size // 2])

    configs: list[tuple[str, tuple[float, ...]]] = [("single", (0.0,))]
    configs += [(f"dual {d * 1000:.0f} nm", (0.0, d)) for d in DELTAS_UM]
    results = []
    for name, offsets in configs:
        derivs = psf_derivatives(
            model, depth, focus_um=focus0, plane_offsets_um=offsets, roi_size=args.roi
        )
        for n in PHOTONS:
            res = crlb_from_derivatives(derivs, photons=n, background=BACKGROUND)
            results.append(
                {
                    "config": name,
                    "plane_offsets_um": list(offsets),
                    "photons_per_plane": n,
                    "background": BACKGROUND,
                    "sigma_x_nm": (1000 * res.sigma_x_um).tolist(),
                    "sigma_y_nm": (1000 * res.sigma_y_um).tolist(),
                    "sigma_z_nm": (1000 * res.sigma_z_um).tolist(),
                }
            )
    elapsed = time.perf_counter() - t0

    out = {
        "optics": optics.model_dump(),
        "pixel_size_um": optics.pixel_size_um,
        "reference_depth_um": args.depth,
        "plane0_focus_um": focus0,
        "focus_per_depth_slope": slope,
        "roi_size": args.roi,
        "dz_um": dz.tolist(),
        "results": results,
        "elapsed_s": elapsed,
    }

    cols = [int(np.argmin(np.abs(dz - v))) for v in TABLE_DZ]
    inner = np.abs(dz) <= 0.6 + 1e-9
    head = " ".join(f"{v:+5.1f}" for v in TABLE_DZ)
    medium = "water" if optics.n_sample < optics.n_immersion else "index-matched"
    print(
        f"CRLB, NA {optics.na}, {optics.wavelength_um * 1000:.0f} nm, {medium} "
        f"sample, emitter depth {args.depth:.2f} um + dz, plane 0 focus "
        f"{focus0:.3f} um (stage), background {BACKGROUND:g}/px/plane, "
        f"ROI {args.roi}x{args.roi} px"
    )
    for key, label in (("sigma_z_nm", "CRLB_z"), ("sigma_x_nm", "CRLB_x (= y)")):
        print(f"\n{label} [nm] vs dz [um]")
        print(f"{'config':<13}{'photons':>8}  {head}   mean|dz|<=.6  max|dz|<=.6")
        for r in results:
            v = np.asarray(r[key])
            vals = " ".join(_fmt(v[c]) for c in cols)
            mean, worst = _fmt(float(np.mean(v[inner]))), _fmt(float(np.max(v[inner])))
            print(
                f"{r['config']:<13}{r['photons_per_plane']:>8.0f}  {vals}   "
                f"{mean:>12} {worst:>12}"
            )
    print(
        f"\nz is the depth in the sample; in stage units multiply by "
        f"{slope:.3f} (d focus / d depth at the reference depth). "
        f"Computed in {elapsed:.1f} s."
    )
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    else:
        print("\nJSON:")
        print(text)


if __name__ == "__main__":
    main()

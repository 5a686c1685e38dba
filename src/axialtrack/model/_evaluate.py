"""Evaluation on held-out beads: bias, precision, RMSE, and the CRLB comparison."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from axialtrack.calibrate.examples import Examples

from ._data import CalibrationData, load_calibration
from .bundle import Bundle, load_bundle
from .network import Network, predict

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "NO_CRLB_IMPORTED",
    "CRLBSpec",
    "EvalResult",
    "crlb_stage_um",
    "evaluate",
    "fitted_crlb_nm",
    "matched_crlb_nm",
    "sim_crlb_spec",
]

Reference = Literal["auto", "labels", "truth"]


@dataclass(frozen=True)
class CRLBSpec:
    """Imaging conditions for the Cramer-Rao bound of ``dz`` (simulated rig).

    Attributes
    ----------
    plane_offset_um
        Plane offset delta; ``None`` for a single plane.
    photons
        Detected photons (photoelectrons) per emitter in plane 0 per exposure.
    background
        Background photoelectrons per pixel per plane.
    depth_um
        Emitter depth above the coverslip.
    read_noise_e
        Camera read noise (photoelectrons RMS) or ``None``.
    roi_size
        Pixels over which the information is summed (the crop the network sees).
    """

    plane_offset_um: float | None = 0.5
    photons: float = 2000.0
    background: float = 10.0
    depth_um: float = 0.05
    read_noise_e: float | None = None
    roi_size: int = 15


def crlb_stage_um(
    spec: CRLBSpec,
    dz_um: Sequence[float] | np.ndarray,
    photons: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """CRLB of ``dz`` in stage units (um) at the given ``dz = ref_z - stage_z``.

    The emitter sits at ``spec.depth_um``; plane 0's focus is
    ``in_focus_offset(depth) - dz``. The bound on the depth is converted to the
    stage frame with the slope of ``in_focus_offset`` at that depth.

    With ``photons`` (``(P,)`` detected photons in plane 0, replacing
    ``spec.photons``) the result is ``(P, len(dz_um))``: the PSF derivatives are
    computed once and the Fisher information for each brightness.
    """
    from axialtrack.optics import PSFModel, crlb_from_derivatives, psf_derivatives

    model = PSFModel()
    d = float(spec.depth_um)
    dz = np.asarray(dz_um, dtype=float)
    f0 = float(model.in_focus_offset(d))
    h = 0.02
    lo = max(d - h, 0.0)
    slope = float(
        (model.in_focus_offset(d + h) - model.in_focus_offset(lo)) / (d + h - lo)
    )
    offsets = (0.0,) if spec.plane_offset_um is None else (0.0, spec.plane_offset_um)
    derivs = psf_derivatives(
        model,
        np.full(dz.shape, d),
        focus_um=f0 - dz,
        plane_offsets_um=offsets,
        roi_size=spec.roi_size,
    )

    def one(n: float) -> np.ndarray:
        res = crlb_from_derivatives(
            derivs,
            photons=float(n),
            background=spec.background,
            read_noise=spec.read_noise_e,
        )
        return np.asarray(res.sigma_z_um).reshape(dz.shape) * slope

    if photons is None:
        return one(spec.photons)
    return np.stack([one(n) for n in np.asarray(photons, float).ravel()])


def matched_crlb_nm(
    spec: CRLBSpec,
    dz_true_um: np.ndarray,
    photons: np.ndarray,
    bin_index: np.ndarray,
    n_bins: int,
    *,
    grid_step_um: float = 0.005,
) -> np.ndarray:
    """Per-bin CRLB matched to the evaluated examples (nm, stage units).

    The pooled variance of the errors of an efficient unbiased estimator over a
    bin's examples is the mean of their CRLB variances, each at the example's own
    true ``dz`` and its bead's detected photons. This returns the square root of
    that mean per bin (NaN for empty bins): the bound to hold the pooled precision
    against when the beads' brightness varies (lognormal in the simulation) and
    ``dz`` varies within a bin. The CRLB is computed on a ``dz`` grid of
    ``grid_step_um`` once per distinct photon count and interpolated linearly.
    """
    dz = np.asarray(dz_true_um, float)
    ph = np.asarray(photons, float)
    lo = float(dz.min()) - grid_step_um
    hi = float(dz.max()) + grid_step_um
    grid = np.arange(lo, hi + grid_step_um / 2, grid_step_um)
    levels, inverse = np.unique(ph, return_inverse=True)
    table = crlb_stage_um(spec, grid, levels)
    var = np.empty(dz.size)
    for k in range(levels.size):
        sel = inverse == k
        var[sel] = np.interp(dz[sel], grid, table[k]) ** 2
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        sel = bin_index == b
        if sel.any():
            out[b] = np.sqrt(var[sel].mean())
    return out * 1000


def sim_crlb_spec(
    store: str | Path, data: CalibrationData | None = None
) -> CRLBSpec | None:
    """CRLB conditions of a simulated calibration run store (``truth/`` group).

    Photons: median true bead photons times the simulated camera's quantum
    efficiency; background: the median of the crops' border pixels through the
    camera model (offset, gain); read noise of the camera model;
    depth: median true depth.
    ``None`` when the store has no truth.
    """
    import zarr

    from axialtrack.sim import CameraModel

    root = zarr.open_group(str(store), mode="r")
    if "truth" not in root:
        return None
    truth: Any = root["truth"]
    phot = np.asarray(truth["photons"][...], dtype=float)
    depth = np.asarray(truth["depth_um"][...], dtype=float)
    if phot.size == 0:
        return None
    cam = CameraModel()
    d = data if data is not None else load_calibration(store)
    crops = d.examples.crops
    edge = np.concatenate(
        [
            crops[..., 0, :],
            crops[..., -1, :],
            crops[..., 1:-1, 0],
            crops[..., 1:-1, -1],
        ],
        axis=-1,
    )
    bg_adu = float(np.median(edge))
    bg_e = max((bg_adu - cam.offset_adu) * cam.gain_e_per_adu, 0.1)
    return CRLBSpec(
        plane_offset_um=d.plane_offset_um if d.plane_offset_um is not None else 0.5,
        photons=float(np.median(phot)) * cam.qe,
        background=bg_e,
        depth_um=float(np.median(depth)),
        read_noise_e=float(cam.read_noise_e),
        roi_size=int(crops.shape[-1]),
    )


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    summary
        ``n, n_beads, rmse_nm, bias_nm, precision_nm`` (std of the errors),
        ``frac_within_50nm``, ``reference`` (``"labels"`` or ``"truth"``;
        with labels also ``reference_note``, what the labels are), without a
        CRLB ``crlb_note`` (why none is shown) and, with a CRLB,
        ``median_ratio`` (median over bins of precision / CRLB),
        ``crlb_matched`` and, when matched, ``median_ratio_center`` (the same
        against the bin-centre, median-brightness bound).
    bins
        Per ``dz`` bin: ``dz_lo_um, dz_hi_um, dz_center_um, n, bias_nm,
        precision_nm, rmse_nm`` and, with a CRLB, ``crlb_nm, ratio`` (and
        ``crlb_center_nm`` when the bound is matched to the beads' brightness).
    predictions
        Per example: ``bead, field, stage_z_um, dz_true_um, dz_pred_um,
        error_nm`` (and ``sigma_z_um`` with the uncertainty head).
    files
        Files written (``out``).
    """

    summary: dict[str, Any]
    bins: pd.DataFrame
    predictions: pd.DataFrame
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary and bins."""
        bins = self.bins.replace({np.nan: None}).to_dict(orient="records")
        return {"summary": self.summary, "bins": bins}


def _as_data(data: Examples | CalibrationData | str | Path) -> CalibrationData:
    if isinstance(data, (str, Path)):
        return load_calibration(data)
    if isinstance(data, Examples):
        return CalibrationData(examples=data)
    return data


def evaluate(
    bundle: Bundle | Network | str | Path,
    data: Examples | CalibrationData | str | Path,
    split: str | None = "test",
    *,
    out: str | Path | None = None,
    bin_width_um: float = 0.1,
    dz_max_um: float | None = None,
    crlb: CRLBSpec | Literal["auto"] | None = "auto",
    reference: Reference = "auto",
    bead_photons: pd.Series | dict[int, float] | None = None,
) -> EvalResult:
    """Evaluate a model on held-out beads.

    Parameters
    ----------
    bundle
        A bundle (or its path) or a bare network.
    data
        Examples, :class:`CalibrationData` or a calibration run store path.
    split
        Examples to use (``"test"``: beads never seen in training); ``None``: all.
    out
        Folder for ``eval.json``, ``bins.csv``, ``predictions.csv`` and the PNG
        plots ``pred_vs_true.png``, ``error_hist.png``, ``precision.png``.
    bin_width_um
        Width of the ``dz`` bins.
    dz_max_um
        Only examples with ``|dz| <= dz_max_um`` (default all).
    crlb
        CRLB conditions for the precision comparison; ``"auto"`` derives them from
        a simulated run store's ``truth/`` group. Without them (a calibration
        imported with ``calibrate --from`` has no truth, and no fitted PSF model
        yet) the bins have no CRLB and ``summary["crlb_note"]`` says why.
    reference
        True ``dz``: the calibration labels, or the simulation truth
        (``z_true_um`` of the bead table minus the stage Z). ``"auto"`` uses the
        truth when available.
    bead_photons
        Detected photons in plane 0 of each bead (bead id -> photons, the units of
        :attr:`CRLBSpec.photons`), e.g. the simulation truth. With a CRLB, each
        bin's ``crlb_nm`` is then the bound matched to its examples
        (:func:`matched_crlb_nm`: RMS over the examples of the CRLB at their own
        true ``dz`` and brightness) instead of the bound at the bin centre and
        ``spec.photons``, which is kept as ``crlb_center_nm``. Precision is pooled
        over beads of different brightness, so this is the bound it is comparable
        with.
    """
    if isinstance(bundle, (str, Path)):
        bundle = load_bundle(bundle)
    model = bundle.model if isinstance(bundle, Bundle) else bundle
    d = _as_data(data)
    ex = d.examples if split is None else d.examples.subset(split)
    if len(ex) == 0:
        raise ValueError(f"no examples in split {split!r}")
    dz_true, ref = _true_dz(ex, d.beads, reference)
    sel = np.ones(len(ex), bool)
    if dz_max_um is not None:
        sel = np.abs(dz_true) <= dz_max_um + 1e-9
    dz_true = dz_true[sel]
    preds = _predictions(model, ex, sel, dz_true)
    err_nm = preds["error_nm"].to_numpy(float)
    lim = float(np.max(np.abs(dz_true))) if dz_max_um is None else dz_max_um
    bins, idx = _bins(err_nm, dz_true, lim, bin_width_um)
    spec: CRLBSpec | None = None
    if crlb == "auto":
        if isinstance(data, (str, Path)):
            spec = sim_crlb_spec(data, d)
    else:
        spec = crlb
    summary: dict[str, Any] = {
        "n": int(err_nm.size),
        "n_beads": int(np.unique(preds["bead"]).size),
        "split": split,
        "reference": ref,
        "rmse_nm": float(np.sqrt(np.mean(err_nm**2))),
        "bias_nm": float(np.mean(err_nm)),
        "precision_nm": float(np.std(err_nm, ddof=1)) if err_nm.size > 1 else None,
        "frac_within_50nm": float(np.mean(np.abs(err_nm) <= 50.0)),
        "max_abs_bin_bias_nm": float(np.nanmax(np.abs(bins["bias_nm"]))),
    }
    if ref == "labels":
        summary["reference_note"] = _LABELS_NOTE
    note = _no_crlb_reason(crlb, data) if spec is None else None
    if note is not None:
        summary["crlb_note"] = note
    if spec is not None:
        ids = np.asarray(ex.bead[sel])
        _add_spec_crlb(bins, summary, spec, dz_true, idx, ids, bead_photons)
    if spec is None and crlb == "auto" and d.psf_fit is not None:
        # any calibration with a fitted PSF: the bound of the fitted model at
        # the evaluated beads' fitted photons and backgrounds
        fitted = fitted_crlb_nm(d.psf_fit, bins["dz_center_um"].to_numpy(), ex.bead)
        bins["crlb_nm"] = fitted.pop("sigma_z_nm")
        bins["crlb_x_nm"] = fitted.pop("sigma_x_nm")
        bins["crlb_y_nm"] = fitted.pop("sigma_y_nm")
        bins["ratio"] = bins["precision_nm"] / bins["crlb_nm"]
        summary["median_ratio"] = float(np.nanmedian(bins["ratio"]))
        summary["crlb_matched"] = False
        summary["crlb"] = fitted
        summary.pop("crlb_note", None)  # the fitted PSF gives the bound
    result = EvalResult(summary=summary, bins=bins, predictions=preds)
    if out is not None:
        result.files = _write(result, Path(out))
    return result


def _true_dz(
    ex: Examples, beads: pd.DataFrame | None, reference: Reference
) -> tuple[np.ndarray, str]:
    """The true ``dz`` of each example and where it comes from (``"labels"``
    or ``"truth"``: the bead table's ``z_true_um`` minus the stage Z)."""
    dz_true = np.asarray(ex.dz_um, dtype=float)
    ref = "labels"
    if (
        reference in ("auto", "truth")
        and beads is not None
        and "z_true_um" in beads.columns
        and np.isin(ex.bead, beads["bead"].to_numpy()).all()
    ):
        zt = beads.set_index("bead").loc[ex.bead, "z_true_um"].to_numpy(float)
        if np.all(np.isfinite(zt)):
            dz_true = zt - np.asarray(ex.stage_z_um, dtype=float)
            ref = "truth"
    if reference == "truth" and ref != "truth":
        raise ValueError("reference='truth' needs a bead table with z_true_um")
    return dz_true, ref


def _predictions(
    model: Network, ex: Examples, sel: np.ndarray, dz_true: np.ndarray
) -> pd.DataFrame:
    """One row per selected example: true and predicted ``dz``, error, the
    network's other outputs."""
    out_pred = predict(model, ex.crops[sel], ex.xy_norm[sel])
    pred = out_pred[:, 0].astype(float)
    preds = pd.DataFrame(
        {
            "bead": ex.bead[sel],
            "field": ex.field[sel],
            "stage_z_um": ex.stage_z_um[sel],
            "dz_true_um": dz_true,
            "dz_pred_um": pred,
            "error_nm": (pred - dz_true) * 1000,
        }
    )
    for i, name in enumerate(model.output_names[1:], start=1):
        preds[name] = out_pred[:, i]
    return preds


def _bins(
    err_nm: np.ndarray, dz_true: np.ndarray, lim: float, width: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """Bias, precision and RMSE per ``dz`` bin over ``[-lim, lim]``, and each
    example's bin."""
    nb = max(1, int(np.ceil(2 * lim / width - 1e-9)))
    edges = np.linspace(-nb * width / 2, nb * width / 2, nb + 1)
    idx = np.clip(np.digitize(dz_true, edges) - 1, 0, nb - 1)
    rows = []
    for b in range(nb):
        e = err_nm[idx == b]
        rows.append(
            {
                "dz_lo_um": edges[b],
                "dz_hi_um": edges[b + 1],
                "dz_center_um": (edges[b] + edges[b + 1]) / 2,
                "n": int(e.size),
                "bias_nm": float(e.mean()) if e.size else np.nan,
                "precision_nm": float(e.std(ddof=1)) if e.size > 1 else np.nan,
                "rmse_nm": float(np.sqrt(np.mean(e**2))) if e.size else np.nan,
            }
        )
    return pd.DataFrame(rows), idx


def _add_spec_crlb(
    bins: pd.DataFrame,
    summary: dict[str, Any],
    spec: CRLBSpec,
    dz_true: np.ndarray,
    idx: np.ndarray,
    ids: np.ndarray,
    bead_photons: pd.Series | dict[int, float] | None,
) -> None:
    """The CRLB of ``spec`` per bin (at the bin centre, or matched to the
    examples' brightness) and the precision/CRLB ratios."""
    center = crlb_stage_um(spec, bins["dz_center_um"].to_numpy()) * 1000
    if bead_photons is None:
        bins["crlb_nm"] = center
    else:
        lookup = pd.Series(bead_photons, dtype=float)
        if not np.isin(ids, lookup.index.to_numpy()).all():
            raise ValueError("bead_photons lacks some of the evaluated beads")
        phot = lookup.loc[ids].to_numpy(float)
        if not np.all(np.isfinite(phot) & (phot > 0)):
            raise ValueError("bead_photons must be finite and positive")
        bins["crlb_center_nm"] = center
        bins["crlb_nm"] = matched_crlb_nm(spec, dz_true, phot, idx, len(bins))
        summary["median_ratio_center"] = float(
            np.nanmedian(bins["precision_nm"] / center)
        )
    bins["ratio"] = bins["precision_nm"] / bins["crlb_nm"]
    summary["median_ratio"] = float(np.nanmedian(bins["ratio"]))
    summary["crlb_matched"] = bead_photons is not None
    summary["crlb"] = {
        "plane_offset_um": spec.plane_offset_um,
        "photons": spec.photons,
        "background": spec.background,
        "depth_um": spec.depth_um,
        "read_noise_e": spec.read_noise_e,
        "roi_size": spec.roi_size,
    }


_LABELS_NOTE = (
    "true dz = the bead's reference Z found by the calibration minus the stage Z "
    "(stage labels); bias is relative to that reference"
)

NO_CRLB_IMPORTED = (
    "no CRLB: this calibration has no simulated truth and carries no fitted PSF "
    "model (calibrate without --no-psf-fit fits one); the CRLB column appears "
    "when the calibration carries one"
)
"""Why :func:`evaluate` shows no CRLB for a calibration imported with
``calibrate --from`` (``summary["crlb_note"]``)."""


def _no_crlb_reason(
    crlb: CRLBSpec | Literal["auto"] | None,
    data: Examples | CalibrationData | str | Path,
) -> str:
    """One line saying why no CRLB is shown."""
    if crlb is None:
        return "no CRLB: not asked for (--no-crlb)"
    if not isinstance(data, (str, Path)):
        return "no CRLB: no CRLB conditions given for in-memory examples"
    return NO_CRLB_IMPORTED


def fitted_crlb_nm(
    psf_fit: dict[str, Any], dz_um: np.ndarray, beads: np.ndarray | None = None
) -> dict[str, Any]:
    """CRLB of x, y and dz (nm, stage frame) per ``dz`` from a calibration's fit.

    At the median fitted photons and backgrounds of ``beads`` (those of the
    fit's beads among them; all the beads the fit used when none are), with the
    camera's read noise (:func:`axialtrack.optics.fit.fit_crlb`). Returns
    ``sigma_x_nm, sigma_y_nm, sigma_z_nm`` arrays and the conditions.
    """
    from axialtrack.optics import load_psf_fit
    from axialtrack.optics.fit import fit_crlb

    fit = load_psf_fit(psf_fit)
    b = fit.beads
    sel = b[b["bead"].isin(np.unique(beads))] if beads is not None else b.iloc[:0]
    if sel.empty:
        sel = b[b["used"].astype(bool)]
    photons = float(sel["photons"].median())
    bg = [float(sel["background0"].median()), float(sel["background1"].median())]
    rn = fit.camera.get("read_noise_e") or None
    c = fit_crlb(fit, dz_um, photons=photons, background=bg, read_noise_e=rn)
    return {
        "sigma_x_nm": c["sigma_x_um"] * 1e3,
        "sigma_y_nm": c["sigma_y_um"] * 1e3,
        "sigma_z_nm": c["sigma_z_um"] * 1e3,
        "source": "fitted PSF",
        "plane_offset_um": fit.plane_offset_um,
        "photons": photons,
        "background": bg,
        "depth_um": fit.depth_um,
        "read_noise_e": rn,
        "roi_size": fit.crop_size,
    }


def _write(result: EvalResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "eval.json", out / "bins.csv", out / "predictions.csv"]
    files[0].write_text(json.dumps(result.to_dict(), indent=2))
    result.bins.to_csv(files[1], index=False)
    result.predictions.to_csv(files[2], index=False)
    p = result.predictions
    s = result.summary

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(p["dz_true_um"], p["dz_pred_um"], ".", ms=3, alpha=0.6)
    lim = float(np.max(np.abs(p[["dz_true_um", "dz_pred_um"]].to_numpy())))
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set_xlabel(f"true dz (um, {s['reference']})")
    ax.set_ylabel("predicted dz (um)")
    ax.set_title(f"RMSE {s['rmse_nm']:.1f} nm, n={s['n']}")
    fig.tight_layout()
    files.append(out / "pred_vs_true.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(p["error_nm"], bins=50)
    ax.axvline(-50, color="k", ls=":")
    ax.axvline(50, color="k", ls=":")
    ax.set_xlabel("error (nm)")
    ax.set_ylabel("count")
    ax.set_title(f"{100 * s['frac_within_50nm']:.1f} % within +-50 nm")
    fig.tight_layout()
    files.append(out / "error_hist.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    b = result.bins
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b["dz_center_um"], b["precision_nm"], "o-", label="precision (std)")
    ax.plot(b["dz_center_um"], b["bias_nm"].abs(), "s--", label="|bias|")
    ax.plot(b["dz_center_um"], b["rmse_nm"], "^:", label="RMSE")
    if "crlb_nm" in b:
        ax.plot(b["dz_center_um"], b["crlb_nm"], "k-", label="CRLB (stage units)")
    elif s.get("crlb_note"):
        ax.set_title(str(s["crlb_note"]).split(";")[0], fontsize=8)
    ax.set_xlabel("dz (um)")
    ax.set_ylabel("nm")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    files.append(out / "precision.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files

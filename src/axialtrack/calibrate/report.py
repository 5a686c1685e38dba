"""HTML quality report of a calibration analysis (matplotlib figures, embedded)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from axialtrack.optics import SplinePSFFit
    from axialtrack.optics.fit import PSFFit

    AnyFit = PSFFit | SplinePSFFit

    from .analysis import CalibrationResult
    from .stack import CalibrationStack

__all__ = ["qc_figures", "write_report"]

_REASON_COLORS = {
    "edge": "tab:gray",
    "fit_failed": "tab:purple",
    "saturated": "tab:red",
    "neighbour": "tab:orange",
    "low_snr": "tab:blue",
    "out_of_range": "tab:brown",
}


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bead_maps(result: CalibrationResult, stack: CalibrationStack) -> Figure:
    from matplotlib.figure import Figure

    n = min(stack.n_fields, 4)
    fig = Figure(figsize=(4.2 * n, 4.2))
    beads = result.beads
    for p in range(n):
        ax = fig.add_subplot(1, n, p + 1)
        mp = np.asarray(stack.frames[p][:, 0]).max(axis=0)
        lo, hi = np.percentile(mp, [1, 99.8])
        ax.imshow(mp, cmap="gray", vmin=lo, vmax=hi)
        fb = beads[beads["field"] == p]
        acc = fb[fb["status"] == "accepted"]
        ax.scatter(
            acc["x_px0"],
            acc["y_px0"],
            s=60,
            facecolors="none",
            edgecolors="lime",
            label="accepted",
        )
        for reason, color in _REASON_COLORS.items():
            rj = fb[fb["reason"] == reason]
            if len(rj):
                ax.scatter(
                    rj["x_px0"], rj["y_px0"], s=60, marker="x", c=color, label=reason
                )
        ax.set_title(f"field {p}: {len(acc)}/{len(fb)} accepted")
        ax.set_axis_off()
        if p == 0:
            ax.legend(loc="upper right", fontsize=7)
    return fig


def _profiles(result: CalibrationResult, stack: CalibrationStack) -> Figure:
    from matplotlib.figure import Figure

    beads = result.beads
    acc = beads[beads["status"] == "accepted"].reset_index(drop=True)
    pick = np.unique(np.linspace(0, len(acc) - 1, min(4, len(acc))).astype(int))
    fig = Figure(figsize=(4 * len(pick), 3.2))
    delta = stack.geometry.plane_offset_um
    for k, i in enumerate(pick):
        ax = fig.add_subplot(1, len(pick), k + 1)
        z = stack.stage_z_um[int(acc.loc[i, "field"])]
        prof = result.profiles[i]
        order = np.argsort(z)
        ax.plot(z[order], prof[order, 0], label="plane 0")
        ax.plot(z[order], prof[order, 1], label="plane 1")
        zr = float(acc.loc[i, "ref_z_um"])
        ax.axvline(zr, color="tab:blue", ls="--", lw=0.8)
        ax.axvline(zr - delta, color="tab:orange", ls="--", lw=0.8)
        ax.set_xlabel("stage Z (um)")
        ax.set_title(
            f"bead {int(acc.loc[i, 'bead'])} (field {int(acc.loc[i, 'field'])})"
        )
        if k == 0:
            ax.set_ylabel("on-axis brightness (counts)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _residuals(result: CalibrationResult, stack: CalibrationStack) -> Figure:
    from matplotlib.figure import Figure

    reg = result.registration
    res = reg.residual_vectors_px * stack.pixel_size_um * 1e3
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    h, w = stack.plane_shape
    scale = 0.05 * max(h, w) / max(float(np.abs(res).max(initial=0.0)), 1e-9)
    ax.quiver(
        reg.pairs[:, 1],
        reg.pairs[:, 2],
        res[:, 0] * scale,
        res[:, 1] * scale,
        angles="xy",
        scale_units="xy",
        scale=1,
        color="tab:red",
    )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_title(
        f"registration residuals, rms {reg.residual_nm:.1f} nm "
        f"(n={reg.n_matched}; longest arrow "
        f"{float(np.hypot(res[:, 0], res[:, 1]).max(initial=0.0)):.1f} nm)"
    )
    return fig


def _truth_errors(result: CalibrationResult) -> Figure | None:
    from matplotlib.figure import Figure

    beads = result.beads
    if "z_true_um" not in beads or not np.isfinite(beads["z_true_um"]).any():
        return None
    b = beads[np.isfinite(beads["z_true_um"])]
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for col, label in (("z_mean_um", "mean"), ("z_msd_um", "msd")):
        err = (b[col] - b["z_true_um"]) * 1e3
        rms = float(np.sqrt(np.mean(err**2)))
        ax.scatter(b["z_true_um"], err, s=12, label=f"{label}: rms {rms:.1f} nm")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("true z_focus (um)")
    ax.set_ylabel("ref Z - truth (nm)")
    ax.legend(fontsize=8)
    return fig


def _bead_data(
    result: CalibrationResult, fit: AnyFit, bead: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measured and model photoelectrons ``(F, 2, S, S)`` of a bead, and its dz."""
    ex = result.examples
    sel = np.nonzero(ex.bead == bead)[0]
    sel = sel[np.argsort(ex.dz_um[sel])]
    cam = fit.camera
    meas = (ex.crops[sel].astype(float) - cam["offset_adu"]) * cam["e_per_adu"]
    model = fit.bead_model(bead, ex.stage_z_um[sel])
    return meas, model, ex.dz_um[sel]


def _psf_slices(result: CalibrationResult, fit: AnyFit, bead: int) -> Figure:
    from matplotlib.figure import Figure

    meas, model, dz = _bead_data(result, fit, bead)
    c = meas.shape[-1] // 2
    fig = Figure(figsize=(12, 6))
    for p in (0, 1):
        for k, name in enumerate(("x-z", "y-z")):
            if name == "x-z":
                m, f = meas[:, p, c, :], model[:, p, c, :]
            else:
                m, f = meas[:, p, :, c], model[:, p, :, c]
            hi = float(max(m.max(), f.max()))
            for j, (what, img) in enumerate((("measured", m), ("model", f))):
                ax = fig.add_subplot(2, 4, 4 * p + 2 * k + j + 1)
                ax.imshow(
                    img,
                    aspect="auto",
                    origin="lower",
                    vmin=0,
                    vmax=hi,
                    extent=(-c - 0.5, c + 0.5, float(dz[0]), float(dz[-1])),
                )
                ax.set_title(f"plane {p} {name} {what}", fontsize=8)
                ax.set_xlabel("px", fontsize=8)
                ax.set_ylabel("dz (um)", fontsize=8)
    fig.tight_layout()
    return fig


def _psf_residuals(result: CalibrationResult, fit: AnyFit, bead: int) -> Figure:
    from matplotlib.figure import Figure

    meas, model, dz = _bead_data(result, fit, bead)
    pick = np.unique(np.linspace(0, len(dz) - 1, 5).round().astype(int))
    fig = Figure(figsize=(2.4 * len(pick), 5))
    for p in (0, 1):
        for i, k in enumerate(pick):
            ax = fig.add_subplot(2, len(pick), p * len(pick) + i + 1)
            # Pearson residual: (measured - model) / sqrt(model)
            r = (meas[k, p] - model[k, p]) / np.sqrt(np.maximum(model[k, p], 1.0))
            im = ax.imshow(r, cmap="RdBu_r", vmin=-4, vmax=4)
            ax.set_title(f"plane {p}, dz {dz[k]:+.2f} um", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label="(data - model) / sqrt(model)")
    return fig


def _zernike_bars(fit: AnyFit) -> Figure:
    from matplotlib.figure import Figure

    from axialtrack.optics import NOLL_NAMES

    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    js = sorted(set(fit.zernike) | set(fit.plane1_zernike))
    x = np.arange(len(js))
    ax.bar(x - 0.2, [fit.zernike.get(j, 0.0) for j in js], 0.4, label="plane 0")
    ax.bar(
        x + 0.2,
        [fit.zernike.get(j, 0.0) + fit.plane1_zernike.get(j, 0.0) for j in js],
        0.4,
        label="plane 1",
    )
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"Z{j}\n{NOLL_NAMES.get(j, '')}" for j in js], fontsize=7, rotation=0
    )
    ax.set_ylabel("waves RMS")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    return fig


def _psf_choice(fit: AnyFit) -> str:
    """One sentence: which PSF model the calibration keeps, and why."""
    sel = fit.selection
    name = sel.get("model", "pupil")
    per = sel.get("heldout_nll_per_frame")
    if sel.get("forced"):
        return f"{name}, as asked (--psf-model {name}); no held-out comparison."
    if not per:
        return f"{name} ({sel.get('why', 'no held-out comparison')})."
    scores = ", ".join(f"{k} {float(v):.1f}" for k, v in per.items())
    return (
        f"{name}: held-out negative log-likelihood per frame {scores} "
        f"({sel.get('heldout_frames')} frames of beads "
        f"{', '.join(str(b) for b in sel.get('heldout_beads', []))}; the spline "
        f"is kept only when lower by more than {sel.get('margin_per_frame')})."
    )


def _bead_deviance(fit: AnyFit) -> Figure:
    from matplotlib.figure import Figure

    b = fit.beads
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    out = b["outlier"].to_numpy(bool)
    ax.scatter(b["bead"][~out], b["reduced_deviance"][~out], s=15, label="bead")
    ax.scatter(b["bead"][out], b["reduced_deviance"][out], s=40, c="r", label="outlier")
    ax.set_xlabel("bead")
    ax.set_ylabel("deviance per pixel")
    ax.legend(fontsize=8)
    return fig


def _crlb_plot(qc_psf: dict[str, object]) -> Figure:
    from matplotlib.figure import Figure

    cr = qc_psf["crlb"]
    assert isinstance(cr, dict)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for k in ("x", "y", "z"):
        y = [np.nan if v is None else v for v in cr[f"sigma_{k}_nm"]]
        ax.plot(cr["dz_um"], y, "o-", label=f"CRLB {k}")
    ax.set_xlabel("dz (um)")
    ax.set_ylabel("nm")
    ax.set_title(
        f"fitted PSF, {cr['photons']:.0f} photons, background "
        f"{cr['background'][0]:.1f}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig


def qc_figures(
    result: CalibrationResult,
    stack: CalibrationStack,
    *,
    psf_fit: PSFFit | None = None,
) -> dict[str, Figure]:
    """The report's figures a window shows: ``"beads"`` (the bead map), and
    with ``psf_fit`` ``"psf_slices"`` and ``"psf_residuals"`` of the bead of
    median photons among those the fit used (as :func:`write_report`)."""
    figs = {"beads": _bead_maps(result, stack)}
    if psf_fit is not None:
        used = psf_fit.beads[psf_fit.beads["used"].astype(bool)]
        if len(used):
            bead = int(used.sort_values("photons").iloc[len(used) // 2]["bead"])
            figs["psf_slices"] = _psf_slices(result, psf_fit, bead)
            figs["psf_residuals"] = _psf_residuals(result, psf_fit, bead)
    return figs


def write_report(
    result: CalibrationResult,
    stack: CalibrationStack,
    out_dir: str | Path,
    *,
    psf_fit: AnyFit | None = None,
) -> Path:
    """Write ``report.html`` with embedded PNG figures.

    With ``psf_fit`` the report shows the fitted PSF too: measured vs model x-z
    and y-z slices of a bead per plane, residual maps, the Zernike coefficients,
    the per-bead deviance (outliers in red) and the CRLB per dz; each of these
    figures is also written as a PNG file beside ``report.html``.

    Parameters
    ----------
    result
        Output of :func:`~axialtrack.calibrate.analyze`.
    stack
        The analyzed stack (for images and stage Z).
    out_dir
        Directory to write into (created if needed).

    Returns
    -------
    pathlib.Path
        The path of ``report.html``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = [
        ("Beads (plane 0 max projection)", _bead_maps(result, stack)),
        (
            "Brightness profiles vs stage Z (dashed: reference Z, and minus delta)",
            _profiles(result, stack),
        ),
        ("Plane registration residuals", _residuals(result, stack)),
    ]
    te = _truth_errors(result)
    if te is not None:
        figs.append(("Reference Z error vs simulation truth", te))
    if psf_fit is not None:
        b = psf_fit.beads
        used = b[b["used"].astype(bool)]
        bead = int(used.sort_values("photons").iloc[len(used) // 2]["bead"])
        psf_figs = [
            (
                "psf_slices",
                f"Bead {bead}: measured vs model slices",
                _psf_slices(result, psf_fit, bead),
            ),
            (
                "psf_residuals",
                f"Bead {bead}: residual maps",
                _psf_residuals(result, psf_fit, bead),
            ),
            (
                "psf_deviance",
                "PSF fit: deviance per pixel by bead",
                _bead_deviance(psf_fit),
            ),
        ]
        if psf_fit.zernike or psf_fit.plane1_zernike:  # a pupil fit
            psf_figs.insert(
                2,
                (
                    "psf_zernike",
                    "Fitted Zernike phase (waves RMS)",
                    _zernike_bars(psf_fit),
                ),
            )
        if "psf_fit" in result.qc:
            psf_figs.append(
                (
                    "psf_crlb",
                    "CRLB per dz from the fitted PSF",
                    _crlb_plot(result.qc["psf_fit"]),
                )
            )
        for name, title, fig in psf_figs:
            fig.savefig(out / f"{name}.png", dpi=90, bbox_inches="tight")
            figs.append((title, fig))
    qc = result.qc
    counts = {"accepted": qc["n_accepted"], **qc["rejected"]}
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in counts.items()
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>axialtrack calibration report</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#eee}</style>",
        "</head><body><h1>Calibration report</h1>",
        f"<p>Source: {html.escape(str(stack.source))}; {qc['n_fields']} field(s) x "
        f"{qc['n_z']} Z steps; reference-Z method: {html.escape(result.method)}; "
        f"registration residual {qc['registration']['residual_nm']:.1f} nm "
        f"({qc['registration']['n_matched']} pairs, rotation "
        f"{qc['registration']['rotation_deg']:.3f} deg).</p>",
        "<h2>Beads by status</h2><table>",
        "<tr><th>status / reason</th><th>count</th></tr>",
        table,
        "</table>",
    ]
    if psf_fit is not None:
        parts.append(f"<h2>PSF model</h2><p>{html.escape(_psf_choice(psf_fit))}</p>")
    for title, fig in figs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{_png(fig)}'>"
        )
    parts.append("<h2>QC summary</h2><pre>")
    parts.append(html.escape(json.dumps(qc, indent=1)))
    parts.append("</pre></body></html>")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path

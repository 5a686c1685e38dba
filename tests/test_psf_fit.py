"""The pupil fit to calibration beads: recovery, outliers, storage, CRLB, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axialtrack.optics import Optics, PSFModel
from axialtrack.optics.fit import (
    MIN_BEADS,
    MIN_PHOTONS,
    FitConfig,
    PSFFit,
    PSFFitError,
    fit_beads,
    fit_crlb,
    heldout_nll,
    phase_rms_error_waves,
)

# fast settings: a coarse pupil and 2x2 pixel integration, shared by the beads'
# renderer (the project's PSFModel with its Zernike phase baked into the pupil)
# and the fit (its own torch parametrization on top of the unaberrated pupil)
FAST = {"pupil_samples": 32, "oversample": 2}
TRUE_ZERNIKE = {5: 0.04, 6: -0.03, 7: 0.03, 8: -0.02, 9: 0.02, 11: 0.05, 14: -0.02}
TRUE_PLANE1 = {5: -0.02, 11: 0.01}
DEPTH = 0.05
DELTA = 0.5
T1 = 0.8
CAMERA = {"offset_adu": 100.0, "e_per_adu": 0.5, "read_noise_e": 1.6}
SIZE = 11
CONFIG = FitConfig(
    pupil_samples=32, oversample=2, max_frames=9, dz_range_um=0.8, max_iter=200
)


def render_beads(
    n_beads: int,
    *,
    seed: int,
    photons: float = 20000.0,
    background: float = 20.0,
    doublet: int | None = None,
    doublet_px: float = 2.0,
) -> tuple[tuple, dict[int, tuple[float, float, float, float]]]:
    """Bead crops ``(R, 2, S, S)`` in ADU with their stage Z, ids, reference Z."""
    rng = np.random.default_rng(seed)
    m0 = PSFModel(Optics(zernike=TRUE_ZERNIKE, **FAST))
    z1 = {j: TRUE_ZERNIKE.get(j, 0.0) + TRUE_PLANE1.get(j, 0.0) for j in range(2, 16)}
    m1 = PSFModel(Optics(zernike={j: v for j, v in z1.items() if v}, **FAST))
    pix = Optics().pixel_size_um
    f0 = float(PSFModel(Optics(**FAST)).in_focus_offset(DEPTH))
    zs = np.round(np.arange(-0.8, 0.8 + 1e-9, 0.2), 6)
    crops, stage, bead, refz = [], [], [], []
    pos: dict[int, tuple[float, float, float, float]] = {}
    for b in range(n_beads):
        x0, y0 = rng.uniform(20, 100, 2)
        d1 = rng.uniform(-0.5, 0.5, 2)
        x1, y1 = np.rint(x0) + 31 + d1[0], np.rint(y0) - 2 + d1[1]
        pos[b] = (float(x0), float(y0), float(x1), float(y1))
        o0 = np.array([x0 - np.rint(x0), y0 - np.rint(y0)]) * pix
        o1 = np.array([x1 - np.rint(x1), y1 - np.rint(y1)]) * pix
        cov = rng.uniform(-0.1, 0.1)
        ref = cov + f0
        z = ref + zs
        n = photons * rng.uniform(0.8, 1.2)
        emitters = [(o0, o1, 1.0)]
        if b == doublet:
            # two equal emitters doublet_px apart along a random direction
            ang = rng.uniform(0, np.pi)
            d = 0.5 * doublet_px * pix * np.array([np.cos(ang), np.sin(ang)])
            emitters = [(o0 + d, o1 + d, 0.5), (o0 - d, o1 - d, 0.5)]
        mu = np.zeros((zs.size, 2, SIZE, SIZE))
        for e0, e1, w in emitters:
            xyz0 = np.tile([e0[0], e0[1], DEPTH], (zs.size, 1))
            xyz1 = np.tile([e1[0], e1[1], DEPTH], (zs.size, 1))
            mu[:, 0] += w * n * m0.psf(xyz0, z - cov, SIZE).numpy()
            mu[:, 1] += w * n * T1 * m1.psf(xyz1, z - cov + DELTA, SIZE).numpy()
        mu[:, 0] += background
        mu[:, 1] += 0.9 * background
        e = rng.poisson(mu) + rng.normal(0, CAMERA["read_noise_e"], mu.shape)
        adu = np.round(e / CAMERA["e_per_adu"] + CAMERA["offset_adu"])
        crops.append(adu.astype(np.float32))
        stage.append(z)
        bead += [b] * zs.size
        refz += [ref] * zs.size
    args = (
        np.concatenate(crops),
        np.concatenate(stage),
        np.asarray(bead),
        np.asarray(refz),
    )
    return args, pos


def truth_fit(template: PSFFit) -> PSFFit:
    """The true model in the fit's parametrization (for the held-out NLL)."""
    return PSFFit(
        optics=template.optics,
        phase_noll=template.phase_noll,
        plane1_noll=template.plane1_noll,
        amplitude_noll=template.amplitude_noll,
        zernike={j: TRUE_ZERNIKE.get(j, 0.0) for j in template.phase_noll},
        plane1_zernike={j: TRUE_PLANE1.get(j, 0.0) for j in template.plane1_noll},
        amplitude=dict.fromkeys(template.amplitude_noll, 0.0),
        depth_um=DEPTH,
        plane_offset_um=DELTA,
        transmission=T1,
        plane1_shift_um=(0.0, 0.0),
        focus_dz0_um=float(PSFModel(Optics(**FAST)).in_focus_offset(DEPTH)),
        crop_size=SIZE,
        beads=template.beads,
        converged=True,
        n_iter=0,
        time_s=0.0,
        camera=dict(CAMERA),
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[PSFFit, int]:
    """A fit to 8 beads, bead 3 an unresolved doublet 2 px apart."""
    torch.manual_seed(0)
    args, pos = render_beads(8, seed=1, doublet=3)
    fit = fit_beads(
        *args,
        pos,
        optics=Optics(),
        plane_offset_um=0.45,
        camera=CAMERA,
        config=CONFIG,
    )
    return fit, 3


@pytest.mark.slow
def test_fit_recovers_known_aberrations(fitted: tuple[PSFFit, int]) -> None:
    fit, _ = fitted
    assert fit.converged
    err = phase_rms_error_waves(
        fit.model(),
        (fit.depth_um, fit.zernike),
        (
            DEPTH,
            TRUE_ZERNIKE,
        ),
    )
    print(f"plane-0 phase RMS error {err:.4f} waves; fit {fit.time_s:.0f} s")
    assert err < 0.02
    # each coefficient within 0.01 waves, plane 1's relative ones too
    for j in fit.phase_noll:
        assert abs(fit.zernike[j] - TRUE_ZERNIKE.get(j, 0.0)) < 0.01, j
    for j in fit.plane1_noll:
        assert abs(fit.plane1_zernike[j] - TRUE_PLANE1.get(j, 0.0)) < 0.01, j
    assert abs(fit.transmission - T1) < 0.02
    assert abs(fit.plane_offset_um - DELTA) < 0.02  # started from 0.45
    used = fit.beads[fit.beads["used"]]
    # the shifted-Poisson deviance of a right model is about 1 per pixel
    assert 0.9 < float(used["reduced_deviance"].median()) < 1.15


@pytest.mark.slow
def test_doublet_bead_is_flagged(fitted: tuple[PSFFit, int]) -> None:
    fit, doublet = fitted
    b = fit.beads.set_index("bead")
    assert bool(b.loc[doublet, "outlier"])
    assert not bool(b.loc[doublet, "used"])  # refitted without it
    assert int(b["outlier"].sum()) == 1
    print(b["reduced_deviance"].round(2).to_dict())


@pytest.mark.slow
def test_heldout_nll_close_to_true_model(fitted: tuple[PSFFit, int]) -> None:
    fit, _ = fitted
    args, pos = render_beads(4, seed=7)
    nll_fit = heldout_nll(fit, *args, pos, config=CONFIG)
    nll_true = heldout_nll(truth_fit(fit), *args, pos, config=CONFIG)
    ratio = nll_fit / nll_true
    print(f"held-out NLL fitted / true {ratio:.5f}")
    # the target is 2 %; in fact they differ by < 0.5 % (0.18 % measured, the
    # fitted model slightly lower: its held-out beads' fits converge better)
    assert abs(ratio - 1.0) < 5e-3


def test_store_round_trip(tmp_path) -> None:
    import zarr

    from axialtrack.calibrate.psf import read_psf, write_psf

    fit = plain_fit({5: 0.04, 8: -0.02})
    root = zarr.open_group(str(tmp_path / "cal.zarr"), mode="w")
    write_psf(fit, root, dz_range_um=0.5)
    back = read_psf(tmp_path / "cal.zarr")
    assert back is not None
    assert back.zernike == fit.zernike
    assert back.beads["outlier"].tolist() == fit.beads["outlier"].tolist()
    xyz = np.array([[0.01, -0.02, 0.3], [0.0, 0.0, -0.2]])
    np.testing.assert_allclose(
        back.renderer()(xyz), fit.renderer()(xyz), rtol=1e-5, atol=1e-9
    )
    g = zarr.open_group(str(tmp_path / "cal.zarr"), mode="r")
    stack = np.asarray(g["psf/stack"][...])
    dz = np.asarray(g["psf/dz_um"][...])
    assert stack.shape == (2, dz.size, SIZE, SIZE)
    np.testing.assert_allclose(
        stack[:, 3], fit.sampled([dz[3]])[:, 0], rtol=1e-5, atol=1e-9
    )


def plain_fit(zernike: dict[int, float] | None = None) -> PSFFit:
    """A fitted-PSF object with given (default no) aberrations, fast optics."""
    import pandas as pd

    optics = Optics(**FAST)
    f0 = float(PSFModel(optics).in_focus_offset(DEPTH))
    z = {5: 0.0, 6: 0.0, 11: 0.0, **(zernike or {})}
    return PSFFit(
        optics=optics,
        phase_noll=tuple(sorted(z)),
        plane1_noll=(5,),
        amplitude_noll=(4,),
        zernike=z,
        plane1_zernike={5: 0.0},
        amplitude={4: 0.0},
        depth_um=DEPTH,
        plane_offset_um=DELTA,
        transmission=0.9,
        plane1_shift_um=(0.0, 0.0),
        focus_dz0_um=f0,
        crop_size=SIZE,
        beads=pd.DataFrame(
            {
                "bead": np.arange(6),
                "photons": np.full(6, 2000.0),
                "background0": np.full(6, 10.0),
                "background1": np.full(6, 9.0),
                "used": np.ones(6, bool),
                "outlier": np.zeros(6, bool),
            }
        ),
        converged=True,
        n_iter=0,
        time_s=0.0,
    )


def test_crlb_of_unaberrated_fit_matches_optics_crlb() -> None:
    from axialtrack.optics import crlb

    fit = plain_fit()
    model = PSFModel(Optics(**FAST))
    f0 = fit.focus_dz0_um
    dz = np.array([-0.6, -0.2, 0.0, 0.3, 0.6])
    got = fit_crlb(fit, dz, photons=2000, background=[10.0, 9.0], read_noise_e=1.5)
    ref = crlb(
        model,
        np.full(dz.size, DEPTH),
        focus_um=f0 - dz,
        plane_offsets_um=(0.0, DELTA),
        photons=2000,
        background=[10.0, 9.0],
        transmission=0.9,
        roi_size=SIZE,
        read_noise=1.5,
    )
    h = 0.02
    slope = float(
        (model.in_focus_offset(DEPTH + h) - model.in_focus_offset(DEPTH - h)) / (2 * h)
    )
    np.testing.assert_allclose(got["sigma_x_um"], ref.sigma_x_um, rtol=1e-3)
    np.testing.assert_allclose(got["sigma_y_um"], ref.sigma_y_um, rtol=1e-3)
    np.testing.assert_allclose(got["sigma_z_um"], ref.sigma_z_um * slope, rtol=1e-3)


def test_refuses_too_few_or_dim_beads() -> None:
    args, pos = render_beads(MIN_BEADS - 1, seed=2)
    with pytest.raises(PSFFitError, match=f"at least {MIN_BEADS} beads"):
        fit_beads(
            *args,
            pos,
            optics=Optics(),
            plane_offset_um=DELTA,
            camera=CAMERA,
            config=CONFIG,
        )
    args, pos = render_beads(MIN_BEADS, seed=2, photons=150.0, background=2.0)
    with pytest.raises(PSFFitError, match=f"need {MIN_PHOTONS:.0f}"):
        fit_beads(
            *args,
            pos,
            optics=Optics(),
            plane_offset_um=DELTA,
            camera=CAMERA,
            config=CONFIG,
        )


@pytest.mark.slow
def test_refuses_when_not_converged() -> None:
    args, pos = render_beads(MIN_BEADS, seed=4)
    cfg = CONFIG.model_copy(update={"max_iter": 3})
    with pytest.raises(PSFFitError, match="did not converge within 3 L-BFGS"):
        fit_beads(
            *args,
            pos,
            optics=Optics(),
            plane_offset_um=DELTA,
            camera=CAMERA,
            config=cfg,
        )


@pytest.mark.slow
def test_calibrate_cli_fits_psfmodels_beads(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate --from psfmodels stacks: the fit runs by default, is stored,
    shown by info and the report, and carried into the bundle by train."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("psfmodels")
    import zarr
    from psf_import import DELTA_UM, PIXEL_UM, STEP_UM, render

    import axialtrack.optics.fit as fitmod
    from axialtrack.calibrate.psf import read_psf
    from axialtrack.cli import main

    # the tests' fast settings for the fit the command runs
    monkeypatch.setattr(
        fitmod,
        "FitConfig",
        lambda: FitConfig(pupil_samples=32, oversample=2, max_frames=7, max_beads=8),
    )
    rendered = render(2, mirror="none", seed=3)
    for f in range(2):
        tifffile.imwrite(tmp_path / f"f{f}.tif", rendered.raw[f])
    out = tmp_path / "cal.zarr"
    argv = [
        "calibrate",
        "--from",
        str(tmp_path / "f*.tif"),
        "--out",
        str(out),
        "--layout",
        "side-by-side",
        "--z-step",
        str(STEP_UM),
        "--z-start",
        str(rendered.stage_z_um[0]),
        "--plane-offset",
        str(DELTA_UM),
        "--pixel-size",
        str(PIXEL_UM),
        "--na",
        "1.3",
        "--wavelength",
        "0.6",
        "--n-immersion",
        "1.515",
        "--n-sample",
        "1.515",
        "--report",
        "--no-progress",
    ]
    assert main(argv) == 0
    fit = read_psf(out)
    assert fit is not None
    assert fit.converged
    assert fit.optics.na == 1.3
    # psfmodels' pupil carries no aberration: every coefficient small
    worst = max(abs(v) for v in fit.zernike.values())
    print(f"largest fitted Zernike {worst:.4f} waves, {fit.time_s:.0f} s")
    assert worst < 0.02
    assert abs(fit.plane_offset_um - DELTA_UM) < 0.03
    qc = zarr.open_group(out, mode="r").attrs["axialtrack_calibration"]
    assert qc["psf_fit"]["n_beads"] == 8
    assert len(qc["psf_fit"]["crlb"]["sigma_z_nm"]) == 9
    report = tmp_path / "cal-report"
    for name in ("psf_slices", "psf_residuals", "psf_zernike", "psf_crlb"):
        assert (report / f"{name}.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PSF fit" in text
    assert "CRLB z (nm) per dz" in text


def test_psf_for_bundle_returns_the_fitted_psf(tmp_path) -> None:
    from types import SimpleNamespace

    from axialtrack.optics import psf_for_bundle

    fit = plain_fit({5: 0.05, 7: -0.03})
    bundle = SimpleNamespace(
        path=tmp_path / "m.axialmodel",
        meta={"psf_fit": fit.to_json(), "z_range_um": [-0.2, 0.2]},
    )
    psf = psf_for_bundle(bundle)
    assert psf.transmission[1] == pytest.approx(0.9)
    xyz = np.array([[0.0, 0.0, 0.1], [0.0, 0.0, -0.2]])  # on the sampled grid
    h, _dh, ok = psf.evaluate(xyz, 11)
    assert ok.all()
    want = fit.renderer(11)(xyz)
    np.testing.assert_allclose(h, want, atol=2e-3 * want.max())
    # the astigmatism is in it: the nominal PSF is rotationally symmetric
    asym = np.abs(h[0, 0] - h[0, 0].T).max() / h[0, 0].max()
    assert asym > 0.02


def test_train_carries_fit_and_evaluate_uses_its_crlb(tmp_path) -> None:
    import zarr

    from axialtrack.calibrate.examples import Examples, save_examples
    from axialtrack.calibrate.psf import write_psf
    from axialtrack.model import (
        evaluate,
        load_bundle,
        load_calibration,
        save_bundle,
        train,
    )

    fit = plain_fit({6: 0.03})
    args, _pos = render_beads(6, seed=3)
    crops, stage, bead, refz = args
    n = len(bead)
    ex = Examples(
        crops=crops,
        dz_um=refz - stage,
        stage_z_um=stage,
        ref_z_um=refz,
        xy_norm=np.zeros((n, 2)),
        bead=bead,
        field=np.zeros(n, np.int64),
        split=np.where(bead < 4, 0, np.where(bead == 4, 1, 2)).astype(np.int8),
    )
    store = tmp_path / "cal.zarr"
    root = zarr.open_group(str(store), mode="w")
    save_examples(root, ex)
    write_psf(fit, root, dz_range_um=0.3)
    data = load_calibration(store)
    assert data.psf_fit is not None
    res = train(data, steps=2, batch_size=8, progress=False)
    from sim_model import SIM_RIG

    bundle = load_bundle(save_bundle(res, tmp_path / "m", **SIM_RIG))
    back = bundle.psf_fit
    assert back is not None
    assert back.zernike == fit.zernike
    assert back.transmission == fit.transmission
    # evaluate: no simulation truth, so the bound is the fitted model's
    ev = evaluate(bundle, store, split=None, bin_width_um=0.4)
    assert ev.summary["crlb"]["source"] == "fitted PSF"
    assert ev.summary["crlb"]["photons"] == 2000.0
    want = fit_crlb(
        fit,
        ev.bins["dz_center_um"].to_numpy(),
        photons=2000.0,
        background=[10.0, 9.0],
    )
    np.testing.assert_allclose(ev.bins["crlb_nm"], want["sigma_z_um"] * 1e3)
    assert np.isfinite(ev.bins["ratio"]).all()


def test_calibrate_refuses_a_fit_that_does_not_converge(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("psfmodels")
    from psf_import import DELTA_UM, PIXEL_UM, STEP_UM, render

    import axialtrack.optics.fit as fitmod
    from axialtrack.cli import main

    monkeypatch.setattr(
        fitmod,
        "FitConfig",
        lambda: FitConfig(
            pupil_samples=32, oversample=2, max_frames=5, max_beads=6, max_iter=2
        ),
    )
    rendered = render(1, mirror="none", seed=5)
    tifffile.imwrite(tmp_path / "f.tif", rendered.raw[0])
    out = tmp_path / "cal.zarr"
    argv = [
        "calibrate",
        "--from",
        str(tmp_path / "f.tif"),
        "--out",
        str(out),
        "--layout",
        "side-by-side",
        "--z-step",
        str(STEP_UM),
        "--z-start",
        str(rendered.stage_z_um[0]),
        "--plane-offset",
        str(DELTA_UM),
        "--pixel-size",
        str(PIXEL_UM),
        "--na",
        "1.3",
        "--wavelength",
        "0.6",
        "--n-immersion",
        "1.515",
        "--n-sample",
        "1.515",
        "--no-progress",
    ]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PSF fit refused" in err
    assert "did not converge within 2 L-BFGS iterations" in err
    assert "--no-psf-fit" in err
    assert not out.exists()  # nothing written


def test_calibrate_refuses_invalid_optics(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from axialtrack.cli import main

    out = tmp_path / "cal.zarr"
    rc = main(["calibrate", "--out", str(out), "--na", "1.6", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--na" in err
    assert not out.exists()

"""Training examples rendered from a calibrated PSF: photon budget, the precision
a network trained on them alone reaches, the crowding flag, the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from axialtrack.calibrate.examples import Examples
from axialtrack.model import CalibrationData, ModelConfig, predict, train
from axialtrack.optics import Optics, PSFModel
from axialtrack.optics.fit import PSFFit
from axialtrack.optics.sampled import SampledPSF
from axialtrack.sim.synthetic import (
    Distribution,
    SyntheticConfig,
    SyntheticExamples,
    SyntheticRenderer,
    psf_for_calibration,
)

FAST = {"pupil_samples": 32, "oversample": 2}
CAMERA = {
    "offset_adu": 300.0,
    "e_per_adu": 1.8,
    "qe": 0.85,
    "read_noise_e": 1.4,
    "bit_depth": 16,
}


def fixed(photons: float, background: float, **kw: object) -> SyntheticConfig:
    """Emitters of one brightness on one background, no neighbours."""
    base: dict[str, object] = {
        "photons": Distribution(kind="uniform", low=photons, high=photons),
        "background": Distribution(kind="uniform", low=background, high=background),
        "plane1_background_ratio": (1.0, 1.0),
        "neighbours_mean": 0.0,
    }
    base.update(kw)
    return SyntheticConfig(**base)  # type: ignore[arg-type]


def aberrated_fit() -> PSFFit:
    """A fitted pupil with astigmatism, spherical aberration and plane-1 loss."""
    optics = Optics(**FAST)
    f0 = float(PSFModel(optics).in_focus_offset(0.05))
    return PSFFit(
        optics=optics,
        phase_noll=(5, 6, 11),
        plane1_noll=(5,),
        amplitude_noll=(4,),
        zernike={5: 0.04, 6: -0.02, 11: 0.03},
        plane1_zernike={5: 0.01},
        amplitude={4: 0.0},
        depth_um=0.05,
        plane_offset_um=0.5,
        transmission=0.8,
        plane1_shift_um=(0.0, 0.0),
        focus_dz0_um=f0,
        crop_size=15,
        beads=pd.DataFrame(
            {
                "bead": np.arange(3),
                "photons": np.full(3, 5000.0),
                "background0": np.full(3, 10.0),
                "background1": np.full(3, 9.0),
                "used": np.ones(3, bool),
                "outlier": np.zeros(3, bool),
            }
        ),
        converged=True,
        n_iter=0,
        time_s=0.0,
    )


@pytest.fixture(scope="module")
def fit_psf() -> tuple[PSFFit, SampledPSF]:
    fit = aberrated_fit()
    psf = psf_for_calibration(
        psf_fit=fit.to_json(),
        optics=None,
        plane_offset_um=0.5,
        dz_range_um=(-0.7, 0.7),
    )
    return fit, psf


def test_examples_carry_the_fitted_models_photon_budget(fit_psf) -> None:
    """Photons above background in each plane of the rendered ADU crops equal
    photons x transmission x the fitted PSF's enclosed fraction, and the mean
    image is the fitted model's."""
    fit, psf = fit_psf
    r = SyntheticRenderer(psf, CAMERA, fixed(3000.0, 10.0, dz_range_um=(-0.6, 0.6)))
    ex = r.render(600, 0)
    px = fit.optics.pixel_size_um
    xyz = np.column_stack([ex.dxy_px * px, ex.dz_um])
    with torch.no_grad():
        h = fit.render(xyz, 15, dtype=torch.float64).numpy()
    gain = CAMERA["e_per_adu"] / CAMERA["qe"]
    photons = (ex.crops.astype(float) - CAMERA["offset_adu"]) * gain  # (N, 2, S, S)
    signal = photons.sum(axis=(2, 3)) - 15 * 15 * 10.0
    expected = 3000.0 * np.array([1.0, fit.transmission]) * h.sum(axis=(2, 3))
    # the plane budget to 1 % (the mean's noise is ~0.1 %)
    np.testing.assert_allclose(signal.mean(axis=0), expected.mean(axis=0), rtol=0.01)
    assert signal[:, 1].mean() / signal[:, 0].mean() == pytest.approx(
        (expected[:, 1] / expected[:, 0]).mean(), rel=0.02
    )
    # pixel by pixel: the residual of each example against the fitted model is
    # shot + read noise (chi^2 per pixel ~ 1), not a model mismatch
    mu = 3000.0 * np.array([1.0, fit.transmission])[None, :, None, None] * h + 10.0
    read = (CAMERA["read_noise_e"] / CAMERA["qe"]) ** 2
    var = mu / CAMERA["qe"] + read + gain**2 / 12
    chi2 = ((photons - mu) ** 2 / var).mean()
    assert chi2 == pytest.approx(1.0, abs=0.03)


def test_neighbours_overlapping_and_flagged(fit_psf) -> None:
    """Neighbours are uniform in area within the radius (overlapping ones
    included); the flag is the stated share of the centre's light."""
    _, psf = fit_psf
    cfg = fixed(2000.0, 5.0, neighbours_mean=1.0, neighbour_radius_px=12.0)
    ex = SyntheticRenderer(psf, CAMERA, cfg).render(3000, 1)
    assert ex.n_neighbours.mean() == pytest.approx(1.0, abs=0.06)
    has = ex.n_neighbours == 1
    d = ex.nearest_px[has]
    # uniform in area: P(r < R/2) = 1/4, and some overlap (< 2 px)
    assert (d < 6.0).mean() == pytest.approx(0.25, abs=0.03)
    assert (d < 2.0).mean() > 0.01
    assert not ex.contaminated[ex.n_neighbours == 0].any()
    np.testing.assert_array_equal(ex.contaminated, ex.neighbour_fraction >= 0.1)
    # a neighbour within 4 px always contaminates, one at the rim less often
    c = ex.contaminated[has]
    assert c[d < 4].all()
    assert c[d > 11].mean() < 0.8 * c[(d > 6) & (d < 9)].mean()


def test_dz_outside_the_psf_refused(fit_psf) -> None:
    _, psf = fit_psf
    with pytest.raises(ValueError, match="outside the PSF"):
        SyntheticRenderer(psf, CAMERA, fixed(1.0, 1.0, dz_range_um=(-2.0, 0.5)))


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


@pytest.fixture(scope="module")
def known_psf() -> SampledPSF:
    """The nominal pupil, sampled: the PSF the renderer and the CRLB share."""
    return SampledPSF.from_model(
        PSFModel(Optics(**FAST)),
        (0.0, 0.5),
        z_um=np.round(np.arange(-0.9, 0.9 + 1e-9, 0.02), 10),
        size=15,
    )


def _data(psf: SampledPSF, cfg: SyntheticConfig) -> CalibrationData:
    """Rendered validation examples standing in for held-out beads."""
    r = SyntheticRenderer(psf, CAMERA, cfg)
    va = _examples(r.render(300, 11), 1)
    tr = _examples(r.render(8, 12), 0)
    return CalibrationData(
        examples=Examples(
            **{
                k: np.concatenate([getattr(tr, k), getattr(va, k)])
                for k in tr.__dataclass_fields__
            }
        )
    )


def test_synthetic_only_training_reaches_the_bound(known_psf) -> None:
    """A network trained only on examples rendered from an exactly known PSF
    reads isolated emitters with a precision near the CRLB of that PSF."""
    torch.set_num_threads(1)
    cfg = fixed(2000.0, 10.0, dz_range_um=(-0.6, 0.6), crop_size=11)
    train_syn = SyntheticRenderer(known_psf, CAMERA, cfg).render(6000, 0)
    res = train(
        _data(known_psf, cfg),
        config=ModelConfig(crop_size=11),
        steps=700,
        synthetic=train_syn,
        synthetic_fraction=1.0,
        augmentation=False,
        recalibrate=False,
        progress=False,
    )
    r = SyntheticRenderer(known_psf, CAMERA, cfg)
    zs = np.round(np.arange(-0.5, 0.5 + 1e-9, 0.2), 3)
    ratios, biases = [], []
    crlb = known_psf.crlb(
        zs, photons=2000.0, background=10.0, size=11, read_noise=1.4 / 0.85
    )
    for i, z in enumerate(zs):
        r.dz_range_um = (z - 1e-6, z + 1e-6)
        test = r.render(200, 100 + i)
        err = predict(res.model, test.crops, test.xy_norm)[:, 0] - z
        ratios.append(err.std() / crlb.sigma_z_um[i])
        biases.append(abs(err.mean()) / crlb.sigma_z_um[i])
    # fast settings (700 steps): a loose bound; the network is not told the PSF
    assert np.median(ratios) < 2.0, ratios
    assert np.median(biases) < 1.0, biases


def test_crowding_flag_recall_and_precision(known_psf) -> None:
    """The contamination head flags crops holding another emitter's light and
    still reads the centre emitter's dz."""
    torch.set_num_threads(1)
    cfg = SyntheticConfig(
        crop_size=11,
        dz_range_um=(-0.6, 0.6),
        photons=Distribution(kind="loguniform", low=1000.0, high=4000.0),
        background=Distribution(kind="uniform", low=5.0, high=20.0),
        neighbours_mean=1.0,
        neighbour_radius_px=10.0,
    )
    syn = SyntheticRenderer(known_psf, CAMERA, cfg).render(6000, 0)
    res = train(
        _data(known_psf, cfg.model_copy(update={"neighbours_mean": 0.0})),
        config=ModelConfig(crop_size=11, contamination=True),
        steps=500,
        synthetic=syn,
        synthetic_fraction=1.0,
        augmentation=False,
        recalibrate=False,
        progress=False,
    )
    assert res.config.output_names == ["dz_um", "contamination"]
    test = SyntheticRenderer(known_psf, CAMERA, cfg).render(1500, 7)
    out = predict(res.model, test.crops, test.xy_norm)
    flag = out[:, 1] > 0.5
    truth = test.contaminated
    recall = (flag & truth).sum() / truth.sum()
    precision = (flag & truth).sum() / max(flag.sum(), 1)
    alone = test.n_neighbours == 0
    close = test.nearest_px < 5
    err = (out[:, 0] - test.dz_um) * 1000
    rmse_clean = float(np.sqrt(np.mean(err[~truth] ** 2)))
    rmse_flagged = float(np.sqrt(np.mean(err[truth] ** 2)))
    print(
        f"crowding flag: recall {recall:.3f} precision {precision:.3f}; flagged "
        f"{flag[alone].mean():.3f} of crops alone, {flag[close].mean():.3f} of "
        f"crops with a neighbour < 5 px; dz RMSE {rmse_clean:.1f} nm clean, "
        f"{rmse_flagged:.1f} nm contaminated"
    )
    assert 0.2 < truth.mean() < 0.8
    # the label (another emitter's light >= 10 % of the centre's) is fuzzy near
    # its threshold; the clear cases are clearer (fast settings: 500 steps)
    assert recall > 0.7, recall
    assert precision > 0.75, precision
    assert flag[alone].mean() < 0.35
    assert flag[close].mean() > 0.8
    # dz of the centre emitter still read in flagged and clean crops
    assert rmse_clean < 60
    assert rmse_flagged < 150


def test_physics_loss_lowers_the_likelihood_term(known_psf) -> None:
    """With the physics-informed term, the crops' Poisson deviance under the PSF
    at the predicted dz falls during training, and on held-out crops ends near
    its value at the true dz."""
    from axialtrack.model import physics_deviance
    from axialtrack.pipeline.config import CameraCalibration

    torch.set_num_threads(1)
    cfg = fixed(2000.0, 10.0, dz_range_um=(-0.6, 0.6), crop_size=11)
    syn = SyntheticRenderer(known_psf, CAMERA, cfg).render(3000, 0)
    data = _data(known_psf, cfg)
    data.camera = dict(CAMERA)
    kw = {
        "config": ModelConfig(crop_size=11),
        "steps": 250,
        "synthetic": syn,
        "synthetic_fraction": 1.0,
        "augmentation": False,
        "recalibrate": False,
        "progress": False,
    }
    phys = train(data, physics_weight=0.005, physics_psf=known_psf, **kw)
    dev = [h["train_deviance"] for h in phys.history]
    assert dev[-1] < 0.5 * dev[0], dev
    # held out: the model's dz lies where the deviance is near its floor
    test = SyntheticRenderer(known_psf, CAMERA, cfg).render(400, 5)
    cam = CameraCalibration.model_validate(CAMERA)
    dz = torch.as_tensor(predict(phys.model, test.crops, test.xy_norm)[:, 0])
    args = (torch.as_tensor(test.dxy_px), torch.as_tensor(test.crops), known_psf, cam)
    d_pred = float(physics_deviance(dz, *args).mean())
    d_true = float(physics_deviance(torch.as_tensor(test.dz_um), *args).mean())
    d_off = float(physics_deviance(torch.as_tensor(test.dz_um) + 0.2, *args).mean())
    print(f"held-out deviance per pixel: predicted dz {d_pred:.4f}, true {d_true:.4f}")
    assert d_pred < d_true + 0.25 * (d_off - d_true)


@pytest.fixture(scope="module")
def calib_store(tmp_path_factory):
    """A small simulated calibration run store recording its nominal optics."""
    import sys
    from pathlib import Path

    import zarr

    from axialtrack.calibrate import analyze, write_qc, write_rig
    from axialtrack.optics.sampled import optics_record
    from axialtrack.pipeline.config import CameraCalibration

    sys.path.insert(0, str(Path(__file__).parent))
    from calib_sim import make_stack

    stack = make_stack(n_fields=2, z_half_range_um=1.0, seed=3)
    result = analyze(stack)
    store = tmp_path_factory.mktemp("syn") / "calib.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.attrs["axialtrack"] = {
        "rig": {"pixel_size_um": 0.108333, "optics": optics_record(Optics())},
        "splitter": {"plane_offset_um": 0.5, "layout": "side-by-side"},
    }
    write_qc(result, store)
    write_rig(result, result.stack, store, camera=CameraCalibration().model_dump())
    return store


def _cli(*argv: str) -> int:
    import argparse

    from axialtrack.model.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_train_synthetic(calib_store, tmp_path, capsys) -> None:
    from axialtrack.model import load_bundle

    out = tmp_path / "syn.axialmodel"
    rc = _cli(
        "train",
        str(calib_store),
        "--out",
        str(out),
        "--steps",
        "60",
        "--no-progress",
        "--synthetic",
        "500",
        "--synthetic-fraction",
        "0.5",
        "--photons",
        "500",
        "3000",
        "--contamination",
    )
    assert rc == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    assert "Rendered 500 synthetic examples" in text
    b = load_bundle(out)
    t = b.meta["training"]
    assert t["synthetic_examples"] == 500
    assert t["synthetic_fraction"] == 0.5
    assert t["synthetic"]["photons"] == "loguniform [500, 3000]"
    assert b.output_names == ["dz_um", "contamination"]


def test_cli_train_synthetic_refusals(calib_store, tmp_path, capsys) -> None:
    out = tmp_path / "x.axialmodel"
    base = ("train", str(calib_store), "--out", str(out), "--no-progress")
    assert _cli(*base, "--synthetic", "100", "--match", str(tmp_path / "no")) == 2
    assert "--match: no run store" in capsys.readouterr().err
    # no synthetic examples to learn the flag from
    assert _cli(*base, "--synthetic", "0", "--contamination") == 2
    assert _cli(*base, "--synthetic", "100", "--finetune", "10", "--contamination") == 2
    assert not out.exists()


def test_match_run_draws_the_runs_photons_and_background(tmp_path) -> None:
    from axialtrack.sim.synthetic import match_run
    from axialtrack.store import RunWriter

    rng = np.random.default_rng(0)
    n = 400
    photons = rng.lognormal(np.log(1500.0), 0.4, n)
    background = rng.uniform(5.0, 15.0, n)
    w = RunWriter(
        tmp_path / "live.zarr", kind="live", plane_shape=(8, 8), pixel_size_um=0.1
    )
    w.append_frame(np.zeros((2, 8, 8), np.uint16), {"t_s": 0.0})
    w.append_localizations(
        {
            "frame": np.zeros(n, np.int64),
            "t_s": np.zeros(n),
            "x_um": np.zeros(n),
            "y_um": np.zeros(n),
            "z_um": np.zeros(n),
            "dz_um": np.zeros(n),
            "photons": np.concatenate([photons[:-2], [np.nan, -5.0]]),
            "background": background,
        }
    )
    w.close()
    ph, bg = match_run(tmp_path / "live.zarr")
    assert ph.kind == bg.kind == "empirical"
    assert len(ph.values or []) == n - 2  # NaN and negative photons dropped
    draw = ph.sample(np.random.default_rng(1), 20000)
    assert np.median(draw) == pytest.approx(np.median(photons[:-2]), rel=0.03)
    assert np.percentile(draw, 90) == pytest.approx(
        np.percentile(photons[:-2], 90), rel=0.05
    )
    assert bg.sample(np.random.default_rng(2), 5000).mean() == pytest.approx(
        10.0, rel=0.03
    )
    with pytest.raises(ValueError, match="at least 1000"):
        match_run(tmp_path / "live.zarr", min_rows=1000)


def test_cli_train_mixes_synthetic_pairs_by_default(calib_store, tmp_path) -> None:
    """A calibration with a PSF gets the default mix; --synthetic 0 does not."""
    from axialtrack.model import DEFAULT_SYNTHETIC, load_bundle

    base = ("train", str(calib_store), "--no-progress", "--steps", "5")
    assert _cli(*base, "--out", str(tmp_path / "d.axialmodel")) == 0
    t = load_bundle(tmp_path / "d.axialmodel").meta["training"]
    assert t["synthetic_examples"] == DEFAULT_SYNTHETIC
    assert t["synthetic_fraction"] == 0.5
    assert _cli(*base, "--synthetic", "0", "--out", str(tmp_path / "b.axialmodel")) == 0
    t = load_bundle(tmp_path / "b.axialmodel").meta["training"]
    assert t["synthetic_examples"] == 0

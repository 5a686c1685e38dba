"""Tests of the axial localization model: training, evaluation, bundle, ONNX."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from axialtrack.calibrate import analyze, write_qc
from axialtrack.model import (
    AxialNet,
    BundleError,
    CalibrationData,
    CRLBSpec,
    ModelConfig,
    PairNormalization,
    evaluate,
    load_bundle,
    predict,
    save_bundle,
    subpixel_targets,
    train,
)
from axialtrack.model.cli import add_parsers

sys.path.insert(0, str(Path(__file__).parent))
from calib_sim import make_stack

#: Held-out RMSE a short CI training must reach (the full training reaches ~45 nm).
RMSE_THRESHOLD_NM = 100.0
PIXEL = 0.108333


@pytest.fixture(scope="module")
def calib() -> tuple[object, CalibrationData]:
    stack = make_stack(n_fields=2, z_half_range_um=1.2, seed=3)
    result = analyze(stack)
    data = CalibrationData.from_result(result, stack)
    return result, data


@pytest.fixture(scope="module")
def trained(calib):
    _, data = calib
    # short CI training: a fast-moving weight average
    return train(
        data,
        epochs=25,
        batch_size=64,
        patience=8,
        seed=0,
        progress=False,
        ema_decay=0.95,
    )


@pytest.fixture(scope="module")
def bundle_path(trained, tmp_path_factory) -> Path:
    return save_bundle(trained, tmp_path_factory.mktemp("b") / "bead")


def test_training_reaches_rmse(calib, trained, tmp_path):
    assert trained.metrics["test_rmse_nm"] < RMSE_THRESHOLD_NM
    assert trained.history
    assert trained.best_epoch >= 1
    _, data = calib
    spec = CRLBSpec(plane_offset_um=0.5, photons=1600, background=8, roi_size=15)
    res = evaluate(trained.model, data, "test", out=tmp_path, crlb=spec)
    s = res.summary
    assert s["reference"] == "truth"
    assert s["rmse_nm"] < RMSE_THRESHOLD_NM
    assert 0 < s["frac_within_50nm"] <= 1
    assert {"bias_nm", "precision_nm", "crlb_nm", "ratio"} <= set(res.bins.columns)
    assert np.all(res.bins["crlb_nm"] > 0)
    for name in ("pred_vs_true.png", "error_hist.png", "precision.png", "eval.json"):
        assert (tmp_path / name).stat().st_size > 0
    json.loads((tmp_path / "eval.json").read_text())


def test_onnx_parity(calib, bundle_path):
    import onnxruntime as ort

    _, data = calib
    ex = data.examples.subset("test")
    b = load_bundle(bundle_path)
    sess = ort.InferenceSession(str(b.onnx_path), providers=["CPUExecutionProvider"])
    feeds = {
        "image": ex.crops[:100].astype(np.float32),
        "xy": ex.xy_norm[:100].astype(np.float32),
    }
    got = sess.run(None, feeds)[0]
    ref = predict(b.model, feeds["image"], feeds["xy"])
    assert got.shape == (100, 1)
    assert np.max(np.abs(got - ref)) < 1e-4
    one = sess.run(None, {k: v[:1] for k, v in feeds.items()})[0]  # dynamic batch
    assert one.shape == (1, 1)
    import onnx

    m = onnx.load(str(b.onnx_path))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not list(b.path.glob("*.data"))


def test_bundle_roundtrip(calib, trained, bundle_path):
    _, data = calib
    ex = data.examples.subset("test")
    b = load_bundle(
        bundle_path,
        expect_pixel_size_um=PIXEL,
        expect_plane_offset_um=0.5,
        expect_crop_size=15,
    )
    np.testing.assert_array_equal(
        b.predict(ex.crops, ex.xy_norm), predict(trained.model, ex.crops, ex.xy_norm)
    )
    meta = b.meta
    assert meta["format_version"] == 1
    assert meta["crop_size"] == 15
    assert meta["plane_offset_um"] == pytest.approx(0.5)
    assert meta["pixel_size_um"] == pytest.approx(PIXEL, rel=1e-3)
    assert meta["layout"] == "side-by-side"
    assert len(meta["provenance"]["examples_sha256"]) == 64
    assert meta["training"]["metrics"]["test_rmse_nm"] < RMSE_THRESHOLD_NM
    assert meta["outputs"] == ["dz_um"]
    with pytest.raises(FileExistsError):
        save_bundle(trained, bundle_path)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"expect_plane_offset_um": 0.75}, ["plane offset", "0.5", "0.75"]),
        ({"expect_pixel_size_um": 0.065}, ["pixel size", "0.108333", "0.065"]),
        ({"expect_crop_size": 21}, ["crop size", "15", "21"]),
    ],
)
def test_mismatched_bundle_refused(bundle_path, kwargs, words):
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_path, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_within_tolerance_accepted(bundle_path):
    load_bundle(
        bundle_path, expect_pixel_size_um=PIXEL * 1.005, expect_plane_offset_um=0.504
    )


@pytest.mark.parametrize("name", ["weights.pt", "model.onnx"])
def test_corrupted_file_refused(bundle_path, tmp_path, name):
    copy = tmp_path / "c.axialmodel"
    shutil.copytree(bundle_path, copy)
    with (copy / name).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{name} is corrupted"):
        load_bundle(copy)
    (copy / name).unlink()
    with pytest.raises(BundleError, match=f"{name} is missing"):
        load_bundle(copy)


def test_unknown_format_version_refused(bundle_path, tmp_path):
    copy = tmp_path / "v.axialmodel"
    shutil.copytree(bundle_path, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["format_version"] = 99
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def _small(calib):
    result, data = calib
    ex = data.examples
    keep = np.zeros(len(ex), bool)
    for code in (0, 1, 2):
        keep[np.flatnonzero(ex.split == code)[:96]] = True
    sub = type(ex)(**{k: v[keep] for k, v in vars(ex).items()})
    return CalibrationData(examples=sub, beads=result.beads)


def test_determinism_and_heads(calib):
    data = _small(calib)
    cfg = ModelConfig(uncertainty=True, subpixel=True)
    runs = [
        train(data, config=cfg, epochs=1, seed=s, progress=False) for s in (5, 5, 6)
    ]
    a, b, c = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert runs[0].loss == "nll"
    assert runs[0].metrics["subpixel_targets"]
    out = predict(runs[0].model, data.examples.crops[:8], data.examples.xy_norm[:8])
    assert out.shape == (8, 4)
    assert np.all(out[:, 1] > 0)  # sigma_z
    with pytest.raises(ValueError, match="nll"):
        train(data, config=ModelConfig(), loss="nll", epochs=1, progress=False)


def test_subpixel_targets(calib):
    result, data = calib
    t = subpixel_targets(data.examples, result.beads)
    assert t is not None
    assert t.shape == (len(data.examples), 2)
    assert np.all(np.abs(t) <= 0.5 + 1e-9)
    assert subpixel_targets(data.examples, None) is None


def test_normalization_keeps_plane_ratio():
    norm = PairNormalization(15, channels=2, percentile=10)
    g = torch.Generator().manual_seed(0)
    x = 100 + 50 * torch.rand(3, 2, 15, 15, generator=g)
    x[:, 0, 7, 7] += 1000
    x[:, 1, 7, 7] += 400
    y = norm(x)
    torch.testing.assert_close(norm(3 * x + 40), y, rtol=1e-4, atol=1e-4)
    ratio = (y[:, 0, 7, 7]) / (y[:, 1, 7, 7])
    bg = torch.topk(x.flatten(1), 45, dim=1, largest=False).values[:, -1]
    want = (x[:, 0, 7, 7] - bg) / (x[:, 1, 7, 7] - bg)
    torch.testing.assert_close(ratio, want, rtol=1e-5, atol=1e-5)
    single = AxialNet(ModelConfig(channels=1, field_branch=False)).eval()
    x2 = x.clone()
    x2[:, 1] = 0
    with torch.no_grad():
        torch.testing.assert_close(single(x), single(x2))


def test_cli_train_evaluate(calib, tmp_path):
    result, _ = calib
    store = tmp_path / "calib.zarr"
    import zarr

    root = zarr.open_group(str(store), mode="w")
    root.attrs["axialtrack"] = {
        "rig": {"pixel_size_um": PIXEL},
        "splitter": {"plane_offset_um": 0.5, "layout": "side-by-side"},
    }
    write_qc(result, store)
    # what `axialtrack calibrate` records of the rig (camera, mirror, plane shape)
    from axialtrack.calibrate import write_rig
    from axialtrack.pipeline.config import CameraCalibration

    write_rig(result, result.stack, store, camera=CameraCalibration().model_dump())
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    out = tmp_path / "m.axialmodel"
    args = parser.parse_args(
        [
            "train",
            str(store),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--no-progress",
            "--lr-schedule",
            "cosine",
            "--recalibrate",
            "--recalibrate-dz-max",
            "0.5",
        ]
    )
    assert args.func(args) == 0
    b = load_bundle(out, expect_plane_offset_um=0.5, expect_pixel_size_um=PIXEL)
    t = b.meta["training"]
    assert t["lr_schedule"] == "cosine"
    assert t["recalibrate_dz_max_um"] == 0.5
    # the fit used only the validation examples with |dz| <= 0.5 um
    va = result.examples.subset("validation")
    n_fit = int((np.abs(va.dz_um) <= 0.5 + 1e-9).sum())
    assert 0 < t["metrics"]["recalibration"]["n"] == n_fit < len(va)
    assert b.meta["provenance"]["calibration_run"] == str(store.resolve())
    # the live pipeline crops plane 1 through the calibration's registration
    np.testing.assert_allclose(b.registration_affine, result.registration.affine)
    assert args.func(args) == 2  # exists, no --overwrite
    ev = tmp_path / "eval"
    args = parser.parse_args(
        ["evaluate", str(out), str(store), "--out", str(ev), "--no-crlb"]
    )
    assert args.func(args) == 0
    assert (ev / "precision.png").exists()

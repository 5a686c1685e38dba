"""Tests of the calibration analysis (simulated bead stacks with known truth)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from axialtrack.calibrate import (
    CalibrationDataset,
    CalibrationError,
    CalibrationStack,
    analyze,
    load_examples,
    read_beads,
    save_examples,
    split_by_bead,
    write_qc,
    write_report,
)
from axialtrack.geometry import apply_affine

sys.path.insert(0, str(Path(__file__).parent))
from calib_sim import SIM_GEOMETRY, make_stack


@pytest.fixture(scope="module")
def stack() -> CalibrationStack:
    return make_stack(n_fields=2, n_beads=25, seed=0)


@pytest.fixture(scope="module")
def result(stack: CalibrationStack):  # type: ignore[no-untyped-def]
    return analyze(stack)


def test_registration_recovers_injected_affine(stack, result) -> None:  # type: ignore[no-untyped-def]
    reg = result.registration
    true = SIM_GEOMETRY.plane1_affine(stack.plane_shape)
    h, w = stack.plane_shape
    grid = np.stack(
        np.meshgrid(np.linspace(0, w - 1, 16), np.linspace(0, h - 1, 16)), -1
    )
    grid = grid.reshape(-1, 2)
    err = np.linalg.norm(
        apply_affine(reg.affine, grid) - apply_affine(true, grid), axis=1
    )
    err_nm = err * stack.pixel_size_um * 1e3
    assert err_nm.max() < 20.0
    assert abs(reg.rotation_deg - SIM_GEOMETRY.rotation_deg) < 0.1
    assert reg.n_matched >= 30
    assert reg.residual_nm < 20.0


def test_reference_z_accuracy(result) -> None:  # type: ignore[no-untyped-def]
    truth = result.qc["truth"]
    assert truth["n_matched"] >= 40
    # both methods are reported; the default must be within 15 nm RMS
    assert truth["rms_mean_nm"] is not None
    assert truth["rms_msd_nm"] is not None
    default = truth[f"rms_{result.method}_nm"]
    assert default < 15.0
    b = result.beads[result.beads["status"] == "accepted"]
    assert np.all(b["sigma_ref_z_um"] > 0)
    assert np.all(np.isfinite(b["z_mean_um"]))
    assert np.all(np.isfinite(b["z_msd_um"]))


def test_auto_method_surface_vs_volume(result) -> None:  # type: ignore[no-untyped-def]
    """Beads on the glass: 'msd'; beads at 0.05-1.2 um depth: 'mean' (msd fails)."""
    from axialtrack.calibrate.simulate import simulated_stack

    assert result.method == "msd"
    assert result.qc["ref_z"]["focus_spread_um"] < 0.25
    vol = analyze(
        simulated_stack(n_fields=2, z_half_range_um=1.2, seed=3, depth_um=(0.05, 1.2))
    )
    ref = vol.qc["ref_z"]
    assert ref["requested"] == "auto"
    assert ref["method"] == "mean"
    assert ref["focus_spread_um"] > 0.5
    assert "volume sample" in ref["auto_reason"]
    truth = vol.qc["truth"]
    assert truth["rms_mean_nm"] < 25.0
    # what 'msd' would have given on this stack (why auto avoids it)
    assert truth["rms_msd_nm"] > 4 * truth["rms_mean_nm"]


def test_examples_split_by_bead(result) -> None:  # type: ignore[no-untyped-def]
    ex = result.examples
    assert len(ex) > 0
    assert ex.crops.shape[1:] == (2, 15, 15)
    assert ex.crops.dtype == np.float32
    assert np.all(np.abs(ex.dz_um) <= 1.0 + 1e-9)
    np.testing.assert_allclose(ex.dz_um, ex.ref_z_um - ex.stage_z_um)
    assert np.all(np.abs(ex.xy_norm) <= 1.0)
    splits_of_bead: dict[int, set[int]] = {}
    for b, s in zip(ex.bead, ex.split, strict=True):
        splits_of_bead.setdefault(int(b), set()).add(int(s))
    assert all(len(v) == 1 for v in splits_of_bead.values())
    assert {0, 1, 2} == set(np.unique(ex.split).tolist())


def test_split_by_bead_fractions() -> None:
    m = split_by_bead(np.arange(100), (0.7, 0.15, 0.15), seed=3)
    counts = np.bincount(list(m.values()), minlength=3)
    assert counts.tolist() == [70, 15, 15]
    assert m == split_by_bead(np.arange(100), seed=3)


def test_dataset_returns_tensors(result) -> None:  # type: ignore[no-untyped-def]
    ds = CalibrationDataset(result.examples, split="train")
    img, xy, dz = ds[0]
    assert isinstance(img, torch.Tensor)
    assert img.shape == (2, 15, 15)
    assert img.dtype == torch.float32
    assert xy.shape == (2,)
    assert dz.shape == ()
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    bi, bxy, bdz = next(iter(loader))
    assert bi.shape == (16, 2, 15, 15)
    assert bxy.shape == (16, 2)
    assert bdz.shape == (16,)
    n_all = sum(
        len(CalibrationDataset(result.examples, s))
        for s in ("train", "validation", "test")
    )
    assert n_all == len(result.examples)


def test_store_roundtrip(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "run.zarr"
    write_qc(result, store, examples=False)
    assert "examples" not in zarr.open_group(str(store), mode="r")["calibration"]
    save_examples(store, result.examples)
    root = zarr.open_group(str(store), mode="r")
    qc = root.attrs["axialtrack_calibration"]
    assert qc["n_accepted"] == result.qc["n_accepted"]
    json.dumps(qc)
    np.testing.assert_allclose(
        root["calibration/registration/affine"][...], result.registration.affine
    )
    beads = read_beads(store)
    assert list(beads["reason"]) == list(result.beads["reason"])
    ex = load_examples(store)
    np.testing.assert_array_equal(ex.crops, result.examples.crops)
    np.testing.assert_array_equal(ex.split, result.examples.split)


def test_report(result, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_report(result, stack, tmp_path / "report")
    text = path.read_text()
    assert path.name == "report.html"
    assert len(re.findall(r"data:image/png;base64,", text)) >= 4
    assert "neighbour" in text


def test_exclusion_neighbours_and_saturation() -> None:
    st = make_stack(
        n_fields=1,
        n_beads=12,
        seed=5,
        extra_beads=[(60, 60, 0.05, 2e5), (66, 64, 0.05, 2e5), (130, 128, 0.05, 1e8)],
    )
    res = analyze(st)
    b = res.beads

    def row(x: float, y: float):  # type: ignore[no-untyped-def]
        d = np.hypot(b["x_px0"] - x, b["y_px0"] - y)
        assert d.min() < 1.0
        return b.loc[d.idxmin()]

    assert row(60, 60)["reason"] == "neighbour"
    assert row(66, 64)["reason"] == "neighbour"
    assert row(130, 128)["reason"] == "saturated"
    assert res.qc["rejected"]["neighbour"] >= 2
    assert res.qc["rejected"]["saturated"] >= 1
    assert (b["status"] == "accepted").sum() >= 5


def test_no_beads_raises() -> None:
    st = make_stack(n_fields=1, n_beads=0, seed=7)
    with pytest.raises(CalibrationError, match="no beads"):
        analyze(st)


def test_all_saturated_raises() -> None:
    st = make_stack(
        n_fields=1, n_beads=6, photons_per_s=1e8, seed=8, min_separation_um=4.0
    )
    with pytest.raises(CalibrationError, match="saturated"):
        analyze(st)


def test_bad_stage_z_raises(stack: CalibrationStack) -> None:
    z = stack.stage_z_um.copy()
    z[0, 10] = z[0, 9]
    bad = CalibrationStack(stack.frames, z, stack.pixel_size_um, stack.geometry)
    with pytest.raises(CalibrationError, match="field 0"):
        analyze(bad)
    short = CalibrationStack(
        stack.frames[:, :5],
        stack.stage_z_um[:, :5],
        stack.pixel_size_um,
        stack.geometry,
    )
    with pytest.raises(CalibrationError, match="Z step"):
        analyze(short)


def test_descending_stage_z_and_empty_field(stack: CalibrationStack) -> None:
    frames = np.concatenate([stack.frames[:1, ::-1], np.zeros_like(stack.frames[:1])])
    frames[1] = np.median(stack.frames[1])  # a field without beads
    z = np.concatenate([stack.stage_z_um[:1, ::-1], stack.stage_z_um[:1]])
    flipped = CalibrationStack(
        frames,
        z,
        stack.pixel_size_um,
        stack.geometry,
        truth=[stack.truth[0], stack.truth[0][:0]] if stack.truth else None,
        meta=stack.meta,
    )
    res = analyze(flipped)
    assert res.qc["per_field"][1]["detected"] == 0
    assert res.qc["truth"]["rms_msd_nm"] < 15.0
    assert res.qc["truth"]["rms_mean_nm"] < 15.0

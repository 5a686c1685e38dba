"""Accuracy-evaluation options: the matched CRLB and the ranged recalibration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from axialtrack.calibrate.examples import Examples
from axialtrack.model import (
    AxialNet,
    CRLBSpec,
    ModelConfig,
    crlb_stage_um,
    evaluate,
    predict,
)
from axialtrack.model._evaluate import matched_crlb_nm
from axialtrack.model._schedule import fold_affine_recalibration

SPEC = CRLBSpec(plane_offset_um=0.5, photons=1600, background=8, roi_size=15)


def _examples(n: int, seed: int = 0) -> Examples:
    rng = np.random.default_rng(seed)
    crops = (100 + 20 * rng.random((n, 2, 15, 15))).astype(np.float32)
    crops[:, :, 6:9, 6:9] += rng.uniform(50, 400, (n, 2, 1, 1)).astype(np.float32)
    dz = rng.uniform(-0.3, 0.3, n)
    return Examples(
        crops=crops,
        dz_um=dz,
        stage_z_um=-dz,
        ref_z_um=np.zeros(n),
        xy_norm=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        bead=np.arange(n) % 4,
        field=np.zeros(n, int),
        split=np.full(n, 2, np.int8),
    )


def test_matched_crlb_reduces_to_centre_bound():
    centres = np.array([-0.45, -0.15, 0.15, 0.45])
    ref = crlb_stage_um(SPEC, centres) * 1000
    dz = np.repeat(centres, 3)
    idx = np.repeat(np.arange(4), 3)
    got = matched_crlb_nm(SPEC, dz, np.full(dz.size, 1600.0), idx, 5)
    np.testing.assert_allclose(got[:4], ref, rtol=1e-6)
    assert np.isnan(got[4])  # empty bin


def test_matched_crlb_is_rms_over_brightness():
    centres = np.array([-0.3, 0.0, 0.3])
    dim, bright = (crlb_stage_um(SPEC, centres, [800.0, 3200.0]) * 1000).tolist()
    assert np.all(np.array(bright) < np.array(dim))
    dz = np.concatenate([centres, centres])
    ph = np.r_[np.full(3, 800.0), np.full(3, 3200.0)]
    idx = np.r_[np.arange(3), np.arange(3)]
    got = matched_crlb_nm(SPEC, dz, ph, idx, 3)
    want = np.sqrt((np.square(dim) + np.square(bright)) / 2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the matched bound of a spread around the median exceeds the median's bound
    # (CRLB is convex in 1 / photons): pooling dim and bright beads is harder
    mid = crlb_stage_um(SPEC, centres, [1600.0])[0] * 1000
    assert np.all(got > mid)


def test_evaluate_with_bead_photons():
    torch.manual_seed(0)
    model = AxialNet(ModelConfig()).eval()
    ex = _examples(200)
    plain = evaluate(model, ex, None, dz_max_um=0.3, crlb=SPEC)
    assert plain.summary["crlb_matched"] is False
    assert "crlb_center_nm" not in plain.bins
    phot = {0: 1600.0, 1: 1600.0, 2: 1600.0, 3: 1600.0}
    same = evaluate(model, ex, None, dz_max_um=0.3, crlb=SPEC, bead_photons=phot)
    assert same.summary["crlb_matched"] is True
    b = same.bins
    np.testing.assert_allclose(b["ratio"], b["precision_nm"] / b["crlb_nm"])
    np.testing.assert_allclose(b["crlb_center_nm"], plain.bins["crlb_nm"])
    # equal brightness: only the within-bin dz spread separates the two bounds
    np.testing.assert_allclose(b["crlb_nm"], b["crlb_center_nm"], rtol=0.3)
    dim = {0: 800.0, 1: 1600.0, 2: 1600.0, 3: 1600.0}
    wide = evaluate(model, ex, None, dz_max_um=0.3, crlb=SPEC, bead_photons=dim)
    assert np.all(wide.bins["crlb_nm"] >= b["crlb_nm"] * (1 - 1e-9))
    assert wide.bins["crlb_nm"].mean() > 1.02 * b["crlb_nm"].mean()
    with pytest.raises(ValueError, match="lacks"):
        evaluate(model, ex, None, dz_max_um=0.3, crlb=SPEC, bead_photons={0: 1.0})


def test_recalibration_fit_range():
    torch.manual_seed(1)
    model = AxialNet(ModelConfig()).eval()
    ex = _examples(300, seed=2)
    raw = predict(model, ex.crops, ex.xy_norm)[:, 0].astype(float)
    pred = (raw - raw.mean()) / raw.std() * 0.2
    # make the net's dz output exactly `pred`: rescale its head
    a0, c0 = np.polyfit(raw, pred, 1)
    with torch.no_grad():
        model.head.weight[0] *= float(a0)
        model.head.bias[0] = float(a0) * model.head.bias[0] + float(c0)
    clean = 1.3 * pred + 0.04  # labels: an exact affine map of the output
    lim = float(np.abs(clean).max())
    rng = np.random.default_rng(3)
    out = rng.random(ex.dz_um.size) < 0.2
    labels = clean.copy()
    labels[out] = np.sign(rng.standard_normal(out.sum())) * (
        lim + 1 + rng.random(out.sum())
    )
    ex.dz_um = labels
    whole = fold_affine_recalibration(copy.deepcopy(model), ex)
    assert whole["n"] == labels.size
    info = fold_affine_recalibration(model, ex, dz_max_um=lim)
    assert info["applied"]
    assert info["n"] == int((~out).sum())
    assert info["scale"] == pytest.approx(1.3, rel=1e-4)
    assert info["offset_um"] == pytest.approx(0.04, abs=1e-5)
    assert abs(whole["scale"] - 1.3) > 0.05  # the outliers pull the full fit
    after = predict(model, ex.crops, ex.xy_norm)[:, 0]
    np.testing.assert_allclose(after[~out], clean[~out], atol=2e-5)
    none = fold_affine_recalibration(model, ex, dz_max_um=1e-6)
    assert none["applied"] is False
    assert none["scale"] == 1.0

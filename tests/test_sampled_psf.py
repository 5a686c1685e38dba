"""SampledPSF: spline evaluation against the pupil model, derivatives, storage."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from axialtrack.optics import (
    Optics,
    PSFModel,
    SampledPSF,
    SampledPSFError,
    crlb,
    psf_for_bundle,
)

DEPTH = 1.0
CROP = 11


@pytest.fixture(scope="module")
def matched() -> PSFModel:
    """Index matched: a depth step is exactly minus a focus step."""
    return PSFModel(Optics(n_sample=1.518), dtype=torch.float64)


@pytest.fixture(scope="module")
def sampled(matched: PSFModel) -> SampledPSF:
    z = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.02), 10)
    return SampledPSF.from_model(
        matched, (0.0, 0.5), depth_um=DEPTH, z_um=z, size=15, oversample=2
    )


def _positions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.uniform(-0.1, 0.1, n),
            rng.uniform(-0.1, 0.1, n),
            rng.uniform(-0.7, 0.7, n),
        ],
        axis=1,
    )


def test_values_match_the_pupil_model_between_nodes(
    matched: PSFModel, sampled: SampledPSF
) -> None:
    xyz = _positions(12)
    h, _, ok = sampled.evaluate(xyz, CROP)
    assert ok.all()
    f0 = float(matched.in_focus_offset(DEPTH))
    pos = np.stack([xyz[:, 0], xyz[:, 1], np.full(len(xyz), DEPTH)], axis=1)
    ref = np.stack(
        [matched.psf(pos, f0 - xyz[:, 2] + off, CROP).numpy() for off in (0.0, 0.5)],
        axis=1,
    )
    # oversample 2 and 20 nm z steps: within 0.2 % of the PSF's peak
    assert np.abs(h - ref).max() < 2e-3 * ref.max()


def test_derivatives_are_those_of_the_spline(sampled: SampledPSF) -> None:
    xyz = _positions(8, seed=1)
    _, dh, _ = sampled.evaluate(xyz, CROP)
    eps = 1e-5
    for i in range(3):
        d = np.zeros(3)
        d[i] = eps
        hp, _, _ = sampled.evaluate(xyz + d, CROP)
        hm, _, _ = sampled.evaluate(xyz - d, CROP)
        fd = (hp - hm) / (2 * eps)
        assert np.abs(fd - dh[..., i]).max() < 1e-6 * np.abs(dh[..., i]).max()


def test_crlb_matches_optics_crlb(matched: PSFModel, sampled: SampledPSF) -> None:
    dz = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])
    mine = sampled.crlb(dz, size=CROP, photons=2000, background=10)
    f0 = float(matched.in_focus_offset(DEPTH))
    ref = crlb(
        matched,
        DEPTH + dz,
        focus_um=f0,
        plane_offsets_um=(0.0, 0.5),
        roi_size=CROP,
        photons=2000,
        background=10,
    )
    np.testing.assert_allclose(mine.std[:, :3], ref.std[:, :3], rtol=3e-3)
    np.testing.assert_allclose(mine.std[:, 3:], ref.std[:, 3:], rtol=3e-3)


def test_outside_the_grid_is_flagged(sampled: SampledPSF) -> None:
    lo, hi = sampled.z_range_um
    shift = sampled.max_shift_px(CROP) * sampled.pixel_size_um
    xyz = np.array(
        [
            [0.0, 0.0, lo - 0.01],
            [0.0, 0.0, hi + 0.01],
            [shift + 0.01, 0.0, 0.0],
            [0.0, shift + 0.01, 0.0],
            [shift * 0.99, -shift * 0.99, hi - 0.001],
        ]
    )
    _, _, ok = sampled.evaluate(xyz, CROP)
    assert ok.tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="crop needs"):
        sampled.evaluate(xyz, 15)


def test_round_trip_through_npz(sampled: SampledPSF, tmp_path) -> None:
    import json

    arrays, meta = sampled.to_arrays()
    np.savez(tmp_path / "psf.npz", **arrays)
    (tmp_path / "psf.json").write_text(json.dumps(meta))
    with np.load(tmp_path / "psf.npz") as f:
        back = SampledPSF.from_arrays(
            dict(f), json.loads((tmp_path / "psf.json").read_text())
        )
    xyz = _positions(5, seed=2)
    a = sampled.evaluate(xyz, CROP)
    b = back.evaluate(xyz, CROP)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert back.transmission == sampled.transmission
    assert back.info == sampled.info
    with pytest.raises(SampledPSFError, match="format version"):
        SampledPSF.from_arrays(arrays, {**meta, "format_version": 99})


def test_single_plane_keeps_plane_zero(sampled: SampledPSF) -> None:
    one = sampled.single_plane(0)
    xyz = _positions(3, seed=3)
    h1, _, _ = one.evaluate(xyz, CROP)
    h2, _, _ = sampled.evaluate(xyz, CROP)
    np.testing.assert_array_equal(h1[:, 0], h2[:, 0])


def test_psf_for_bundle_refuses_a_bundle_without_optics(tmp_path) -> None:
    bundle = SimpleNamespace(path=tmp_path / "real.axialmodel", meta={})
    with pytest.raises(SampledPSFError, match="records no PSF model"):
        psf_for_bundle(bundle)

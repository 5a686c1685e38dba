from __future__ import annotations

import numpy as np
import pytest
import torch

from axialtrack.optics import (
    Optics,
    PSFModel,
    crlb,
    crlb_from_derivatives,
    fisher_information,
    psf_derivatives,
)

ROI = 15


@pytest.fixture(scope="module")
def matched() -> PSFModel:
    """Index matched, no aberrations: the PSF is symmetric about focus."""
    return PSFModel(Optics(n_sample=1.518))


@pytest.fixture(scope="module")
def water() -> PSFModel:
    return PSFModel(Optics())


def test_single_plane_diverges_at_focus_dual_plane_finite(matched: PSFModel) -> None:
    depth = 1.0
    z = depth + np.array([-0.4, -0.2, 0.0, 0.2, 0.4])
    single = crlb(matched, z, focus_um=depth, roi_size=ROI)
    dual = crlb(matched, z, focus_um=depth, plane_offsets_um=(0.0, 0.5), roi_size=ROI)
    s_z, d_z = single.sigma_z_um, dual.sigma_z_um
    # at focus dh/dz vanishes for a symmetric PSF: no information on z
    assert s_z[2] > 1.0  # um; numerically ~1e10 or inf
    assert np.all(np.isfinite(d_z))
    assert np.all(d_z < 0.03)  # < 30 nm with 2000 photons, 10 bg
    # away from focus the single plane is finite but worse than the pair
    assert np.all(np.isfinite(s_z[[0, 1, 3, 4]]))
    assert np.all(d_z[[0, 1, 3, 4]] < s_z[[0, 1, 3, 4]])
    # the single-plane bound is symmetric about focus, x and y equal
    np.testing.assert_allclose(s_z[[0, 1]], s_z[[4, 3]], rtol=1e-3)
    np.testing.assert_allclose(single.sigma_x_um, single.sigma_y_um, rtol=1e-2)
    # lateral precision is a few nm
    assert np.all((dual.sigma_x_um > 0.001) & (dual.sigma_x_um < 0.02))


def test_dual_plane_symmetric_about_mid_plane(matched: PSFModel) -> None:
    depth, delta = 1.0, 0.5
    u = np.array([0.1, 0.3, 0.6])
    z = np.concatenate([depth + delta / 2 - u, depth + delta / 2 + u])
    res = crlb(matched, z, focus_um=depth, plane_offsets_um=(0.0, delta), roi_size=ROI)
    np.testing.assert_allclose(res.sigma_z_um[:3], res.sigma_z_um[3:], rtol=1e-3)


def test_scales_as_inverse_sqrt_photons_without_background(water: PSFModel) -> None:
    f0 = float(water.in_focus_offset(1.0))
    derivs = psf_derivatives(
        water,
        [0.7, 1.0, 1.4],
        focus_um=f0,
        plane_offsets_um=(0.0, 0.5),
        roi_size=ROI,
    )
    a = crlb_from_derivatives(derivs, photons=1000.0, background=0.0)
    b = crlb_from_derivatives(derivs, photons=4000.0, background=0.0)
    np.testing.assert_allclose(b.std[:, :3], 0.5 * a.std[:, :3], rtol=1e-6)
    # the photon-count bound grows as sqrt(N)
    np.testing.assert_allclose(b.sigma_photons, 2.0 * a.sigma_photons, rtol=1e-6)
    # with background the bound improves faster than 1/sqrt(N) (between the
    # shot-noise-limited 1/sqrt(N) and the background-limited 1/N)
    c = crlb_from_derivatives(derivs, photons=1000.0, background=10.0)
    d = crlb_from_derivatives(derivs, photons=4000.0, background=10.0)
    ratio = d.sigma_z_um / c.sigma_z_um
    assert np.all((ratio < 0.5) & (ratio > 0.25))


def test_fisher_matches_finite_differences(water: PSFModel) -> None:
    """Fisher information vs central differences of mu, built independently."""
    model = water.to(dtype=torch.float64)
    x0, y0, z0, focus, delta = 0.013, -0.021, 0.9, 1.1, 0.5
    photons, bg, trans, rn = 1500.0, 7.0, 0.8, 1.3
    res = crlb(
        model,
        [z0],
        focus_um=focus,
        x_um=x0,
        y_um=y0,
        plane_offsets_um=(0.0, delta),
        photons=photons,
        background=bg,
        transmission=trans,
        read_noise=rn,
        roi_size=ROI,
    )
    assert res.params == ("x", "y", "z", "photons", "background0", "background1")
    n_k = np.array([photons, photons * trans])

    def mu(theta: np.ndarray) -> np.ndarray:
        x, y, z, n, b0, b1 = theta
        h = model.psf_stack([[x, y, z]], [focus, focus + delta], ROI)[0].numpy()
        nk = np.array([n, n * trans])
        return (nk[:, None, None] * h + np.array([b0, b1])[:, None, None]).ravel()

    theta0 = np.array([x0, y0, z0, photons, bg, bg])
    steps = np.array([1e-4, 1e-4, 1e-4, 1e-2, 1e-3, 1e-3])
    jac = np.empty((mu(theta0).size, 6))
    for i, h in enumerate(steps):
        e = np.zeros(6)
        e[i] = h
        jac[:, i] = (mu(theta0 + e) - mu(theta0 - e)) / (2 * h)
    fisher = jac.T @ (jac / (mu(theta0) + rn**2)[:, None])
    np.testing.assert_allclose(res.fisher[0], fisher, rtol=1e-5, atol=1e-9)
    # and the CRLB is the sqrt of the diagonal of its inverse
    np.testing.assert_allclose(
        res.std[0], np.sqrt(np.diag(np.linalg.inv(fisher))), rtol=1e-5
    )
    assert n_k[1] == pytest.approx(photons * trans)


def test_read_noise_and_maps(water: PSFModel) -> None:
    f0 = float(water.in_focus_offset(1.0))
    derivs = psf_derivatives(
        water, [0.8, 1.2], focus_um=f0, plane_offsets_um=(0.0, 0.5), roi_size=ROI
    )
    clean = crlb_from_derivatives(derivs)
    noisy = crlb_from_derivatives(derivs, read_noise=2.0)
    assert np.all(noisy.std > clean.std)
    same = crlb_from_derivatives(derivs, read_noise=np.full((ROI, ROI), 2.0))
    np.testing.assert_allclose(same.std, noisy.std)
    per_plane = np.stack([np.full((ROI, ROI), 2.0), np.full((ROI, ROI), 0.0)])
    mixed = crlb_from_derivatives(derivs, read_noise=per_plane)
    assert np.all(mixed.std <= noisy.std)
    assert np.all(mixed.std >= clean.std)


def test_result_api_and_validation(water: PSFModel) -> None:
    res = crlb(water, [1.0, 1.2], focus_um=1.4, roi_size=9)
    assert res.std.shape == (2, 5)
    assert res.fisher.shape == (2, 5, 5)
    assert res.sigma_background.shape == (2, 1)
    d = res.as_dict()
    assert set(d) >= {"depth_um", "sigma_x_um", "sigma_z_um", "sigma_photons"}
    assert d["plane_offsets_um"] == [0.0]
    np.testing.assert_allclose(d["sigma_z_um"], res.sigma_z_um)
    with pytest.raises(ValueError, match="photons"):
        crlb(water, [1.0], photons=0.0, roi_size=9)
    with pytest.raises(ValueError, match="background"):
        crlb(water, [1.0], background=(1.0, 2.0, 3.0), roi_size=9)
    with pytest.raises(ValueError, match="transmission"):
        crlb(water, [1.0], plane_offsets_um=(0, 0.5), transmission=0.0, roi_size=9)


def test_fisher_information_helper() -> None:
    jac = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    mu = np.array([1.0, 2.0, 4.0])
    expected = np.array([[1.25, 0.25], [0.25, 2.25]])
    np.testing.assert_allclose(fisher_information(jac, mu), expected)
    with pytest.raises(ValueError, match="> 0"):
        fisher_information(jac, np.zeros(3))

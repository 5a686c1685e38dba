"""The psfmodels renderer of the import benchmark: in-focus convention,
sub-pixel positions, plane 1's shift, mirror and layout, the camera."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("psfmodels")

from axialtrack.sim.independent import (
    IndependentCamera,
    IndependentOptics,
    PSFTable,
    Scene,
    compose_frames,
    place_groups,
)

MATCHED = IndependentOptics(
    "matched",
    na=1.2,
    wavelength_um=0.52,
    n_immersion=1.333,
    n_sample=1.333,
    depth_um=0.5,
    pixel_um=0.13,
    plane_offset_um=0.45,
    shift_px=(3, -2),
    mirror="horizontal",
)


@pytest.fixture(scope="module")
def table() -> PSFTable:
    return PSFTable(MATCHED, -0.5, 0.7, step_um=0.01, size_px=15)


def test_in_focus_convention() -> None:
    # index-matched: psfmodels' on-axis maximum is at zv = depth
    t = PSFTable(MATCHED, 0.0, 0.0, size_px=11, oversample=3)
    assert t.zv_focus == pytest.approx(0.5, abs=0.005)
    # oil objective into water at 1 um: the maximum lies 0.2 um beyond
    oil = IndependentOptics(
        "oil",
        na=1.3,
        wavelength_um=0.6,
        n_immersion=1.515,
        n_sample=1.33,
        depth_um=1.0,
        pixel_um=0.117,
        plane_offset_um=0.6,
    )
    t = PSFTable(oil, 0.0, 0.0, size_px=11, oversample=3)
    assert 0.15 < t.zv_focus - 1.0 < 0.25
    # the table's in-focus row is the brightest on axis
    t = PSFTable(oil, -0.1, 0.1, step_um=0.01, size_px=11, oversample=3)
    c = t.fine.shape[-1] // 2
    assert t.rel_um[np.argmax(t.fine[:, c, c])] == pytest.approx(0.0, abs=0.011)


def test_sub_pixel_offsets(table: PSFTable) -> None:
    yy, xx = np.mgrid[:15, :15] - 7
    for fx, fy in ((2, -1), (-2, 2), (0, 0)):
        im = table.image(0.0, fx, fy)
        assert im.sum() == pytest.approx(1.0, abs=0.02)
        cx = (im * xx).sum() / im.sum()
        cy = (im * yy).sum() / im.sum()
        assert cx == pytest.approx(fx / 5, abs=0.02)
        assert cy == pytest.approx(fy / 5, abs=0.02)
    # defocus spreads the light: lower peak, same total within the patch
    assert table.image(0.5, 0, 0).max() < 0.3 * table.image(0.0, 0, 0).max()
    with pytest.raises(ValueError, match="beyond"):
        table.image(0.0, 3, 0)
    with pytest.raises(ValueError, match="outside the table"):
        table.image(0.9, 0, 0)


def test_frames_shift_mirror_camera(table: PSFTable) -> None:
    cam = IndependentCamera(offset_adu=300, e_per_adu=2.0, read_noise_e=0.0)
    rng = np.random.default_rng(0)
    # in focus in plane 1 (stage 0.45 um below the reference), bright
    scene = Scene(
        np.array([20.0]), np.array([30.0]), np.array([10.45]), np.array([2e5])
    )
    frame = compose_frames(table, [scene], [10.0], (48, 64), cam, 20.0, rng)[0]
    assert frame.shape == (48, 128)
    p0, p1 = frame[:, :64].astype(float), frame[:, 64:][:, ::-1].astype(float)
    # background: offset + 20 e- / 2 e-/ADU
    assert np.median(p0) == pytest.approx(310, abs=2)
    assert np.unravel_index(np.argmax(p0), p0.shape) == (30, 20)
    assert np.unravel_index(np.argmax(p1), p1.shape) == (28, 23)
    # plane 1 is the one in focus
    assert p1.max() > 3 * p0.max()


def test_place_groups() -> None:
    rng = np.random.default_rng(1)
    x, y = place_groups(rng, (128, 128), singles=6, pairs=3, margin_px=12)
    assert x.size == 12
    assert np.all((x >= 12) & (x <= 115) & (y >= 12) & (y <= 115))
    # on the 1/5 px grid
    np.testing.assert_allclose(x * 5, np.round(x * 5), atol=1e-9)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    # the pairs come first: members 8-15 px apart, every other emitter >= 20 px
    assert np.all((nearest[:6] >= 8) & (nearest[:6] <= 15))
    assert np.all(nearest[6:] >= 20)

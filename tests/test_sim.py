from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from axialtrack.geometry import SplitterGeometry, apply_affine, split_frame
from axialtrack.optics import Optics
from axialtrack.sim import (
    BEAD,
    PARTICLE,
    Background,
    Beads,
    CameraModel,
    DiffusingParticles,
    Drift,
    PSFTable,
    Renderer,
    Sample,
)

PLANE = (64, 64)
COVERSLIP = 50.0
BEAD_DEPTH = 0.05


@pytest.fixture(autouse=True, scope="module")
def _threads() -> None:
    torch.set_num_threads(2)


def _bead_renderer(
    positions: list[tuple[float, float, float]] | np.ndarray,
    photons: float | np.ndarray = 1e4,
    *,
    plane_shape: tuple[int, int] = PLANE,
    background: Background | None = None,
    **kwargs: object,
) -> Renderer:
    sample = Sample(beads=Beads.at(positions, photons), background=background)
    return Renderer(
        sample,
        plane_shape=plane_shape,
        lut_cache=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _focus_stage(r: Renderer, depth: float) -> float:
    """Stage Z with the plane-0 focus on an emitter at ``depth``."""
    return float(r.z_focus_um(depth))


def _centroid(img: np.ndarray, x: float, y: float, half: int = 12) -> np.ndarray:
    """Iterated Gaussian-weighted centroid (unbiased for a symmetric spot)."""
    ix, iy = round(x), round(y)
    roi = img[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    c = np.array([float(ix), float(iy)])
    for _ in range(50):
        w = roi * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 3.0**2))
        c = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
    return c


# ------------------------------------------------------------------ camera
def test_camera_mean_and_variance_match_theory() -> None:
    cam = CameraModel(qe=0.8, gain_e_per_adu=0.5, offset_adu=100, read_noise_e=1.5)
    n_photons = 50.0
    img = cam.apply(np.full((400, 400), n_photons), np.random.default_rng(1))
    assert img.dtype == np.uint16
    mean_th = 0.8 * n_photons / 0.5 + 100
    var_th = (0.8 * n_photons + 1.5**2) / 0.5**2
    assert cam.mean_adu(n_photons) == pytest.approx(mean_th)
    assert cam.variance_adu(n_photons) == pytest.approx(var_th)
    # 160k pixels: standard error of the mean ~0.03 ADU, of the variance ~0.4 %
    assert img.mean() == pytest.approx(mean_th, abs=0.15)
    assert img.var() == pytest.approx(var_th + 1 / 12, rel=0.02)
    # no photons: offset plus read noise only
    dark = cam.apply(np.zeros((400, 400)), np.random.default_rng(2)).astype(float)
    assert dark.mean() == pytest.approx(100, abs=0.05)
    assert dark.var() == pytest.approx(1.5**2 / 0.25 + 1 / 12, rel=0.03)


def test_camera_saturation_and_full_well() -> None:
    cam = CameraModel()
    img = cam.apply(np.full((8, 8), 1e7), 0)
    assert np.all(img == 65535)
    assert cam.max_adu == 65535
    fw = CameraModel(full_well_e=1000, read_noise_e=0.0, gain_e_per_adu=1.0)
    img = fw.apply(np.full((8, 8), 1e5), 0)
    assert np.all(img == 1100)
    cam12 = CameraModel(bit_depth=12)
    assert cam12.apply(np.full((4, 4), 1e6), 0).max() == 4095


def test_camera_read_noise_map() -> None:
    cam = CameraModel(
        read_noise_spread=0.5, read_noise_seed=3, qe=1.0, gain_e_per_adu=1
    )
    rn = cam.read_noise_map((32, 48))
    np.testing.assert_array_equal(
        rn,
        CameraModel(read_noise_spread=0.5, read_noise_seed=3).read_noise_map((32, 48)),
    )
    assert np.median(rn) == pytest.approx(1.5, rel=0.1)
    assert rn.std() > 0.3
    # per-pixel variance follows the map
    frames = np.stack(
        [cam.apply(np.zeros((32, 48)), np.random.default_rng(i)) for i in range(400)]
    ).astype(float)
    var = frames.var(axis=0)
    assert np.corrcoef(var.ravel(), (rn**2).ravel())[0, 1] > 0.9
    given = CameraModel(read_noise_map_e=np.full((4, 4), 2.0))
    assert given.read_noise_map((4, 4))[0, 0] == 2.0
    with pytest.raises(ValueError, match="shape"):
        given.read_noise_map((4, 5))
    with pytest.raises(ValidationError):
        CameraModel(qe=1.5)


def test_photons_from_adu_inverts_mean() -> None:
    cam = CameraModel(qe=0.7, gain_e_per_adu=2.0, offset_adu=100)
    assert cam.photons_from_adu(np.array([cam.mean_adu(123.0)]))[0] == pytest.approx(
        123
    )


# -------------------------------------------------------------- background
def test_background_levels_structure_and_seed() -> None:
    geo = SplitterGeometry(transmission=0.8)
    bg = Background(photons_per_px_s=1000.0, structure=0.3, correlation_px=8, seed=5)
    m = bg.rate_map((128, 128), geo)
    assert m.shape == (2, 128, 128)
    assert m.dtype == np.float32
    assert m[0].mean() == pytest.approx(1000, rel=0.02)
    assert m[1].mean() == pytest.approx(800, rel=0.05)
    assert m[0].std() / m[0].mean() == pytest.approx(0.3, rel=0.1)
    np.testing.assert_array_equal(m, bg.rate_map((128, 128), geo))
    other = Background(photons_per_px_s=1000.0, structure=0.3, correlation_px=8, seed=6)
    assert not np.array_equal(m, other.rate_map((128, 128), geo))
    flat = Background(photons_per_px_s=(10.0, 20.0)).rate_map((4, 4), geo)
    assert np.all(flat[0] == 10)
    assert np.all(flat[1] == 20)


# ------------------------------------------------------------------ sample
def test_sample_trajectories_reproducible_and_query_independent() -> None:
    def make(seed: int) -> Sample:
        return Sample(
            beads=Beads.in_volume(10, depth_um=(0, 3)),
            particles=DiffusingParticles(
                n=30, diffusion_um2_s=(0.1, 2.0), size_um=(10, 10)
            ),
            drift=Drift(velocity_um_s=(0.01, 0.0, 0.001), random_walk_um2_s=1e-4),
            seed=seed,
        )

    def focus(d: np.ndarray) -> np.ndarray:
        return 1.2 * d

    times = np.arange(0, 0.5, 0.01)
    a = make(1).trajectories(times, focus)
    # a second sample with the same seed, queried at other times in between
    s2 = make(1)
    s2.trajectories([0.0033, 0.101])
    b = np.concatenate([s2.trajectories(t, focus) for t in times])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a["z_focus_um"], a["coverslip_z_um"] + 1.2 * a["z_um"])
    assert np.all(np.isnan(s2.trajectories(0.5)["z_focus_um"]))
    c = make(2).trajectories(times)
    assert not np.array_equal(a["x_um"], c["x_um"])
    assert set(np.unique(a["kind"])) == {BEAD, PARTICLE}


def test_brownian_msd_is_6dt() -> None:
    d = 0.8
    sample = Sample(
        particles=DiffusingParticles(
            n=500, diffusion_um2_s=d, size_um=(1e4, 1e4), depth_um=(0, 1e4)
        ),
        seed=3,
    )
    times = np.arange(0, 0.25, 0.005)
    em = sample.emitters(times)
    assert np.all(em.ids == em.ids[0])  # nobody leaves a box this large
    for lag in (1, 5, 20):
        disp = em.xyz_um[lag:] - em.xyz_um[:-lag]
        msd = np.mean(np.sum(disp**2, axis=-1))
        # 500 particles: the relative standard error is < 4 % at the largest lag
        assert msd == pytest.approx(6 * d * lag * 0.005, rel=0.1)
    # each axis separately: 2 D t
    disp = em.xyz_um[10:] - em.xyz_um[:-10]
    np.testing.assert_allclose(np.mean(disp**2, axis=(0, 1)), 2 * d * 0.05, rtol=0.1)


def test_diffusion_range_per_particle() -> None:
    sample = Sample(
        particles=DiffusingParticles(
            n=400, diffusion_um2_s=(0.1, 2.0), size_um=(1e4, 1e4), depth_um=(0, 1e4)
        ),
        seed=4,
    )
    em = sample.emitters(np.arange(0, 0.2, 0.01))
    dcoef = em.diffusion_um2_s[0]
    assert dcoef.min() >= 0.1
    assert dcoef.max() <= 2.0
    assert np.ptp(dcoef) > 1.0
    disp = em.xyz_um[1:] - em.xyz_um[:-1]
    ratio = np.mean(np.sum(disp**2, axis=-1) / (6 * dcoef * 0.01))
    assert ratio == pytest.approx(1.0, rel=0.05)


def test_substep_increments_have_brownian_variance() -> None:
    d, step = 1.0, 0.0007  # sub-steps off the 1 ms simulation grid
    sample = Sample(
        particles=DiffusingParticles(
            n=2000, diffusion_um2_s=d, size_um=(1e4, 1e4), depth_um=(0, 1e4)
        ),
        seed=5,
    )
    em = sample.emitters(0.5 + step * (np.arange(8) + 0.5))
    var = np.var(np.diff(em.xyz_um, axis=0), axis=(0, 1))
    np.testing.assert_allclose(var, 2 * d * step, rtol=0.1)


def test_particles_enter_and_leave_with_new_ids() -> None:
    box = (8.0, 8.0)
    sample = Sample(
        particles=DiffusingParticles(
            n=50, diffusion_um2_s=2.0, size_um=box, depth_um=(0.0, 2.0)
        ),
        seed=6,
    )
    times = np.arange(0, 3.0, 0.02)
    em = sample.emitters(times)
    assert em.ids.shape == (len(times), 50)  # the count is constant
    for row in em.ids:
        assert len(np.unique(row)) == 50
    assert em.ids.max() > 100  # many particles left and were replaced
    # an id that disappeared never comes back
    last_seen = {}
    first_seen = {}
    for k, row in enumerate(em.ids):
        for i in row:
            first_seen.setdefault(int(i), k)
            last_seen[int(i)] = k
    for i, k0 in first_seen.items():
        assert np.all(np.any(em.ids[k0 : last_seen[i] + 1] == i, axis=1))
    # inside the box, reflected at the coverslip and the chamber top
    assert np.all(np.abs(em.xyz_um[..., :2]) <= 4.0 + 1e-9)
    assert em.xyz_um[..., 2].min() >= 0
    assert em.xyz_um[..., 2].max() <= 2.0
    # the number in the central quarter stays about constant (uniform density)
    inner = np.all(np.abs(em.xyz_um[..., :2]) < 2.0, axis=-1).sum(axis=1)
    assert inner.mean() == pytest.approx(50 / 4, rel=0.2)


def test_history_and_far_jump() -> None:
    sample = Sample(particles=DiffusingParticles(n=5), history_s=0.5, max_gap_s=10.0)
    sample.emitters([2.0])
    with pytest.raises(ValueError, match="no longer available"):
        sample.emitters([0.5])
    em = sample.emitters([1e5])  # restarts instead of simulating 1e5 s
    assert em.xyz_um.shape == (1, 5, 3)
    with pytest.raises(ValueError, match=">= 0"):
        sample.emitters([-1.0])


def test_bead_builders() -> None:
    b = Beads.on_coverslip(40, size_um=(20, 20), radius_um=0.1, min_separation_um=2.0)
    s = Sample(beads=b, seed=1)
    pos = s.bead_positions_um
    assert pos.shape == (40, 3)
    assert np.all(pos[:, 2] == 0.1)
    dist = np.hypot(*(pos[:, None, :2] - pos[None, :, :2]).transpose(2, 0, 1))
    assert dist[np.triu_indices(40, 1)].min() >= 2.0
    assert np.std(np.log(s.bead_photons_per_s)) == pytest.approx(0.3, rel=0.4)
    np.testing.assert_array_equal(pos, Sample(beads=b, seed=1).bead_positions_um)
    assert not np.array_equal(pos, Sample(beads=b, seed=2).bead_positions_um)
    with pytest.raises(ValidationError):
        Beads(depth_um=(-1.0, 0.0))


# ---------------------------------------------------------------- renderer
@pytest.fixture(scope="module")
def bead_sample_renderer() -> Renderer:
    sample = Sample(
        beads=Beads.on_coverslip(20, size_um=(25, 25), radius_um=BEAD_DEPTH),
        particles=DiffusingParticles(n=10, size_um=(30, 30), depth_um=(0.0, 2.0)),
        background=Background(photons_per_px_s=1000.0, structure=0.2),
        seed=11,
    )
    return Renderer(sample, plane_shape=(128, 128), lut_cache=False)


def test_snap_is_reproducible_bit_for_bit(bead_sample_renderer: Renderer) -> None:
    r = bead_sample_renderer
    stage = (0.0, 0.0, COVERSLIP + 0.3)
    a = r.snap(stage, 0.1, 0.01, frame_index=7)
    b = r.snap(stage, 0.1, 0.01, frame_index=7)
    assert a.dtype == np.uint16
    assert a.shape == r.sensor_shape == (128, 256)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, r.snap(stage, 0.1, 0.01, frame_index=8))
    # a new renderer with another seed gives other noise on the same sample
    other = Renderer(r.sample, plane_shape=(128, 128), lut_cache=False, seed=1)
    assert not np.array_equal(a, other.snap(stage, 0.1, 0.01, frame_index=7))
    # ... and a fresh identical renderer and sample reproduce the frame exactly
    s2 = Sample(
        beads=Beads.on_coverslip(20, size_um=(25, 25), radius_um=BEAD_DEPTH),
        particles=DiffusingParticles(n=10, size_um=(30, 30), depth_um=(0.0, 2.0)),
        background=Background(photons_per_px_s=1000.0, structure=0.2),
        seed=11,
    )
    r2 = Renderer(s2, plane_shape=(128, 128), lut_cache=False)
    np.testing.assert_array_equal(a, r2.snap(stage, 0.1, 0.01, frame_index=7))


def test_expected_image_contents(bead_sample_renderer: Renderer) -> None:
    r = bead_sample_renderer
    img = r.expected((0.0, 0.0, COVERSLIP), 0.0, 0.01)
    assert img.shape == (2, 128, 128)
    assert img.dtype == np.float32
    assert np.all(img >= 0)
    bg = r.background_rate * 0.01
    assert np.all(img >= bg - 1e-3)
    assert (img - bg).sum() > 1000
    truth = r.truth(0.0)
    assert set(truth["kind"]) <= {BEAD, PARTICLE}
    np.testing.assert_allclose(
        truth["z_focus_um"], COVERSLIP + r.psf_model.in_focus_offset(truth["z_um"])
    )
    # in focus on the coverslip: beads are bright at their truth pixel
    beads = truth[truth["kind"] == BEAD]
    assert len(beads) > 5
    for t in beads:
        ix, iy = round(t["x_px0"]), round(t["y_px0"])
        if 2 <= ix < 126 and 2 <= iy < 126:
            assert img[0, iy, ix] - bg[0, iy, ix] > 50


def test_psf_table_matches_exact_model() -> None:
    """Table rendering agrees with PSFModel.psf to 1.5 % of the peak pixel."""
    rng = np.random.default_rng(0)
    n = 12
    for depth_range in ((BEAD_DEPTH, BEAD_DEPTH), (0.0, 4.0)):
        depth = rng.uniform(*depth_range, n)
        r = _bead_renderer(
            np.column_stack([np.zeros(n), np.zeros(n), depth]), record_truth=False
        )
        defocus = rng.uniform(-1.5, 1.5, n)
        dx, dy = rng.uniform(-0.5, 0.5, (2, n))
        px = r.pixel_size_um
        size = r.table.size
        core = size // 2 - r.table.taper_px - 1
        focus = r.psf_model.in_focus_offset(depth) + defocus
        exact = r.psf_model.psf(np.column_stack([dx * px, dy * px, depth]), focus, size)
        exact = exact.numpy()
        c = 32
        xc = (c + dx - (PLANE[1] - 1) / 2) * px
        yc = (c + dy - (PLANE[0] - 1) / 2) * px
        for k in range(n):
            img = r.render_planes(
                [[xc[k], yc[k], depth[k]]], 1.0, (0.0, 0.0, COVERSLIP + focus[k])
            )[0]
            got = img[c - core : c + core + 1, c - core : c + core + 1]
            off = size // 2 - core
            ref = exact[k, off:-off, off:-off]
            assert np.abs(got - ref).max() < 0.015 * exact[k].max(), (
                depth[k],
                defocus[k],
            )


def test_total_photons_in_large_roi() -> None:
    n_photons = 1e5
    r = _bead_renderer([(0.0, 0.0, BEAD_DEPTH)], n_photons)
    stage = (0.0, 0.0, _focus_stage(r, BEAD_DEPTH))
    img = r.render_planes([(0.0, 0.0, BEAD_DEPTH)], n_photons, stage)
    # the patch holds the PSF out to ~2 um; the far wings (a few %) are not drawn
    assert 0.94 * n_photons < img[0].sum() <= n_photons
    assert 0.94 * n_photons < img[1].sum() <= n_photons
    # expected() with an exposure: photons = rate * exposure, plus background
    e = r.expected(stage, 0.0, 0.02)
    assert e[0].sum() == pytest.approx(img[0].sum() * 0.02, rel=1e-4)
    geo = SplitterGeometry(transmission=0.5)
    r2 = _bead_renderer([(0.0, 0.0, BEAD_DEPTH)], n_photons, geometry=geo)
    img2 = r2.render_planes([(0.0, 0.0, BEAD_DEPTH)], n_photons, stage)
    assert img2[1].sum() == pytest.approx(0.5 * img[1].sum(), rel=1e-4)


def test_plane_asymmetry_and_monotonic_ratio() -> None:
    """Deeper beads are sharper in plane 1; the plane ratio is monotonic in z.

    Beads at 41 depths; the stage puts the midpoint between the two planes (plane
    offset 0.5 um) on a reference depth. A bead's ``z_focus_um`` relative to that
    midpoint runs over +-0.8 um: the range over which the 7x7-pixel energy ratio
    of this high-NA PSF is monotonic (beyond it, the on-axis intensity of the
    farther plane passes its first minimum and the ratio turns back).
    """
    r = _bead_renderer([(0.0, 0.0, 1.5)], plane_shape=(512, 512))
    geo = r.geometry
    mid = _focus_stage(r, 1.5)
    stage = (0.0, 0.0, mid - geo.plane_offset_um / 2)
    dz = np.linspace(-0.8, 0.8, 41)  # z_focus relative to the midpoint, stage frame
    depths = r.psf_model.depth_in_focus(mid + dz - COVERSLIP)
    np.testing.assert_allclose(r.z_focus_um(depths), mid + dz, atol=1e-6)
    gx, gy = np.meshgrid(np.arange(7) - 3, np.arange(6) - 2.5)
    xy = np.column_stack([gx.ravel(), gy.ravel()])[: len(depths)] * 7.0
    pos = np.column_stack([xy, depths])
    r = _bead_renderer(pos, 1e4, plane_shape=(512, 512))
    img = r.render_planes(pos, 1e4, stage)
    p0, p1 = r.world_to_pixels(xy, stage)
    peak0 = np.array([img[0, round(y), round(x)] for x, y in p0])
    peak1 = np.array([img[1, round(y), round(x)] for x, y in p1])
    rel0 = dz + geo.plane_offset_um / 2  # relative to the plane-0 focus
    at_or_above_plane1 = (rel0 >= 0.5) & (rel0 <= 1.0)
    at_or_below_plane0 = (rel0 >= -0.5) & (rel0 <= 0.0)
    assert at_or_above_plane1.sum() > 5
    assert at_or_below_plane0.sum() > 5
    assert np.all(peak1[at_or_above_plane1] > peak0[at_or_above_plane1])
    assert np.all(peak0[at_or_below_plane0] > peak1[at_or_below_plane0])

    def roi_sum(plane: np.ndarray, x: float, y: float, half: int = 3) -> float:
        ix, iy = round(x), round(y)
        return float(plane[iy - half : iy + half + 1, ix - half : ix + half + 1].sum())

    ratio = np.array(
        [
            roi_sum(img[1], *q1) / roi_sum(img[0], *q0)
            for q0, q1 in zip(p0, p1, strict=False)
        ]
    )
    assert np.all(np.diff(ratio) > 0)
    assert ratio[20] == pytest.approx(1.0, abs=0.25)  # similar at the midpoint


def test_splitter_geometry_mirror_and_shift() -> None:
    geo = SplitterGeometry(
        layout="side-by-side",
        mirror="horizontal",
        shift_px=(3.3, -2.7),
        rotation_deg=1.5,
        scale=1.01,
        plane_offset_um=0.5,
    )
    cam = CameraModel(gain_e_per_adu=20.0, read_noise_e=1.0)
    pos = [(1.234, -0.87, BEAD_DEPTH), (-2.0, 1.5, BEAD_DEPTH)]
    r = _bead_renderer(pos, 1e8, geometry=geo, camera=cam, plane_shape=(96, 96))
    stage = (0.0, 0.0, _focus_stage(r, BEAD_DEPTH) + 0.25)  # between the planes
    raw = r.snap(stage, 0.0, 0.01, frame_index=0)
    assert raw.shape == (96, 192)
    planes = split_frame(raw, geo).astype(float) - cam.offset_adu
    truth = r.truth(0.0, stage)
    assert len(truth) == 2
    p0 = np.column_stack([truth["x_px0"], truth["y_px0"]])
    np.testing.assert_allclose(
        np.column_stack([truth["x_px1"], truth["y_px1"]]),
        apply_affine(geo.plane1_affine((96, 96)), p0),
    )
    for t in truth:
        c0 = _centroid(planes[0], t["x_px0"], t["y_px0"])
        c1 = _centroid(planes[1], t["x_px1"], t["y_px1"])
        np.testing.assert_allclose(c0, [t["x_px0"], t["y_px0"]], atol=0.1)
        np.testing.assert_allclose(c1, [t["x_px1"], t["y_px1"]], atol=0.1)
    # the raw right half is mirrored: the bead sits at the flipped column there
    t = truth[0]
    col_raw = 96 + (95 - round(t["x_px1"]))
    row = round(t["y_px1"])
    assert raw[row, col_raw] > raw[row, 96 + round(t["x_px1"])]


def test_edge_clipping_and_outside_emitters() -> None:
    px = Optics().pixel_size_um
    stage = (0.0, 0.0, COVERSLIP + 0.3)
    small = _bead_renderer([(0.0, 0.0, BEAD_DEPTH)], plane_shape=(40, 40))
    big = _bead_renderer([(0.0, 0.0, BEAD_DEPTH)], plane_shape=(120, 120))
    # an emitter at column 1.3 of the small plane, also drawn in the middle of the
    # big plane (whose columns 40..79 show the same area as the small plane)
    x = (1.3 - 19.5) * px
    y = (25.6 - 19.5) * px
    a = small.render_planes([(x, y, BEAD_DEPTH)], 1e4, stage)
    b = big.render_planes([(x, y, BEAD_DEPTH)], 1e4, stage)
    np.testing.assert_allclose(a, b[:, 40:80, 40:80], atol=1e-3)
    assert b.sum() > a.sum() > 0.2 * b.sum()
    far = small.render_planes([(100.0, 0.0, BEAD_DEPTH)], 1e4, stage)
    assert not far.any()


def test_motion_blur_spreads_a_fast_particle() -> None:
    def image(exposure: float) -> np.ndarray:
        sample = Sample(
            particles=DiffusingParticles(
                n=1, diffusion_um2_s=5.0, size_um=(200, 200), depth_um=(1.0, 1.0)
            ),
            seed=2,
        )
        r = Renderer(sample, plane_shape=(96, 96), lut_cache=False)
        x, y, _ = sample.emitters(0.0).xyz_um[0, 0]
        stage = (float(x), float(y), float(r.z_focus_um(1.0)))
        return r.expected(stage, 0.0, exposure, n_substeps=32)[0] / exposure

    sharp = image(1e-5)
    blurred = image(0.1)
    assert blurred.max() < 0.7 * sharp.max()
    assert blurred.sum() == pytest.approx(sharp.sum(), rel=0.05)


def test_drift_moves_beads() -> None:
    sample = Sample(
        beads=Beads.at([(0.0, 0.0, BEAD_DEPTH)], 1e6),
        drift=Drift(velocity_um_s=(0.5, -0.25, 0.1)),
    )
    r = Renderer(sample, plane_shape=(64, 64), lut_cache=False)
    stage = (0.0, 0.0, _focus_stage(r, BEAD_DEPTH))
    t0 = r.truth(0.0, stage)
    t1 = r.truth(2.0, stage)
    assert t1["x_um"][0] - t0["x_um"][0] == pytest.approx(1.0)
    assert t1["y_um"][0] - t0["y_um"][0] == pytest.approx(-0.5)
    assert t1["z_focus_um"][0] - t0["z_focus_um"][0] == pytest.approx(0.2)
    assert t1["z_um"][0] == t0["z_um"][0]
    px = r.pixel_size_um
    assert t1["x_px0"][0] - t0["x_px0"][0] == pytest.approx(1.0 / px)
    a = r.expected(stage, 0.0, 0.001)[0]
    b = r.expected(stage, 2.0, 0.001)[0]
    ca = _centroid(a, t0["x_px0"][0], t0["y_px0"][0])
    cb = _centroid(b, t1["x_px0"][0], t1["y_px0"][0])
    np.testing.assert_allclose(cb - ca, [1.0 / px, -0.5 / px], atol=0.1)


def test_trajectories_record_rendered_frames(bead_sample_renderer: Renderer) -> None:
    r = bead_sample_renderer
    r.clear_trajectories()
    for k in range(3):
        r.snap((0.0, 0.0, COVERSLIP), 0.5 + 0.01 * k, 0.01, frame_index=k)
    tr = r.trajectories()
    assert set(tr["frame"]) == {0, 1, 2}
    np.testing.assert_allclose(np.unique(tr["t_s"]), [0.5, 0.51, 0.52])
    beads = tr[tr["kind"] == BEAD]
    assert np.all(beads["photons"] > 0)
    # static beads: identical rows from frame to frame
    f0 = beads[beads["frame"] == 0]
    f2 = beads[beads["frame"] == 2]
    np.testing.assert_array_equal(f0["x_um"], f2["x_um"])
    full = r.sample_trajectories([0.52])
    assert len(full) == r.sample.n_emitters
    np.testing.assert_allclose(
        full["z_focus_um"],
        full["coverslip_z_um"] + r.psf_model.in_focus_offset(full["z_um"]),
    )
    with pytest.raises(ValueError, match="frame_index"):
        r.snap((0.0, 0.0, COVERSLIP), 0.6, 0.01, frame_index=-1)


def test_psf_table_disk_cache(tmp_path: Path) -> None:
    optics = Optics()
    args = np.array([BEAD_DEPTH]), np.array([0.3]), np.zeros(1, np.float32)
    first = PSFTable(optics, fixed_depth_um=BEAD_DEPTH, cache_dir=tmp_path)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1
    second = PSFTable(optics, fixed_depth_um=BEAD_DEPTH, cache_dir=tmp_path)
    np.testing.assert_array_equal(
        first.spectra(*args, args[2]), second.spectra(*args, args[2])
    )
    files[0].write_bytes(b"not an array")  # a damaged file is recomputed
    third = PSFTable(optics, fixed_depth_um=BEAD_DEPTH, cache_dir=tmp_path)
    np.testing.assert_array_equal(
        first.spectra(*args, args[2]), third.spectra(*args, args[2])
    )

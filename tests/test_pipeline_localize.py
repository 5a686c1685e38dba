"""Detection, crop pairs and 3D localization of the live pipeline."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from axialtrack.calibrate.beads import crop_stack
from axialtrack.geometry import SplitterGeometry, apply_affine, split_frame
from axialtrack.model import Bundle, load_bundle
from axialtrack.pipeline import detect, smooth
from axialtrack.pipeline import localize as localize_module
from axialtrack.pipeline.config import (
    CameraCalibration,
    DetectionConfig,
    LocalizerConfig,
)
from axialtrack.pipeline.crops import crop_pairs
from axialtrack.pipeline.localize import (
    TABLE_COLUMNS,
    Localizer,
    pixels_to_sample_um,
    sample_um_to_pixels,
)
from axialtrack.sim import Background, Beads, CameraModel, Renderer, Sample

PX = 0.10833333333333334  # pixel size of the default optics (um)


class _Result(NamedTuple):
    dz_um: np.ndarray
    sigma_z_um: np.ndarray
    dx_px: np.ndarray
    dy_px: np.ndarray


class BundleEngine:
    """The engine interface over ``Bundle.predict`` (torch, CPU)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.calls = 0

    @property
    def crop_size(self) -> int:
        return self.bundle.crop_size

    @property
    def needs_xy(self) -> bool:
        return bool(self.bundle.config.field_branch)

    def infer(self, pairs: np.ndarray, field_xy: np.ndarray | None) -> _Result:
        self.calls += 1
        out = self.bundle.predict(np.asarray(pairs, np.float32), field_xy)
        names = self.bundle.output_names
        nan = np.full(len(pairs), np.nan, np.float32)

        def col(c: str) -> np.ndarray:
            return out[:, names.index(c)].astype(np.float32) if c in names else nan

        return _Result(col("dz_um"), col("sigma_z_um"), col("dx_px"), col("dy_px"))


class _FakeBundle:
    crop_size = 15
    registration_affine = None
    pixel_size_um = PX
    plane_shape = None
    z_range_um = (-1.0, 1.2)

    def __init__(self, outputs: list[str]) -> None:
        self.output_names = outputs


class FakeEngine:
    """Returns fixed outputs (``dz``, ``dx, dy`` when ``subpixel``)."""

    def __init__(
        self, *, subpixel: bool = False, dxy: float = 0.25, dz: float = 0.1
    ) -> None:
        outs = ["dz_um", "dx_px", "dy_px"] if subpixel else ["dz_um"]
        self.bundle = _FakeBundle(outs)
        self.dz = dz
        self.crop_size = 15
        self.needs_xy = True
        self.subpixel = subpixel
        self.dxy = dxy
        self.seen: list[np.ndarray] = []

    def infer(self, pairs: np.ndarray, field_xy: np.ndarray | None) -> _Result:
        assert field_xy is not None
        assert field_xy.shape == (len(pairs), 2)
        self.seen.append(pairs)
        n = len(pairs)
        d = np.full(n, self.dxy if self.subpixel else np.nan, np.float32)
        return _Result(np.full(n, self.dz, np.float32), np.full(n, np.nan), d, d)


def _renderer(
    beads: Beads, shape: tuple[int, int], seed: int = 0, **kw: object
) -> Renderer:
    sample = Sample(
        beads=beads, background=Background(photons_per_px_s=1000.0), seed=seed
    )
    return Renderer(sample, plane_shape=shape, seed=seed, **kw)  # type: ignore[arg-type]


def _frame(r: Renderer, stage: tuple[float, float, float], i: int) -> np.ndarray:
    return split_frame(r.snap(stage, 0.01 * i, 0.01, i), r.geometry)


def _match(
    truth_xy: np.ndarray, found_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each truth point: distance to the nearest found point and its index."""
    if len(found_xy) == 0:
        return np.full(len(truth_xy), np.inf), np.zeros(len(truth_xy), int)
    return cKDTree(found_xy).query(truth_xy, distance_upper_bound=radius)


# ------------------------------------------------------------------ config
def test_camera_calibration_matches_sim_camera() -> None:
    cam = CameraCalibration()
    model = CameraModel()
    assert CameraCalibration.from_camera_model(model) == cam
    adu = np.array([100, 116, 1100], np.uint16)
    np.testing.assert_allclose(cam.photons(adu), model.photons_from_adu(adu))
    with pytest.raises(ValueError, match="odd"):
        LocalizerConfig(fit_size_px=6)


def test_smooth_matches_scipy() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    # several images through the same scratch buffers (and onnxruntime binding)
    for _ in range(3):
        img = rng.normal(100, 10, (64, 80)).astype(np.float32)
        ref = ndimage.gaussian_filter(img, 1.2, mode="nearest", truncate=2.5)
        np.testing.assert_allclose(smooth(img, 1.2), ref, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def volume_frame() -> tuple[np.ndarray, np.ndarray, float]:
    """A 256x256 frame of 40 beads at depths 0-1.2 um, stage 0.3 um above them."""
    w = 256
    beads = Beads.in_volume(
        40, depth_um=(0.0, 1.2), size_um=(w * PX * 0.9,) * 2, min_separation_um=1.0
    )
    r = _renderer(beads, (w, w), seed=1)
    cz = r.sample.coverslip_z_um
    stage = (0.0, 0.0, cz + 0.3)
    planes = _frame(r, stage, 0)
    truth = r.truth(0.0, stage, exposure_s=0.01)
    return planes, truth, stage[2]


def test_detect_recall_precision(volume_frame: tuple) -> None:
    planes, truth, stage_z = volume_frame
    dz = truth["z_focus_um"] - stage_z
    # in the model's range: within 1 um of plane 0 (plane 1 is 0.5 um deeper)
    sel = np.abs(dz) <= 1.0
    txy = np.stack([truth["x_px0"], truth["y_px0"]], 1)
    det = detect(planes, DetectionConfig(), CameraCalibration())
    dist, _ = _match(txy[sel], det.xy_px, 1.0)
    recall = float(np.mean(dist <= 1.0))
    d_back, _ = _match(det.xy_px, txy, 2.0)
    false_pos = int(np.sum(~np.isfinite(d_back)))
    assert sel.sum() >= 30
    assert recall >= 0.95, recall
    assert false_pos <= 1, false_pos
    assert np.all(np.diff(det.peak_photons) <= 0)  # brightest first
    np.testing.assert_allclose(np.median(det.background_photons), 10.0, rtol=0.2)
    # plane 0 alone misses the particles that are in focus only in plane 1
    det0 = detect(planes, DetectionConfig(source="plane0"), CameraCalibration())
    d0, _ = _match(txy[sel], det0.xy_px, 1.0)
    assert np.mean(d0 <= 1.0) <= recall
    # margin
    det_m = detect(planes, margin_px=20)
    assert np.all((det_m.xy_px >= 20) & (det_m.xy_px < 256 - 20))


def test_detect_empty_and_flat_frames() -> None:
    r = _renderer(Beads(n=0), (128, 160), seed=4)
    planes = _frame(r, (0.0, 0.0, 0.0), 0)
    assert len(detect(planes)) == 0
    flat = np.full((2, 64, 64), 100, np.uint16)
    d = detect(flat)
    assert len(d) == 0
    assert d.xy_px.shape == (0, 2)


def test_detect_registered_sum_uses_affine() -> None:
    # plane 1 shifted by (5, -3) px: only the registered sum adds the two spots
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    spot = np.exp(-((xx - 40) ** 2 + (yy - 50) ** 2) / (2 * 1.5**2))
    spot1 = np.exp(-((xx - 45) ** 2 + (yy - 47) ** 2) / (2 * 1.5**2))
    planes = np.stack([100 + 60 * spot, 100 + 60 * spot1]).astype(np.uint16)
    affine = np.array([[1.0, 0, 5.0], [0, 1.0, -3.0]])
    cfg = DetectionConfig(threshold_photons=600.0)
    d = detect(planes, cfg, affine=affine)
    assert len(d) == 1
    np.testing.assert_array_equal(d.xy_px[0], [40, 50])
    # the same frame without the registration: two weaker peaks, below threshold
    assert len(detect(planes, cfg)) == 0


# -------------------------------------------------------------------- crops
def test_crop_pairs_match_calibration_crops() -> None:
    rng = np.random.default_rng(3)
    h, w, s = 70, 90, 15
    planes = rng.integers(0, 60000, (2, h, w)).astype(np.uint16)
    affine = SplitterGeometry(
        shift_px=(2.4, -1.6), rotation_deg=0.8, scale=1.01
    ).plane1_affine((h, w))
    xy = np.column_stack([rng.uniform(0, w - 1, 400), rng.uniform(0, h - 1, 400)])
    xy[:4] = [[7.5, 7.5], [8.5, 20.0], [6.49, 30], [w - 8.5, h - 8.5]]  # rint ties
    pairs, inside = crop_pairs(planes, xy, affine, s)
    assert pairs.dtype == np.uint16
    assert pairs.shape == (400, 2, s, s)
    x1 = apply_affine(affine, xy)
    half = s // 2
    c0, c1 = np.rint(xy), np.rint(x1)
    expect = np.all((c0 >= half) & (c0 < [w - half, h - half]), axis=1) & np.all(
        (c1 >= half) & (c1 < [w - half, h - half]), axis=1
    )
    np.testing.assert_array_equal(inside, expect)
    assert 50 < inside.sum() < 400
    # the calibration's crops (analysis.py: crop_stack on rint(xy0), rint(A xy0))
    ref0 = crop_stack(planes[0], xy[inside], s)
    ref1 = crop_stack(planes[1], x1[inside], s)
    np.testing.assert_array_equal(pairs[inside, 0], ref0)
    np.testing.assert_array_equal(pairs[inside, 1], ref1)
    # several frames with a frame index per point
    stack = np.stack([planes, planes[:, ::-1, ::-1].copy(), planes + 1])
    fi = rng.integers(0, 3, len(xy))
    pf, inf = crop_pairs(stack, xy, affine, s, frame_index=fi)
    np.testing.assert_array_equal(inf, inside)
    for f in range(3):
        sel = inside & (fi == f)
        np.testing.assert_array_equal(pf[sel, 0], crop_stack(stack[f, 0], xy[sel], s))
        np.testing.assert_array_equal(pf[sel, 1], crop_stack(stack[f, 1], x1[sel], s))
    empty, ok = crop_pairs(planes, np.zeros((0, 2)), affine, s)
    assert empty.shape == (0, 2, s, s)
    assert ok.shape == (0,)
    with pytest.raises(ValueError, match="frame_index"):
        crop_pairs(stack, xy, affine, s)


# -------------------------------------------------------------- coordinates
def test_sample_coordinates_match_renderer_truth() -> None:
    beads = Beads.on_coverslip(20, size_um=(10.0, 8.0), center_um=(12.0, -7.0))
    r = _renderer(beads, (100, 120), seed=2)
    stage = (11.0, -6.5, 0.0)
    truth = r.truth(0.0, stage)
    p0 = np.stack([truth["x_px0"], truth["y_px0"]], 1)
    xy_um = pixels_to_sample_um(p0, r.plane_shape, r.pixel_size_um, stage[:2])
    np.testing.assert_allclose(xy_um[:, 0], truth["x_um"], atol=1e-9)
    np.testing.assert_allclose(xy_um[:, 1], truth["y_um"], atol=1e-9)
    back = sample_um_to_pixels(xy_um, r.plane_shape, r.pixel_size_um, stage[:2])
    np.testing.assert_allclose(back, p0, atol=1e-9)
    # no (or unknown) stage position: relative to the field centre
    rel = pixels_to_sample_um(p0, r.plane_shape, r.pixel_size_um, (np.nan, np.nan))
    np.testing.assert_allclose(rel, xy_um - np.array(stage[:2]), atol=1e-9)
    np.testing.assert_allclose(
        pixels_to_sample_um([[59.5, 49.5]], (100, 120), 0.1), [[0.0, 0.0]]
    )


# ----------------------------------------------------------------- localizer
@pytest.fixture(scope="module")
def coverslip_stack() -> tuple[Renderer, np.ndarray, list, np.ndarray, tuple]:
    """192x192 frames of 25 beads on the coverslip at stage offsets -0.4..0.8 um."""
    w = 192
    beads = Beads.on_coverslip(
        25, size_um=(w * PX * 0.85,) * 2, min_separation_um=2.0, seed=5
    )
    r = _renderer(beads, (w, w), seed=7)
    zf = float(r.z_focus_um(0.05))
    dz = np.linspace(-0.4, 0.8, 7)
    sxy = (3.0, -2.0)
    frames, truths = [], []
    for i, d in enumerate(dz):
        stage = (sxy[0], sxy[1], zf - d)
        frames.append(_frame(r, stage, i))
        truths.append(r.truth(0.01 * i, stage, exposure_s=0.01))
    return r, np.stack(frames), truths, zf - dz, sxy


def _matched(
    locs: pd.DataFrame, truths: list, radius_um: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Z errors, XY errors (um), photon ratios of matched rows; totals.

    Only particles whose 15 x 15 crop fits in plane 0 count.
    """
    ez, exy, ph = [], [], []
    n_truth = n_found = 0
    for f, tr in enumerate(truths):
        p0 = np.stack([tr["x_px0"], tr["y_px0"]], 1)
        tr = tr[np.all((p0 >= 7.5) & (p0 <= 192 - 8.5), axis=1)]
        d = locs[locs["frame"] == f]
        txy = np.stack([tr["x_um"], tr["y_um"]], 1)
        dist, idx = _match(d[["x_um", "y_um"]].to_numpy(), txy, radius_um)
        ok = np.isfinite(dist)
        ez.append(d["z_um"].to_numpy()[ok] - tr["z_focus_um"][idx[ok]])
        exy.append(dist[ok])
        ph.append(d["photons"].to_numpy()[ok] / tr["photons"][idx[ok]])
        n_truth += len(tr)
        n_found += len(np.unique(idx[ok]))
    return (
        np.concatenate(ez),
        np.concatenate(exy),
        np.concatenate(ph),
        n_truth,
        n_found,
    )


def test_xy_accuracy_against_truth(coverslip_stack: tuple) -> None:
    r, planes, truths, stage_z, sxy = coverslip_stack
    results = {}
    for method in ("fit", "centroid"):
        loc = Localizer(
            FakeEngine(),
            plane_shape=r.plane_shape,
            pixel_size_um=r.pixel_size_um,
            affine=r.affine,
            config=LocalizerConfig(xy_method=method),
        )
        # in focus in plane 0 (dz 0) and in plane 1 (dz 0.4 .. 0.6)
        sel = [2, 5, 6]
        locs = loc.localize(
            planes[sel], sel, np.zeros(3), stage_z[sel], stage_xy_um=np.array(sxy)
        )
        locs["frame"] = np.searchsorted(sel, locs["frame"])
        _, exy, _, n_truth, n_found = _matched(locs, [truths[i] for i in sel])
        assert n_found >= 0.95 * n_truth
        results[method] = float(np.sqrt(np.mean(exy**2)))
    # ~2000 photons per plane, 10 background photons per pixel: measured ~12 nm
    assert results["fit"] < 0.020, results
    assert results["fit"] < results["centroid"], results


def test_defocused_particles_refitted_on_the_crop() -> None:
    """Out of focus in both planes (dz -0.7 um): the crop-wide refit places them
    better than the first 7 px window."""
    w = 160
    beads = Beads.on_coverslip(
        16, size_um=(w * PX * 0.8,) * 2, min_separation_um=2.5, seed=9
    )
    r = _renderer(beads, (w, w), seed=4)
    stage = (0.0, 0.0, float(r.z_focus_um(0.05)) + 0.7)  # dz = -0.7 um
    frames = np.stack([_frame(r, stage, i) for i in range(6)])
    truths = [r.truth(0.01 * i, stage, exposure_s=0.01) for i in range(6)]
    rms = {}
    for refit in (None, 0.35):
        loc = Localizer(
            FakeEngine(dz=-0.7),
            plane_shape=(w, w),
            pixel_size_um=PX,
            affine=r.affine,
            config=LocalizerConfig(defocus_refit_um=refit),
        )
        loc.plane_offset_um = 0.5
        locs = loc.localize(frames, np.arange(6), np.zeros(6), stage[2])
        _, exy, _, n_truth, n_found = _matched(locs, truths, radius_um=0.4)
        assert n_found >= 0.6 * n_truth  # the faintest defocused beads are missed
        rms[refit] = float(np.sqrt(np.mean(exy**2)))
    # measured: 260 nm -> 114 nm
    assert rms[0.35] < 0.6 * rms[None], rms
    # and a particle in focus is left alone (dz 0: no refit)
    loc = Localizer(
        FakeEngine(dz=0.0), plane_shape=(w, w), pixel_size_um=PX, affine=r.affine
    )
    loc.plane_offset_um = 0.5
    a = loc.localize(frames[:1], [0], [0.0], stage[2])
    b = Localizer(
        FakeEngine(dz=0.0),
        plane_shape=(w, w),
        pixel_size_um=PX,
        affine=r.affine,
        config=LocalizerConfig(defocus_refit_um=None),
    ).localize(frames[:1], [0], [0.0], stage[2])
    np.testing.assert_array_equal(a["x_px"], b["x_px"])


def test_z_accuracy_with_sim_bundle(sim_bundle: Path, coverslip_stack: tuple) -> None:
    r, planes, truths, stage_z, sxy = coverslip_stack
    engine = BundleEngine(load_bundle(sim_bundle))
    loc = Localizer(engine, plane_shape=r.plane_shape, pixel_size_um=r.pixel_size_um)
    np.testing.assert_allclose(loc.affine, engine.bundle.registration_affine)
    assert loc.xy_method == "fit"
    n = len(planes)
    locs = loc.localize(
        planes, np.arange(n), 0.01 * np.arange(n), stage_z, stage_xy_um=sxy
    )
    assert engine.calls == 1  # one inference call for all frames
    assert list(locs.columns) == list(TABLE_COLUMNS)
    for c, dt in TABLE_COLUMNS.items():
        assert locs[c].dtype == dt, c
    assert (locs["track_id"] == -1).all()
    assert not locs["saturated"].any()
    # neighbour distance: the nearest other localization of the same frame
    for _, g in locs.groupby("frame"):
        xy = g[["x_px", "y_px"]].to_numpy()
        d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        # positions are refined after the neighbour search (defocused ones twice,
        # on their whole crop): within a pixel and a half
        np.testing.assert_allclose(g["neighbour_px"], d.min(axis=1), atol=1.5)
    ez, exy, _ph, n_truth, n_found = _matched(locs, truths)
    assert n_found >= 0.95 * n_truth
    rmse_z = float(np.sqrt(np.mean(ez**2)))
    # the bundle's held-out bead RMSE is ~56 nm (measured here: ~40 nm)
    assert rmse_z < 0.120, rmse_z
    np.testing.assert_allclose(
        locs["z_um"], stage_z[locs["frame"].to_numpy()] + locs["dz_um"]
    )
    assert float(np.sqrt(np.mean(exy**2))) < 0.040
    # photons: background-subtracted sum in the 15x15 plane-0 crop; at focus it
    # holds ~75 % of the photons (the rest is in the PSF wings outside the crop)
    at_focus = locs["frame"] == 2
    ratio = locs.loc[at_focus, "photons"].median() / np.median(truths[2]["photons"])
    assert 0.6 < ratio < 1.05, ratio
    np.testing.assert_allclose(locs["background"].median(), 10.0, rtol=0.2)
    assert loc.timings["frames"] == n
    assert loc.timings["localizations"] == len(locs)
    assert loc.timings["detect"] > 0
    assert loc.timings["infer"] > 0


def test_batched_frames_equal_one_by_one(
    coverslip_stack: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    r, planes, _, stage_z, sxy = coverslip_stack
    engine = FakeEngine()
    loc = Localizer(
        engine,
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
    )
    n = len(planes)
    frames = np.arange(10, 10 + n)
    t = 0.5 + 0.01 * np.arange(n)
    xy = np.tile(sxy, (n, 1))
    xy[1] = np.nan
    batched = loc.localize(planes, frames, t, stage_z, stage_xy_um=xy)
    assert len(engine.seen) == 1
    single = pd.concat(
        [
            loc.localize(planes[f], [frames[f]], [t[f]], stage_z[f], xy[f])
            for f in range(n)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(batched, single)
    assert sorted(set(batched["frame"])) == list(frames)
    # the frames of a batch detected side by side in threads: the same rows
    threaded = Localizer(
        FakeEngine(),
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
        config=LocalizerConfig(detect_threads=3),
    )
    pd.testing.assert_frame_equal(
        threaded.localize(planes, frames, t, stage_z, stage_xy_um=xy), batched
    )
    assert threaded._pool is not None  # the threads did the detection
    # the XY fit in runs in the threads (175 localizations: two runs of at
    # least 64)
    monkeypatch.setattr(localize_module, "_MIN_RUN", 64)
    runs = Localizer(
        FakeEngine(),
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
        config=LocalizerConfig(detect_threads=2),
    )
    assert len(runs._chunks(len(batched))) == 2
    pd.testing.assert_frame_equal(
        runs.localize(planes, frames, t, stage_z, stage_xy_um=xy), batched
    )
    # a frame without a stage position: relative to the field centre
    f1 = batched[batched["frame"] == 11]
    np.testing.assert_allclose(
        f1["x_um"], (f1["x_px"] - (r.plane_shape[1] - 1) / 2) * r.pixel_size_um
    )


def test_network_xy_and_max_per_frame(coverslip_stack: tuple) -> None:
    r, planes, _, stage_z, _ = coverslip_stack
    engine = FakeEngine(subpixel=True, dxy=0.25)
    loc = Localizer(
        engine,
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
        config=LocalizerConfig(max_per_frame=5),
    )
    assert loc.xy_method == "network"
    locs = loc.localize(planes[2], [0], [0.0], stage_z[2])
    assert len(locs) == 5
    # the neighbour distance counts the detections max_per_frame cut
    every = Localizer(
        FakeEngine(subpixel=True, dxy=0.25),
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
    ).localize(planes[2], [0], [0.0], stage_z[2])
    assert len(every) > 5
    same = every.set_index(["x_px", "y_px"]).loc[
        list(zip(locs["x_px"], locs["y_px"], strict=True))
    ]
    np.testing.assert_array_equal(locs["neighbour_px"], same["neighbour_px"])
    # x = crop centre + dx: the crop centre is the detection peak
    np.testing.assert_allclose(locs["x_px"] % 1.0, 0.25)
    np.testing.assert_allclose(locs["y_px"] % 1.0, 0.25)
    np.testing.assert_allclose(locs["z_um"], stage_z[2] + 0.1, rtol=1e-6)
    with pytest.raises(ValueError, match="sub-pixel"):
        Localizer(
            FakeEngine(),
            plane_shape=r.plane_shape,
            pixel_size_um=r.pixel_size_um,
            affine=r.affine,
            config=LocalizerConfig(xy_method="network"),
        )


@pytest.mark.parametrize(
    ("dz", "margin", "expect"),
    [
        (0.1, 0.0, True),
        (1.19, 0.0, True),
        (1.25, 0.0, False),
        (-1.05, 0.0, False),
        (1.1, 0.15, False),
        (-0.8, 0.15, True),
    ],
)
def test_in_range_flag_from_the_bundle_range(
    coverslip_stack: tuple, dz: float, margin: float, expect: bool
) -> None:
    r, planes, _, stage_z, _ = coverslip_stack
    loc = Localizer(
        FakeEngine(dz=dz),
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
        config=LocalizerConfig(range_margin_um=margin),
    )
    assert loc.z_range_um == (-1.0, 1.2)
    locs = loc.localize(planes[2], [0], [0.0], stage_z[2])
    assert len(locs) > 3
    assert locs["in_range"].dtype == bool
    assert (locs["in_range"] == expect).all()


def test_empty_frames_give_typed_empty_table() -> None:
    engine = FakeEngine()
    with pytest.warns(RuntimeWarning, match="identity"):
        loc = Localizer(engine, plane_shape=(64, 64), pixel_size_um=PX)
    planes = np.full((3, 2, 64, 64), 100, np.uint16)
    locs = loc.localize(planes, [0, 1, 2], [0.0, 0.1, 0.2], 50.0)
    assert len(locs) == 0
    assert engine.seen == []
    assert list(locs.columns) == list(TABLE_COLUMNS)
    for c, dt in TABLE_COLUMNS.items():
        assert locs[c].dtype == dt, c
    with pytest.raises(ValueError, match="planes"):
        loc.localize(np.zeros((2, 32, 32), np.uint16), [0], [0.0], 0.0)


def test_saturated_frame_flagged_and_warned_once() -> None:
    beads = Beads.at([(-2.0, 0.0, 0.05), (2.0, 1.0, 0.05)], [2e5, 1e8])
    r = _renderer(beads, (96, 96), seed=3)
    stage = (0.0, 0.0, float(r.z_focus_um(0.05)))
    planes = _frame(r, stage, 0)
    assert planes.max() == 65535
    loc = Localizer(
        FakeEngine(), plane_shape=(96, 96), pixel_size_um=PX, affine=r.affine
    )
    with pytest.warns(RuntimeWarning, match="saturated"):
        locs = loc.localize(planes, [0], [0.0], stage[2])
    assert len(locs) == 2
    sat = locs.set_index(locs["x_um"].round(0))["saturated"]
    assert bool(sat.loc[2.0])
    assert not bool(sat.loc[-2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = loc.localize(planes, [1], [0.01], stage[2])
    assert again["saturated"].sum() == 1


def test_localizer_runs_on_the_onnx_engine(
    sim_bundle: Path, coverslip_stack: tuple
) -> None:
    engine_mod = pytest.importorskip("axialtrack.engine")
    r, planes, _, stage_z, _ = coverslip_stack
    bundle = load_bundle(sim_bundle)
    sel = [1, 4]
    ref = Localizer(
        BundleEngine(bundle), plane_shape=r.plane_shape, pixel_size_um=r.pixel_size_um
    ).localize(planes[sel], sel, [0.0, 0.0], stage_z[sel])
    with engine_mod.select_engine(bundle, "onnxruntime") as engine:
        got = Localizer(
            engine, plane_shape=r.plane_shape, pixel_size_um=r.pixel_size_um
        ).localize(planes[sel], sel, [0.0, 0.0], stage_z[sel])
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(got["dz_um"], ref["dz_um"], atol=1e-4)
    pd.testing.assert_frame_equal(
        got.drop(columns=["dz_um", "z_um"]), ref.drop(columns=["dz_um", "z_um"])
    )


class _SomeOutOfRange(FakeEngine):
    """Every third pair reads dz far outside the calibrated range."""

    def infer(self, pairs: np.ndarray, field_xy: np.ndarray | None) -> _Result:
        r = super().infer(pairs, field_xy)
        dz = np.asarray(r.dz_um).copy()
        dz[::3] = 5.0
        return r._replace(dz_um=dz)


@pytest.mark.parametrize("in_range_only", [True, False])
def test_analyzer_leaves_out_of_range_rows_unlinked(
    coverslip_stack: tuple, in_range_only: bool
) -> None:
    from axialtrack.pipeline import TrackingAnalyzer
    from axialtrack.store import FrameMeta

    r, planes, _, stage_z, _ = coverslip_stack
    ana = TrackingAnalyzer(
        _SomeOutOfRange(),
        plane_shape=r.plane_shape,
        pixel_size_um=r.pixel_size_um,
        affine=r.affine,
        link_in_range_only=in_range_only,
    )
    frames = np.stack([planes[2]] * 3)  # the same static beads three times
    meta = [FrameMeta(t_s=0.01 * i, stage_z_um=stage_z[2]) for i in range(3)]
    locs = ana.analyze(frames, np.arange(3), meta)
    out = ~locs["in_range"].to_numpy()
    assert 0 < out.sum() < len(locs)
    ids = locs["track_id"].to_numpy()
    if in_range_only:
        assert (ids[out] == -1).all()
        assert (ids[~out] >= 0).all()
    else:
        assert (ids >= 0).all()
    summary = ana.finish()
    assert summary is not None
    assert len(summary) == len(np.unique(ids[ids >= 0]))


def test_analyzer_columns_are_the_rows_of_its_table(coverslip_stack: tuple) -> None:
    from axialtrack.pipeline import TrackingAnalyzer
    from axialtrack.store import FrameMeta

    r, planes, _, stage_z, _ = coverslip_stack

    def make() -> TrackingAnalyzer:
        return TrackingAnalyzer(
            _SomeOutOfRange(),
            plane_shape=r.plane_shape,
            pixel_size_um=r.pixel_size_um,
            affine=r.affine,
        )

    frames = np.stack([planes[2]] * 4)
    meta = [FrameMeta(t_s=0.01 * i, stage_z_um=stage_z[2]) for i in range(4)]
    by_table, by_columns = make(), make()
    table = by_table.analyze(frames, np.arange(4), meta)
    cols = by_columns.analyze_columns(frames, np.arange(4), meta)
    assert len(table) > 10
    assert list(cols) == list(table.columns)
    for c in table.columns:
        assert cols[c].dtype == table[c].dtype, c
        np.testing.assert_array_equal(cols[c], table[c].to_numpy(), err_msg=c)
    # the caller owns the arrays: changing them leaves the track summary alone
    cols["z_um"][:] = 0.0
    cols["track_id"][:] = -1
    pd.testing.assert_frame_equal(by_columns.finish(), by_table.finish())
    assert by_columns.n_localizations == by_table.n_localizations == len(table)


def test_analyzer_warmup_runs_every_bucket_of_the_engine(
    coverslip_stack: tuple,
) -> None:
    from axialtrack.pipeline import TrackingAnalyzer

    r, *_ = coverslip_stack
    engine = FakeEngine()
    engine.buckets = (1, 16, 64, 256)  # type: ignore[attr-defined]
    ana = TrackingAnalyzer(
        engine, plane_shape=r.plane_shape, pixel_size_um=r.pixel_size_um
    )
    ana.warmup()
    # each batch size once (CUDA graphs and staging buffers are built per
    # bucket), as uint16 counts like the live crops
    assert [len(p) for p in engine.seen] == [1, 16, 64, 256]
    assert all(p.dtype == np.uint16 for p in engine.seen)
    # and nothing was counted or linked
    assert ana.n_localizations == 0
    assert ana.n_tracks == 0


def test_a_rotated_registration_on_another_roi_warns() -> None:
    c, s_ = np.cos(0.01), np.sin(0.01)
    rotated = np.array([[c, -s_, 2.0], [s_, c, -1.0]])

    def make(plane_shape: tuple[int, int], affine: np.ndarray | None = None) -> None:
        engine = FakeEngine()
        engine.bundle.registration_affine = rotated
        engine.bundle.plane_shape = (64, 64)
        Localizer(engine, plane_shape=plane_shape, pixel_size_um=PX, affine=affine)

    with pytest.warns(RuntimeWarning, match="camera ROI changed"):
        make((128, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make((64, 64))  # the calibration's planes
        make((128, 128), affine=rotated)  # a registration given for these


@pytest.mark.parametrize(("e_per_adu", "bg_e"), [(4.0, 1.6), (5.0, 4.0), (0.5, 8.0)])
def test_background_of_coarsely_quantized_counts_is_unbiased(
    e_per_adu: float, bg_e: float
) -> None:
    """A few electrons per ADU: the median absolute deviation rounds to 0, and
    clipping at it kept only the median's value (biased by the rounding)."""
    from axialtrack.pipeline import background_map

    rng = np.random.default_rng(0)
    e = rng.poisson(bg_e, (512, 512)) + rng.normal(0, 1.0, (512, 512))
    adu = np.rint(100 + e / e_per_adu).astype(np.uint16)
    true = 100 + bg_e / e_per_adu
    assert abs(float(background_map(adu, 32).mean()) - true) < 0.1


def test_background_follows_a_gradient_to_the_edge_of_a_partial_block() -> None:
    """A 200 px high image (not a whole number of 32 px blocks) with a
    background rising 0.5 ADU per px: sampled where each block's pixels lie,
    the background is right across the image, the last rows too (it was up
    to 4.6 ADU low there, and 0.75 ADU low everywhere)."""
    from axialtrack.pipeline import background_map, sample_background

    h, w = 200, 64
    yy, _ = np.mgrid[0:h, 0:w]
    img = np.rint(110 + 0.5 * yy).astype(np.uint16)
    grid = background_map(img, 32)
    ys = np.array([16.0, 100.0, 170.0, 185.0, 192.0])
    est = sample_background(grid, np.stack([np.full(5, 30.0), ys], 1), 32, (h, w))
    err = est - (110 + 0.5 * ys)
    assert np.abs(err[:3]).max() < 0.05
    assert np.abs(err).max() < 0.6  # past the last block's centre: held flat

"""The compiled loops of the live analysis agree with the numpy code they replace."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from axialtrack.pipeline import _kernels
from axialtrack.pipeline._detect import (
    _candidates,
    _kernel,
    detect,
    detection_image,
    smooth,
)
from axialtrack.pipeline._xy import (
    _fit_windows,
    _fit_windows_numpy,
    _windows,
    refine_xy,
)
from axialtrack.pipeline.config import DetectionConfig

pytestmark = pytest.mark.skipif(
    not _kernels.available(), reason="numba kernels unavailable"
)


def _spots(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy Gaussian spots ``(n, k, k)`` (background subtracted) and their
    true centres ``(n, 2)`` (x, y) relative to the window centre."""
    rng = np.random.default_rng(seed)
    half = k // 2
    pos = np.arange(-half, half + 1)
    c = rng.uniform(-1.0, 1.0, (n, 2))
    s = rng.uniform(1.0, 2.5, n)[:, None, None]
    g = np.exp(
        -((pos[None, None, :] - c[:, 0, None, None]) ** 2) / (2 * s**2)
        - (pos[None, :, None] - c[:, 1, None, None]) ** 2 / (2 * s**2)
    )
    img = 400.0 * g + rng.normal(0.0, 4.0, (n, k, k))
    return img.astype(np.float32), c


@pytest.mark.parametrize("method", ["fit", "centroid"])
@pytest.mark.parametrize("k", [7, 11])
def test_compiled_window_fit_equals_numpy(method: str, k: int) -> None:
    img, truth = _spots(500, k, seed=k)
    img[0] = -1.0  # no positive counts: invalid, offset 0
    img[1] = 0.0
    img[1, 0, 0] = 1000.0  # one hot corner pixel
    img[2, :, :] = 0.0
    img[2, :, -1] = 1e6  # pulls the weighted centroid out of the window
    n_iter = 3 if k == 7 else 5
    xy, amp, ok = _fit_windows(img, method, 1.2, n_iter)
    xy_np, amp_np, ok_np = _fit_windows_numpy(img, method, 1.2, n_iter)
    np.testing.assert_array_equal(ok, ok_np)
    assert not ok[0]
    assert ok[1:].all()
    np.testing.assert_allclose(xy, xy_np, atol=1e-4)
    np.testing.assert_allclose(amp, amp_np, rtol=1e-4, atol=1e-3)
    # and both are right: the Gaussian-weighted fit finds the spot centres
    if method == "fit":
        err = np.abs(xy[3:] - truth[3:])
        assert np.median(err) < 0.05, np.median(err)
    with pytest.raises(ValueError, match="unknown xy refinement"):
        _fit_windows(img, "gauss", 1.2, 3)


def test_compiled_windows_equal_numpy_at_the_edges() -> None:
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 4000, (3, 2, 40, 56)).astype(np.uint16)
    n = 200
    fi = rng.integers(0, 3, n)
    # centres beyond every edge: indices are clamped
    c = np.stack([rng.integers(-4, 60, n), rng.integers(-4, 44, n)], axis=1)
    bg = rng.uniform(0.0, 100.0, n).astype(np.float32)[:, None, None]
    for plane in (0, 1):
        out = np.empty((n, 7, 7), np.float32)
        assert _kernels.windows(planes, fi, plane, c, 7, bg, out)
        want = _windows(planes, fi, plane, c, 7).astype(np.float32) - bg
        np.testing.assert_array_equal(out, want)
    # what the kernel does not take is left to numpy
    out = np.empty((n, 7, 7), np.float32)
    assert not _kernels.windows(planes.astype(np.int32), fi, 0, c, 7, bg, out)
    assert not _kernels.windows(planes[:, :, ::2], fi, 0, c, 7, bg, out)


def test_refine_xy_same_with_and_without_kernels(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    h, w = 64, 64
    yy, xx = np.mgrid[:h, :w]
    # a 6 x 5 grid, 9 px apart, jittered: separate spots
    gx, gy = np.meshgrid(np.arange(6) * 9 + 8.0, np.arange(5) * 9 + 10.0)
    truth = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.uniform(-0.5, 0.5, (30, 2))
    planes = np.full((1, 2, h, w), 100.0)
    shift = np.array([1.3, -0.6])  # plane 1 = plane 0 moved by the affine
    for x, y in truth:
        for p, (sx, sy) in enumerate(((0.0, 0.0), shift)):
            planes[0, p] += 800 * np.exp(
                -((xx - x - sx) ** 2 + (yy - y - sy) ** 2) / (2 * 1.3**2)
            )
    planes = rng.poisson(planes).astype(np.uint16)
    affine = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    kw = {
        "affine": affine,
        "background1_adu": np.full(30, 100.0),
        "offset_adu": 0.0,
    }
    fi = np.zeros(30, np.int64)
    peaks = np.rint(truth)
    got = refine_xy(planes, fi, peaks, np.full(30, 100.0), **kw)
    monkeypatch.setitem(_kernels._STATE, "k", None)
    want = refine_xy(planes, fi, peaks, np.full(30, 100.0), **kw)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.sqrt(np.mean((got - truth) ** 2)) < 0.08


def test_kernels_can_be_switched_off() -> None:
    code = "from axialtrack.pipeline import _kernels; print(_kernels.available())"
    for env, want in (("1", "False"), ("0", "True")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "AXIALTRACK_NO_NUMBA": env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == want


@pytest.mark.parametrize(
    ("source", "shift"),
    [("sum", (2, -1)), ("sum", (0, 0)), ("sum", (-70, 3)), ("plane0", (0, 0))],
)
def test_compiled_smoothing_equals_the_detection_image_smoothed(
    source: str, shift: tuple[int, int]
) -> None:
    rng = np.random.default_rng(11)
    h, w = 48, 64
    planes = rng.integers(90, 3000, (2, h, w)).astype(np.uint16)
    affine = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    cfg = DetectionConfig(source=source, sigma_px=1.3)
    k = _kernel(cfg.sigma_px)
    out = np.empty((h, w), np.float32)
    p1 = None if source == "plane0" else planes[1]
    assert _kernels.smooth_detection(planes[0], p1, shift, k, out)
    want = smooth(detection_image(planes, cfg, affine), cfg.sigma_px)
    # the same sums in another order: float32 rounding only
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-3)
    # (the shift beyond the image leaves 2 x plane 0)
    if shift[0] <= -w:
        np.testing.assert_allclose(
            out, smooth(2.0 * planes[0], cfg.sigma_px), rtol=2e-6, atol=2e-3
        )
    assert not _kernels.smooth_detection(
        planes[0].astype(np.float32), p1, shift, k, out
    )


@pytest.mark.parametrize("margin", [0, 5])
def test_compiled_maxima_equal_numpy(margin: int) -> None:
    rng = np.random.default_rng(2)
    img = smooth(rng.normal(100.0, 10.0, (60, 70)), 1.0).astype(np.float32)
    img[10, 10:13] = 500.0  # a plateau: the first in raster order wins
    img[0, 0] = 400.0  # corner peaks: the square is clipped
    img[59, 69] = 400.0
    img[30, 69] = 450.0
    floor = np.float32(101.0)
    got = _kernels.local_maxima(img, float(floor), margin, 3)
    assert got is not None
    rows, cols = _candidates(img, floor, margin, 3)
    np.testing.assert_array_equal(got, rows * img.shape[1] + cols)
    assert 10 * 70 + 10 in got.tolist()
    assert 10 * 70 + 11 not in got.tolist()
    assert (0 in got.tolist()) == (margin == 0)
    assert got.size > 10


def test_detect_finds_the_same_particles_with_and_without_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(4)
    h, w = 96, 96
    yy, xx = np.mgrid[:h, :w]
    planes = np.full((2, h, w), 100.0)
    truth = rng.uniform(4, 92, (25, 2))
    for x, y in truth:
        for p, s in ((0, 1.3), (1, 2.0)):
            planes[p] += 300 * np.exp(-((xx - x - p) ** 2 + (yy - y) ** 2) / (2 * s**2))
    planes = rng.poisson(planes).astype(np.uint16)
    affine = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    for cfg in (DetectionConfig(), DetectionConfig(source="plane0")):
        got = detect(planes, cfg, affine=affine, margin_px=3)
        with monkeypatch.context() as mp:
            mp.setitem(_kernels._STATE, "k", None)
            want = detect(planes, cfg, affine=affine, margin_px=3)
        assert len(got) >= 15
        np.testing.assert_array_equal(got.xy_px, want.xy_px)
        np.testing.assert_allclose(got.peak_photons, want.peak_photons, rtol=1e-4)
        np.testing.assert_allclose(
            got.background_photons, want.background_photons, rtol=1e-6
        )

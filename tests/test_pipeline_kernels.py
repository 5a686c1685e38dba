"""The compiled loops of the live analysis agree with the numpy code they replace."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from axialtrack.pipeline import _kernels
from axialtrack.pipeline.localize import (
    _fit_windows,
    _fit_windows_numpy,
    _windows,
    refine_xy,
)

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

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from axialtrack.geometry import (
    SplitterGeometry,
    apply_affine,
    compose_frame,
    invert_affine,
    split_frame,
)


@pytest.mark.parametrize("layout", ["side-by-side", "top-bottom", "two-cameras"])
@pytest.mark.parametrize("mirror", ["none", "horizontal", "vertical"])
def test_split_compose_roundtrip(layout: str, mirror: str) -> None:
    geo = SplitterGeometry(layout=layout, mirror=mirror)
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 65535, size=(2, 6, 8), dtype=np.uint16)
    raw = compose_frame(planes, geo)
    assert raw.shape == geo.sensor_shape((6, 8))
    back = split_frame(raw, geo)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, planes)


def test_side_by_side_halves_and_mirror() -> None:
    raw = np.arange(4 * 10, dtype=np.uint16).reshape(4, 10)
    geo = SplitterGeometry(layout="side-by-side", mirror="horizontal")
    planes = split_frame(raw, geo)
    assert planes.shape == (2, 4, 5)
    np.testing.assert_array_equal(planes[0], raw[:, :5])
    # plane 1 is the right half, flipped left-right back into plane-0 orientation
    np.testing.assert_array_equal(planes[1], raw[:, 5:][:, ::-1])


def test_top_bottom_with_time_axis() -> None:
    raw = np.arange(3 * 8 * 5, dtype=np.uint16).reshape(3, 8, 5)
    geo = SplitterGeometry(layout="top-bottom", mirror="vertical")
    planes = split_frame(raw, geo)
    assert planes.shape == (3, 2, 4, 5)
    np.testing.assert_array_equal(planes[:, 0], raw[:, :4])
    np.testing.assert_array_equal(planes[:, 1], raw[:, 4:][:, ::-1])


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="even sensor width"):
        split_frame(np.zeros((4, 9), np.uint16), SplitterGeometry())
    with pytest.raises(ValueError, match="even sensor height"):
        split_frame(np.zeros((5, 8), np.uint16), SplitterGeometry(layout="top-bottom"))
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        split_frame(np.zeros((4, 8), np.uint16), SplitterGeometry(layout="two-cameras"))


def test_layout_strings_are_normalized_and_validated() -> None:
    assert SplitterGeometry(layout="Side_By_Side").layout == "side-by-side"
    with pytest.raises(ValidationError, match="unknown splitter layout"):
        SplitterGeometry(layout="diagonal")
    with pytest.raises(ValidationError, match="unknown plane-1 mirror"):
        SplitterGeometry(mirror="sideways")


def test_plane1_affine() -> None:
    geo = SplitterGeometry(shift_px=(1.5, -2.0), rotation_deg=30.0, scale=1.0)
    aff = geo.plane1_affine((11, 11))
    centre = np.array([[5.0, 5.0]])
    # the centre maps to centre + shift; a point 1 px right of centre turns by 30 deg
    np.testing.assert_allclose(apply_affine(aff, centre), [[6.5, 3.0]])
    expected = [[5.0 + np.cos(np.pi / 6) + 1.5, 5.0 + np.sin(np.pi / 6) - 2.0]]
    np.testing.assert_allclose(apply_affine(aff, [[6.0, 5.0]]), expected, atol=1e-12)
    pts = np.random.default_rng(1).uniform(0, 10, size=(20, 2))
    back = apply_affine(invert_affine(aff), apply_affine(aff, pts))
    np.testing.assert_allclose(back, pts, atol=1e-10)

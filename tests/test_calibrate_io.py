"""Importing calibration stacks: layouts, pairs, bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from axialtrack.calibrate.io import StackImportError, load_stack
from axialtrack.geometry import SplitterGeometry, compose_frame

H, W = 24, 20
STEP = 0.1
DELTA = 0.3
N_Z = 9


def _spot(z: np.ndarray, x0: float, y0: float, zf: float) -> np.ndarray:
    """Gaussian spots whose width grows with defocus, shape (len(z), H, W)."""
    yy, xx = np.mgrid[0:H, 0:W]
    s = 1.2 + 2.0 * np.abs(z - zf)[:, None, None]
    return 1000.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2)) / s**2


def _planes(n_fields: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(P, Z, 2, H, W) uint16 dual-plane stacks and stage Z (Z,)."""
    z = 10.0 + STEP * np.arange(N_Z)
    out = np.empty((n_fields, N_Z, 2, H, W), dtype=np.uint16)
    for f in range(n_fields):
        zf = 10.4 + 0.05 * f
        out[f, :, 0] = 100 + _spot(z, 8.0 + f, 11.0, zf)
        out[f, :, 1] = 100 + _spot(z, 8.0 + f, 11.0, zf - DELTA)
    return out, z


@pytest.mark.parametrize("layout", ["side-by-side", "top-bottom"])
@pytest.mark.parametrize("mirror", ["none", "horizontal"])
def test_sensor_layouts_round_trip(tmp_path: Path, layout: str, mirror: str) -> None:
    planes, z = _planes(2)
    geo = SplitterGeometry(layout=layout, mirror=mirror)
    raw = np.stack([[compose_frame(f, geo) for f in field] for field in planes])
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, raw)
    st = load_stack(
        path,
        layout=layout,
        z_step_um=STEP,
        z_start_um=10.0,
        plane_offset_um=DELTA,
        pixel_size_um=0.1,
        mirror=mirror,
    )
    assert st.frames.shape == (2, N_Z, 2, H, W)
    np.testing.assert_array_equal(st.frames, planes)
    np.testing.assert_allclose(st.stage_z_um[1], z)
    assert st.geometry.plane_offset_um == DELTA
    assert st.pixel_size_um == 0.1


def test_two_files_and_dual_plane(tmp_path: Path) -> None:
    planes, _ = _planes(1)
    a, b = tmp_path / "p0.tif", tmp_path / "p1.tif"
    tifffile.imwrite(a, planes[0, :, 0])
    tifffile.imwrite(b, planes[0, :, 1, :, ::-1])
    st = load_stack(
        a,
        layout="two-files",
        second_path=b,
        mirror="horizontal",
        z_step_um=STEP,
        plane_offset_um=DELTA,
        pixel_size_um=0.1,
    )
    np.testing.assert_array_equal(st.frames, planes)
    np.testing.assert_allclose(st.stage_z_um[0], STEP * np.arange(N_Z))

    # OME metadata gives the pixel size and Z step; layout detected from the shape
    ome = tmp_path / "dual.ome.tif"
    tifffile.imwrite(
        ome,
        planes[0],
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.11, "PhysicalSizeZ": STEP},
    )
    st = load_stack(ome, plane_offset_um=DELTA)
    assert st.pixel_size_um == pytest.approx(0.11)
    assert st.z_step_um == pytest.approx(STEP)
    np.testing.assert_array_equal(st.frames, planes)

    arr = tmp_path / "stack.zarr"
    zarr.create_array(str(arr), data=planes[0])
    st = load_stack(
        arr,
        layout="dual-plane",
        z_step_um=STEP,
        plane_offset_um=DELTA,
        pixel_size_um=0.1,
    )
    np.testing.assert_array_equal(st.frames, planes)


def test_single_plane_pairs(tmp_path: Path) -> None:
    planes, z = _planes(1)
    single = planes[0, :, 0]
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, single)
    st = load_stack(
        path,
        layout="single-plane-pairs",
        z_step_um=STEP,
        z_start_um=10.0,
        plane_offset_um=DELTA,
        pixel_size_um=0.1,
    )
    k = 3
    assert st.n_z == N_Z - k
    for i in range(st.n_z):
        # plane 1 is exactly the frame at z + delta
        j = int(np.argmin(np.abs(z - (st.stage_z_um[0, i] + DELTA))))
        np.testing.assert_array_equal(st.frames[0, i, 1], single[j])
        np.testing.assert_array_equal(st.frames[0, i, 0], single[i])
        assert z[j] - st.stage_z_um[0, i] == pytest.approx(DELTA)
    assert st.geometry.plane_offset_um == pytest.approx(DELTA)

    with pytest.raises(StackImportError, match="multiple of the Z step"):
        load_stack(
            path,
            layout="single-plane-pairs",
            z_step_um=STEP,
            plane_offset_um=0.25,
            pixel_size_um=0.1,
        )
    # negative delta pairs backwards
    st = load_stack(
        path,
        layout="single-plane-pairs",
        z_step_um=STEP,
        plane_offset_um=-0.2,
        pixel_size_um=0.1,
    )
    np.testing.assert_array_equal(st.frames[0, :, 1], single[:-2])
    np.testing.assert_array_equal(st.frames[0, :, 0], single[2:])


def test_bad_inputs(tmp_path: Path) -> None:
    planes, _ = _planes(1)
    kw = {"z_step_um": STEP, "plane_offset_um": DELTA, "pixel_size_um": 0.1}
    missing = tmp_path / "nope.tif"
    with pytest.raises(FileNotFoundError, match=r"nope.tif"):
        load_stack(missing, layout="side-by-side", **kw)

    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(StackImportError, match=r"notes.tif.*not a readable image"):
        load_stack(text, layout="side-by-side", **kw)

    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, np.zeros((N_Z, H, 21), np.uint16))
    with pytest.raises(StackImportError, match=r"odd.tif.*even width"):
        load_stack(odd, layout="side-by-side", **kw)

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(a, planes[0, :, 0])
    tifffile.imwrite(b, planes[0, :-1, 1])
    with pytest.raises(StackImportError, match=r"a.tif.*differs"):
        load_stack(a, layout="two-files", second_path=b, **kw)

    with pytest.raises(StackImportError, match="z_range_um"):
        load_stack(a, layout="single-plane-pairs", z_range_um=2.0, **kw)

    few = tmp_path / "few.tif"
    tifffile.imwrite(few, np.zeros((2, H, 2 * W), np.uint16))
    with pytest.raises(StackImportError, match=r"few.tif.*at least 3"):
        load_stack(few, layout="side-by-side", **kw)

    ome = tmp_path / "z.ome.tif"
    tifffile.imwrite(
        ome, planes[0], ome=True, metadata={"axes": "ZCYX", "PhysicalSizeZ": 0.2}
    )
    with pytest.raises(StackImportError, match=r"Z step is 0.2"):
        load_stack(ome, **kw)

    with pytest.raises(StackImportError, match="layout"):
        load_stack(a, **kw)
    with pytest.raises(StackImportError, match="plane_offset_um"):
        load_stack(a, layout="single-plane-pairs", z_step_um=STEP, pixel_size_um=0.1)


def test_cli_from_tiff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from calib_sim import make_stack

    from axialtrack.acquire import cli_calibrate

    # a recorded dual-plane bead stack (simulated) saved as a plain TIFF
    stack = make_stack(n_fields=1, plane_shape=(128, 128), n_beads=12, z_step_um=0.1)
    path = tmp_path / "dual.tif"
    tifffile.imwrite(path, stack.frames[0])
    z_start = float(stack.stage_z_um[0, 0])
    parser = argparse.ArgumentParser(prog="axialtrack")
    cli_calibrate.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "qc.zarr"
    args = parser.parse_args(
        [
            "calibrate",
            "--from",
            str(path),
            "--layout",
            "dual-plane",
            "--out",
            str(out),
            "--z-step",
            "0.1",
            "--z-start",
            str(z_start),
            "--plane-offset",
            str(stack.geometry.plane_offset_um),
            "--pixel-size",
            str(stack.pixel_size_um),
        ]
    )
    assert args.func(args) == 0
    qc = zarr.open_group(out, mode="r").attrs["axialtrack_calibration"]
    assert qc["n_z"] == stack.n_z
    assert qc["n_accepted"] >= 6
    assert "beads accepted" in capsys.readouterr().out
    assert args.func(args) == 2  # refuses an existing output
    bad = parser.parse_args(
        ["calibrate", "--from", str(tmp_path / "x.tif"), "--out", str(tmp_path / "o")]
    )
    assert bad.func(bad) == 2

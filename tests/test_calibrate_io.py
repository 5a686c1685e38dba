"""Importing calibration stacks: layouts, pairs, bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from axialtrack.calibrate._readers import _canonical_axes
from axialtrack.calibrate.io import StackImportError, load_stack, load_stacks
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
            "--no-psf-fit",
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


# ------------------------------------------------- several fields and metadata
KW = {"plane_offset_um": DELTA, "pixel_size_um": 0.1}


def test_several_files_and_glob(tmp_path: Path) -> None:
    planes, _ = _planes(3)
    for f in range(3):
        tifffile.imwrite(tmp_path / f"field{f}.tif", planes[f])
    st = load_stacks(
        str(tmp_path / "field*.tif"), layout="dual-plane", z_step_um=STEP, **KW
    )
    assert st.n_fields == 3
    np.testing.assert_array_equal(st.frames, planes)
    assert st.meta["fields_per_file"] == [1, 1, 1]
    # repeated paths: the same as the glob, in the order given
    st2 = load_stacks(
        [tmp_path / "field2.tif", tmp_path / "field0.tif"],
        layout="dual-plane",
        z_step_um=STEP,
        **KW,
    )
    np.testing.assert_array_equal(st2.frames, planes[[2, 0]])
    with pytest.raises(FileNotFoundError, match=r"nofield\*.tif.*matches no file"):
        load_stacks(str(tmp_path / "nofield*.tif"), layout="dual-plane", **KW)
    tifffile.imwrite(tmp_path / "short.tif", planes[0, :-2])
    with pytest.raises(StackImportError, match=r"short.tif: 7 Z steps.*not 9"):
        load_stacks(
            [tmp_path / "field0.tif", tmp_path / "short.tif"],
            layout="dual-plane",
            z_step_um=STEP,
            **KW,
        )


def test_concatenated_fields_refused_then_split(tmp_path: Path) -> None:
    planes, _ = _planes(3)
    path = tmp_path / "all.tif"
    tifffile.imwrite(path, planes.reshape(3 * N_Z, 2, H, W))
    kw = {"layout": "dual-plane", "z_step_um": STEP, **KW}
    # 27 frames read as one 2.6 um stack: the beads come into focus 3 times
    with pytest.raises(
        StackImportError,
        match=r"all.tif: 27 frames per field \(shape \(27, 2, 24, 20\).*come into "
        r"focus 3 times, every 9 frames.*Fix: pass --fields 3",
    ):
        load_stack(path, **kw)
    # stating the range confirms one stack (beads at several depths)
    assert load_stack(path, z_range_um=2.6, **kw).n_z == 27
    st = load_stack(path, fields=3, **kw)
    assert st.n_fields == 3
    np.testing.assert_array_equal(st.frames, planes)
    with pytest.raises(StackImportError, match=r"27 frames .* do not divide into 4"):
        load_stack(path, fields=4, **kw)
    # a long Z axis without focus repeats: refused by its span (frames x step)
    long_path = tmp_path / "long.tif"
    tifffile.imwrite(long_path, np.repeat(planes[0], 6, axis=0))
    with pytest.raises(
        StackImportError, match=r"54 frames per field .* span 5.30 um .*more than"
    ):
        load_stack(long_path, **kw)
    assert load_stack(long_path, z_range_um=5.3, **kw).n_z == 54


def test_ome_z_positions(tmp_path: Path) -> None:
    planes, z = _planes(2)
    frames = planes.reshape(2 * N_Z, 2, H, W)
    path = tmp_path / "sawtooth.ome.tif"
    zs = np.concatenate([z, z]).round(4).tolist()
    tifffile.imwrite(
        path,
        frames,
        ome=True,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 0.1,
            "Plane": {"PositionZ": [v for v in zs for _ in range(2)]},
        },
    )
    with pytest.raises(
        StackImportError,
        match=r"sawtooth.ome.tif: 18 frames \(.*axes ZCYX\): the file's stage Z .* "
        r"not monotonic; it restarts every 9 frames.*Fix: pass --fields 2",
    ):
        load_stack(path, plane_offset_um=DELTA)
    st = load_stack(path, plane_offset_um=DELTA, fields=2)
    np.testing.assert_allclose(st.stage_z_um, [z, z])
    assert st.pixel_size_um == pytest.approx(0.1)
    with pytest.raises(StackImportError, match=r"move 0.1000 um per frame, not .*0.2"):
        load_stack(path, plane_offset_um=DELTA, fields=2, z_step_um=0.2)
    with pytest.raises(StackImportError, match=r"pixel size is 0.1 um, not .* 0.2"):
        load_stack(path, plane_offset_um=DELTA, fields=2, pixel_size_um=0.2)


def _write_ome_writers(root: Path, fmt: str, planes: np.ndarray) -> None:
    ow = pytest.importorskip("ome_writers")
    p, n_z, _, h, w = planes.shape
    dims = ow.dims_from_standard_axes({"p": p, "z": n_z, "c": 2, "y": h, "x": w})
    dims = [d.model_copy(update={"scale": STEP}) if d.name == "z" else d for d in dims]
    settings = ow.AcquisitionSettings(
        root_path=str(root), dimensions=dims, dtype="uint16", format=fmt
    )
    with ow.create_stream(settings) as stream:
        for f in range(p):
            for k in range(n_z):
                for c in range(2):
                    stream.append(planes[f, k, c])


@pytest.mark.parametrize("fmt", ["zarr", "tiff"])
def test_ome_writers_positions(tmp_path: Path, fmt: str) -> None:
    """OME-Zarr / OME-TIFF as pymmcore-plus writes them (ome-writers): positions
    are fields, the two channels the two planes."""
    planes, _ = _planes(2)
    root = tmp_path / ("run.ome.zarr" if fmt == "zarr" else "run.ome.tiff")
    _write_ome_writers(root, fmt, planes)
    if fmt == "zarr":
        sources: list[str | Path] = [root]
    else:  # one file per position, each naming both: read once
        sources = sorted(str(q) for q in tmp_path.rglob("*.ome.tif*"))
        assert len(sources) == 2
    st = load_stacks(sources, **KW)
    assert st.n_fields == 2
    np.testing.assert_array_equal(st.frames, planes)
    if fmt == "tiff":  # either file alone holds (names) both positions
        np.testing.assert_array_equal(load_stacks(sources[1:], **KW).frames, planes)
    assert st.z_step_um == pytest.approx(STEP)
    assert st.meta["layout"] == "dual-plane"


def test_micromanager_axes() -> None:
    """Micro-Manager MMStack series (tifffile): positions R are fields, a
    channel axis of 2 is the plane axis, single T is dropped."""
    data = np.arange(1 * 3 * 5 * 2 * 4 * 6).reshape(1, 3, 5, 2, 4, 6)
    out = _canonical_axes(data, "TRZCYX", Path("x_MMStack_Pos0.ome.tif"))
    assert out.shape == (3, 5, 2, 4, 6)
    np.testing.assert_array_equal(out, data[0])
    # positions after Z: reordered
    out = _canonical_axes(data[0].transpose(1, 0, 2, 3, 4), "ZRCYX", Path("y.tif"))
    np.testing.assert_array_equal(out, data[0])
    # time-lapse of stacks: refused
    with pytest.raises(StackImportError, match=r"both Z \(5\) and T \(3\) vary"):
        _canonical_axes(data[0], "TZCYX", Path("t.tif"))

"""The napari plugin, headless: a run store opens as co-registered layers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from axialtrack.store import RunWriter, WriterOptions, open_run
from axialtrack.store.world import world_localizations

napari = pytest.importorskip("napari")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

H, W = 20, 30
PX = 0.25
DT = 0.01
T0 = 143.0  # the camera clock at the first frame
STAGE = (100.0, -50.0)  # stage x, y (um)
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)
MANIFEST = (
    Path(__file__).parents[1] / "src" / "axialtrack" / "napari_plugin" / "napari.yaml"
)


def _spots(i: int) -> list[tuple[int, int, int]]:
    """(track_id, row, column) of the spots of frame ``i``."""
    return [(0, 3 + i, 4 + 2 * i), (1, 15 - i, 25 - i)]


def _frame(i: int) -> np.ndarray:
    f = np.full((2, H, W), 100, np.uint16)
    for _, r, c in _spots(i):
        f[:, r, c] = 1000
    return f


def _locs(i: int) -> dict[str, np.ndarray]:
    """The spots of frame ``i`` as the live pipeline stores them (stage frame,
    camera clock)."""
    s = _spots(i)
    r = np.array([v[1] for v in s], float)
    c = np.array([v[2] for v in s], float)
    return {
        "frame": np.full(len(s), i, np.int64),
        "t_s": np.full(len(s), T0 + DT * i),
        "x_um": STAGE[0] + (c - (W - 1) / 2) * PX,
        "y_um": STAGE[1] + (r - (H - 1) / 2) * PX,
        "z_um": np.array([1.0, 2.0]) + 0.01 * i,
        "dz_um": np.zeros(len(s)),
        "sigma_z_um": np.full(len(s), 0.03),
        "photons": np.array([1500.0, 2500.0]),
        "background": np.full(len(s), 10.0),
        "track_id": np.array([v[0] for v in s], np.int64),
    }


def _write(path: Path, n: int = 6) -> None:
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=PX, options=FAST
    ) as w:
        for i in range(n):
            w.append_frame(
                _frame(i),
                {"t_s": T0 + DT * i, "stage_x_um": STAGE[0], "stage_y_um": STAGE[1]},
            )
            w.append_localizations(_locs(i))


@pytest.fixture
def viewer() -> Any:
    """napari's viewer model with the plugin registered (the Qt viewer needs an
    OpenGL context, which Qt's offscreen platform does not give here; the
    layers, their transforms and the reader are the same)."""
    from napari.components import ViewerModel
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "axialtrack" not in pm._manifests:  # not installed: register the manifest
        pm.register(PluginManifest.from_file(MANIFEST))
    return ViewerModel()


def test_world_frame_columns(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    _write(path)
    run = open_run(path)
    world = world_localizations(run)
    want_c = np.concatenate([[v[2] for v in _spots(i)] for i in range(6)])
    want_r = np.concatenate([[v[1] for v in _spots(i)] for i in range(6)])
    np.testing.assert_allclose(world["x_um"], want_c * PX, atol=1e-9)
    np.testing.assert_allclose(world["y_um"], want_r * PX, atol=1e-9)
    np.testing.assert_allclose(world["t_s"], np.repeat(np.arange(6) * DT, 2), atol=1e-9)
    np.testing.assert_allclose(world["t_camera_s"], run.localizations["t_s"])
    np.testing.assert_allclose(world["x_stage_um"], run.localizations["x_um"])


def test_reader_layers_are_co_registered(tmp_path: Path, viewer: Any) -> None:
    path = tmp_path / "run.zarr"
    _write(path)
    layers = viewer.open(str(path), plugin="axialtrack")
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Image", "Image", "Points", "Tracks"]
    img0, img1, pts, trk = layers
    import dask.array as da

    assert isinstance(img0.data, da.Array)  # lazy
    # the frames wrapped as they are, not a slice of a larger dask array (a
    # slice costs a graph key per frame when the store is opened)
    layers_ = img0.data.__dask_graph__().layers
    assert not any(name.startswith("getitem") for name in layers_)
    assert img0.data.shape == (6, H, W)
    np.testing.assert_allclose(img0.scale, [DT, PX, PX])
    np.testing.assert_allclose(img0.translate, [0, 0, 0])
    assert img0.contrast_limits[0] >= 100
    assert img0.contrast_limits[1] == pytest.approx(1000, abs=1)
    assert img1.contrast_limits == img0.contrast_limits

    # every localization lies, in world coordinates, on its spot's pixel
    frames = pts.data[:, 0].astype(int)
    for k, p in enumerate(pts.data):
        world = np.asarray(pts.data_to_world(p))
        idx = np.asarray(img0.world_to_data(world))
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-9)
        t, r, c = np.round(idx).astype(int).tolist()
        assert t == frames[k]
        assert img0.data[t, r, c].compute() == 1000
    # the tracks too
    for row in trk.data:
        world = np.asarray(trk._data_to_world(row[1:]))
        idx = np.round(np.asarray(img0.world_to_data(world))).astype(int)
        assert img0.data[tuple(idx)].compute() == 1000
    # the layers' extents: points and tracks lie in the images' world box, and
    # the time axes are the same
    box = img0.extent.world
    np.testing.assert_allclose(box, img1.extent.world)
    for layer in (pts, trk):
        ext = layer.extent.world
        assert ext[0][0] == box[0][0] == 0.0
        np.testing.assert_allclose(ext[1][0], box[1][0])
        assert (ext[0][1:] >= box[0][1:] - 1e-9).all()
        assert (ext[1][1:] <= box[1][1:] + 1e-9).all()
    assert list(pts.features.columns)[:3] == ["frame", "t_s", "x_um"]
    assert {"sigma_z_um", "photons", "z_um"} <= set(pts.features.columns)
    # colored by z: the two tracks' points differ in color
    assert not np.allclose(pts.face_color[0], pts.face_color[1])


def test_reader_refuses_other_paths(tmp_path: Path) -> None:
    from axialtrack.napari_plugin import get_reader

    (tmp_path / "other.zarr").mkdir()
    assert get_reader(str(tmp_path / "other.zarr")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    path = tmp_path / "run.zarr"
    _write(path, 2)
    assert get_reader(str(path)) is not None


def test_tracks_writer_round_trip(tmp_path: Path, viewer: Any) -> None:
    path = tmp_path / "run.zarr"
    _write(path)
    layers = viewer.open(str(path), plugin="axialtrack")
    out = tmp_path / "tracks.csv"
    from axialtrack.napari_plugin import write_tracks

    trk = layers[3]
    written = write_tracks(str(out), trk.data, trk._get_state())
    table = pd.read_csv(written[0])
    world = world_localizations(open_run(path)).sort_values(["track_id", "frame"])
    np.testing.assert_allclose(table["x_um"], world["x_um"], atol=1e-9)
    np.testing.assert_allclose(table["t_frame_s"], world["frame"] * DT, atol=1e-9)
    np.testing.assert_allclose(table["z_um"], world["z_um"])


def test_follow_widget_adds_new_frames(tmp_path: Path, viewer: Any) -> None:
    from qtpy.QtWidgets import QApplication

    from axialtrack.napari_plugin._widget import FollowRunWidget

    _app = QApplication.instance() or QApplication([])

    path = tmp_path / "run.zarr"
    w = RunWriter(path, kind="live", plane_shape=(H, W), pixel_size_um=PX, options=FAST)
    try:
        for i in range(2):
            w.append_frame(_frame(i), {"t_s": T0 + DT * i})
            w.append_localizations(_locs(i))
        deadline = time.monotonic() + 60
        while w.rows_committed < 4:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        layers = viewer.open(str(path), plugin="axialtrack")
        assert layers[0].data.shape[0] == 2
        widget = FollowRunWidget(viewer)
        widget.timer.stop()  # driven by hand here
        assert widget.update_layers() == 0
        for i in range(2, 5):
            w.append_frame(_frame(i), {"t_s": T0 + DT * i})
            w.append_localizations(_locs(i))
        while w.rows_committed < 10:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert widget.update_layers() == 1
        assert layers[0].data.shape[0] == 5
        assert len(layers[2].data) == 10
        assert "5 frames, 10 localizations, open" in widget.status.text()
    finally:
        w.close()


def test_save_tracks_of_selected_points(tmp_path: Path, viewer: Any) -> None:
    from qtpy.QtWidgets import QApplication

    from axialtrack.napari_plugin._widget import FollowRunWidget

    _app = QApplication.instance() or QApplication([])
    path = tmp_path / "run.zarr"
    _write(path)
    layers = viewer.open(str(path), plugin="axialtrack")
    pts = layers[2]
    # select one point of track 1 (the second spot of frame 2)
    k = int(np.flatnonzero((pts.features["track_id"] == 1) & (pts.data[:, 0] == 2))[0])
    pts.selected_data = {k}
    widget = FollowRunWidget(viewer)
    widget.timer.stop()
    out = tmp_path / "sel.csv"
    assert widget.save_selected_tracks(str(out)) == 6
    table = pd.read_csv(out)
    assert set(table["track_id"]) == {1}
    assert table["frame"].tolist() == list(range(6))
    want = world_localizations(open_run(path))
    want = want[want["track_id"] == 1]
    np.testing.assert_allclose(table["x_um"], want["x_um"])


REG = {"shift_px": (2.5, -1.5), "rotation_deg": 8.0, "scale": 1.04}


def _gauss(shape: tuple[int, int], x: float, y: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return 100 + 2000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))


def _write_registered(path: Path, beads: list[tuple[float, float]]) -> None:
    """Frames whose plane 1 shows each plane-0 bead ``(x, y)`` where the
    splitter's registration puts it."""
    from axialtrack.geometry import SplitterGeometry, apply_affine

    geo = SplitterGeometry(layout="side-by-side", **REG)  # type: ignore[arg-type]
    a = geo.plane1_affine((H, W))
    f = np.zeros((2, H, W))
    for x, y in beads:
        x1, y1 = apply_affine(a, np.array([[x, y]]))[0]
        f[0] += _gauss((H, W), x, y) - 100
        f[1] += _gauss((H, W), x1, y1) - 100
    frame = (f + 100).round().astype(np.uint16)
    with RunWriter(
        path,
        kind="live",
        plane_shape=(H, W),
        pixel_size_um=PX,
        splitter=geo,
        options=FAST,
    ) as w:
        for i in range(2):
            w.append_frame(frame, {"t_s": T0 + DT * i})


def _centroid(img: np.ndarray, x: float, y: float, r: int = 4) -> np.ndarray:
    """``(row, column)`` centroid of the spot near ``(x, y)`` (background off)."""
    r0, c0 = round(y), round(x)
    sub = img[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1].astype(float) - 100
    yy, xx = np.mgrid[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1]
    return np.array([(sub * yy).sum(), (sub * xx).sum()]) / sub.sum()


def test_plane1_is_registered_in_world(tmp_path: Path, viewer: Any) -> None:
    """A bead's spot lands on the same world position in both planes: plane 1
    carries the splitter's registration (shift, rotation, scale) as its affine."""
    from axialtrack.geometry import SplitterGeometry, apply_affine

    path = tmp_path / "reg.zarr"
    beads = [(9.0, 8.0), (19.0, 12.5)]
    _write_registered(path, beads)
    img0, img1 = viewer.open(str(path), plugin="axialtrack")
    np.testing.assert_allclose(img0.affine.affine_matrix, np.eye(4))
    assert not np.allclose(img1.affine.affine_matrix, np.eye(4))
    a = SplitterGeometry(**REG).plane1_affine((H, W))  # type: ignore[arg-type]
    for x, y in beads:
        x1, y1 = apply_affine(a, np.array([[x, y]]))[0]
        rc0 = _centroid(np.asarray(img0.data[1]), x, y)
        rc1 = _centroid(np.asarray(img1.data[1]), x1, y1)
        w0 = np.asarray(img0.data_to_world([1, *rc0]))
        w1 = np.asarray(img1.data_to_world([1, *rc1]))
        # the spot of plane 1 is 1-3 px away in its own pixels ...
        assert np.hypot(*(rc1 - rc0)) > 1.0
        # ... and within 0.05 px of plane 0's in the world
        np.testing.assert_allclose(w1, w0, atol=0.05 * PX)
        np.testing.assert_allclose(w0[1:], [y * PX, x * PX], atol=0.05 * PX)


def test_real_viewer_under_a_display(tmp_path: Path) -> None:
    """A real ``napari.Viewer(show=False)`` (Qt and OpenGL, under Xvfb where
    ``xvfb-run`` is installed, else the session's X display) opens a run store
    with the plugin: four layers whose world extents overlap exactly (the
    planes' boxes equal, points and tracks inside, one time axis). Runs in a
    subprocess: the test session's Qt application uses the offscreen
    platform, which has no OpenGL."""
    import json
    import shutil
    import subprocess
    import sys

    script = Path(__file__).parent / "store_helpers" / "napari_viewer.py"
    path = tmp_path / "run.zarr"
    _write(path)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    if shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1024x768x24"]
    elif os.environ.get("DISPLAY"):
        cmd = []
    else:
        pytest.skip("no X display: install Xvfb (xvfb-run) to open a real Viewer")
    proc = subprocess.run(
        [*cmd, sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    no_gl = proc.returncode == 3 or "Qt platform plugin" in proc.stderr
    if proc.returncode != 0 and no_gl:
        reason = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
        pytest.skip(f"no OpenGL display for a napari Viewer: {reason}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["kinds"] == ["Image", "Image", "Points", "Tracks"]
    assert got["gl_renderer"]
    img0, img1, pts, trk = (np.asarray(e) for e in got["extents"])
    # the planes' boxes are the same, to the last bit
    assert img0.tolist() == img1.tolist()
    np.testing.assert_allclose(
        img0, [[0, 0, 0], [(6 - 1) * DT, (H - 1) * PX, (W - 1) * PX]]
    )
    # the viewer's world box is the images' box: nothing sticks out
    assert got["world_extent"] == img0.tolist()
    for ext in (pts, trk):
        assert ext[0][0] == img0[0][0]
        assert ext[1][0] == img0[1][0]
        assert (ext[0][1:] >= img0[0][1:]).all()
        assert (ext[1][1:] <= img0[1][1:]).all()

"""``axialtrack export``: every format round-trips, and the tools that read it
(where they are Python packages) open it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from axialtrack.cli import main
from axialtrack.store import RunWriter, WriterOptions, open_run
from axialtrack.store.export import FORMATS, export_run
from axialtrack.store.world import world_localizations

H, W = 20, 30
PX = 0.25
DT = 0.01
T0 = 143.0
STAGE = (12.0, -7.0)
N_FRAMES = 8
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)


def _locs(i: int) -> dict[str, np.ndarray]:
    """Three tracks and, in frame 3, one unlinked localization."""
    tid = np.array([0, 1, 2] + ([-1] if i == 3 else []), np.int64)
    n = len(tid)
    r = np.array([3.0 + i, 15.0 - i, 10.0, 1.0])[:n]
    c = np.array([4.0 + 2 * i, 25.0 - i, 5.0 + 0.5 * i, 1.0])[:n]
    return {
        "frame": np.full(n, i, np.int64),
        "t_s": np.full(n, T0 + DT * i),
        "x_um": STAGE[0] + (c - (W - 1) / 2) * PX,
        "y_um": STAGE[1] + (r - (H - 1) / 2) * PX,
        "z_um": np.array([1.0, 2.0, -0.5, 0.0])[:n] + 0.01 * i,
        "dz_um": np.zeros(n),
        "sigma_z_um": np.array([0.02, 0.03, 0.04, 0.05])[:n],
        "photons": np.array([1500.0, 2500.0, 900.0, 300.0])[:n],
        "background": np.full(n, 10.0),
        "track_id": tid,
    }


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=PX, options=FAST
    ) as w:
        for i in range(N_FRAMES):
            w.append_frame(
                np.full((2, H, W), 100, np.uint16),
                {"t_s": T0 + DT * i, "stage_x_um": STAGE[0], "stage_y_um": STAGE[1]},
            )
            w.append_localizations(_locs(i))
    return path


@pytest.fixture(scope="module")
def world(run_path: Path) -> pd.DataFrame:
    return world_localizations(open_run(run_path))


def _linked(world: pd.DataFrame) -> pd.DataFrame:
    return world[world["track_id"] >= 0].sort_values(["track_id", "frame"])


def test_world_frame_of_the_fixture(world: pd.DataFrame) -> None:
    # pixel (r, c) of frame i: (c * px, r * px), i * dt from the run start
    row = world[(world["frame"] == 2) & (world["track_id"] == 0)].iloc[0]
    assert row["x_um"] == pytest.approx(8 * PX)
    assert row["y_um"] == pytest.approx(5 * PX)
    assert row["t_s"] == pytest.approx(2 * DT)
    assert row["t_camera_s"] == pytest.approx(T0 + 2 * DT)


def test_csv_and_parquet(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    locs_csv, tracks_csv = export_run(run_path, "csv", tmp_path / "a")
    back = pd.read_csv(locs_csv)
    pd.testing.assert_frame_equal(back, world, check_dtype=False)
    summary = pd.read_csv(tracks_csv)
    assert sorted(summary["track_id"]) == [0, 1, 2]
    assert (summary["n_localizations"] == N_FRAMES).all()

    locs_pq, tracks_pq = export_run(run_path, "parquet", tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(locs_pq), world)
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(locs_pq).metadata[b"axialtrack"])
    assert meta["units"]["x_um"] == "um"
    assert meta["units"]["t_s"] == "s"
    assert meta["units"]["photons"] == "photons"
    assert len(pd.read_parquet(tracks_pq)) == 3


def test_trackpy(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    (path,) = export_run(run_path, "trackpy", tmp_path / "a")
    df = pd.read_csv(path)
    assert list(df.columns[:5]) == ["frame", "x", "y", "z", "particle"]
    linked = _linked(world)
    np.testing.assert_allclose(df["x"], linked["x_um"])
    np.testing.assert_allclose(df["z"], linked["z_um"])
    np.testing.assert_array_equal(df["particle"], linked["track_id"])
    trackpy = pytest.importorskip("trackpy")
    # trackpy reads it as its own linked DataFrame: track 2 moves 0.5 px a frame
    msd = trackpy.imsd(df, mpp=1.0, fps=1 / DT, max_lagtime=3)
    assert msd[2].iloc[0] == pytest.approx((0.5 * PX) ** 2)


def test_geff_validates(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    geff = pytest.importorskip("geff")
    from geff.validate.data import ValidationConfig

    (path,) = export_run(run_path, "geff", tmp_path / "a")
    geff.validate_structure(str(path))
    graph, _meta = geff.read(
        str(path), data_validation=ValidationConfig(graph=True, tracklet=True)
    )
    assert graph.number_of_nodes() == 3 * N_FRAMES
    assert graph.number_of_edges() == 3 * (N_FRAMES - 1)
    from axialtrack.pipeline import read_geff

    nodes, _ = read_geff(path)
    linked = world[world["track_id"] >= 0]
    back = nodes.loc[linked.index]
    np.testing.assert_allclose(back["x_um"], linked["x_um"])
    np.testing.assert_allclose(back["t_s"], linked["t_s"])  # from the run start


def test_napari_tracks(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    data_path, feats_path = export_run(run_path, "napari", tmp_path / "a")
    data = np.load(data_path)
    feats = pd.read_csv(feats_path)
    linked = _linked(world)
    assert data.shape == (3 * N_FRAMES, 5)
    np.testing.assert_allclose(data[:, 1], linked["frame"] * DT)
    np.testing.assert_allclose(data[:, 4], linked["x_um"])
    pytest.importorskip("napari")
    from napari.layers import Tracks

    layer = Tracks(data, features=feats)
    assert layer.features["photons"].tolist() == linked["photons"].tolist()


def test_thunderstorm(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    (path,) = export_run(run_path, "thunderstorm", tmp_path / "a")
    df = pd.read_csv(path)
    assert {"x [nm]", "y [nm]", "z [nm]", "intensity [photon]"} <= set(df.columns)
    assert "uncertainty_z [nm]" in df.columns
    np.testing.assert_allclose(df["x [nm]"] / 1000, world["x_um"])
    np.testing.assert_allclose(df["z [nm]"] / 1000, world["z_um"])
    np.testing.assert_allclose(df["uncertainty_z [nm]"] / 1000, world["sigma_z_um"])
    np.testing.assert_array_equal(df["frame"], world["frame"] + 1)


def test_picasso(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    import yaml

    hdf, yml = export_run(run_path, "picasso", tmp_path / "a")
    with h5py.File(hdf, "r") as f:
        locs = f["locs"][...]
    np.testing.assert_allclose(locs["x"] * PX, world["x_um"], rtol=1e-6)
    np.testing.assert_allclose(locs["y"] * PX, world["y_um"], rtol=1e-6)
    np.testing.assert_array_equal(locs["frame"], world["frame"])
    info = list(yaml.safe_load_all(yml.read_text()))
    assert info[0]["Frames"] == N_FRAMES
    assert (info[0]["Width"], info[0]["Height"]) == (W, H)
    assert info[0]["Pixelsize"] == pytest.approx(PX * 1000)


def test_trackmate(run_path: Path, world: pd.DataFrame, tmp_path: Path) -> None:
    pytrackmate = pytest.importorskip("pytrackmate")
    (path,) = export_run(run_path, "trackmate", tmp_path / "a")
    spots = pytrackmate.trackmate_peak_import(path, get_tracks=True)
    assert len(spots) == len(world)
    spots = spots.sort_values("spot_id").reset_index(drop=True)
    np.testing.assert_allclose(spots["x"], world["x_um"])
    np.testing.assert_allclose(spots["z"], world["z_um"])
    np.testing.assert_allclose(spots["t"], world["frame"] * DT)
    # the three tracks come back as three labels; the unlinked spot alone
    linked = world["track_id"].to_numpy() >= 0
    labels = spots["label"].to_numpy()
    for t in range(3):
        assert len(set(labels[world["track_id"].to_numpy() == t])) == 1
    assert len(set(labels[linked])) == 3
    assert labels[~linked][0] not in set(labels[linked])


def test_cli_export_refuses_to_overwrite(run_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    assert main(["export", str(run_path), "--to", "trackpy", "--out", str(out)]) == 0
    target = Path(f"{out}_trackpy.csv")
    before = target.read_bytes()
    target.write_bytes(b"keep")
    rc = main(["export", str(run_path), "--to", "trackpy", "--out", str(out)])
    assert rc == 2
    assert target.read_bytes() == b"keep"
    args = ["export", str(run_path), "--to", "trackpy", "--out", str(out)]
    assert main([*args, "--overwrite"]) == 0
    assert target.read_bytes() == before
    # a directory that is not a GEFF is never replaced
    (tmp_path / "y.geff").mkdir()
    (tmp_path / "y.geff" / "mine.txt").write_text("data")
    geff_args = ["export", str(run_path), "--to", "geff", "--out", str(tmp_path / "y")]
    assert main([*geff_args, "--overwrite"]) == 2
    assert (tmp_path / "y.geff" / "mine.txt").read_text() == "data"
    assert main(["export", str(tmp_path / "missing.zarr"), "--to", "csv"]) == 2
    assert set(FORMATS) == {
        "csv",
        "parquet",
        "trackpy",
        "geff",
        "napari",
        "thunderstorm",
        "picasso",
        "trackmate",
    }

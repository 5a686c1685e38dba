"""Table metadata (units), quality flags, and calibration runs without tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from axialtrack.store import (
    InvalidTableError,
    RunWriter,
    WriterOptions,
    open_run,
    recover,
    summarize,
)
from axialtrack.store.flags import LocFlag, localization_flags
from axialtrack.store.world import world_localizations

H, W = 16, 24
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)


def _batch(frame: int, n: int = 4) -> dict[str, np.ndarray]:
    return {
        "frame": np.full(n, frame, np.int64),
        "t_s": np.full(n, 0.01 * frame),
        "x_um": np.arange(n) * 2.0,
        "y_um": np.zeros(n),
        "z_um": np.zeros(n),
        "dz_um": np.zeros(n),
        "photons": np.array([1000.0, -63.0, 0.0, np.nan])[:n],
        "background": np.full(n, 10.0),
        "saturated": np.array([True, False, False, False])[:n],
        "in_range": np.array([True, True, False, True])[:n],
        "neighbour_px": np.array([20.0, 20.0, 3.0, np.inf])[:n],
    }


def test_units_in_table_metadata(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=FAST
    ) as w:
        w.append_frame(np.zeros((2, H, W), np.uint16), {"t_s": 0.0})
        w.append_localizations(_batch(0))
        w.write_tracks({"track_id": np.array([0]), "duration_s": np.array([1.0])})
    loc = json.loads((path / "localizations" / "zarr.json").read_text())["attributes"]
    assert loc["units"]["x_um"] == "um"
    assert loc["units"]["t_s"] == "s"
    assert loc["units"]["photons"] == "photons"
    assert loc["units"]["background"] == "photons/pixel"
    assert loc["units"]["neighbour_px"] == "pixel"
    assert "frame" not in loc["units"]  # no unit
    meta = json.loads((path / "frame_meta" / "zarr.json").read_text())["attributes"]
    assert meta["units"]["stage_z_um"] == "um"
    tracks = json.loads((path / "tracks" / "zarr.json").read_text())["attributes"]
    assert tracks["units"] == {"duration_s": "s"}


def test_flags_from_the_pipeline_columns() -> None:
    table = pd.DataFrame(_batch(0))
    flags = localization_flags(table, pixel_size_um=0.1, overlap=8.0)
    assert flags.tolist() == [
        LocFlag.SATURATED,
        LocFlag.LOW_PHOTONS,  # negative photometry
        LocFlag.LOW_PHOTONS | LocFlag.OUT_OF_RANGE | LocFlag.OVERLAPPING,
        LocFlag.LOW_PHOTONS,  # NaN photometry
    ]
    # without neighbour_px, overlap is measured within each frame (in pixels)
    t2 = table.drop(columns=["neighbour_px", "saturated", "in_range"])
    t2["photons"] = 100.0
    t2["x_um"] = [0.0, 0.5, 5.0, 10.0]  # 5 px apart for the first two
    t2["frame"] = [0, 0, 0, 1]
    f2 = localization_flags(t2, pixel_size_um=0.1, overlap=8.0)
    assert f2.tolist() == [LocFlag.OVERLAPPING, LocFlag.OVERLAPPING, 0, 0]
    # a stored flags column keeps its bits
    t2["flags"] = [0, 0, 16, 0]
    assert localization_flags(t2, pixel_size_um=0.1)[2] == 16


def test_world_table_carries_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=FAST
    ) as w:
        w.append_frame(np.zeros((2, H, W), np.uint16), {"t_s": 0.0})
        w.append_localizations(_batch(0))
    world = world_localizations(open_run(path))
    assert world["flags"].tolist() == [1, 2, 14, 2]


def test_calibration_run_has_no_table_groups(tmp_path: Path) -> None:
    path = tmp_path / "calibration.zarr"
    with RunWriter(
        path, kind="calibration", plane_shape=(H, W), pixel_size_um=0.1, options=FAST
    ) as w:
        for i in range(3):
            w.append_frame(np.full((2, H, W), i, np.uint16), {"t_s": 0.01 * i})
        with pytest.raises(InvalidTableError, match="calibration run holds frames"):
            w.append_localizations(_batch(0))
        with pytest.raises(InvalidTableError, match="calibration run holds frames"):
            w.write_tracks({"track_id": np.array([0])})
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == [
        "frame_meta",
        "frames",
    ]
    run = open_run(path)
    assert run.n_frames == 3
    assert run.n_localizations == 0
    assert len(run.localizations) == 0
    assert "x_um" in run.localizations.columns
    assert len(run.tracks) == 0
    assert summarize(path)["state"] == "closed"
    assert not recover(path).was_open

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


def test_bulk_column_read_equals_zarr(tmp_path: Path) -> None:
    """The direct chunk-file read gives what zarr gives: values, fill of chunks
    never written, a partial last chunk, dtypes; other codecs go through zarr."""
    import zarr

    from axialtrack.store._columns import _plain_codec, read_columns

    g = zarr.open_group(tmp_path / "t.zarr", mode="w")
    rng = np.random.default_rng(3)
    n = 1000
    vals = {
        "f": rng.normal(size=n),
        "i": rng.integers(-5, 5, n).astype(np.int64),
        "b": rng.random(n) < 0.5,
        "s": rng.integers(0, 9, n).astype(np.int8),
    }
    zstd = zarr.codecs.ZstdCodec(level=1, checksum=False)
    for name, v in vals.items():
        fill = -1 if v.dtype.kind == "i" else 0
        a = g.create_array(
            name,
            shape=(n + 50,),
            chunks=(128,),
            dtype=v.dtype,
            fill_value=fill,
            compressors=(zstd,),
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        a[:n] = v
    # a chunk never written reads as the fill value
    (tmp_path / "t.zarr" / "i" / "c.2").unlink()
    raw = g.create_array("raw", shape=(n,), chunks=(100,), dtype="f4", compressors=None)
    raw[:] = np.arange(n, dtype="f4")
    blosc = g.create_array(
        "blosc",
        shape=(n,),
        chunks=(100,),
        dtype="u2",
        compressors=(zarr.codecs.BloscCodec(),),
    )
    blosc[:] = np.arange(n, dtype="u2")
    assert _plain_codec(g["f"]) == "zstd"  # type: ignore[arg-type]
    assert _plain_codec(g["raw"]) == "raw"  # type: ignore[arg-type]
    assert _plain_codec(g["blosc"]) is None  # type: ignore[arg-type]
    names = [*vals, "raw", "blosc"]
    got = read_columns(g, tmp_path / "t.zarr", names, n - 3)
    for name in names:
        want = np.asarray(g[name][: n - 3])  # type: ignore[index]
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert (got["i"][256:384] == -1).all()
    # a damaged chunk (not the size its metadata promises) falls back to zarr,
    # which raises rather than returning wrong rows
    (tmp_path / "t.zarr" / "raw" / "c" / "0").write_bytes(b"\0" * 12)
    with pytest.raises(ValueError, match="size"):
        read_columns(g, tmp_path / "t.zarr", ["raw"], n)
    with pytest.raises(ValueError, match="f"):
        read_columns(g, tmp_path / "t.zarr", ["f"], n + 51)

"""The run store's root as an OME-Zarr image: validators and readers that know
nothing of axialtrack, on closed runs and on runs still being written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from axialtrack.store import RunWriter, WriterOptions, open_run, read_attrs, recover

H, W = 16, 24
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)


def _frame(i: int) -> np.ndarray:
    """Camera-like frame: a 100 ADU offset, a bright spot, Poisson noise."""
    rng = np.random.default_rng(i)
    f = 100 + rng.poisson(20, (2, H, W))
    f[:, 5:8, 6:9] += 900
    return f.astype(np.uint16)


def _wait_for(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _ome(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def _scale(ome: dict[str, Any]) -> list[float]:
    ds = ome["multiscales"][0]["datasets"][0]
    return ds["coordinateTransformations"][0]["scale"]


def _validate(path: Path) -> None:
    """Both validators, on the store's own path."""
    yaozarrs = pytest.importorskip("yaozarrs")
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image

    yaozarrs.validate_zarr_store(str(path))
    image = Image.from_zarr(zarr.open_group(str(path), mode="r"))
    assert image.ome_attributes.multiscales[0].datasets[0].path == "frames/0"


def test_root_is_an_ome_zarr_image_for_any_reader(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    frames = [_frame(i) for i in range(6)]
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.108, options=FAST
    ) as w:
        for i, f in enumerate(frames):
            w.append_frame(f, {"t_s": 143.0 + 0.01 * i})
    _validate(path)
    root = _ome(path)
    inner = json.loads((path / "frames" / "zarr.json").read_text())["attributes"]
    assert inner["ome"]["omero"] == root["omero"]
    assert _scale(inner["ome"]) == _scale(root)
    assert _scale(root) == pytest.approx([0.01, 1.0, 0.108, 0.108])
    # the display window comes from the data (frames 0, 1, 2, 4, 8, ... are
    # sampled), not the uint16 range
    data = np.stack([frames[i] for i in (0, 1, 2, 4)])
    for p, ch in enumerate(root["omero"]["channels"]):
        win = ch["window"]
        assert win["min"] == data[:, p].min()
        assert win["max"] == data[:, p].max()
        assert data[:, p].min() <= win["start"] < 200
        assert 900 < win["end"] <= data[:, p].max()

    # ome-zarr-py, given the store's path, finds the image and its channels
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(str(path)))())
    image = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs))
    assert image.data[0].shape == (6, 2, H, W)
    np.testing.assert_array_equal(np.asarray(image.data[0][3]), frames[3])
    assert image.metadata["channel_names"] == ["plane 0", "plane 1"]
    assert (
        image.metadata["contrast_limits"][0][1]
        == root["omero"]["channels"][0]["window"]["end"]
    )


def test_a_store_being_written_validates_and_shows_only_committed_frames(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=FAST
    ) as w:
        for i in range(10):
            w.append_frame(_frame(i), {"t_s": 5.0 + 0.02 * i})
        _wait_for(lambda: w.frames_committed == 10, "10 frames committed")
        # the time scale is measured while the run is written
        _wait_for(
            lambda: abs(_scale(_ome(path))[0] - 0.02) < 1e-9, "the measured interval"
        )
        assert read_attrs(path)["state"] == "open"
        _validate(path)
        # any reader sees the committed frames only (not a 256-frame block)
        arr = zarr.open_array(str(path / "frames" / "0"), mode="r")
        assert arr.shape == (10, 2, H, W)
        np.testing.assert_array_equal(arr[9], _frame(9))
        assert _ome(path)["omero"]["channels"][0]["window"]["end"] > 900
        for i in range(10, 300):  # past the first block of 256
            w.append_frame(_frame(i % 10), {"t_s": 5.0 + 0.02 * i})
        _wait_for(lambda: w.frames_committed == 300, "300 frames committed")
        n = read_attrs(path)["n_frames"]
        assert n == 300
        assert zarr.open_array(str(path / "frames" / "0"), mode="r").shape[0] == 300
        assert open_run(path).frames.shape == (300, 2, H, W)
        _validate(path)


def test_nominal_interval_is_the_time_scale_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with RunWriter(
        path,
        kind="live",
        plane_shape=(H, W),
        pixel_size_um=0.1,
        frame_interval_s=0.0025,
        options=FAST,
    ) as w:
        assert _scale(_ome(path))[0] == 0.0025
        w.append_frame(_frame(0), {"t_s": 0.0})
    assert _scale(_ome(path))[0] == 0.0025


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_removes_frame_chunks_past_the_committed_shape(
    tmp_path: Path,
) -> None:
    """A killed writer leaves chunks past ``n_frames``; the array's shape no
    longer covers them, so recover deletes them itself."""
    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=FAST
    ) as w:
        for i in range(4):
            w.append_frame(_frame(i), {"t_s": 0.01 * i})
    chunk = path / "frames" / "0" / "c.3.0.0.0"
    stray = path / "frames" / "0" / "c.6.0.0.0"
    stray.write_bytes(chunk.read_bytes())
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["axialtrack"]["state"] = "open"
    meta["attributes"]["axialtrack"]["writer"]["pid"] = _dead_pid()
    (path / "zarr.json").write_text(json.dumps(meta))
    report = recover(path)
    assert report.dropped_frame_chunks == 1
    assert not stray.exists()
    assert chunk.exists()
    assert open_run(path).frames.shape == (4, 2, H, W)

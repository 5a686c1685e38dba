"""The replay camera, and the live/localize commands on replayed data."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from axialtrack.devices.replay import ReplayCamera, open_movie
from axialtrack.geometry import split_frame
from axialtrack.live import CoreSource, LiveRunner, open_live_writer
from axialtrack.rig import load_rig, splitter_geometry
from axialtrack.store import FrameMeta, RunWriter, open_run

PLANE = (32, 48)
N = 12


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    planes = rng.integers(100, 300, size=(N, 2, *PLANE), dtype=np.uint16)
    planes[:, :, 10, 12] = 6000
    path = tmp_path / "rec.zarr"
    with RunWriter(path, kind="live", plane_shape=PLANE, pixel_size_um=0.1) as w:
        for i in range(N):
            w.append_frame(planes[i], FrameMeta(t_s=0.1 * i, stage_z_um=40.0 + i))
    return path, planes


@pytest.fixture
def replay_core() -> Iterator[object]:
    c = load_rig("replay-dualplane")
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


def test_config_loads(replay_core) -> None:
    core = replay_core
    assert core.getCameraDevice() == "Camera"
    assert core.getFocusDevice() == "Z"
    assert core.getPixelSizeUm() == pytest.approx(0.108333)
    with pytest.raises(RuntimeError, match="no Source"):
        core.snapImage()


def test_replay_run_store_as_live(replay_core, recording, tmp_path: Path) -> None:
    core = replay_core
    path, planes = recording
    core.setProperty("Camera", "Source", str(path))
    core.setProperty("Camera", "FrameRateHz", 400)
    assert int(core.getProperty("Camera", "Frames")) == N
    geo = splitter_geometry(core)
    assert (core.getImageHeight(), core.getImageWidth()) == geo.sensor_shape(PLANE)
    core.snapImage()
    np.testing.assert_array_equal(split_frame(core.getImage(), geo), planes[0])

    w = open_live_writer(
        tmp_path / "live.zarr",
        geometry=geo,
        plane_shape=PLANE,
        pixel_size_um=core.getPixelSizeUm(),
    )
    from axialtrack.devices import get_device

    get_device(core, "Camera", ReplayCamera).rewind()
    m = LiveRunner(CoreSource(core), None, w, geometry=geo).run(n_frames=2 * N + 3)
    assert m.frames_in == m.frames_written == 2 * N + 3  # looped
    run = open_run(tmp_path / "live.zarr")
    got = run.frames[:]
    np.testing.assert_array_equal(got[:N], planes)
    np.testing.assert_array_equal(got[N : 2 * N], planes)
    meta = run.frame_meta
    assert np.all(np.diff(meta["t_s"].to_numpy()) > 0)
    np.testing.assert_allclose(meta["t_s"].diff().dropna(), 1 / 400, rtol=1e-3)
    np.testing.assert_allclose(meta["stage_z_um"][:N], 40.0 + np.arange(N))


def test_preload_reads_before_the_sequence(replay_core, recording) -> None:
    from axialtrack.devices import get_device

    core = replay_core
    path, planes = recording
    cam = get_device(core, "Camera", ReplayCamera)
    core.setProperty("Camera", "Source", str(path))
    assert not isinstance(cam._movie.frames, np.ndarray)  # lazy until asked
    core.setProperty("Camera", "Preload", 1)
    assert isinstance(cam._movie.frames, np.ndarray)  # read now, not at start
    np.testing.assert_array_equal(cam._movie.frames, planes)
    core.setProperty("Camera", "Source", str(path))  # a new source: read at once
    assert isinstance(cam._movie.frames, np.ndarray)


def test_replay_no_loop_ends_with_warning(replay_core, recording, tmp_path) -> None:
    core = replay_core
    path, _ = recording
    core.setProperty("Camera", "Source", str(path))
    core.setProperty("Camera", "Loop", 0)
    core.setProperty("Camera", "FrameRateHz", 0)
    geo = splitter_geometry(core)
    w = open_live_writer(
        tmp_path / "live.zarr", geometry=geo, plane_shape=PLANE, pixel_size_um=0.1
    )
    m = LiveRunner(CoreSource(core), None, w, geometry=geo).run(n_frames=100)
    assert m.stop_reason == "source-ended"
    assert m.frames_in == m.frames_written == N
    assert any(f"after {N} of 100 frames" in s for s in m.warnings)
    assert open_run(tmp_path / "live.zarr").n_frames == N


def test_tiff_and_zarr_movies(tmp_path: Path, recording) -> None:
    _, planes = recording
    geo = splitter_geometry(load_rig("replay-dualplane"))
    sensor = np.stack([np.hstack([p[0], p[1]]) for p in planes])
    tifffile.imwrite(tmp_path / "sensor.tif", sensor)
    tifffile.imwrite(tmp_path / "planes.ome.tif", planes, metadata={"axes": "TCYX"})
    m = open_movie(tmp_path / "sensor.tif")
    assert m.layout == "sensor"
    assert len(m) == N
    np.testing.assert_array_equal(split_frame(m.frame(3), geo), planes[3])
    m = open_movie(tmp_path / "planes.ome.tif")
    assert m.layout == "planes"
    np.testing.assert_array_equal(m.frame(5), planes[5])
    import zarr

    zarr.create_array(tmp_path / "movie.zarr", data=sensor)
    m = open_movie(tmp_path / "movie.zarr", "sensor")
    np.testing.assert_array_equal(m.frame(2), sensor[2])
    with pytest.raises(ValueError, match="not 'planes'"):
        open_movie(tmp_path / "sensor.tif", "planes")
    with pytest.raises(FileNotFoundError):
        open_movie(tmp_path / "missing.tif")


# ------------------------------------------------------------------ CLI
@pytest.fixture
def fake_analyzer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the model-based analyzer with the toy one of the runner tests."""
    from live_fakes import PeakAnalyzer

    import axialtrack.pipeline.cli as cli

    monkeypatch.setattr(
        cli,
        "_make_analyzer",
        lambda bundle, **kw: PeakAnalyzer(kw.get("pixel_size_um", 0.1)),
    )
    # the toy analyzer has no bundle to check
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)


def _parse(argv: list[str]) -> argparse.Namespace:
    from axialtrack.pipeline.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_live_on_replay_and_refuses_existing(
    recording, tmp_path: Path, fake_analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = recording
    out = tmp_path / "live.zarr"
    argv = [
        "live",
        "--config",
        "replay-dualplane",
        "--source",
        str(path),
        "--rate",
        "200",
        "--model",
        "fake.axialmodel",
        "--frames",
        "30",
        "--out",
        str(out),
        "--no-status",
    ]
    args = _parse(argv)
    assert args.func(args) == 0
    run = open_run(out)
    assert run.n_frames == 30
    assert run.attrs["live_metrics"]["frames_in"] == 30
    assert len(run.localizations) > 0
    mtime = (out / "zarr.json").stat().st_mtime_ns
    args = _parse(argv)
    assert args.func(args) == 2  # refused
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    assert open_run(out).n_frames == 30
    args = _parse([*argv, "--overwrite"])
    assert args.func(args) == 0
    # --overwrite with a run that never stores a frame: the old run comes back
    old_meta = open_run(out).frame_meta
    # --frames 0 (refused by argparse first, and by cmd_live itself)
    args = _parse([*argv, "--overwrite"])
    args.frames = 0
    assert args.func(args) == 2
    from axialtrack.live import LiveRunner

    def no_camera(self, *a, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("camera did not start")

    monkeypatch.setattr(LiveRunner, "run", no_camera)
    args = _parse([*argv, "--overwrite"])
    # the run is the MDA's output: its failure is reported, exit 1
    assert args.func(args) == 1
    run = open_run(out)
    assert run.n_frames == 30
    pd.testing.assert_frame_equal(run.frame_meta, old_meta)
    assert not list(tmp_path.glob(".live.zarr.replaced-*"))


def test_cli_localize_fills_skipped(
    recording, tmp_path: Path, fake_analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, planes = recording  # written without analysis: every frame skipped
    assert not open_run(path).frame_meta["analyzed"].any()
    args = _parse(["localize", str(path), "--model", "fake.axialmodel"])
    assert args.func(args) == 0
    run = open_run(path)
    assert run.frame_meta["analyzed"].all()
    assert sorted(set(run.localizations["frame"])) == list(range(N))
    n = len(run.localizations)
    args = _parse(["localize", str(path), "--model", "m", "--all"])
    assert args.func(args) == 0
    assert len(open_run(path).localizations) == n
    # a TIFF movie of sensor frames into a new run
    sensor = np.stack([np.hstack([p[0], p[1]]) for p in planes])
    tifffile.imwrite(tmp_path / "movie.tif", sensor)
    out = tmp_path / "movie.zarr"
    argv = ["localize", str(tmp_path / "movie.tif"), "--model", "m", "--out"]
    args = _parse([*argv, str(out), "--pixel-size", "0.1", "--frame-interval", "0.01"])
    assert args.func(args) == 0
    run = open_run(out)
    np.testing.assert_array_equal(run.frames[:], planes)
    assert run.frame_meta["analyzed"].all()
    assert len(run.localizations) == n
    # a model that does not load leaves an existing output as it was
    import axialtrack.pipeline.cli as cli

    mtime = (out / "zarr.json").stat().st_mtime_ns
    monkeypatch.setattr(cli, "_load_analyzer", lambda *a, **kw: None)
    args = _parse(
        [
            *argv,
            str(out),
            "--pixel-size",
            "0.1",
            "--overwrite",
            "--frame-interval",
            "0.01",
        ]
    )
    assert args.func(args) == 2
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    assert open_run(out).n_frames == N


def test_cli_localize_of_a_movie_that_fails_part_way_keeps_the_rest_unanalyzed(
    recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from live_fakes import PeakAnalyzer

    import axialtrack.pipeline.cli as cli

    class FailsLater(PeakAnalyzer):
        def analyze(self, planes, indices, meta):  # type: ignore[no-untyped-def]
            if indices[0] >= 4:
                raise ZeroDivisionError("analyzer bug")
            return super().analyze(planes, indices, meta)

    monkeypatch.setattr(cli, "_make_analyzer", lambda bundle, **kw: FailsLater())
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    _, planes = recording
    sensor = np.stack([np.hstack([p[0], p[1]]) for p in planes])
    tifffile.imwrite(tmp_path / "movie.tif", sensor)
    out = tmp_path / "movie.zarr"
    args = _parse(
        [
            "localize",
            str(tmp_path / "movie.tif"),
            "--model",
            "m",
            "--out",
            str(out),
            "--pixel-size",
            "0.1",
            "--batch",
            "2",
        ]
    )
    with pytest.raises(ZeroDivisionError):
        args.func(args)
    run = open_run(out)
    analyzed = run.frame_meta["analyzed"].to_numpy(bool)
    # the frames of the batches analyzed are marked, the stored rest are not
    assert analyzed[:4].all()
    assert not analyzed[4:].any()
    assert run.n_frames >= 4


def test_cli_localize_all_that_links_nothing_drops_the_old_tracks(
    recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    from live_fakes import PeakAnalyzer

    import axialtrack.pipeline.cli as cli

    path, _ = recording
    monkeypatch.setattr(cli, "_make_analyzer", lambda bundle, **kw: PeakAnalyzer())
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    args = _parse(["localize", str(path), "--model", "m"])
    assert args.func(args) == 0
    assert len(open_run(path).tracks) == 3  # PeakAnalyzer's summary

    class LinksNothing(PeakAnalyzer):
        def finish(self) -> None:  # type: ignore[override]
            return None

    monkeypatch.setattr(cli, "_make_analyzer", lambda bundle, **kw: LinksNothing())
    args = _parse(["localize", str(path), "--model", "m", "--all"])
    assert args.func(args) == 0
    run = open_run(path)
    assert len(run.localizations) > 0
    assert len(run.tracks) == 0  # no tracks of rows that were replaced


def test_latency_of_a_replay_starts_when_the_frame_was_due(
    replay_core, recording
) -> None:
    """t_host of replayed frames is the schedule (exactly one period apart), so
    a replay that falls behind (a busy CPU) counts in the latency."""
    import time

    core = replay_core
    path, _ = recording
    core.setProperty("Camera", "Source", str(path))
    core.setProperty("Camera", "FrameRateHz", 200.0)
    src = CoreSource(core)
    src.start(6)
    got = []
    deadline = time.monotonic() + 60  # a generous overall limit, not a per-frame one
    while len(got) < 6 and time.monotonic() < deadline:
        f = src.next(1.0)
        if f is not None:  # a loaded machine may take longer than 1 s per frame
            got.append((f.t_host, time.perf_counter()))
    src.stop()
    assert len(got) == 6
    due = np.array([g[0] for g in got])
    np.testing.assert_allclose(np.diff(due), 1 / 200, rtol=0, atol=1e-6)
    assert all(t_due <= t_taken for t_due, t_taken in got)


def test_cli_live_takes_saturation_from_the_cameras_bit_depth(
    recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from live_fakes import PeakAnalyzer

    import axialtrack.pipeline.cli as cli

    class Core:
        def __init__(self, bits: int) -> None:
            self.bits = bits

        def getCameraDevice(self) -> str:
            return "Camera"

        def getImageBitDepth(self) -> int:
            return self.bits

        def hasProperty(self, dev: str, prop: str) -> bool:
            return False

    from axialtrack.camera import camera_from_core

    assert camera_from_core(Core(12)) == {"bit_depth": 12}
    assert camera_from_core(Core(16)) == {"bit_depth": 16}
    seen: dict = {}

    def make(bundle, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return PeakAnalyzer(kw.get("pixel_size_um", 0.1))

    monkeypatch.setattr(cli, "_make_analyzer", make)
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    path, _ = recording
    argv = ["live", "--config", "replay-dualplane", "--source", str(path)]
    argv += ["--model", "m", "--frames", "3", "--out", str(tmp_path / "a.zarr")]
    args = _parse([*argv, "--no-status"])
    assert args.func(args) == 0
    assert seen["localizer"].saturation_adu == 65535  # the replay camera: 16 bits


@pytest.mark.parametrize("form", ["number", "csv", "csv-no-header"])
def test_cli_localize_movie_stage_z(
    recording,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    form: str,
) -> None:
    """A TIFF movie records no stage Z: --stage-z gives it, as a number or a CSV
    of one value per frame, and z_um is then finite."""
    from live_fakes import PeakAnalyzer

    import axialtrack.pipeline.cli as cli

    monkeypatch.setattr(cli, "_make_analyzer", lambda bundle, **kw: PeakAnalyzer())
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    _, planes = recording
    sensor = np.stack([np.hstack([p[0], p[1]]) for p in planes])
    tifffile.imwrite(tmp_path / "movie.tif", sensor)
    n = len(sensor)
    z = 10.0 + 0.01 * np.arange(n)
    if form == "number":
        value, want = "12.5", np.full(n, 12.5)
    else:
        csv = tmp_path / "z.csv"
        head = "stage_z_um\n" if form == "csv" else ""
        csv.write_text(head + "\n".join(f"{v:.3f}" for v in z) + "\n")
        value, want = str(csv), z
    out = tmp_path / "movie.zarr"
    base = ["localize", str(tmp_path / "movie.tif"), "--model", "m"]
    args = _parse([*base, "--out", str(out), "--pixel-size", "0.1", "--stage-z", value])
    assert args.func(args) == 0
    run = open_run(out)
    np.testing.assert_allclose(run.frame_meta["stage_z_um"].to_numpy(), want)
    locs = run.localizations
    assert len(locs)
    assert np.isfinite(locs["z_um"]).all()


def test_cli_localize_stage_z_refusals(
    recording,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import axialtrack.pipeline.cli as cli
    from axialtrack.cli import main

    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    path, planes = recording
    sensor = np.stack([np.hstack([p[0], p[1]]) for p in planes])
    tifffile.imwrite(tmp_path / "movie.tif", sensor)
    short = tmp_path / "short.csv"
    short.write_text("1.0\n2.0\n")
    out = tmp_path / "m.zarr"
    for value, words in (
        (str(short), f"2 values; the movie has {len(sensor)} frames"),
        ("nowhere.csv", "neither a number"),
    ):
        argv = ["localize", str(tmp_path / "movie.tif"), "--model", "m"]
        argv += ["--out", str(out), "--pixel-size", "0.1", "--stage-z", value]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in " ".join(err.split())
        assert not out.exists()
    # a run store records its own stage Z
    assert main(["localize", str(path), "--model", "m", "--stage-z", "1"]) == 2
    assert "--stage-z is for a movie" in capsys.readouterr().err

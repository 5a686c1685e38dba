"""Every acquisition through pymmcore-plus's MDA runner: the handler's run
control, the live sequence, two cameras' frames paired by event, the replay
camera under the MDA, and ``axialtrack live`` on that path."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import useq

from axialtrack.geometry import SplitterGeometry
from axialtrack.live import TrackingHandler, live_sequence, nominal_fps
from axialtrack.rig import load_rig, splitter_geometry
from axialtrack.store import FrameMeta, RunWriter, open_run


def _run_in_thread(core: Any, seq: Any, handler: Any, timeout_s: float = 300) -> None:
    """``core.mda.run`` in a thread that must end within ``timeout_s``: a run
    whose ``sequenceFinished`` never comes hangs pymmcore-plus's relay thread
    (and the test would hang with it)."""
    errors: list[BaseException] = []
    # the engine gives up on a camera silent for 5 s; a simulated camera
    # starved by a loaded machine can be (the test waits on the run instead)
    core.mda.engine.timeout_base = max(core.mda.engine.timeout_base, 120.0)

    def body() -> None:
        try:
            core.mda.run(seq, output=handler)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), "the MDA run did not end (sequenceFinished never came)"
    assert not errors, errors


def test_live_sequence_frames_or_duration(core) -> None:
    seq = live_sequence(core, n_frames=37)
    events = list(seq)
    assert len(events) == 37
    assert {e.min_start_time for e in events} == {0.0}  # one hardware sequence
    fps = nominal_fps(core)
    assert fps == pytest.approx(1e3 / core.getExposure())
    seq = live_sequence(core, duration_s=2.0)
    assert seq.time_plan.loops == math.ceil(1.25 * 2.0 * fps) + 8
    seq = live_sequence(core, duration_s=1.0, interval_ms=50.0)
    assert seq.time_plan.interval.total_seconds() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="n_frames or duration_s"):
        live_sequence(core)


def test_handler_duration_cancels_the_mda_and_stores_every_frame(
    core, tmp_path: Path
) -> None:
    """A run bounded by its duration cancels the (longer) sequence; every
    frame the MDA delivered is stored."""
    handler = TrackingHandler(tmp_path / "d.zarr", None, core=core, duration_s=0.5)
    delivered = []
    core.mda.events.frameReady.connect(lambda *a: delivered.append(1))
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 100_000})
    _run_in_thread(core, seq, handler)
    handler.wait()
    m = handler.metrics
    assert m is not None
    assert handler.error is None
    assert m.stop_reason == "duration"
    assert core.mda.status.finish_reason == "canceled"
    assert 0 < m.frames_written == m.frames_in == len(delivered) < 100_000
    assert len(open_run(tmp_path / "d.zarr").frame_meta) == m.frames_written


def test_handler_stop_before_first_frame_stops_the_run(core, tmp_path: Path) -> None:
    """A stop asked before the runner exists (a signal while the MDA starts)
    stops the run as soon as it does, with that reason."""
    handler = TrackingHandler(tmp_path / "s.zarr", None, core=core)
    handler.stop("terminated")
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 100_000})
    _run_in_thread(core, seq, handler)
    handler.wait()
    assert handler.metrics is not None
    assert handler.metrics.stop_reason == "terminated"
    assert handler.metrics.frames_written < 100_000


def test_handler_pairs_two_cameras_by_event(tmp_path: Path) -> None:
    """Multi Camera frames (index ``cam`` 0/1) become the two planes of one
    frame, paired by their event, whatever order the cameras' frames come in."""
    geo = SplitterGeometry(layout="two-cameras")
    handler = TrackingHandler(
        tmp_path / "two.zarr", None, geometry=geo, pixel_size_um=0.1
    )
    handler.sequenceStarted(useq.MDASequence(time_plan={"interval": 0, "loops": 4}))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4000, size=(4, 2, 16, 24), dtype=np.uint16)
    order = [(0, 0), (0, 1), (1, 1), (2, 0), (1, 0), (2, 1), (3, 1), (3, 0)]
    for t, cam in order:
        ev = useq.MDAEvent(index={"t": t, "cam": cam})
        meta = {"camera_metadata": {"ImageNumber": str(t)}}
        handler.frameReady(frames[t, cam], ev, meta)
    assert handler.frames_unpaired == 0
    handler.sequenceFinished()
    assert handler.error is None
    run = open_run(tmp_path / "two.zarr")
    assert run.frames.shape == (4, 2, 16, 24)
    np.testing.assert_array_equal(np.asarray(run.frames[:]), frames)
    assert run.frame_meta["image_number"].tolist() == [0, 1, 2, 3]


def test_handler_refuses_a_third_camera(tmp_path: Path) -> None:
    geo = SplitterGeometry(layout="two-cameras")
    handler = TrackingHandler(tmp_path / "3.zarr", None, geometry=geo, pixel_size_um=1)
    handler.sequenceStarted(None)
    with pytest.raises(ValueError, match="camera channel 2"):
        handler.frameReady(
            np.zeros((4, 4), np.uint16), useq.MDAEvent(index={"t": 0, "cam": 2}), {}
        )


def test_replay_camera_runs_under_the_mda(tmp_path: Path) -> None:
    """The replay camera accepts its full-frame ROI, which pymmcore-plus's
    engine sets again at the end of every sequence; refusing it left the
    sequence without ``sequenceFinished`` and ``mda.run(output=...)`` hung."""
    movie = tmp_path / "movie.zarr"
    rng = np.random.default_rng(1)
    with RunWriter(movie, kind="live", plane_shape=(16, 16), pixel_size_um=0.1) as w:
        for i in range(12):
            w.append_frame(
                rng.integers(100, 200, (2, 16, 16), dtype=np.uint16),
                FrameMeta(t_s=0.01 * i, stage_z_um=5.0),
            )
    core = load_rig("replay-dualplane")
    try:
        core.setProperty("Camera", "Source", str(movie))
        core.setProperty("Camera", "Loop", 0)
        handler = TrackingHandler(
            tmp_path / "out.zarr",
            None,
            core=core,
            geometry=splitter_geometry(core),
        )
        seq = useq.MDASequence(time_plan={"interval": 0, "loops": 12})
        _run_in_thread(core, seq, handler)
        handler.wait()
        assert handler.error is None
        assert handler.metrics is not None
        assert handler.metrics.frames_written == 12
        assert core.mda.status.finish_reason == "completed"
        meta = open_run(tmp_path / "out.zarr").frame_meta
        assert meta["stage_z_um"].tolist() == [5.0] * 12
    finally:
        core.unloadAllDevices()


def test_cli_live_runs_through_the_mda(tmp_path: Path, monkeypatch) -> None:
    """``axialtrack live`` is a useq time-lapse run by the MDA runner with
    the TrackingHandler as its output: one hardware sequence of the frames
    asked for, every frame stored."""
    from axialtrack.cli import main
    from axialtrack.live import mda as mda_mod

    seen: list[tuple[Any, Any]] = []
    real_run = mda_mod.TrackingHandler.sequenceStarted

    def spy(self: Any, sequence: Any = None, meta: Any = None) -> None:
        seen.append((sequence, meta))
        real_run(self, sequence, meta)

    monkeypatch.setattr(mda_mod.TrackingHandler, "sequenceStarted", spy)
    from pymmcore_plus.mda import MDAEngine

    sequenced: list[int] = []
    real_exec = MDAEngine.exec_sequenced_event

    def exec_spy(self: Any, event: Any) -> Any:
        sequenced.append(len(event.events))
        return real_exec(self, event)

    monkeypatch.setattr(MDAEngine, "exec_sequenced_event", exec_spy)
    out = tmp_path / "live.zarr"
    rc = main(["live", "--frames", "25", "--out", str(out), "--no-status"])
    assert rc == 0
    assert sequenced == [25]  # one hardware sequence of every frame
    assert len(seen) == 1
    seq, _ = seen[0]
    assert isinstance(seq, useq.MDASequence)
    assert seq.time_plan.loops == 25
    run = open_run(out)
    assert len(run.frame_meta) == 25
    assert run.frame_meta["image_number"].tolist() == list(range(25))


def test_handler_fields_of_grid_and_z_plan(tmp_path: Path) -> None:
    """Frames of a sequence with stage positions, a grid and a z plan are
    stored with one ``position_index`` per (p, g, z): each is linked on its
    own; without grid and z plan the index is the stage position."""
    geo = SplitterGeometry(layout="side-by-side")
    handler = TrackingHandler(tmp_path / "f.zarr", None, geometry=geo, pixel_size_um=1)
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 2},
        stage_positions=[(0, 0, 0), (100, 0, 0)],
        z_plan={"range": 1.0, "step": 1.0},
        axis_order="tpz",
    )
    handler.sequenceStarted(seq)
    events = list(seq)
    for ev in events:
        handler.frameReady(np.zeros((4, 8), np.uint16), ev, {})
    handler.sequenceFinished(seq)
    assert handler.error is None
    keys = [(e.index.get("p", 0), 0, e.index.get("z", 0)) for e in events]
    assert handler.fields == {k: i for i, k in enumerate(dict.fromkeys(keys))}
    assert len(handler.fields) == 4
    stored = open_run(tmp_path / "f.zarr").frame_meta["position_index"].tolist()
    assert stored == [handler.fields[k] for k in keys]
    # positions only: the index is p
    handler2 = TrackingHandler(tmp_path / "p.zarr", None, geometry=geo, pixel_size_um=1)
    seq2 = useq.MDASequence(
        time_plan={"interval": 0, "loops": 2}, stage_positions=[(0, 0), (9, 0)]
    )
    handler2.sequenceStarted(seq2)
    for ev in seq2:
        handler2.frameReady(np.zeros((4, 8), np.uint16), ev, {})
    handler2.sequenceFinished(seq2)
    stored = open_run(tmp_path / "p.zarr").frame_meta["position_index"].tolist()
    assert stored == [0, 1, 0, 1]
    assert handler2.fields == {}


# ------------------------------------------------------- two-camera rig
@pytest.fixture
def twocam() -> Any:
    c = load_rig("sim-twocam")
    for cam in ("Camera0", "Camera1"):
        c.setProperty(cam, "PlaneWidth", 96)
        c.setProperty(cam, "PlaneHeight", 80)
    yield c
    if c.mda.is_running():
        c.mda.cancel()
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


def test_sim_twocam_rig_is_a_multi_camera(twocam: Any) -> None:
    """The simulated two-camera rig looks to pymmcore-plus like a Multi Camera:
    two camera channels with their physical cameras, one plane each."""
    assert twocam.getCameraDevice() == "Multi Camera"
    assert twocam.getNumberOfCameraChannels() == 2
    assert [twocam.getPhysicalCameraDevice(i) for i in (0, 1)] == [
        "Camera0",
        "Camera1",
    ]
    assert splitter_geometry(twocam).layout == "two-cameras"
    assert (twocam.getImageHeight(), twocam.getImageWidth()) == (80, 96)
    twocam.snapImage()
    a, b = twocam.getImage(), twocam.getImage(1)
    assert a.shape == b.shape == (80, 96)
    assert not np.array_equal(a, b)  # two planes, two noise draws


def test_sim_twocam_mda_pairs_frames_into_planes(twocam: Any, tmp_path: Path) -> None:
    """Through pymmcore-plus's engine (one hardware sequence, its Multi
    Camera coordinator) the handler stores one (2, H, W) frame per event,
    plane 0 from Camera0; the camera's Z is that of both planes."""
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 6})
    cams: list[tuple[int, str]] = []

    def seen(img: Any, event: Any, meta: Any) -> None:
        cams.append((event.index["cam"], meta["camera_metadata"]["Camera"]))

    twocam.mda.events.frameReady.connect(seen)
    handler = TrackingHandler(tmp_path / "two.zarr", None, core=twocam)
    _run_in_thread(twocam, seq, handler)
    handler.wait()
    assert handler.error is None
    assert handler.frames_unpaired == 0
    assert sorted(cams) == sorted([(0, "Camera0"), (1, "Camera1")] * 6)
    run = open_run(tmp_path / "two.zarr")
    assert run.frames.shape == (6, 2, 80, 96)
    assert run.frame_meta["image_number"].tolist() == list(range(6))
    assert handler.metrics is not None
    assert handler.metrics.camera_frames_lost == 0
    assert np.isfinite(run.frame_meta["stage_z_um"]).all()


def test_sim_twocam_calibration(twocam: Any, tmp_path: Path) -> None:
    """A calibration Z-stack on the two-camera rig: each event's two camera
    frames are one stored frame, at the stage Z of the event."""
    from axialtrack.acquire import calibration_sequence, run_calibration

    seq = calibration_sequence(0.2, 0.1, fields=1, core=twocam, exposure_ms=5)
    n = sum(1 for _ in seq)
    out = run_calibration(twocam, tmp_path / "cal.zarr", seq, progress=False)
    run = open_run(out)
    assert run.state == "closed"
    assert run.frames.shape == (n, 2, 80, 96)
    assert run.attrs["acquisition"]["status"] == "complete"
    z = run.frame_meta["stage_z_um"].to_numpy()
    assert np.ptp(z) == pytest.approx(0.4, abs=0.02)


def test_sim_twocam_live_cli(tmp_path: Path) -> None:
    """``axialtrack live --config sim-twocam``: every frame pair stored."""
    from axialtrack.cli import main

    out = tmp_path / "two.zarr"
    argv = ["live", "--config", "sim-twocam", "--frames", "8", "--out", str(out)]
    rc = main([*argv, "--no-status"])
    assert rc == 0
    run = open_run(out)
    assert run.frames.shape == (8, 2, 256, 256)
    assert run.frame_meta["image_number"].tolist() == list(range(8))
    assert run.attrs["live_metrics"]["camera_frames_lost"] == 0


def test_one_splitter_lookup(core: Any) -> None:
    """The rig, the MDA handler and scripts read the splitter one way."""
    import axialtrack.geometry as g
    import axialtrack.rig as rig
    from axialtrack.live import mda

    assert rig.splitter_geometry is g.splitter_geometry
    assert mda.geometry_from_core is g.splitter_geometry
    assert g.splitter_label(core) == "Splitter"
    core.unloadDevice("Splitter")
    with pytest.raises(LookupError, match="no DualPlaneSplitter device is loaded"):
        g.splitter_geometry(core)

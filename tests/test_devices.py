"""The UniMMCore Python devices of the simulated rig."""

from __future__ import annotations

import time

import numpy as np
import pytest
import useq
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack.devices import (
    Choices,
    DualPlaneSplitter,
    SimCamera,
    SimLightSource,
    SimZPiezo,
    as_bool,
    as_float,
    as_int,
    get_device,
)
from axialtrack.geometry import SplitterGeometry, split_frame
from axialtrack.rig import splitter_geometry

OFFSET_ADU = 100.0  # CameraModel default offset


def _run_sequence(core: UniMMCore, n: int, interval_ms: float) -> tuple[float, list]:
    """Run a sequence acquisition; return its duration and the frames' metadata."""
    metas = []
    t0 = time.perf_counter()
    core.startSequenceAcquisition(n, interval_ms, True)
    deadline = t0 + 10 + n * max(interval_ms, core.getExposure()) / 1e3
    while (core.isSequenceRunning() or core.getRemainingImageCount()) and (
        time.perf_counter() < deadline
    ):
        if core.getRemainingImageCount():
            _, md = core.popNextImageAndMD()
            metas.append(dict(md))
        else:
            time.sleep(0.001)
    return time.perf_counter() - t0, metas


# ------------------------------------------------------------------ coercion
def test_coercion_helpers() -> None:
    assert as_float(" 0.5 ") == 0.5
    assert as_int("3.0") == 3
    assert as_bool("True") is True
    assert as_bool("off") is False
    assert as_bool("0") is False
    assert as_bool(1) is True
    with pytest.raises(ValueError, match="number"):
        as_float("abc")
    with pytest.raises(ValueError, match="whole number"):
        as_int("2.5")
    with pytest.raises(ValueError, match="boolean"):
        as_bool("maybe")
    flags = Choices.boolean()
    assert "1" in flags
    assert "True" in flags
    assert 0 in flags
    assert False in flags
    assert "2" not in flags
    assert "maybe" not in flags
    layouts = Choices.strings(["side-by-side", "top-bottom"])
    assert "Top_Bottom" in layouts
    assert "diagonal" not in layouts


def test_splitter_setters_coerce_strings(core: UniMMCore) -> None:
    values = {
        "PlaneOffsetUm": "0.75",
        "Layout": "Top_Bottom",
        "Mirror": "Horizontal",
        "ShiftXPx": "1.5",
        "ShiftYPx": "-2",
        "RotationDeg": "0.3",
        "Scale": "1.01",
        "Transmission": "0.9",
    }
    for prop, value in values.items():
        core.setProperty("Splitter", prop, value)
    geo = splitter_geometry(core)
    assert geo == SplitterGeometry(
        layout="top-bottom",
        mirror="horizontal",
        plane_offset_um=0.75,
        shift_px=(1.5, -2.0),
        rotation_deg=0.3,
        scale=1.01,
        transmission=0.9,
    )
    splitter = get_device(core, "Splitter", DualPlaneSplitter)
    assert splitter.geometry() == geo
    assert isinstance(core.getProperty("Splitter", "PlaneOffsetUm"), float)
    for prop, bad, why in [
        ("PlaneOffsetUm", "abc", "Non-numeric"),
        ("Layout", "diagonal", "not allowed"),
        ("Scale", "3", "not within the allowed range"),
        ("Transmission", "0", "greater than 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            core.setProperty("Splitter", prop, bad)
    assert splitter_geometry(core) == geo  # refused values change nothing


def test_other_setters_coerce_strings(core: UniMMCore) -> None:
    core.setProperty("Light", "State", "True")
    assert core.getShutterOpen("Light") is True
    core.setProperty("Light", "State", "0")
    assert core.getShutterOpen("Light") is False
    core.setProperty("Light", "PowerPercent", "42.5")
    assert core.getProperty("Light", "PowerPercent") == 42.5
    core.setProperty("Z", "UseSequences", "False")
    assert core.isStageSequenceable("Z") is False
    core.setProperty("Z", "UseSequences", "yes")
    assert core.isStageSequenceable("Z") is True
    core.setProperty("Z", "SequenceMaxLength", "50.0")
    assert core.getStageSequenceMaxLength("Z") == 50
    core.setProperty("Camera", "Exposure", "12.5")
    assert core.getExposure() == 12.5
    core.setProperty("Camera", "PlaneWidth", "128")
    core.setProperty("Camera", "Seed", "7")
    core.setProperty("Camera", "AutoShutter", "false")
    assert core.getProperty("Camera", "AutoShutter") == 0
    assert core.getImageWidth() == 256
    with pytest.raises(ValueError, match="not allowed"):
        core.setProperty("Camera", "Binning", "2")
    core.setProperty("Camera", "Binning", "1")


# -------------------------------------------------------------------- camera
def test_snap_returns_one_sensor_frame_with_both_planes(core: UniMMCore) -> None:
    core.snapImage()
    raw = core.getImage()
    assert raw.dtype == np.uint16
    assert raw.shape == (256, 512) == (core.getImageHeight(), core.getImageWidth())
    planes = split_frame(raw, splitter_geometry(core))
    assert planes.shape == (2, 256, 256)
    for plane in planes:  # beads in both planes, well above the background
        assert plane.max() > np.median(plane) + 50
        assert abs(np.median(plane) - (OFFSET_ADU + 0.8 * 10 / 0.5)) < 10


def test_top_bottom_layout_and_plane_size(core: UniMMCore) -> None:
    core.setProperty("Splitter", "Layout", "top-bottom")
    core.setProperty("Camera", "PlaneWidth", "96")
    core.setProperty("Camera", "PlaneHeight", "64")
    core.snapImage()
    raw = core.getImage()
    assert raw.shape == (128, 96)
    assert split_frame(raw, splitter_geometry(core)).shape == (2, 64, 96)


def test_two_camera_layout_needs_a_plane(core: UniMMCore) -> None:
    core.setProperty("Splitter", "Layout", "two-cameras")
    with pytest.raises(RuntimeError, match="Plane property"):
        core.snapImage()
    core.setProperty("Camera", "Plane", "1")
    core.snapImage()
    assert core.getImage().shape == (256, 256)


def test_dark_frames_when_light_is_off(core: UniMMCore) -> None:
    core.setAutoShutter(False)  # the camera no longer opens the light itself
    assert core.getProperty("Camera", "AutoShutter") == 0
    core.setShutterOpen(False)
    core.snapImage()
    dark = core.getImage().astype(float)
    assert abs(dark.mean() - OFFSET_ADU) < 0.5
    assert dark.std() < 5  # read noise only: 1.5 e- / 0.5 e-/ADU = 3 ADU
    core.setShutterOpen(True)
    core.snapImage()
    assert core.getImage().mean() > OFFSET_ADU + 10
    core.setProperty("Light", "PowerPercent", 0)
    core.snapImage()
    assert abs(core.getImage().mean() - OFFSET_ADU) < 0.5
    # autoshutter on: the light is on during exposures even with the shutter closed
    core.setProperty("Light", "PowerPercent", 100)
    core.setShutterOpen(False)
    core.setAutoShutter(True)
    core.snapImage()
    assert core.getImage().mean() > OFFSET_ADU + 10


def test_xy_stage_moves_the_field(core: UniMMCore) -> None:
    cam = get_device(core, "Camera", SimCamera)
    core.snapImage()
    a = core.getImage()
    core.setXYPosition(10.0, -5.0)
    core.waitForDevice("XY")
    assert core.getXYPosition() == pytest.approx((10.0, -5.0))
    core.snapImage()
    b = core.getImage()
    assert not np.array_equal(a, b)
    truth = cam.renderer().truth(cam.now_s(), (10.0, -5.0, 50.0))
    px = 6.5 / 60
    assert np.allclose(truth["x_px0"], (truth["x_um"] - 10.0) / px + 127.5)
    with pytest.raises(ValueError, match="travel"):
        core.setXYPosition(1e6, 0)


def test_diffusing_scene_moves(core: UniMMCore) -> None:
    core.setProperty("Camera", "Scene", "beads+diffusing")
    core.setProperty("Camera", "PlaneWidth", 128)
    core.setProperty("Camera", "PlaneHeight", 128)
    cam = get_device(core, "Camera", SimCamera)
    sample = cam.renderer().sample
    assert sample.n_beads > 0
    assert sample.n_particles > 0
    core.snapImage()
    assert core.getImage().shape == (128, 256)


# --------------------------------------------------------------------- piezo
def test_piezo_range_and_errors(core: UniMMCore) -> None:
    assert core.getPosition() == pytest.approx(50.0, abs=0.02)
    with pytest.raises(ValueError, match="outside the range"):
        core.setPosition(100.5)
    with pytest.raises(ValueError, match="outside the range"):
        core.setPosition("Z", -0.1)
    core.setProperty("Z", "PositionNoiseNm", 0)
    assert core.getPosition() == 50.0  # unchanged by the refused moves
    core.setProperty("Z", "UpperLimitUm", "60")
    with pytest.raises(ValueError, match=r"\[0, 60\]"):
        core.setPosition(70)
    with pytest.raises(ValueError, match="must be below"):
        core.setProperty("Z", "LowerLimitUm", 80)
    with pytest.raises(NotImplementedError, match="absolute"):
        core.setOrigin("Z")


def test_piezo_noise_settle_and_events(core: UniMMCore) -> None:
    core.setProperty("Z", "PositionNoiseNm", "20")
    readings = np.array([core.getPosition() for _ in range(400)])
    assert 0.012 < readings.std() < 0.028  # 20 nm rms
    assert abs(readings.mean() - 50.0) < 0.005
    core.setProperty("Z", "SettleTimeMs", 60)
    seen: list[tuple[str, float, float]] = []
    # handlers may query the device (re-entrant device lock)
    core.events.stagePositionChanged.connect(
        lambda label, z: seen.append((label, z, core.getPosition(label)))
    )
    t = time.perf_counter()
    core.setPosition(51.0)
    assert core.deviceBusy("Z")
    core.waitForDevice("Z")
    # it waits out the 60 ms settle time; the upper bound only catches a hang
    assert 0.05 < time.perf_counter() - t < 30
    assert not core.deviceBusy("Z")
    assert seen
    assert seen[0][:2] == ("Z", 51.0)
    assert seen[0][2] == pytest.approx(51.0, abs=0.1)


def test_piezo_sequence_steps_with_camera_frames(core: UniMMCore) -> None:
    core.setProperty("Z", "PositionNoiseNm", 0)
    positions = [49.0, 49.5, 50.0, 50.5]
    core.loadStageSequence("Z", positions)
    core.startStageSequence("Z")
    _, metas = _run_sequence(core, 6, 0)
    core.stopStageSequence("Z")
    z = [float(m["SimStageZ_um"]) for m in metas]
    assert z == positions + positions[:2]  # one position per frame, cyclic
    piezo = get_device(core, "Z", SimZPiezo)
    assert not piezo.sequence_running
    with pytest.raises(ValueError, match="outside the range"):
        core.loadStageSequence("Z", [50.0, 120.0])
    core.setProperty("Z", "SequenceMaxLength", 3)
    with pytest.raises(ValueError, match="too long"):
        core.loadStageSequence("Z", positions)


# ----------------------------------------------------------------------- MDA
@pytest.mark.parametrize("hardware", [False, True], ids=["software", "hardware"])
def test_mda_z_stack_visits_every_position(core: UniMMCore, hardware: bool) -> None:
    core.setProperty("Camera", "PlaneWidth", 64)
    core.setProperty("Camera", "PlaneHeight", 64)
    core.setExposure(5)
    seq = useq.MDASequence(
        stage_positions=[(0.0, 0.0, 50.0)],
        z_plan={"range": 2.0, "step": 0.25},
    )
    expected = [49.0 + 0.25 * i for i in range(9)]
    moves: list[float] = []
    frames: list[tuple[float, dict]] = []
    core.events.stagePositionChanged.connect(lambda label, z: moves.append(z))
    core.mda.events.frameReady.connect(
        lambda img, event, meta: frames.append((event.z_pos, meta))
    )
    core.mda.engine.use_hardware_sequencing = hardware
    core.mda.run(seq)
    assert [f[0] for f in frames] == pytest.approx(expected)
    # the true stage position during each exposure (camera metadata)
    if hardware:
        for z, meta in frames:
            assert meta["hardware_triggered"]
            assert float(meta["camera_metadata"]["SimStageZ_um"]) == pytest.approx(
                z, abs=0.02
            )
    else:
        assert moves[: len(expected)] == pytest.approx(expected)
        for z, meta in frames:
            assert meta["position"]["z"] == pytest.approx(z, abs=0.02)


# ---------------------------------------------------------------- sequences
def test_sequence_acquisition_real_time(core: UniMMCore) -> None:
    n, interval_ms = 20, 50.0
    core.setExposure(10)
    # small planes: rendering takes a few ms even on a busy machine
    core.setProperty("Camera", "PlaneWidth", 64)
    core.setProperty("Camera", "PlaneHeight", 64)
    core.snapImage()  # builds the scene: not part of the timing
    elapsed, metas = _run_sequence(core, n, interval_ms)
    assert [int(m["ImageNumber"]) for m in metas] == list(range(n))
    frame_idx = [int(m["CameraFrameIndex"]) for m in metas]
    assert frame_idx == list(range(frame_idx[0], frame_idx[0] + n))
    # frame k is delivered no sooner than k * interval + exposure after the
    # start: the camera never runs ahead of its clock. A loaded machine can only
    # make it later, so the upper bounds catch a hang, not a slow CPU.
    expected_s = ((n - 1) * interval_ms + 10.0) / 1e3
    assert expected_s - 0.01 < elapsed < expected_s + 30
    t_sim = np.array([float(m["SimTime_s"]) for m in metas])
    assert np.allclose(np.diff(t_sim), interval_ms / 1e3)  # exact frame times
    t_core = np.array([float(m["ElapsedTime-ms"]) for m in metas])
    # late frames catch up (frame k is due at t0 + k * interval), so the mean
    # interval is the interval unless the last frame itself was late
    mean_interval = (t_core[-1] - t_core[0]) / (n - 1)
    assert interval_ms - 2 < mean_interval < 10 * interval_ms
    actual = float(core.getProperty("Camera", "ActualInterval-ms"))
    assert interval_ms - 2 < actual < 10 * interval_ms


def test_sequence_start_time_fixes_the_sample(core: UniMMCore) -> None:
    """With SequenceStartS every sequence shows the sample from the same time,
    however late it starts (the particles are a function of seed and time)."""
    core.setExposure(10)
    core.setProperty("Camera", "Scene", "diffusing")
    core.setProperty("Camera", "PlaneWidth", 64)
    core.setProperty("Camera", "PlaneHeight", 64)
    core.setProperty("Camera", "SequenceStartS", 2.5)
    for _ in range(2):
        _, metas = _run_sequence(core, 4, 20.0)
        t_sim = np.array([float(m["SimTime_s"]) for m in metas])
        assert np.allclose(t_sim, 2.5 + 0.02 * np.arange(4))
    core.setProperty("Camera", "SequenceStartS", -1)  # back to the camera clock
    cam = get_device(core, "Camera", SimCamera)
    before = cam.now_s()
    _, metas = _run_sequence(core, 2, 20.0)
    assert before <= float(metas[0]["SimTime_s"]) <= cam.now_s()
    with pytest.raises(ValueError, match="SequenceStartS"):
        core.setProperty("Camera", "SequenceStartS", -0.5)


def test_continuous_acquisition_paced_by_exposure(core: UniMMCore) -> None:
    core.setExposure(40)
    core.snapImage()  # builds the scene: not part of the timing
    t0 = time.perf_counter()
    core.startContinuousSequenceAcquisition(0)
    # wait for 10 frames (a condition, with a generous overall timeout)
    deadline = t0 + 60
    while core.getRemainingImageCount() < 10 and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    core.stopSequenceAcquisition()
    metas = []
    while core.getRemainingImageCount():
        metas.append(dict(core.popNextImageAndMD()[1]))
    assert len(metas) >= 10
    # the 10th frame ends its exposure 10 x 40 ms after the start: never sooner
    assert elapsed >= 0.39
    t_sim = np.array([float(m["SimTime_s"]) for m in metas])
    assert np.allclose(np.diff(t_sim), 0.04)  # back to back, paced by the exposure
    assert float(core.getProperty("Camera", "ActualInterval-ms")) > 38


def test_light_source_device(core: UniMMCore) -> None:
    light = get_device(core, "Light", SimLightSource)
    assert light.illumination() == 0.0  # closed at start
    assert light.illumination(force_open=True) == 1.0
    core.setShutterOpen(True)
    core.setProperty("Light", "PowerPercent", 25)
    assert light.illumination() == 0.25
    assert core.getProperty("Light", "State") == 1


def test_camera_properties_coerce_and_report(core) -> None:
    """Each stored property of the simulated camera coerces the strings config
    files pass, reports the change to propertyChanged and reads back typed."""
    got: list[tuple[str, str, str]] = []
    core.events.propertyChanged.connect(lambda *a: got.append(a))
    for prop, value, back in (
        ("Seed", "7", 7),
        ("AutoShutter", "0", 0),
        ("Scene", "diffusing", "diffusing"),
        ("PlaneWidth", "128", 128),
        ("Photons", "1e5", 100000.0),
        ("Plane", "both", "both"),
    ):
        core.setProperty("Camera", prop, value)
        assert core.getProperty("Camera", prop) == back
        assert got[-1] == ("Camera", prop, str(back))
    with pytest.raises(Exception, match="not allowed"):
        core.setProperty("Camera", "Scene", "nope")

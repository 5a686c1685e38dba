"""Calibration runs on the simulated rig."""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack.acquire import (
    TRUTH_COLUMNS,
    CalibrationPlan,
    calibration_sequence,
    run_calibration,
)
from axialtrack.calibrate.io import load_stack
from axialtrack.rig import load_rig
from axialtrack.store import StoreExistsError, open_run


@pytest.fixture
def small_core() -> Iterator[UniMMCore]:
    c = load_rig()
    c.setProperty("Camera", "PlaneWidth", 128)
    c.setProperty("Camera", "PlaneHeight", 128)
    yield c
    if c.mda.is_running():
        c.mda.cancel()
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


def test_sequence_positions_carry_z() -> None:
    seq = calibration_sequence(
        0.5, 0.1, fields=4, spacing_um=20.0, center_um=(1.0, 2.0, 50.0)
    )
    assert len(seq.stage_positions) == 4
    assert all(p.z == 50.0 for p in seq.stage_positions)
    zs = [e.z_pos for e in seq if e.index["p"] == 0]
    np.testing.assert_allclose(zs, np.arange(49.5, 50.51, 0.1), atol=1e-9)
    xs = sorted({p.x for p in seq.stage_positions})
    np.testing.assert_allclose(np.diff(xs), [20.0])
    with pytest.raises(ValueError, match="center_um"):
        calibration_sequence(0.5, 0.1, fields=2, spacing_um=10)
    with pytest.raises(ValueError, match="grid"):
        CalibrationPlan(fields=5, grid=(2, 2))


def test_run_calibration(small_core: UniMMCore, tmp_path: Path) -> None:
    seq = calibration_sequence(0.5, 0.1, fields=2, core=small_core, exposure_ms=5)
    out = run_calibration(small_core, tmp_path / "cal.zarr", seq, progress=False)
    run = open_run(out)
    assert run.state == "closed"
    assert run.n_frames == 22
    acq = run.attrs["acquisition"]
    assert acq["status"] == "complete"
    assert not acq["cancelled"]
    assert acq["hardware_triggered_frames"] == 22
    meta = run.frame_meta
    planned = np.array([e.z_pos for e in seq])
    np.testing.assert_allclose(meta["stage_z_um"], planned, atol=0.02)
    assert list(meta["position_index"]) == [0] * 11 + [1] * 11
    xs = [p.x for p in seq.stage_positions]
    np.testing.assert_allclose(meta["stage_x_um"], np.repeat(xs, 11))
    assert run.frames.shape == (22, 2, 128, 128)

    truth = zarr.open_group(str(out / "truth"), mode="r")
    assert truth.attrs["simulation_only"] is True
    assert set(TRUTH_COLUMNS) <= set(truth.array_keys())
    assert set(np.unique(truth["field"][...])) == {0, 1}

    stack = load_stack(out)
    assert stack.frames.shape == (2, 11, 2, 128, 128)
    assert stack.truth is not None
    assert len(stack.truth) == 2
    assert abs(stack.z_step_um - 0.1) < 0.01
    assert stack.geometry.plane_offset_um == 0.5

    with pytest.raises(StoreExistsError, match="already exists"):
        run_calibration(small_core, out, seq, progress=False)
    run_calibration(small_core, out, seq, progress=False, overwrite=True)


def test_cancel_keeps_frames(
    small_core: UniMMCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seq = calibration_sequence(0.5, 0.05, fields=3, core=small_core, exposure_ms=20)
    out = tmp_path / "cancel.zarr"
    n_seen = [0]
    cancel_asked = threading.Event()
    real_cancel = small_core.mda.cancel

    def cancel() -> None:
        cancel_asked.set()
        real_cancel()

    monkeypatch.setattr(small_core.mda, "cancel", cancel)

    def interrupt_and_hold(*_: object) -> None:
        # runs on the acquisition thread: press Ctrl-C at frame 5, then hold the
        # sequence until the main thread has asked the MDA to cancel, so it
        # cannot finish first however slow the machine (no pacing sleeps)
        n_seen[0] += 1
        if n_seen[0] == 5:
            _thread.interrupt_main()
        if n_seen[0] >= 5:
            assert cancel_asked.wait(60), "Ctrl-C did not cancel the MDA"

    # Ctrl-C needs Python's SIGINT handler; a process started in the background
    # inherits SIGINT ignored, and interrupt_main() then does nothing
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    small_core.mda.events.frameReady.connect(interrupt_and_hold)
    try:
        run_calibration(small_core, out, seq, progress=False)
    finally:
        small_core.mda.events.frameReady.disconnect(interrupt_and_hold)
        signal.signal(signal.SIGINT, old_handler)
    run = open_run(out)
    acq = run.attrs["acquisition"]
    assert run.state == "closed"
    assert acq["status"] == "cancelled"
    assert acq["cancelled"]
    assert 5 <= run.n_frames <= 7  # frame 5, and at most the ones in flight
    assert acq["n_frames"] == run.n_frames
    assert not small_core.mda.is_running()
    assert not small_core.isSequenceRunning()


def test_calibration_events_and_cancel_from_a_subscriber(
    small_core: UniMMCore, tmp_path: Path
) -> None:
    """What a GUI's progress bar and cancel button use: the events, and
    ``core.mda.cancel()`` from a subscriber."""
    from axialtrack.events import CalibrationSignals

    seq = calibration_sequence(0.5, 0.05, fields=3, core=small_core, exposure_ms=20)
    out = tmp_path / "cal.zarr"
    events = CalibrationSignals()
    started: list[tuple] = []
    stored: list[tuple[int, int]] = []
    finished: list[tuple] = []
    events.started.connect(lambda *a: started.append(a))
    events.finished.connect(lambda *a: finished.append(a))

    def on_frame(n: int, planned: int) -> None:
        stored.append((n, planned))
        if n == 6:
            small_core.mda.cancel()  # the cancel button

    events.frameStored.connect(on_frame)
    run_calibration(small_core, out, seq, progress=False, events=events)
    n_planned = len(list(seq))
    assert started == [(out, n_planned)]
    counts = [n for n, _ in stored]
    assert counts == list(range(1, len(counts) + 1))
    assert all(p == n_planned for _, p in stored)
    assert len(finished) == 1
    path, acq = finished[0]
    assert path == out
    assert acq["status"] == "cancelled"
    assert acq["n_frames"] == counts[-1] == open_run(out).n_frames
    assert 6 <= acq["n_frames"] < n_planned


@pytest.mark.parametrize("layout", ["side-by-side", "top-bottom"])
@pytest.mark.parametrize("mirror", ["none", "horizontal", "vertical"])
def test_planes_view_matches_split(layout: str, mirror: str) -> None:
    from axialtrack.acquire._frame_handler import _planes_view
    from axialtrack.geometry import SplitterGeometry, split_frame

    geo = SplitterGeometry(layout=layout, mirror=mirror)
    raw = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    np.testing.assert_array_equal(_planes_view(raw, geo), split_frame(raw, geo))


def test_failed_run_closes_store(small_core: UniMMCore, tmp_path: Path) -> None:
    seq = calibration_sequence(0.5, 0.1, fields=1, center_um=(0.0, 0.0, 99.8))
    out = tmp_path / "bad.zarr"
    with pytest.raises(RuntimeError, match="outside the range"):
        run_calibration(small_core, out, seq, progress=False)
    run = open_run(out)
    assert run.state == "closed"
    assert run.attrs["acquisition"]["status"] == "error"
    assert not small_core.mda.is_running()


def test_cli_acquires(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from axialtrack.acquire import cli_calibrate

    parser = argparse.ArgumentParser(prog="axialtrack")
    cli_calibrate.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.zarr"
    argv = ["calibrate", "--out", str(out), "--fields", "1", "--z-range", "0.1"]
    argv += ["--z-step", "0.05", "--exposure", "5", "--no-progress"]
    args = parser.parse_args(argv)
    # 5 Z steps are acquired and kept, but are too few to calibrate from
    assert args.func(args) == 1
    assert "at least 11" in capsys.readouterr().out
    run = open_run(out)
    assert run.n_frames == 5
    assert run.state == "closed"
    assert "axialtrack_calibration" not in zarr.open_group(out, mode="r").attrs
    assert args.func(args) == 2  # exists, no --overwrite
    args = parser.parse_args([*argv, "--overwrite"])
    assert args.func(args) == 1
    assert open_run(out).n_frames == 5
    none = parser.parse_args(["calibrate"])
    assert none.func(none) == 2

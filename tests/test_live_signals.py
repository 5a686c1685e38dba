"""Live runs under signals, a failing analysis, a slow camera start, and in logs.

The signal tests run ``axialtrack live`` as a real subprocess on the simulated
rig and send the signal once the run store holds a frame.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from live_fakes import FailingAnalyzer, ListSource, PeakAnalyzer, _writer
from test_replay import PLANE as REPLAY_PLANE
from test_replay import _parse, fake_analyzer, recording, replay_core  # noqa: F401

from axialtrack.geometry import SplitterGeometry
from axialtrack.live import (
    CoreSource,
    LiveMetrics,
    LiveRunner,
    RunnerConfig,
    open_live_writer,
)
from axialtrack.store import StoreError, open_run

posix_signals = pytest.mark.skipif(
    not hasattr(signal, "SIGHUP"), reason="needs POSIX signals"
)


def _frames_stored(path: Path) -> int:
    try:
        return int(open_run(path).n_frames)
    except (StoreError, OSError, ValueError, KeyError):
        return 0


def _live(out: Path, bundle: Path, **env_extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "axialtrack.cli",
            "live",
            "--model",
            str(bundle),
            "--duration",
            "600",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, like a service
    )


def _wait_for_a_frame(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 180.0  # start-up on a loaded machine
    while _frames_stored(out) < 1:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"live exited early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no frame stored in 180 s")
        time.sleep(0.05)  # polling a condition (the store's frame count)


@posix_signals
@pytest.mark.parametrize(
    ("signame", "reason", "group", "repeat"),
    [
        ("SIGTERM", "terminated", False, 1),
        # systemd, Docker and Slurm signal every process of the job
        ("SIGTERM", "terminated", True, 1),
        ("SIGHUP", "hangup", False, 1),
        # Ctrl-C in a terminal goes to the whole foreground process group
        ("SIGINT", "interrupted", True, 3),
    ],
)
def test_a_signal_closes_the_run_like_ctrl_c(
    sim_bundle: Path,
    tmp_path: Path,
    signame: str,
    reason: str,
    group: bool,
    repeat: int,
) -> None:
    out = tmp_path / "live.zarr"
    proc = _live(out, sim_bundle)
    _wait_for_a_frame(proc, out)
    sig = getattr(signal, signame)
    for _ in range(repeat):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("live did not end within 120 s of the signal")
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert f"Stopped by {signame}" in stdout
    assert "stopped by" in stdout
    assert reason in stdout
    # the analysis process let go of its shared memory
    assert "resource_tracker" not in stderr
    assert "leaked" not in stderr
    assert "Traceback" not in stderr
    run = open_run(out)
    assert run.state == "closed"
    metrics = run.attrs["live_metrics"]
    assert metrics["stop_reason"] == reason
    assert run.n_frames == metrics["frames_in"] >= 1
    # the analysis finished too: every frame analyzed, the tracks written
    assert run.frame_meta["analyzed"].to_numpy().sum() == metrics["frames_analyzed"]
    assert metrics["analysis_error"] is None
    if metrics["localizations"]:
        assert run.tracks is not None
        assert len(run.tracks) >= 1


def test_stop_signals_stop_the_runner_and_restore_the_handlers(
    tmp_path: Path,
) -> None:
    from axialtrack.live import StopSignals

    geo = SplitterGeometry()
    runner = LiveRunner(
        ListSource(100_000, geo, rate_hz=200),
        PeakAnalyzer(),
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        config=RunnerConfig(log_status=False, status_interval_s=0.05),
    )
    before = signal.getsignal(signal.SIGTERM)
    repeats: list[int] = []
    sent: list[int] = []

    def on_status(m: LiveMetrics) -> None:
        if m.frames_in >= 5 and not sent:
            sent.append(m.frames_in)
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)

    runner.events.status.connect(on_status)
    with StopSignals(runner, on_repeat=repeats.append) as stops:
        m = runner.run()
    assert signal.getsignal(signal.SIGTERM) is before
    assert stops.signum == signal.SIGTERM
    assert stops.exit_code == 143
    assert repeats == [signal.SIGTERM]
    assert m.stop_reason == "terminated"
    run = open_run(tmp_path / "run.zarr")
    assert run.state == "closed"
    assert run.n_frames == m.frames_in >= sent[0]


# ------------------------------------------------------ the analysis dies
def test_cli_live_keeps_recording_when_the_analysis_fails(
    recording,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import axialtrack.pipeline.cli as cli

    monkeypatch.setattr(
        cli,
        "_make_analyzer",
        lambda bundle, **kw: FailingAnalyzer(
            5, RuntimeError("the GPU fell off the bus")
        ),
    )
    monkeypatch.setattr(cli, "_model_refused", lambda *a, **kw: False)
    path, _ = recording
    out = tmp_path / "live.zarr"
    args = _parse(
        [
            "live",
            "--config",
            "replay-dualplane",
            "--source",
            str(path),
            "--rate",
            "200",
            "--model",
            "m.axialmodel",
            "--frames",
            "40",
            "--out",
            str(out),
            "--no-status",
        ]
    )
    assert args.func(args) == 3
    text = capsys.readouterr().out
    assert "The analysis stopped at frame" in text
    assert f"axialtrack localize {out}" in " ".join(text.split())
    run = open_run(out)
    assert run.n_frames == 40  # the recording went on to the end
    m = run.attrs["live_metrics"]
    at = m["analysis_failed_at"]
    assert 0 <= at <= 5
    assert m["analysis_error"] == "RuntimeError: the GPU fell off the bus"
    analyzed = run.frame_meta["analyzed"].to_numpy()
    assert analyzed[:at].all()
    assert not analyzed[at:].any()


# -------------------------------------------------------------- duration
class LateSource(ListSource):
    """A camera that takes ``start_s`` to deliver its first frame."""

    def __init__(self, *a, start_s: float = 1.0, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.start_s = start_s

    def start(self, n_frames: int | None = None) -> None:
        super().start(n_frames)
        self.t0 += self.start_s


def test_duration_runs_from_the_first_frame(tmp_path: Path) -> None:
    geo = SplitterGeometry()
    src = LateSource(10_000, geo, rate_hz=100, start_s=1.0)
    runner = LiveRunner(
        src,
        None,
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        config=RunnerConfig(log_status=False),
    )
    m = runner.run(duration_s=0.5)
    assert m.stop_reason == "duration"
    # 0.5 s of frames at 100 fps, counted from the first (the old count from
    # the start stopped before the camera's first frame: 0 frames)
    assert m.frames_in >= 10
    run = open_run(tmp_path / "run.zarr")
    t = run.frame_meta["t_s"].to_numpy()
    assert t[-1] - t[0] >= 0.45


# ---------------------------------------------------------------- status
def test_status_reported_once_per_interval_also_while_stopping(
    tmp_path: Path,
) -> None:
    """After the duration ended, the camera drains for a while: the status
    came every millisecond then; now at most once per status_interval_s."""

    class Draining(ListSource):
        def finished(self) -> bool:
            return self.k >= self.n

        def next(self, timeout_s: float):  # type: ignore[no-untyped-def]
            if self.stopped:  # the buffer still holds frames: slowly
                self.stopped = False
                self.n = min(self.n, self.k + 40)
            return super().next(timeout_s)

    geo = SplitterGeometry()
    calls: list[float] = []
    runner = LiveRunner(
        Draining(10_000, geo, rate_hz=100),
        None,
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        config=RunnerConfig(log_status=False, status_interval_s=0.2),
    )
    runner.events.status.connect(lambda m: calls.append(time.perf_counter()))
    m = runner.run(duration_s=0.3)
    assert m.frames_in >= 40  # it drained 40 frames (0.4 s) after the stop
    gaps = np.diff(calls)
    assert len(calls) >= 2
    assert gaps.min() >= 0.19


def test_cli_live_status_in_a_log_and_a_readable_summary(
    recording,  # noqa: F811
    tmp_path: Path,
    fake_analyzer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, _ = recording
    out = tmp_path / "live.zarr"
    args = _parse(
        [
            "live",
            "--config",
            "replay-dualplane",
            "--source",
            str(path),
            "--rate",
            "50",
            "--model",
            "m.axialmodel",
            "--frames",
            "120",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    status = [ln for ln in text.splitlines() if " frames, in " in ln]
    # 120 frames at 50 fps: 2.4 s of frames, a line a second (not a terminal)
    assert len(status) >= 2
    assert all("| latency p50" in ln for ln in status)
    assert "latency p50 (ms)" in text
    assert "frame rate requested (fps)" in text
    assert "latency_ms_p50" not in text
    assert open_run(out).n_frames == 120


def test_status_metrics_format_before_any_latency() -> None:
    m = LiveMetrics()
    assert "latency p50 - p99 - ms" in m.status_line()
    rows = dict(m.summary_rows())
    assert rows["latency p50 (ms)"] == "-"
    assert m.as_dict()["latency_ms_p50"] is None


# ---------------------------------------------------------------- replay
def test_a_replay_that_cannot_keep_up_warns_and_its_latency_stays_bounded(
    replay_core,  # noqa: F811
    recording,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from axialtrack.rig import splitter_geometry

    core = replay_core
    path, _ = recording
    core.setProperty("Camera", "Source", str(path))
    core.setProperty("Camera", "Preload", 1)
    core.setProperty("Camera", "FrameRateHz", 50_000)  # 20 us a frame: too fast
    geo = splitter_geometry(core)
    w = open_live_writer(
        tmp_path / "run.zarr", geometry=geo, plane_shape=REPLAY_PLANE, pixel_size_um=0.1
    )
    src = CoreSource(core)
    with caplog.at_level("WARNING"):
        m = LiveRunner(
            src,
            PeakAnalyzer(),
            w,
            geometry=geo,
            config=RunnerConfig(log_status=False),
        ).run(n_frames=3000)
    assert m.fps_requested == pytest.approx(50_000)
    assert m.fps_in < 0.9 * 50_000
    behind = [r for r in caplog.records if "cannot keep up" in r.getMessage()]
    assert len(behind) == 1  # once
    rate = [x for x in m.warnings if "frames/s of the 50000.0 requested" in x]
    assert len(rate) == 1


def test_a_replay_that_cannot_keep_up_stays_close_to_its_frames(
    replay_core,  # noqa: F811
    recording,  # noqa: F811
) -> None:
    """Frames that cannot meet their schedule are no later than about
    BEHIND_LIMIT_S when delivered (they were ever later: ~0.5 s at frame 3000
    against a schedule 10x too fast)."""
    from axialtrack.devices.replay import BEHIND_LIMIT_S

    core = replay_core
    path, _ = recording
    core.setProperty("Camera", "Source", str(path))
    core.setProperty("Camera", "Preload", 1)
    core.setProperty("Camera", "FrameRateHz", 50_000)
    src = CoreSource(core)
    src.start(3000)
    late = []
    for _ in range(3000):
        f = src.next(10.0)
        assert f is not None
        late.append(time.perf_counter() - f.t_host)
    src.stop()
    assert max(late[-500:]) < BEHIND_LIMIT_S + 0.25


def test_cli_live_that_stores_no_frame_exits_1(
    recording,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A camera whose sequence ends before its first frame: exit 1, said so,
    and the store it was given is closed with no frame."""
    from axialtrack.live import TrackingHandler

    monkeypatch.setattr(TrackingHandler, "frameReady", lambda self, *a, **kw: None)
    path, _ = recording
    out = tmp_path / "live.zarr"
    args = _parse(
        [
            "live",
            "--config",
            "replay-dualplane",
            "--source",
            str(path),
            "--duration",
            "1",
            "--out",
            str(out),
            "--no-status",
        ]
    )
    assert args.func(args) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "No frame was stored" in text
    assert "the camera delivered none" in text
    run = open_run(out)
    assert run.state == "closed"
    assert run.n_frames == 0


@posix_signals
def test_a_killed_run_leaves_nothing_in_the_temporary_folder(
    sim_bundle: Path, tmp_path: Path
) -> None:
    """SIGKILL to the whole process group (main process, analysis process and
    resource tracker): no socket folder (``pymp-*``) is left in the temporary
    folder, and the shared memory the run left is removed by the next run."""
    from axialtrack.live.process import SHM_PREFIX, remove_stale_segments

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "live.zarr"
    proc = _live(out, sim_bundle, TMPDIR=str(tmp))
    _wait_for_a_frame(proc, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not list(tmp.glob("pymp-*"))
    shm = Path("/dev/shm")
    if shm.is_dir():
        left = list(shm.glob(f"{SHM_PREFIX}{proc.pid}_*"))
        removed = remove_stale_segments()
        assert {f.name for f in left} <= set(removed)
        assert not list(shm.glob(f"{SHM_PREFIX}{proc.pid}_*"))


def test_stale_segments_are_those_of_dead_processes(tmp_path: Path) -> None:
    from axialtrack.live.process import SHM_PREFIX, remove_stale_segments

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{SHM_PREFIX}{os.getpid()}_abc"
    stale = tmp_path / f"{SHM_PREFIX}{dead.pid}_abc"
    other = tmp_path / "psm_12345"
    for f in (mine, stale, other):
        f.write_bytes(b"x")
    assert remove_stale_segments(tmp_path) == [stale.name]
    assert mine.exists()
    assert other.exists()
    assert not stale.exists()

"""The live run's events (psygnal): what each carries, and that no subscriber
can stop a run or run in the acquisition thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_fakes import FailingAnalyzer, ListSource, PeakAnalyzer, _writer

from axialtrack.geometry import SplitterGeometry
from axialtrack.live import (
    CameraStalledError,
    LiveMetrics,
    LiveRunner,
    RunnerConfig,
    RunSignals,
)
from axialtrack.store import open_run


class Recorder:
    """Every event of a run, with the thread it came in."""

    def __init__(self, events: RunSignals) -> None:
        self.got: dict[str, list[tuple[Any, ...]]] = {}
        self.threads: set[str] = set()
        for name in (
            "started",
            "status",
            "batchAnalyzed",
            "framesStored",
            "framesSkipped",
            "warning",
            "finished",
            "failed",
        ):
            getattr(events, name).connect(self._make(name))

    def _make(self, name: str):
        def slot(*args: Any) -> None:
            self.got.setdefault(name, []).append(args)
            self.threads.add(threading.current_thread().name)

        return slot

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return self.got.get(name, [])


def test_events_of_a_run_that_skips_frames(tmp_path: Path) -> None:
    geo = SplitterGeometry()
    src = ListSource(80, geo, rate_hz=400)
    ana = PeakAnalyzer(delay_s=0.03)  # slower than the camera: frames skipped
    cfg = RunnerConfig(
        analysis_queue_frames=4,
        max_batch_frames=2,
        ring_frames=16,
        status_interval_s=0.05,
        log_status=False,
    )
    runner = LiveRunner(
        src, ana, _writer(tmp_path / "run.zarr", geo), geometry=geo, config=cfg
    )
    rec = Recorder(runner.events)
    m = runner.run()
    assert m.frames_skipped > 0

    assert rec.of("started") == [(tmp_path / "run.zarr",)]
    assert len(rec.of("finished")) == 1
    final = rec.of("finished")[0][0]
    assert isinstance(final, LiveMetrics)
    assert final.frames_written == 80
    assert rec.of("failed") == []
    assert all(isinstance(a[0], LiveMetrics) for a in rec.of("status"))
    # the batches: every analyzed frame once, with its rows
    frames = np.concatenate([a[0] for a in rec.of("batchAnalyzed")])
    assert np.array_equal(np.sort(frames), np.concatenate(ana.calls))
    rows = [a[1] for a in rec.of("batchAnalyzed")]
    n_rows = sum(len(r["frame"]) for r in rows if r)
    run = open_run(tmp_path / "run.zarr")
    assert n_rows == len(run.localizations) > 0
    for f, r in ((a[0], a[1]) for a in rec.of("batchAnalyzed")):
        assert set(r["frame"].tolist()) <= set(f.tolist())
    # the skipped frames: exactly those the store marks unanalyzed
    skipped = np.concatenate([a[0] for a in rec.of("framesSkipped")])
    analyzed = run.frame_meta["analyzed"].to_numpy()
    assert np.array_equal(np.sort(skipped), np.nonzero(~analyzed)[0])
    # frames stored: increasing, up to every frame
    stored = [a[0] for a in rec.of("framesStored")]
    assert stored == sorted(stored)
    assert stored[-1] == 80
    # never in the acquisition thread
    assert "live-acquire" not in rec.threads
    assert "live-analyze" in rec.threads  # batchAnalyzed: as soon as possible


def test_a_subscriber_that_raises_does_not_stop_the_run(tmp_path: Path) -> None:
    geo = SplitterGeometry()
    src = ListSource(40, geo, rate_hz=400)
    runner = LiveRunner(
        src,
        PeakAnalyzer(),
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        # a queue as long as the run: nothing skipped on a loaded machine
        config=RunnerConfig(
            status_interval_s=0.02,
            log_status=False,
            analysis_queue_frames=64,
            ring_frames=80,
        ),
    )

    def boom(*args: Any) -> None:
        raise RuntimeError("a broken display")

    for sig in (
        runner.events.status,
        runner.events.batchAnalyzed,
        runner.events.started,
        runner.events.framesStored,
    ):
        sig.connect(boom)
    m = runner.run()
    assert m.frames_written == m.frames_analyzed == 40
    assert m.analysis_error is None
    # each failing event said once, as a warning of the run
    failed = [w for w in m.warnings if "subscriber" in w]
    names = [w.split("run's ")[1].split(" event")[0] for w in failed]
    assert len(names) == len(set(names))
    assert {"started", "batchAnalyzed", "framesStored"} <= set(names)
    assert all("RuntimeError: a broken display" in w for w in failed)
    run = open_run(tmp_path / "run.zarr")
    assert run.frame_meta["analyzed"].all()


def test_failed_and_warning_events(tmp_path: Path) -> None:
    geo = SplitterGeometry()
    src = ListSource(50, geo, stall_after=12)
    events = RunSignals()  # a group given by the caller (e.g. a GUI)
    rec = Recorder(events)
    runner = LiveRunner(
        src,
        PeakAnalyzer(),
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        config=RunnerConfig(stall_timeout_s=1.0, log_status=False),
        events=events,
    )
    assert runner.events is events
    with pytest.raises(CameraStalledError) as info:
        runner.run(duration_s=10)
    assert rec.of("failed") == [(info.value,)]
    assert rec.of("finished") == []
    assert rec.of("framesStored")[-1] == (12,)


def test_a_warning_is_emitted_once(tmp_path: Path) -> None:
    geo = SplitterGeometry()
    runner = LiveRunner(
        ListSource(60, geo, rate_hz=300),
        FailingAnalyzer(5),
        _writer(tmp_path / "run.zarr", geo),
        geometry=geo,
        config=RunnerConfig(status_interval_s=0.02, log_status=False),
    )
    rec = Recorder(runner.events)
    m = runner.run()
    assert m.warnings
    assert [a[0] for a in rec.of("warning")] == m.warnings

"""The analysis in a child process: same rows as in-process, errors, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_live_e2e import PLANE, _diffusing_rig

from axialtrack.geometry import SplitterGeometry
from axialtrack.live import (
    AnalysisProcess,
    AnalysisProcessError,
    CoreSource,
    LiveRunner,
    RunnerConfig,
    open_live_writer,
)
from axialtrack.live import process as process_module
from axialtrack.model import BundleError
from axialtrack.pipeline import make_analyzer
from axialtrack.rig import splitter_geometry
from axialtrack.store import FrameMeta, open_run

pytestmark = pytest.mark.skipif(not hasattr(os, "kill"), reason="needs process signals")


def _record(core, tmp_path: Path, n: int = 24) -> tuple[np.ndarray, list[FrameMeta]]:
    """Frames of the simulated rig (diffusing particles) and their metadata."""
    _diffusing_rig(core, 0.3)
    geo = splitter_geometry(core)
    px = float(core.getPixelSizeUm())
    writer = open_live_writer(
        tmp_path / "rec.zarr",
        geometry=geo,
        plane_shape=(PLANE, PLANE),
        pixel_size_um=px,
    )
    LiveRunner(CoreSource(core), None, writer, geometry=geo).run(n_frames=n)
    run = open_run(tmp_path / "rec.zarr")
    fm = run.frame_meta
    metas = [
        FrameMeta(t_s=float(r.t_s), stage_z_um=float(r.stage_z_um))
        for r in fm.itertuples()
    ]
    return np.asarray(run.frames[:]), metas


def _kwargs(core) -> dict:
    return {
        "plane_shape": (PLANE, PLANE),
        "pixel_size_um": float(core.getPixelSizeUm()),
        "geometry": splitter_geometry(core),
        "frame_interval_s": core.getExposure() / 1e3,
    }


def _gone(name: str) -> bool:
    try:
        shared_memory.SharedMemory(name=name).close()
    except FileNotFoundError:
        return True
    return False


@pytest.mark.parametrize("overlap", [True, False])
def test_process_gives_the_rows_of_the_in_process_analyzer(
    core, sim_bundle: Path, tmp_path: Path, overlap: bool
) -> None:
    frames, metas = _record(core, tmp_path)
    kw = _kwargs(core)
    local = make_analyzer(sim_bundle, **kw)
    with AnalysisProcess(
        sim_bundle, max_batch_frames=8, slots=2, overlap=overlap, **kw
    ) as proc:
        assert proc.pid is not None
        assert proc.pid != os.getpid()
        assert proc.engine_name == local.engine.name
        shm_name = proc._shm.name
        # batches of 8 and one of 10 (sent to the child in two parts): four
        # parts through two slots, all handed over before any rows are taken
        spans = ((0, 8), (8, 18), (18, 24))
        tickets = [
            proc.prepare(frames[lo:hi], np.arange(lo, hi), metas[lo:hi])
            for lo, hi in spans
        ]
        got, want = [], []
        for (lo, hi), ticket in zip(spans, tickets, strict=True):
            idx = np.arange(lo, hi)
            if lo == 8:  # what the live runner takes: columns, no DataFrame
                cols = proc.complete_columns(ticket)
                assert isinstance(cols, dict)
                got.append(pd.DataFrame(cols))
            else:
                got.append(proc.complete(ticket))
            want.append(local.analyze(frames[idx], idx, metas[lo:hi]))
        got_t = pd.concat(got, ignore_index=True)
        want_t = pd.concat(want, ignore_index=True)
        assert len(want_t) > 50  # particles were found
        assert list(got_t.columns) == list(want_t.columns)
        np.testing.assert_array_equal(got_t["frame"], want_t["frame"])
        for c in ("x_um", "y_um", "z_um", "photons"):
            np.testing.assert_allclose(got_t[c], want_t[c], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(got_t["track_id"], want_t["track_id"])
        assert proc.n_tracks == local.n_tracks > 0
        assert proc.n_localizations == len(want_t)
        summary = proc.finish()
        assert summary is not None
        pd.testing.assert_frame_equal(summary, local.finish())
        assert proc.timings["frames"] == 24
        assert proc.timings["detect"] > 0
        child = proc._proc
    assert child is not None
    assert child.returncode == 0
    assert _gone(shm_name)


def test_a_child_error_reaches_the_caller_and_the_child_goes_on(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    frames, metas = _record(core, tmp_path, n=12)
    with AnalysisProcess(sim_bundle, max_batch_frames=4, **_kwargs(core)) as proc:
        idx = np.arange(4, 8)
        assert len(proc.analyze(frames[idx], idx, metas[4:8])) > 0
        # frames older than the linker's last: the child's linker refuses them
        with pytest.raises(AnalysisProcessError, match="increasing order") as info:
            proc.analyze(frames[:4], np.arange(4), metas[:4])
        assert "in the analysis process" in "".join(info.value.__notes__)
        # an error in the first stage (detection and crops), which the child
        # runs one batch ahead of the second
        bad = [FrameMeta(t_s=m.t_s, stage_z_um=None) for m in metas[8:10]]  # type: ignore[arg-type]
        with pytest.raises(AnalysisProcessError, match="TypeError") as info:
            proc.analyze(frames[8:10], np.arange(8, 10), bad)
        assert "prepare" in "".join(info.value.__notes__)
        idx = np.arange(10, 12)
        assert len(proc.analyze(frames[idx], idx, metas[10:12])) > 0
        with pytest.raises(ValueError, match="sized for"):
            proc.analyze(frames[:1, :, :64, :64], [20], metas[:1])


def test_a_bundle_for_another_rig_is_refused_and_the_child_stopped(
    sim_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the parent checks the bundle while the child builds its analyzer
    started: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(process_module.subprocess, "Popen", spy)
    with pytest.raises(BundleError, match="plane offset"):
        AnalysisProcess(
            sim_bundle,
            plane_shape=(64, 64),
            pixel_size_um=0.1083,
            geometry=SplitterGeometry(plane_offset_um=0.75),
        )
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped before the error was raised


def test_a_child_that_dies_stops_the_analysis_not_the_recording(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    _diffusing_rig(core, 0.3)
    geo = splitter_geometry(core)
    kw = _kwargs(core)
    proc = AnalysisProcess(sim_bundle, max_batch_frames=4, keep_rows=False, **kw)
    shm_name = proc._shm.name
    out = tmp_path / "live.zarr"
    writer = open_live_writer(
        out, geometry=geo, plane_shape=(PLANE, PLANE), pixel_size_um=kw["pixel_size_um"]
    )
    killed: list[int] = []

    def on_status(m) -> None:
        if m.frames_analyzed >= 8 and not killed and proc.pid is not None:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(m.frames_in)

    runner = LiveRunner(
        CoreSource(core),
        proc,
        writer,
        geometry=geo,
        config=RunnerConfig(status_interval_s=0.05, log_status=False),
    )
    runner.events.status.connect(on_status)
    m = runner.run(n_frames=150)
    assert killed
    # the recording went on to the frame count asked for
    assert m.stop_reason == "n_frames"
    assert m.frames_in == 150
    assert m.analysis_error is not None
    assert "exited" in m.analysis_error
    at = m.analysis_failed_at
    assert 8 <= at <= killed[0] + 1
    assert any("axialtrack localize" in w for w in m.warnings)
    run = open_run(out)
    assert run.state == "closed"
    assert run.n_frames == 150
    analyzed = run.frame_meta["analyzed"].to_numpy(bool)
    assert analyzed[:at].all()
    assert not analyzed[at:].any()
    # the rows written before the death are kept, and their tracks made here
    locs = run.localizations
    assert len(locs) == m.localizations > 0
    assert locs["frame"].max() < at
    linked = locs.loc[locs["track_id"] >= 0, "track_id"]
    assert len(run.tracks) == linked.nunique() > 0
    proc.close()
    assert _gone(shm_name)


def test_a_child_that_keeps_no_rows_gives_the_same_tracks(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    """keep_rows=False (what `axialtrack live` uses: flat memory): the track
    table is made from the stored rows and equals the one of kept rows."""
    _diffusing_rig(core, 0.3)
    geo = splitter_geometry(core)
    kw = _kwargs(core)
    for keep in (True, False):
        out = tmp_path / f"keep{keep}.zarr"
        writer = open_live_writer(
            out,
            geometry=geo,
            plane_shape=(PLANE, PLANE),
            pixel_size_um=kw["pixel_size_um"],
        )
        with AnalysisProcess(sim_bundle, keep_rows=keep, **kw) as proc:
            LiveRunner(CoreSource(core), proc, writer, geometry=geo).run(n_frames=30)
        run = open_run(out)
        assert run.frame_meta["analyzed"].all()
        summary = make_analyzer(sim_bundle, **kw).summarize(run.localizations)
        assert summary is not None
        assert len(run.tracks) == len(summary) > 0
        pd.testing.assert_frame_equal(
            run.tracks.reset_index(drop=True),
            summary.reset_index(drop=True)[list(run.tracks.columns)],
            check_dtype=False,
        )


def test_mda_handler_tracks_through_the_process(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    import useq

    from axialtrack.live import TrackingHandler

    _diffusing_rig(core, 0.3)
    # a queue as long as the run: a loaded machine analyzes later, never less
    cfg = RunnerConfig(analysis_queue_frames=32, ring_frames=48)
    with AnalysisProcess(sim_bundle, **_kwargs(core)) as proc:
        handler = TrackingHandler(tmp_path / "mda.zarr", proc, core=core, config=cfg)
        core.mda.run(
            useq.MDASequence(time_plan={"interval": 0, "loops": 30}), output=handler
        )
        handler.wait()
    assert handler.error is None
    m = handler.metrics
    assert m is not None
    assert m.frames_in == m.frames_written == 30
    assert m.frames_analyzed == 30
    run = open_run(tmp_path / "mda.zarr")
    analyzed = run.frame_meta["analyzed"].to_numpy(bool)
    assert analyzed.sum() == m.frames_analyzed
    locs = run.localizations
    assert len(locs) >= 5 * m.frames_analyzed  # the scene has ~10+ particles
    assert set(locs["frame"]) <= set(np.flatnonzero(analyzed))
    assert (locs["track_id"] >= 0).mean() > 0.8
    assert run.tracks is not None
    assert len(run.tracks) >= 5


def test_one_handler_and_process_serve_two_sequences(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    """Each sequence is a run of its own (frames from 0): the analyzer starts
    again, with no tracks or rows of the sequence before."""
    import useq

    from axialtrack.live import TrackingHandler

    _diffusing_rig(core, 0.3)
    with AnalysisProcess(sim_bundle, **_kwargs(core)) as proc:
        handler = TrackingHandler(tmp_path / "seq-{n}.zarr", proc, core=core)
        for _ in range(2):
            core.mda.run(
                useq.MDASequence(time_plan={"interval": 0, "loops": 12}),
                output=handler,
            )
            handler.wait()
            assert handler.error is None
    for k in range(2):
        run = open_run(tmp_path / f"seq-{k}.zarr")
        assert run.n_frames == 12
        locs = run.localizations
        assert len(locs) >= 5 * int(run.frame_meta["analyzed"].sum())
        ids = locs["track_id"].to_numpy()
        # track ids start again at 0, and the summary holds this run's tracks
        assert ids[ids >= 0].min() == 0
        assert run.tracks is not None
        assert set(run.tracks["track_id"]) == set(ids[ids >= 0])


def test_warnings_of_the_child_reach_this_process(
    core, sim_bundle: Path, tmp_path: Path, caplog
) -> None:
    frames, metas = _record(core, tmp_path, n=4)
    sat = frames.copy()
    sat[:, :, 60:70, 60:70] = 65535  # a blown-out spot in both planes
    with AnalysisProcess(sim_bundle, **_kwargs(core)) as proc:
        with pytest.warns(RuntimeWarning, match="saturated") as rec:
            table = proc.analyze(sat[:2], np.arange(2), metas[:2])
        assert table["saturated"].any()
        assert sum("saturated" in str(w.message) for w in rec) == 1
        assert any(
            "saturated" in r.getMessage() and r.name.startswith("axialtrack")
            for r in caplog.records
        )
        # warned once, as in one process
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = proc.analyze(sat[2:], np.arange(2, 4), metas[2:])
        assert again["saturated"].any()


@pytest.mark.parametrize("analysis", ["process", "threads"])
def test_cli_live_analyzes_in_a_process_or_in_threads(
    sim_bundle: Path, tmp_path: Path, analysis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import axialtrack.live.runner as runner_mod
    from axialtrack.cli import main

    class LongQueue(runner_mod.RunnerConfig):
        # a queue as long as the run: a loaded machine analyzes later, never less
        analysis_queue_frames: int = 32
        ring_frames: int = 48

    monkeypatch.setattr(runner_mod, "RunnerConfig", LongQueue)
    out = tmp_path / "live.zarr"
    argv = ["live", "--model", str(sim_bundle), "--frames", "30", "--out", str(out)]
    rc = main([*argv, "--scene", "diffusing", "--no-status", "--analysis", analysis])
    assert rc == 0
    run = open_run(out)
    assert run.n_frames == 30
    lm = run.attrs["live_metrics"]
    assert lm["frames_in"] == lm["frames_written"] == 30
    assert lm["frames_analyzed"] == 30
    assert len(run.localizations) > 0
    assert run.frame_meta["analyzed"].sum() == lm["frames_analyzed"]


def test_cli_live_falls_back_to_threads_when_the_process_cannot_start(
    sim_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from axialtrack.cli import main
    from axialtrack.live import process

    def refuse(*a, **k):
        raise AnalysisProcessError("the analysis process exited with code 1")

    monkeypatch.setattr(process, "AnalysisProcess", refuse)
    out = tmp_path / "live.zarr"
    argv = ["live", "--model", str(sim_bundle), "--frames", "20", "--out", str(out)]
    assert main([*argv, "--scene", "diffusing", "--no-status"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # as wrapped by rich
    assert "analyzing in threads" in printed
    run = open_run(out)
    assert run.n_frames == 20
    assert len(run.localizations) > 0


def _bare_process(slot_of: dict[int, int], alive_polls: int) -> tuple[Any, Any]:
    """An AnalysisProcess wired to one end of a pipe (the other end plays the
    child; its process is alive for ``alive_polls`` polls), no child started."""
    import threading
    from multiprocessing import Pipe

    class FakeProc:
        pid = 4242

        def __init__(self) -> None:
            self.n = alive_polls
            self.returncode: int | None = None

        def poll(self) -> int | None:
            self.n -= 1
            if self.n < 0:
                self.returncode = 1
            return self.returncode

    ap = object.__new__(AnalysisProcess)
    parent, child = Pipe()
    ap._conn, ap._proc = parent, FakeProc()
    ap._free, ap._free_cv = [], threading.Condition()
    ap._recv_lock, ap._send_lock = threading.Lock(), threading.Lock()
    ap._closed, ap._slot_of, ap._results = False, dict(slot_of), {}
    ap.n_tracks = ap.n_localizations = 0
    ap._fatal = None
    return ap, child


@pytest.mark.parametrize("alive_polls", [5, 0])
def test_waiting_for_a_slot_reports_the_childs_own_error(alive_polls: int) -> None:
    # the child fails as a whole: it sends why, then exits
    ap, child = _bare_process({0: 0, 1: 1}, alive_polls)
    child.send(("error", -1, ("RuntimeError", "CUDA error: out of memory", "tb")))
    child.close()
    with pytest.raises(AnalysisProcessError, match="CUDA error: out of memory"):
        ap._take_slot()
    # and the thread waiting for rows gets the same
    with pytest.raises(AnalysisProcessError, match="CUDA error: out of memory"):
        ap._result(0)


def test_a_child_warning_raised_as_an_error_loses_no_rows() -> None:
    ap, child = _bare_process({7: 1}, 100)
    notice = ("warn", "RuntimeWarning", 30, "overflow in fit")
    child.send(("rows", 7, {"frame": np.array([1, 2])}, 3, [notice]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="overflow in fit"):
            ap._pump(1.0, "reading")
    # the rows are filed and the slot is free before the warning is re-issued
    assert list(ap._results[7]["frame"]) == [1, 2]
    assert ap._free == [1]
    assert ap.n_localizations == 2


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_silent_child_is_taken_as_hung(
    core, sim_bundle: Path, tmp_path: Path
) -> None:
    import time

    frames, metas = _record(core, tmp_path, n=4)
    proc = AnalysisProcess(sim_bundle, **_kwargs(core))
    pid = proc.pid
    assert pid is not None
    try:
        # the first answer with the default (generous) timeout: a loaded machine
        # may take seconds for it, and a live child must not be taken as hung
        assert len(proc.analyze(frames[:2], np.arange(2), metas[:2])) > 0
        proc.answer_timeout_s = 1.5
        os.kill(pid, signal.SIGSTOP)  # e.g. a wedged GPU: alive, but silent
        t0 = time.monotonic()
        with pytest.raises(AnalysisProcessError, match=r"sent nothing for .* hung"):
            proc.analyze(frames[2:4], np.arange(2, 4), metas[2:4])
        # it waited the timeout out (the upper bound only catches a hang)
        assert 1.4 < time.monotonic() - t0 < 60.0
    finally:
        os.kill(pid, signal.SIGCONT)
        proc.close()

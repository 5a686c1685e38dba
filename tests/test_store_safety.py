"""What the run store promises a lab: no analyzed flag without its rows after a
crash, no row of a frame a reader cannot read, --overwrite replacing only our own
outputs, `axialtrack recover`, the measured frame rate."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from axialtrack.cli import main
from axialtrack.store import (
    FrameMeta,
    NotARunStoreError,
    RunWriter,
    StoreExistsError,
    WriterOptions,
    _sinks,
    open_run,
    read_attrs,
    summarize,
)
from axialtrack.store.replace import find_leftovers_beside

HELPERS = Path(__file__).parent / "store_helpers"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HELPERS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


aw = _load("analyzed_writer")
FAST = WriterOptions(commit_interval_s=0.01, table_flush_interval_s=0.01)


@pytest.fixture(autouse=True, params=["native", "portable"])
def io_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the Linux fast paths and with what Windows gets (no
    O_DIRECT, no /proc/self/mounts); subprocesses inherit the choice."""
    if request.param == "portable":
        monkeypatch.setenv(_sinks.PORTABLE_ENV, "1")
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
        assert _sinks.o_direct() == 0
    return str(request.param)


def _wait_for(cond: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds (a generous overall timeout, no guessing)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _committed(path: Path) -> int:
    try:
        return int(read_attrs(path)["n_frames"])
    except (NotARunStoreError, KeyError):
        return 0


def _table(frames: list[int]) -> dict[str, np.ndarray]:
    parts = [aw.rows_of(i) for i in frames]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def _check_analyzed_have_rows(path: Path) -> tuple[int, int]:
    """The crash invariant; returns (frames, frames analyzed)."""
    run = open_run(path)
    n = run.n_frames
    meta = run.frame_meta
    locs = run.localizations
    counts = np.bincount(locs["frame"].to_numpy(), minlength=n)
    # no row of a frame that is not stored
    assert len(counts) == n, (len(counts), n)
    analyzed = np.flatnonzero(meta["analyzed"].to_numpy())
    want = np.array([aw.n_rows_of(int(i)) for i in analyzed], dtype=int)
    # every frame marked analyzed has all its rows ...
    np.testing.assert_array_equal(counts[analyzed], want)
    # ... so the frames `localize` picks (not analyzed) hold every frame whose
    # rows are missing
    missing = {i for i in range(n) if counts[i] < aw.n_rows_of(i)}
    todo = set(np.flatnonzero(~meta["analyzed"].to_numpy()).tolist())
    assert missing <= todo
    assert not any(aw.skipped(int(i)) for i in analyzed)
    for i in analyzed[:50]:  # and they are its rows
        got = locs[locs["frame"] == i].sort_values("x_um")
        np.testing.assert_array_equal(
            got["x_um"].to_numpy(), aw.rows_of(int(i))["x_um"]
        )
    return n, len(analyzed)


# ------------------------------------------------- analyzed flags after rows


def test_sigkill_at_many_moments_leaves_no_analyzed_frame_without_rows(
    tmp_path: Path,
) -> None:
    """Killed at six points of a live-like run (default commit intervals:
    frames 0.1 s, rows 0.25 s), every frame marked analyzed has all its rows."""
    seen_analyzed = 0
    for k, target in enumerate((2, 8, 20, 35, 60, 90)):
        path = tmp_path / f"kill{k}.zarr"
        proc = subprocess.Popen(
            [sys.executable, str(HELPERS / "analyzed_writer.py"), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(
                lambda proc=proc, path=path, target=target: (
                    proc.poll() is not None or _committed(path) >= target
                ),
                f"{target} committed frames",
            )
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        n, n_analyzed = _check_analyzed_have_rows(path)
        assert n >= target
        seen_analyzed += n_analyzed
        # recover keeps it that way
        assert main(["recover", str(path)]) == 0
        _check_analyzed_have_rows(path)
    assert seen_analyzed > 0  # the runs did mark frames analyzed


def test_a_flag_waits_for_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the rows of analyzed frames cannot be written, their flags stay
    off on disk, however many frame commits pass; once written, both are."""
    gate = threading.Event()
    real = RunWriter._flush_rows

    def held(self: RunWriter, *a: Any) -> None:
        gate.wait(60)
        real(self, *a)

    monkeypatch.setattr(RunWriter, "_flush_rows", held)
    path = tmp_path / "run.zarr"
    w = RunWriter(
        path, kind="live", plane_shape=(aw.H, aw.W), pixel_size_um=0.1, options=FAST
    )
    frame = np.zeros((2, aw.H, aw.W), np.uint16)
    try:
        for i in range(1, 9):
            w.append_frame(frame)
            w.append_localizations(_table([i]))  # a frame ahead
        w.set_analyzed(list(range(8)), True)
        w.append_frame(frame, FrameMeta(analyzed=True))  # frame 8: a flag too
        # several frame commits after the flags were set
        for extra in range(3):
            w.append_frame(frame)
            _wait_for(lambda extra=extra: _committed(path) >= 10 + extra, "commits")
        run = open_run(path)
        assert run.n_frames >= 11
        assert run.n_localizations == 0
        assert not run.frame_meta["analyzed"].any()
    finally:
        gate.set()
        w.close()
    run = open_run(path)
    assert run.frame_meta["analyzed"].tolist() == [True] * 9 + [False] * 3
    assert run.n_localizations == sum(aw.n_rows_of(i) for i in range(1, 9))


# ---------------------------------------------------- live readers, item by item


def test_live_reader_never_sees_rows_ahead_of_frames_or_a_store_without_tables(
    tmp_path: Path,
) -> None:
    """A reader polling from before the store exists: it sees no store or a
    whole one (tables included), and never a row of a frame it cannot read,
    although the analysis appends rows up to 5 frames ahead of the writer."""
    path = tmp_path / "live.zarr"
    stop = threading.Event()
    created = threading.Event()
    errors: list[str] = []
    views: list[tuple[int, int]] = []

    def read() -> None:
        run = None
        while not stop.is_set():
            try:
                if run is None:
                    run = open_run(path)
                else:
                    run.refresh()
            except NotARunStoreError as exc:
                if "does not exist" not in str(exc) or created.is_set():
                    errors.append(str(exc))
                continue
            n = run.n_frames
            frames = run.localizations["frame"].to_numpy()
            if frames.size and frames.max() >= n:
                errors.append(f"row of frame {frames.max()} with {n} frames")
            views.append((n, frames.size))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        w = RunWriter(
            path, kind="live", plane_shape=(aw.H, aw.W), pixel_size_um=0.1, options=FAST
        )
        created.set()
        frame = np.zeros((2, aw.H, aw.W), np.uint16)
        with w:
            for i in range(200):
                if i + 5 < 200:
                    w.append_localizations(_table([i + 5]))  # ahead of the frame
                w.append_frame(frame)
                if i in (50, 100, 150):  # let the reader look in between
                    n_views = len(views)
                    _wait_for(lambda n_views=n_views: len(views) > n_views + 2, "reads")
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert len(set(views)) > 2  # it saw the run grow
    run = open_run(path)
    assert run.n_localizations == sum(aw.n_rows_of(i) for i in range(5, 200))


# -------------------------------------------------------------- --overwrite


def _make_store(path: Path, n: int = 3) -> None:
    with RunWriter(path, kind="live", plane_shape=(8, 8), pixel_size_um=0.1) as w:
        for i in range(n):
            w.append_frame(np.full((2, 8, 8), i, np.uint16))


def _not_ours(tmp_path: Path) -> dict[str, Path]:
    """A directory of other files, a plain file, a symlink to a run store
    elsewhere and a zarr store of someone else's, each with a thesis in it."""
    d = tmp_path / "thesis_dir"
    d.mkdir()
    (d / "thesis.txt").write_text("keep")
    f = tmp_path / "thesis.txt"
    f.write_text("keep")
    target = tmp_path / "elsewhere.zarr"
    _make_store(target)
    link = tmp_path / "link.zarr"
    link.symlink_to(target, target_is_directory=True)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w", zarr_format=3).attrs["thesis"] = "keep"
    return {"directory": d, "file": f, "symlink": link, "foreign zarr": foreign}


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_symlink():
        return {"->": os.readlink(path).encode()}
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()
    }


def test_overwrite_refuses_anything_but_our_own_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """live --overwrite, train --overwrite and RunWriter(overwrite=True) leave
    alone what is not theirs: one line, exit 2, every byte as it was."""
    targets = _not_ours(tmp_path)
    before = {k: _snapshot(p) for k, p in targets.items()}
    elsewhere = _snapshot(tmp_path / "elsewhere.zarr")
    for what, p in targets.items():
        capsys.readouterr()
        argv = ["live", "--frames", "10", "--out", str(p), "--overwrite"]
        assert main(argv) == 2, what
        out = capsys.readouterr().err.strip()
        assert len(out.splitlines()) == 1, out
        assert str(p) in out
        assert "replaces only axialtrack run stores" in out
        assert "Nothing was changed" in out
        with pytest.raises(StoreExistsError, match="not an axialtrack run store"):
            RunWriter(
                p, kind="live", plane_shape=(8, 8), pixel_size_um=0.1, overwrite=True
            )
    # train: only a model bundle (the name gets .axialmodel, so make them so)
    for p in targets.values():
        q = p.with_name(p.name + ".axialmodel")
        os.rename(p, q)
        capsys.readouterr()
        assert main(["train", "missing.zarr", "--out", str(q), "--overwrite"]) == 2
        out = capsys.readouterr().err.strip()
        assert len(out.splitlines()) == 1, out
        assert "replaces only axialtrack model bundles" in out, out
        os.rename(q, p)
    assert {k: _snapshot(p) for k, p in targets.items()} == before
    assert _snapshot(tmp_path / "elsewhere.zarr") == elsewhere
    assert not list(tmp_path.glob(".*replaced-*"))


def test_overwrite_replaces_our_store_and_an_empty_directory_is_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.zarr"
    _make_store(path, 3)
    _make_store_over = RunWriter(
        path, kind="live", plane_shape=(8, 8), pixel_size_um=0.1, overwrite=True
    )
    _make_store_over.append_frame(np.zeros((2, 8, 8), np.uint16))
    _make_store_over.close()
    assert open_run(path).n_frames == 1
    assert not find_leftovers_beside(path)
    # an empty directory (e.g. made by hand) holds nothing to lose
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    _make_store(empty, 2)
    assert open_run(empty).n_frames == 2


def test_a_failed_creation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose creation fails (here: the disk refuses a table) leaves no
    directory that would block the next run."""
    import errno

    from axialtrack.store import StoreWriteError
    from axialtrack.store._tables import ColumnTable

    real = ColumnTable.add_column
    calls = {"n": 0}

    def failing(self: ColumnTable, name: str, dtype: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, name, dtype)

    monkeypatch.setattr(ColumnTable, "add_column", failing)
    path = tmp_path / "run.zarr"
    with pytest.raises(StoreWriteError):
        _make_store(path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []
    _make_store(path, 2)  # the next run is not blocked
    assert open_run(path).n_frames == 2


# -------------------------------------------- replaced stores and `recover`


def _kill_during_overwrite(out: Path) -> int:
    """A process that set ``out`` aside for --overwrite, then was killed."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from axialtrack.store.replace import Replacement\n"
        "Replacement(Path(sys.argv[1]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], check=False)
    assert proc.returncode == -signal.SIGKILL
    return proc.returncode


def test_a_killed_overwrite_is_reported_and_recovered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "day1.zarr"
    _make_store(out, 5)
    before = _snapshot(out)
    _kill_during_overwrite(out)
    assert not out.exists()
    (hidden,) = find_leftovers_beside(out)
    assert hidden.what == "replaced"
    assert not hidden.alive
    # info names the hidden copy and the command
    capsys.readouterr()
    assert main(["info", str(out)]) == 1
    text = capsys.readouterr().out
    assert hidden.path.name in text
    assert f"axialtrack recover {out}" in text
    # so does the next run writing to that path (and it refuses without --overwrite)
    with pytest.warns(UserWarning, match=hidden.path.name):
        _make_store(out, 1)  # a newer run, as a run interrupted after 1 frame
    capsys.readouterr()
    assert main(["live", "--frames", "3", "--out", str(out)]) == 2
    text = capsys.readouterr().out
    assert hidden.path.name in text
    assert "axialtrack recover" in text
    # and a RunWriter (calibrate, scripts) warns
    with pytest.warns(UserWarning, match=f"axialtrack recover {out}"):
        w = RunWriter(
            out, kind="live", plane_shape=(8, 8), pixel_size_um=0.1, overwrite=True
        )
    w.append_frame(np.ones((2, 8, 8), np.uint16))
    w.close()
    # info of the newer run lists it too
    assert any(hidden.path.name in n for n in summarize(out)["leftovers"])
    # recover: the newer run holds a frame, so both are kept and a choice asked
    assert main(["recover", str(out)]) == 1
    assert "--restore" in capsys.readouterr().out
    assert hidden.path.exists()
    assert open_run(out).n_frames == 1
    # --restore puts day 1 back, byte for byte
    assert main(["recover", str(out), "--restore"]) == 0
    assert _snapshot(out) == before
    assert not find_leftovers_beside(out)


def test_recover_restores_when_the_new_run_stored_nothing_and_discards_on_request(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.zarr"
    _make_store(out, 4)
    before = _snapshot(out)
    _kill_during_overwrite(out)
    assert main(["recover", str(out)]) == 0  # nothing at the path: put back
    assert _snapshot(out) == before
    _kill_during_overwrite(out)
    with pytest.warns(UserWarning, match="axialtrack recover"):
        _make_store(out, 0)  # the new run was created, but stored no frame
    assert main(["recover", str(out)]) == 0
    assert _snapshot(out) == before
    _kill_during_overwrite(out)
    with pytest.warns(UserWarning, match="axialtrack recover"):
        _make_store(out, 2)
    assert main(["recover", str(out), "--discard"]) == 0
    assert open_run(out).n_frames == 2
    assert not find_leftovers_beside(out)


def test_recover_command_closes_a_killed_run_and_tidies_an_amend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "analyzed_writer.py"), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: proc.poll() is not None or _committed(path) >= 10, "frames")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the messages name the command
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert f"axialtrack recover {path}" in capsys.readouterr().out
    assert main(["localize", str(path), "--model", "none"]) == 2
    assert f"axialtrack recover {path}" in capsys.readouterr().err
    # an amend of an earlier localize, killed mid-swap: the table swapped out
    os.replace(path / "localizations", path / "localizations.old-999999999")
    (path / "tracks.amend-999999999").mkdir()
    assert main(["info", str(path)]) == 1  # the store lacks its table now
    text = capsys.readouterr().out
    assert "localizations.old-999999999" in text
    assert f"axialtrack recover {path}" in text
    n = _committed(path)
    assert main(["recover", str(path)]) == 0
    text = capsys.readouterr().out
    assert "restored localizations" in text
    assert "removed tracks.amend-999999999" in text
    assert f"Recovered {path}: {n} frames" in text
    run = open_run(path)
    assert run.state == "closed"
    assert summarize(path)["leftovers"] == []
    _check_analyzed_have_rows(path)
    assert main(["recover", str(path)]) == 0  # idempotent
    assert "needed no recovery" in capsys.readouterr().out


# ------------------------------------------------------------------- clocks


def test_info_reports_the_measured_rate_and_names_each_clock(tmp_path: Path) -> None:
    """A camera whose timestamps say 100 frames/s, delivered at 50 frames/s:
    info's rate is the host's, and the camera's is given beside it."""
    path = tmp_path / "slow.zarr"
    with RunWriter(path, kind="live", plane_shape=(8, 8), pixel_size_um=0.1) as w:
        for i in range(51):
            w.append_frame(
                np.zeros((2, 8, 8), np.uint16),
                FrameMeta(t_s=i * 0.01, host_t_s=3.0 + i * 0.02),
            )
    s = summarize(path)
    assert s["frame_rate_clock"] == "host"
    assert s["frame_rate_hz"] == pytest.approx(50.0)
    assert s["duration_s"] == pytest.approx(1.0)
    assert s["camera_frame_rate_hz"] == pytest.approx(100.0)
    from axialtrack.store import format_summary

    text = format_summary(s)
    assert "1.000 s, 50.00 frames/s measured (host clock" in text
    assert "camera timestamps: 0.500 s, 100.00 frames/s" in text
    # the host times are in frame_meta, documented as host_t_s
    host = open_run(path).frame_meta["host_t_s"].to_numpy()
    np.testing.assert_allclose(host, 3.0 + np.arange(51) * 0.02)


def test_a_store_without_host_times_says_its_rate_is_the_cameras(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.zarr"
    _make_store(path, 3)
    # as written before host_t_s existed
    import shutil

    shutil.rmtree(path / "frame_meta" / "host_t_s")
    meta = open_run(path).frame_meta
    assert meta["host_t_s"].isna().all()
    s = summarize(path)
    assert s["frame_rate_clock"] == "camera"
    from axialtrack.store import format_summary

    assert "(camera timestamps; no host times recorded)" in format_summary(s)


def test_a_second_close_waits_for_the_close_that_writes_then_overwrite_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() on one thread while another thread's close() still writes the
    closing attributes returns only once they are written, so that
    ``Replacement.settle()`` (an --overwrite whose new run stored nothing)
    deletes a store nobody writes any more. Before, the second close returned
    at once, and the deletion raced the first close's last writes
    (``OSError: Directory not empty``). The interleaving is forced with
    events: the first close is held inside its final write until the second
    close has either returned (the defect) or is waiting for it."""
    from axialtrack.store import _commit
    from axialtrack.store.replace import Replacement

    out = tmp_path / "live.zarr"
    with RunWriter(out, kind="live", plane_shape=(8, 8), pixel_size_um=0.1) as old:
        old.append_frame(np.ones((2, 8, 8), np.uint16), FrameMeta(t_s=0.0))
    replacing = Replacement(out)
    w = RunWriter(out, kind="live", plane_shape=(8, 8), pixel_size_um=0.1)

    in_finalize = threading.Event()
    released = threading.Event()  # the second close returned, or waits
    second_returned = threading.Event()
    real_finalize = _commit.finalize

    def held_finalize(writer: RunWriter) -> None:
        in_finalize.set()
        assert released.wait(60), "the second close neither returned nor waited"
        real_finalize(writer)

    monkeypatch.setattr(_commit, "finalize", held_finalize)

    class SpyLock:
        """The writer's close lock, saying when a second close waits on it."""

        def __init__(self, lock: Any) -> None:
            self.lock = lock
            self.entries = 0

        def __enter__(self) -> None:
            self.entries += 1
            if self.entries == 2:
                released.set()
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    w._close_lock = SpyLock(threading.RLock())  # type: ignore[assignment]
    first = threading.Thread(target=w.close, name="first-close")
    first.start()
    assert in_finalize.wait(60)
    state_after_second: list[str] = []

    def second_close() -> None:
        w.close()
        state_after_second.append(read_attrs(out)["state"])
        second_returned.set()
        released.set()

    second = threading.Thread(target=second_close, name="second-close")
    second.start()
    second.join(60)
    first.join(60)
    assert not first.is_alive()
    assert not second.is_alive()
    # the second close returned after the first had written state: closed
    assert state_after_second == ["closed"]
    # the new run stored nothing: the old one is put back, nothing left beside
    assert replacing.settle() is True
    assert open_run(out).n_frames == 1
    assert not list(tmp_path.glob(".live.zarr.*"))


def _store_imports() -> dict[str, set[str]]:
    """The modules of axialtrack.store each one imports (at the top or inside a
    function; not under ``if TYPE_CHECKING``)."""
    import ast

    root = Path(__file__).parents[1] / "src" / "axialtrack" / "store"
    graph: dict[str, set[str]] = {}
    for f in root.glob("*.py"):
        if f.name == "__init__.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for b in node.body for n in ast.walk(b))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in skip:
                mod = node.module or ""
                if mod.startswith("axialtrack.store."):
                    deps.add(mod.split(".")[2])
                elif mod == "axialtrack.store":
                    deps.update(
                        a.name for a in node.names if (root / f"{a.name}.py").exists()
                    )
        graph[f.stem] = deps - {f.stem}
    return graph


def test_reader_replace_and_writer_import_without_a_cycle() -> None:
    graph = _store_imports()

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            m = todo.pop()
            for d in graph.get(m, ()):
                if d == dst:
                    return True
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    for m in ("reader", "replace", "writer"):
        assert not reaches(m, m), f"axialtrack.store.{m} imports itself back"
    # the replacement logic needs neither the reader nor the writer
    assert not reaches("replace", "reader")
    assert not reaches("replace", "writer")

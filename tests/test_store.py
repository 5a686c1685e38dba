"""Tests of the run store: round trips, concurrency, crashes, full disks, bad input."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr
from store_common import (
    BATCH_ROWS,
    FAST,
    H,
    W,
    crash_writer,
    make_batch,
    make_frame,
    make_meta,
)
from store_common import wait_for as _wait_for

from axialtrack.store import (
    DiskFullError,
    FrameMeta,
    InvalidFrameError,
    InvalidTableError,
    NotARunStoreError,
    RunWriter,
    StoreClosedError,
    StoreExistsError,
    StoreWriteError,
    UnsupportedFormatError,
    UnwritableStoreError,
    WriterOptions,
    WriterTooSlowError,
    format_summary,
    open_run,
    read_attrs,
    recover,
    run_info,
    summarize,
)

HELPER = Path(crash_writer.__file__)
# every test twice: the Linux fast paths and the portable ones (conftest.py)
pytestmark = pytest.mark.usefixtures("io_paths")

try:
    import tensorstore  # noqa: F401

    HAVE_TS = True
except ImportError:  # pragma: no cover
    HAVE_TS = False


def _writer(path: Path, **kw: Any) -> RunWriter:
    kw.setdefault("kind", "live")
    kw.setdefault("plane_shape", (H, W))
    kw.setdefault("pixel_size_um", 0.108)
    kw.setdefault("options", FAST)
    return RunWriter(path, **kw)


def _write_run(path: Path, n: int, batches: bool = True, **kw: Any) -> None:
    with _writer(path, **kw) as w:
        for i in range(n):
            assert w.append_frame(make_frame(i, H, W), make_meta(i)) == i
            if batches:
                w.append_localizations(make_batch(i))


def _check_frames(run: Any, n: int) -> None:
    assert run.frames.shape == (n, 2, H, W)
    data = run.frames[:]
    for i in range(n):
        np.testing.assert_array_equal(data[i], make_frame(i, H, W))


_EXPECTED: dict[str, np.ndarray] = {
    col: np.concatenate([make_batch(b)[col] for b in range(400)])
    for col in make_batch(0)
}


def _check_batches(locs: pd.DataFrame) -> int:
    """Whole batches only, in order; return how many."""
    assert len(locs) % BATCH_ROWS == 0
    n = len(locs)
    for col, want in _EXPECTED.items():
        np.testing.assert_array_equal(locs[col].to_numpy(), want[:n], err_msg=col)
    return n // BATCH_ROWS


# ------------------------------------------------------------------ round trip


BACKENDS = ["direct", "zarr"] + (["tensorstore"] if HAVE_TS else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compression", [None, "zstd", "blosc-lz4", "blosc-zstd"])
def test_round_trip_bit_exact(tmp_path: Path, backend: str, compression: str) -> None:
    path = tmp_path / "run.zarr"
    opts = FAST.model_copy(update={"backend": backend, "time_block": 8})
    _write_run(path, 21, compression=compression, options=opts)
    run = open_run(path)
    assert run.state == "closed"
    assert run.n_frames == 21
    _check_frames(run, 21)
    # the zarr array is trimmed to exactly the run
    assert run.frames.zarr_array.shape == (21, 2, H, W)
    assert _check_batches(run.localizations) == 21
    # plain zarr (no axialtrack) reads the same bytes
    arr = zarr.open_array(path / "frames" / "0", mode="r")
    np.testing.assert_array_equal(arr[7], make_frame(7, H, W))


def test_frame_meta_values_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    rig = {"config": "sim-dualplane.cfg", "camera": "SimCam"}
    model = {"name": "m1", "hash": "abc123"}
    _write_run(
        path,
        9,
        batches=False,
        kind="calibration",
        rig=rig,
        splitter={"layout": "side-by-side", "plane_offset_um": 0.5},
        model=model,
    )
    run = open_run(path)
    meta = run.frame_meta
    assert list(meta.columns) == [
        "t_s",
        "stage_z_um",
        "stage_x_um",
        "stage_y_um",
        "image_number",
        "position_index",
        "analyzed",
        "host_t_s",
    ]
    assert meta.index.name == "frame"
    for i in range(9):
        for k, v in make_meta(i).items():
            assert meta[k].iloc[i] == pytest.approx(v), (i, k)
    # the host clock: when append_frame received each frame, in order
    host = meta["host_t_s"].to_numpy()
    assert np.isfinite(host).all()
    assert (np.diff(host) >= 0).all()
    assert meta["image_number"].dtype == np.int64
    assert meta["analyzed"].dtype == bool
    a = run.attrs
    assert a["format"] == 1
    assert a["kind"] == "calibration" == run.kind
    assert a["state"] == "closed"
    assert a["rig"] == rig
    assert a["model"] == model
    assert a["splitter"]["layout"] == "side-by-side"
    assert a["n_frames"] == 9
    assert "created" in a
    assert "closed" in a
    assert a["stats"]["frames_committed"] == 9
    # the root attributes are plain zarr v3 JSON
    raw = json.loads((path / "zarr.json").read_text())
    assert raw["attributes"]["axialtrack"]["state"] == "closed"


def test_meta_defaults_set_analyzed_tracks_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with _writer(path) as w:
        w.append_frame(make_frame(0, H, W))
        w.append_frame(make_frame(1, H, W), FrameMeta(t_s=2.5, stage_z_um=1.0))
        w.append_frame(make_frame(2, H, W), {"stage_z_um": 3.0})
        w.set_analyzed([0, 2], True)
        w.set_attrs(model={"name": "late"})
        w.write_tracks(pd.DataFrame({"track_id": [0, 1], "n_localizations": [10, 3]}))
        _wait_for(lambda: w.frames_committed == 3, "the frames to commit")
        w.set_analyzed([2], False)  # after the commit
        assert isinstance(w.stats.write_ms_p50, float)
    run = open_run(path)
    meta = run.frame_meta
    assert meta["analyzed"].tolist() == [True, False, False]
    assert math.isnan(meta["stage_z_um"].iloc[0])
    assert meta["t_s"].iloc[1] == 2.5
    assert meta["t_s"].iloc[0] >= 0  # arrival time when no t_s is given
    assert meta["image_number"].tolist() == [-1, -1, -1]
    assert run.attrs["model"] == {"name": "late"}
    tracks = run.tracks
    assert tracks["track_id"].tolist() == [0, 1]
    assert tracks["n_localizations"].tolist() == [10, 3]


def test_set_analyzed_races_with_commits(tmp_path: Path) -> None:
    """Flags set while frames are queued, in flight or committed all land."""
    path = tmp_path / "run.zarr"
    opts = FAST.model_copy(update={"commit_interval_s": 0.005, "meta_chunk": 16})
    want = np.zeros(150, dtype=bool)
    with _writer(path, options=opts) as w:
        for i in range(150):
            w.append_frame(make_frame(i, H, W), {"analyzed": False})
            if i % 3 == 0:
                w.set_analyzed([i], True)
                want[i] = True
            if i % 7 == 0 and i >= 20:
                j = np.arange(i - 20, i, 5)
                w.set_analyzed(j, bool(i % 2))
                want[j] = bool(i % 2)
            if i % 50 == 0:
                time.sleep(0.01)
    np.testing.assert_array_equal(open_run(path).frame_meta["analyzed"], want)


def test_localization_defaults_extras_and_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    batch = make_batch(0)
    del batch["sigma_z_um"], batch["track_id"]
    batch["snr"] = np.arange(BATCH_ROWS, dtype=np.float32)
    with _writer(path) as w:
        w.append_frame(make_frame(0, H, W))
        w.append_localizations(pd.DataFrame(batch))
        b1 = make_batch(1)
        b1["snr"] = np.ones(BATCH_ROWS, dtype=np.float32)
        b1["frame"] = b1["frame"].astype(np.int32)  # widened safely
        w.append_localizations(b1)
        with pytest.raises(InvalidTableError, match="unknown column"):
            w.append_localizations({**b1, "other": np.zeros(BATCH_ROWS)})
        with pytest.raises(InvalidTableError, match="snr"):
            w.append_localizations(make_batch(2))  # misses the extra column
        bad = dict(b1)
        del bad["x_um"]
        with pytest.raises(InvalidTableError, match="x_um"):
            w.append_localizations(bad)
        with pytest.raises(InvalidTableError, match="frame"):
            w.append_localizations({**b1, "frame": b1["frame"] + 0.5})
        with pytest.raises(InvalidTableError, match="length"):
            w.append_localizations({**b1, "x_um": np.zeros(3)})
    locs = open_run(path).localizations
    assert len(locs) == 2 * BATCH_ROWS
    assert locs["track_id"].iloc[:BATCH_ROWS].tolist() == [-1] * BATCH_ROWS
    assert np.isnan(locs["sigma_z_um"].iloc[:BATCH_ROWS]).all()
    assert locs["snr"].dtype == np.float32
    assert locs["frame"].dtype == np.int64
    assert list(locs.columns)[-1] == "snr"


def test_ome_zarr_metadata_validates(tmp_path: Path) -> None:
    yaozarrs = pytest.importorskip("yaozarrs")
    path = tmp_path / "run.zarr"
    _write_run(path, 6, batches=False)
    yaozarrs.validate_zarr_store(str(path / "frames"))
    ome = json.loads((path / "frames" / "zarr.json").read_text())["attributes"]["ome"]
    ms = ome["multiscales"][0]
    assert ome["version"] == "0.5"
    assert [(a["name"], a["type"], a.get("unit")) for a in ms["axes"]] == [
        ("t", "time", "second"),
        ("c", "channel", None),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    # the frame interval measured from t_s (make_meta: 10 ms)
    assert scale == pytest.approx([0.01, 1.0, 0.108, 0.108])
    arr = json.loads((path / "frames" / "0" / "zarr.json").read_text())
    assert arr["dimension_names"] == ["t", "c", "y", "x"]
    assert arr["chunk_grid"]["configuration"]["chunk_shape"] == [1, 2, H, W]
    assert arr["data_type"] == "uint16"


@pytest.mark.skipif(not HAVE_TS, reason="tensorstore not installed")
def test_foreign_reader_tensorstore(tmp_path: Path) -> None:
    import tensorstore as ts

    path = tmp_path / "run.zarr"
    _write_run(path, 5, batches=False, compression="blosc-lz4")
    arr = ts.open(
        {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(path / "frames/0")},
        }
    ).result()
    assert arr.shape == (5, 2, H, W)
    np.testing.assert_array_equal(arr[3].read().result(), make_frame(3, H, W))


def test_frame_array_indexing(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    _write_run(path, 7, batches=False)
    fr = open_run(path).frames
    full = np.stack([make_frame(i, H, W) for i in range(7)])
    assert len(fr) == 7
    assert fr.ndim == 4
    assert fr.dtype == np.uint16
    np.testing.assert_array_equal(fr[-1], full[-1])
    np.testing.assert_array_equal(fr[1:6:2], full[1:6:2])
    np.testing.assert_array_equal(fr[::-2], full[::-2])
    np.testing.assert_array_equal(fr[[4, 0, 2]], full[[4, 0, 2]])
    np.testing.assert_array_equal(fr[2, 1, 3:5], full[2, 1, 3:5])
    np.testing.assert_array_equal(fr[..., 0], full[..., 0])
    np.testing.assert_array_equal(fr[full[:, 0, 0, 0] > 0], full[full[:, 0, 0, 0] > 0])
    np.testing.assert_array_equal(np.asarray(fr), full)
    with pytest.raises(IndexError, match="committed"):
        fr[7]


# ---------------------------------------------------------------- concurrency


def test_reader_sees_consistent_prefix_while_writing(tmp_path: Path) -> None:
    """A second reader opens the store mid-run and only ever sees whole data."""
    path = tmp_path / "run.zarr"
    n_total = 120
    w = _writer(path, options=FAST.model_copy(update={"time_block": 8}))
    done = threading.Event()
    seen_cv = threading.Condition()
    seen_max = [0]

    def produce() -> None:
        for i in range(n_total):
            w.append_frame(make_frame(i, H, W), make_meta(i))
            w.append_localizations(make_batch(i))
            if i in (30, 60, 90):
                # let the reader see the run grow, however loaded the machine
                with seen_cv:
                    seen_cv.wait_for(lambda i=i: seen_max[0] >= i - 10, timeout=60)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    seen_frames: list[int] = []
    seen_batches: list[int] = []
    run = None
    try:
        while not done.is_set() or len(seen_frames) < 3:
            if run is None:
                run = open_run(path)  # opened while the writer is writing
            else:
                run.refresh()
            n = run.n_frames
            assert run.state == "open"
            assert run.writer_alive
            assert len(run.frame_meta) == n
            if n:
                _check_frames(run, n)
                assert run.frame_meta["image_number"].iloc[-1] == 1000 + n - 1
            seen_frames.append(n)
            seen_batches.append(_check_batches(run.localizations))
            # every row read belongs to a frame this reader can read
            assert (run.localizations["frame"] < n).all()
            with seen_cv:
                seen_max[0] = n
                seen_cv.notify_all()
            if done.is_set():
                break
    finally:
        t.join()
        w.close()
    assert seen_frames == sorted(seen_frames)
    assert seen_batches == sorted(seen_batches)
    assert len(set(seen_frames)) > 1  # it did see the run grow
    run = open_run(path)
    assert run.state == "closed"
    assert run.n_frames == n_total
    assert _check_batches(run.localizations) == n_total


def test_localization_reader_sees_only_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    stop = threading.Event()
    counts: list[int] = []

    def read() -> None:
        while not stop.is_set():
            counts.append(_check_batches(open_run(path).localizations))
            stop.wait(0.01)

    r = threading.Thread(target=read)
    r.start()
    try:
        # the reader sees the empty table, a part of it and all of it before the
        # close, whatever the machine's speed: the writer waits for it to
        _wait_for(lambda: len(counts) > 0, "a first read")
        for b in range(150):
            # rows are committed only with (after) their frames
            w.append_frame(make_frame(b, H, W), make_meta(b))
            if b == 75:
                _wait_for(lambda: counts[-1] > 0, "a reader to see rows")
            w.append_localizations(make_batch(b))
        _wait_for(lambda: counts[-1] == 150, "a reader to see every row")
    finally:
        w.close()
        stop.set()
        r.join()
    assert counts == sorted(counts)
    assert len(set(counts)) > 2  # the reader saw the table grow
    assert _check_batches(open_run(path).localizations) == 150


# ------------------------------------------------------------- crash recovery


def test_crash_sigkill_recovers_committed_data(tmp_path: Path) -> None:
    path = tmp_path / "crash.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(path), str(H), str(W)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        committed = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                committed = read_attrs(path)["n_frames"]
            except (NotARunStoreError, KeyError):
                committed = 0
            if committed >= 40:
                break
            time.sleep(0.01)
        assert committed >= 40, "the writer did not commit frames in time"
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it never stops writing
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    run = open_run(path)
    assert run.state == "open"
    assert run.writer_alive is False
    n = run.n_frames
    assert n >= committed
    assert n == read_attrs(path)["n_frames"]
    assert run.frames.zarr_array.shape[0] >= n  # grown in blocks, not trimmed
    _check_frames(run, n)
    meta = run.frame_meta
    assert len(meta) == n
    assert meta["image_number"].tolist() == [1000 + i for i in range(n)]
    nb = _check_batches(run.localizations)
    assert nb >= 1

    s = summarize(path)
    assert s["state"] == "open"
    assert s["writer_alive"] is False
    assert s["recovered"]["frames"] == n
    assert s["recovered"]["localization_rows"] == nb * BATCH_ROWS
    text = format_summary(s)
    assert "NOT cleanly closed" in text
    assert f"{n} frames" in text

    report = recover(path)
    assert report.was_open
    assert report.frames == n
    assert report.localization_rows == nb * BATCH_ROWS
    run = open_run(path)
    assert run.state == "closed"
    assert run.attrs["recovery"]["frames"] == n
    assert run.frames.zarr_array.shape[0] == n
    _check_frames(run, n)
    assert _check_batches(run.localizations) == nb
    assert not list(path.rglob("*.partial"))
    assert "closed by recovery" in format_summary(summarize(path))
    yaozarrs = pytest.importorskip("yaozarrs")
    yaozarrs.validate_zarr_store(str(path / "frames"))
    assert not recover(path).was_open  # idempotent


# ---------------------------------------------------- full disk, unwritable


def _frames_through(path: Path, frames: list[np.ndarray], opts: WriterOptions) -> Any:
    """Write ``frames`` to a new run; the frame sink's ``ChunkFiles`` after close."""
    h, w = frames[0].shape[1:]
    with RunWriter(
        path, kind="live", plane_shape=(h, w), pixel_size_um=0.1, options=opts
    ) as wr:
        for i, f in enumerate(frames):
            wr.append_frame(f, make_meta(i))
        files = wr._sink._files  # type: ignore[attr-defined]
    return files


@pytest.mark.parametrize("direct_io", [True, False])
def test_direct_io_frames_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_io: bool
) -> None:
    """Uncompressed frames of a whole number of 4 KiB go to disk with O_DIRECT
    (where the file system takes it); other sizes and compressed chunks through
    the page cache. The bytes read back are the same either way."""
    from axialtrack.store import _sinks

    calls: list[tuple[str, bool]] = []
    real = _sinks.atomic_write

    def spy(path: str, data: Any, *, direct: bool = False) -> int:
        calls.append((path, direct))
        return real(path, data, direct=direct)

    def frame_writes(store: Path) -> list[bool]:
        chunks = os.fspath(store / "frames" / "0") + os.sep
        return [d for p, d in calls if p.startswith(chunks)]

    monkeypatch.setattr(_sinks, "atomic_write", spy)
    # as on a local disk, whatever holds tmp_path here (a refusal is handled)
    monkeypatch.setattr(_sinks, "filesystem_type", lambda path: "ext4")
    h, w = 32, 32  # 2 x 32 x 32 x 2 bytes = 4 KiB per frame
    # one I/O thread: a refusal is met by exactly one write
    opts = FAST.model_copy(update={"direct_io": direct_io, "io_threads": 1})
    frames = [make_frame(i, h, w) for i in range(12)]
    used = _frames_through(tmp_path / "a.zarr", frames, opts).direct_io
    run = open_run(tmp_path / "a.zarr")
    np.testing.assert_array_equal(run.frames[:], np.stack(frames))
    frame_calls = frame_writes(tmp_path / "a.zarr")
    assert len(frame_calls) >= 12
    if not direct_io or _sinks.o_direct() == 0:  # off, or no O_DIRECT here
        assert not any(frame_calls)
    elif used:  # the file system took O_DIRECT: every frame went that way
        assert frame_calls.count(True) >= 12
    else:  # refused at the first frame, then through the page cache
        assert frame_calls.count(True) == 1
    # a frame size that is not a whole number of 4 KiB: through the page cache
    _write_run(tmp_path / "b.zarr", 5, batches=False, options=opts)
    _check_frames(open_run(tmp_path / "b.zarr"), 5)
    assert len(frame_writes(tmp_path / "b.zarr")) == 5
    assert not any(frame_writes(tmp_path / "b.zarr"))


def test_direct_io_refused_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from axialtrack.store import _sinks

    real = _sinks.atomic_write
    tries: list[bool] = []

    def refuse(path: str, data: Any, *, direct: bool = False) -> int:
        tries.append(direct)
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, data)

    monkeypatch.setattr(_sinks, "atomic_write", refuse)
    monkeypatch.setattr(_sinks, "filesystem_type", lambda path: "ext4")
    h, w = 32, 32
    frames = [make_frame(i, h, w) for i in range(6)]
    opts = FAST.model_copy(update={"io_threads": 1})
    files = _frames_through(tmp_path / "c.zarr", frames, opts)
    assert files.direct_io is False
    # tried once, then never again (never where the OS has no O_DIRECT)
    assert tries.count(True) == (1 if _sinks.o_direct() else 0)
    got = open_run(tmp_path / "c.zarr").frames[:]
    np.testing.assert_array_equal(got, np.stack(frames))


def test_direct_io_only_on_local_disks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from axialtrack.store import _sinks

    portable = _sinks.portable_io()
    assert _sinks.filesystem_type("/proc/self") == (None if portable else "proc")
    arr = zarr.create_array(tmp_path / "a", shape=(4,), chunks=(1,), dtype="u2")
    for fs, want in (("nfs4", False), ("fuse.sshfs", False), ("xfs", True)):
        monkeypatch.setattr(_sinks, "filesystem_type", lambda path, fs=fs: fs)
        files = _sinks.ChunkFiles(arr, tmp_path / "a", lambda c: c, direct_io=True)
        assert files.direct_io is (want and _sinks.o_direct() != 0), fs


def _mount_tmpfs(path: Path, size: str, ro: bool = False) -> None:
    path.mkdir()
    opts = f"size={size}" + (",ro" if ro else "")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "8m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_clear_error_and_nothing_damaged(small_disk: Path) -> None:
    path = small_disk / "full.zarr"
    h, w = 128, 128  # 64 kB frames: the 8 MB disk fills after ~120
    frames = [make_frame(i, h, w) for i in range(4)]
    writer = RunWriter(
        path, kind="live", plane_shape=(h, w), pixel_size_um=0.1, options=FAST
    )
    err: StoreWriteError | None = None
    try:
        for i in range(2000):
            writer.append_frame(frames[i % 4], make_meta(i))
            if i % 10 == 0:
                time.sleep(0.005)  # let commits happen on the way
    except StoreWriteError as exc:
        err = exc
    with pytest.raises(StoreWriteError) as on_close:
        writer.close()
    err = err or on_close.value
    assert isinstance(err, DiskFullError)
    assert isinstance(on_close.value, DiskFullError)
    assert str(path) in str(err)
    assert "disk is full" in str(err)
    assert err.frames_safe > 0
    assert f"{err.frames_safe} frame(s)" in str(err)
    with pytest.raises(StoreClosedError):
        writer.append_frame(frames[0])
    run = open_run(path)
    assert run.state == "open"
    assert run.n_frames == on_close.value.frames_safe
    data = run.frames[:]
    for i in range(run.n_frames):
        np.testing.assert_array_equal(data[i], frames[i % 4])
    assert run.frame_meta["image_number"].tolist() == [
        1000 + i for i in range(run.n_frames)
    ]
    assert not list(path.rglob("*.partial"))


def test_read_only_mid_run_error_surfaces(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "16m")
    try:
        path = mnt / "run.zarr"
        w = _writer(path)
        for i in range(10):
            w.append_frame(make_frame(i, H, W), make_meta(i))
        _wait_for(lambda: w.frames_committed == 10, "10 frames to commit")
        res = subprocess.run(
            ["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True
        )
        if res.returncode != 0:
            w.close()
            pytest.skip(f"cannot remount read-only: {res.stderr.strip()}")
        err: StoreWriteError | None = None
        try:
            for i in range(10, 1000):
                w.append_frame(make_frame(i, H, W), make_meta(i))
                time.sleep(0.002)
        except StoreWriteError as exc:  # surfaced by append_frame
            err = exc
        with pytest.raises(UnwritableStoreError) as info:
            w.close()  # and by close
        assert err is None or isinstance(err, UnwritableStoreError)
        assert info.value.frames_safe == 10
        assert str(path) in str(info.value)
        w.close()  # closing again: nothing more to report
        run = open_run(path)
        assert run.n_frames == 10
        assert run.state == "open"
        _check_frames(run, 10)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_unwritable_locations(tmp_path: Path) -> None:
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    with pytest.raises(UnwritableStoreError, match="is a file"):
        _writer(afile / "run.zarr")
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "1m", ro=True)
    try:
        with pytest.raises(UnwritableStoreError, match="not writable") as info:
            _writer(ro / "run.zarr")
        assert str(ro / "run.zarr") in str(info.value)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# -------------------------------------------------------------- back-pressure


def test_too_slow_raises_and_drops_nothing(tmp_path: Path) -> None:
    path = tmp_path / "slow.zarr"
    for policy in ("raise", "block"):
        opts = FAST.model_copy(
            update={"queue_mb": 0.001, "on_full": policy, "block_timeout_s": 0.02}
        )
        w = _writer(path, options=opts, overwrite=True)
        real = w._sink.write

        def slow(index: int, frame: np.ndarray, real: Any = real) -> int:
            time.sleep(0.1)
            return real(index, frame)

        w._sink.write = slow  # type: ignore[method-assign]
        accepted = 0
        err: Exception | None = None
        try:
            for i in range(20):
                w.append_frame(make_frame(i, H, W), make_meta(i))
                accepted += 1
        except WriterTooSlowError as exc:
            err = exc
        assert err is not None
        assert "NOT stored" in str(err)
        assert w.frames_appended == accepted >= 2
        w.close()
        run = open_run(path)
        assert run.n_frames == accepted  # every accepted frame is stored
        _check_frames(run, accepted)


# ------------------------------------------------------------------ bad input


def test_bad_frames_and_closed_writer(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    with pytest.raises(InvalidFrameError, match=r"shape \(2, 16, 23\).*\(2, 16, 24\)"):
        w.append_frame(np.zeros((2, H, W - 1), np.uint16))
    with pytest.raises(InvalidFrameError, match="shape"):
        w.append_frame(np.zeros((H, W), np.uint16))
    with pytest.raises(InvalidFrameError, match="dtype float32"):
        w.append_frame(np.zeros((2, H, W), np.float32))
    with pytest.raises(InvalidFrameError, match="stage_q_um"):
        w.append_frame(np.zeros((2, H, W), np.uint16), {"stage_q_um": 1.0})
    with pytest.raises(IndexError):
        w.set_analyzed([0], True)  # no frame yet
    with pytest.raises(ValueError, match="managed"):
        w.set_attrs(state="closed")
    w.append_frame(np.zeros((2, H, W), np.uint16))
    w.close()
    w.close()  # idempotent
    with pytest.raises(StoreClosedError, match=str(path)):
        w.append_frame(np.zeros((2, H, W), np.uint16))
    with pytest.raises(StoreClosedError):
        w.append_localizations(make_batch(0))
    assert open_run(path).n_frames == 1


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        _writer(tmp_path / "a.zarr", kind="movie")
    with pytest.raises(ValueError, match="plane_shape"):
        _writer(tmp_path / "a.zarr", plane_shape=(0, 4))
    with pytest.raises(ValueError, match="compression"):
        _writer(tmp_path / "a.zarr", compression="gzip")
    with pytest.raises(TypeError, match="rig must be JSON"):
        _writer(tmp_path / "a.zarr", rig={"x": object()})
    assert not (tmp_path / "a.zarr").exists()


def test_existing_path_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    _write_run(path, 2, batches=False)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        _writer(path)
    assert open_run(path).n_frames == 2  # untouched
    _write_run(path, 3, batches=False, overwrite=True)
    assert open_run(path).n_frames == 3
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(StoreExistsError, match="is a directory, not an axialtrack"):
        _writer(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"


def test_not_a_run_store_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(NotARunStoreError, match="does not exist"):
        open_run(tmp_path / "missing.zarr")
    (tmp_path / "f.zarr").write_text("")
    with pytest.raises(NotARunStoreError, match="is a file"):
        open_run(tmp_path / "f.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotARunStoreError, match=r"no zarr\.json"):
        open_run(tmp_path / "empty")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    with pytest.raises(NotARunStoreError, match="not written by axialtrack"):
        open_run(tmp_path / "plain.zarr")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    with pytest.raises(NotARunStoreError, match="zarr v2"):
        open_run(tmp_path / "v2.zarr")

    path = tmp_path / "run.zarr"
    _write_run(path, 1, batches=False)
    zj = path / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["axialtrack"]["format"] = 2
    zj.write_text(json.dumps(meta))
    with pytest.raises(UnsupportedFormatError, match=r"format 2.*Upgrade"):
        open_run(path)
    buf = io.StringIO()
    from rich.console import Console

    assert run_info(path, console=Console(file=buf, width=200)) == 1
    assert "format 2" in buf.getvalue()


# ----------------------------------------------------------------------- info


def test_summarize_and_format(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with _writer(
        path,
        rig={"config": "sim-dualplane.cfg"},
        model={"name": "bead-cnn", "onnx_sha256": "0f1e"},
        compression="blosc-lz4",
    ) as w:
        for i in range(11):
            w.append_frame(make_frame(i, H, W), make_meta(i))
            w.append_localizations(make_batch(i))
        w.write_tracks({"track_id": np.arange(4)})
    s = summarize(path)
    assert s["state"] == "closed"
    assert s["kind"] == "live"
    assert s["frames"] == 11
    assert s["frame_shape"] == [2, H, W]
    assert s["camera_duration_s"] == pytest.approx(0.1)
    assert s["camera_frame_rate_hz"] == pytest.approx(100.0)
    # the headline rate is the one measured on the host clock
    assert s["frame_rate_clock"] == "host"
    assert s["frame_rate_hz"] == pytest.approx(s["host_frame_rate_hz"])
    assert s["localizations"] == 11 * BATCH_ROWS
    assert s["tracks"] == 4
    assert s["frames_analyzed"] == 6
    assert s["size_bytes"] > 0
    assert s["compression"] == "blosc-lz4"
    assert s["recovered"] is None
    json.dumps(s)  # JSON-compatible
    text = format_summary(s)
    for want in (
        "live",
        "closed",
        "11 x 2 planes",
        "camera timestamps: 0.100 s, 100.00 frames/s",
        "measured (host clock",
        "220 rows",
        "bead-cnn",
        "sim-dualplane.cfg",
        "blosc-lz4",
    ):
        assert want in text, want
    buf = io.StringIO()
    from rich.console import Console

    assert run_info(path, console=Console(file=buf, width=200)) == 0
    assert "bead-cnn" in buf.getvalue()


def test_a_commit_that_fails_after_its_rows_does_not_write_them_twice(
    tmp_path: Path,
) -> None:
    """The metadata rows of a commit whose attribute write failed (a full disk)
    are not appended again by the last commit: each frame keeps its own row."""
    import errno

    from axialtrack.store import DiskFullError, recover

    path = tmp_path / "run.zarr"
    w = RunWriter(
        path,
        kind="live",
        plane_shape=(8, 8),
        pixel_size_um=0.1,
        options=WriterOptions(commit_interval_s=0.05, io_threads=4),
    )
    write = w._sink.write

    def slow(i, f):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return write(i, f)

    w._sink.write = slow  # type: ignore[method-assign]
    root = w._root
    calls = {"n": 0}

    class FlakyRoot:
        def __getattr__(self, k: str) -> Any:
            return getattr(root, k)

        @staticmethod
        def update_attributes(d: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:  # after the second commit's rows are appended
                raise OSError(errno.ENOSPC, "No space left on device")
            return root.update_attributes(d)

    w._root = FlakyRoot()  # type: ignore[assignment]
    frame = np.zeros((2, 8, 8), np.uint16)

    def append_until_refused() -> None:
        for i in range(60):
            w.append_frame(frame + i, FrameMeta(t_s=float(i), image_number=i))
            time.sleep(0.005)

    with pytest.raises(DiskFullError):
        append_until_refused()
    with pytest.raises(DiskFullError):
        w.close()
    assert calls["n"] >= 3  # the last commit went through
    recover(path)
    run = open_run(path)
    n = run.n_frames
    assert n > 6
    pixels = [int(run.frames[i][0, 0, 0]) for i in range(n)]
    assert pixels == list(range(n))
    assert run.frame_meta["image_number"].tolist() == list(range(n))


def test_calls_that_race_close_raise_instead_of_losing_data(tmp_path: Path) -> None:
    from axialtrack.store import StoreClosedError

    w = RunWriter(
        tmp_path / "run.zarr", kind="live", plane_shape=(8, 8), pixel_size_um=0.1
    )
    w.append_frame(np.zeros((2, 8, 8), np.uint16))
    check = w._raise_if_failed
    fired: list[int] = []

    def close_in_the_gap() -> None:
        # close() completes right after the call found the writer open
        check()
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(1)
            t = threading.Thread(target=w.close)
            t.start()
            t.join()

    w._raise_if_failed = close_in_the_gap  # type: ignore[method-assign]
    k = 5
    cols = ("t_s", "x_um", "y_um", "z_um", "dz_um", "photons", "background")
    table = {c: np.zeros(k) for c in cols}
    table["frame"] = np.zeros(k, np.int64)
    with pytest.raises(StoreClosedError):
        w.append_localizations(table)
    fired.clear()
    with pytest.raises(StoreClosedError):
        w.set_attrs(note="late")
    assert open_run(tmp_path / "run.zarr").state == "closed"


def test_a_close_interrupted_by_ctrl_c_is_done_by_the_next(tmp_path: Path) -> None:
    w = RunWriter(
        tmp_path / "run.zarr", kind="live", plane_shape=(8, 8), pixel_size_um=0.1
    )
    for i in range(20):
        w.append_frame(np.full((2, 8, 8), i, np.uint16))
    join = w._frame_thread.join
    calls = {"n": 0}

    def interrupted_join(*a: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        join(*a)

    w._frame_thread.join = interrupted_join  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        w.close()
    w.close()  # finishes what the first began
    run = open_run(tmp_path / "run.zarr")
    assert run.state == "closed"
    assert run.n_frames == 20
    assert int(run.frames[19][0, 0, 0]) == 19


def test_an_amend_whose_swap_fails_keeps_the_previous_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from axialtrack.store import StoreWriteError, amend

    path = tmp_path / "run.zarr"
    cols = ("t_s", "x_um", "y_um", "z_um", "dz_um", "photons", "background")
    with RunWriter(path, kind="live", plane_shape=(8, 8), pixel_size_um=0.1) as w:
        for _ in range(3):
            w.append_frame(np.zeros((2, 8, 8), np.uint16))
        t = {c: np.ones(2) for c in cols}
        t["frame"] = np.array([0, 1])
        w.append_localizations(t)
    before = open_run(path).localizations
    rename = os.replace
    calls = {"n": 0}

    def flaky(a: Any, b: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the new table into place
            raise OSError(errno.EIO, "Input/output error")
        rename(a, b)

    monkeypatch.setattr(amend, "_replace", flaky)
    new = {c: np.full(1, 2.0) for c in cols}
    new["frame"] = np.array([1])  # a frame with rows already: the table is replaced
    with pytest.raises(StoreWriteError):
        amend.append_localizations_to_run(path, new, frames_analyzed=[1])
    monkeypatch.undo()
    run = open_run(path)  # still opens, with the previous table
    pd.testing.assert_frame_equal(run.localizations, before)
    assert not list(path.glob("localizations.old-*"))
    # nor the new table that was never swapped in
    assert not list(path.glob("localizations.amend-*"))


def test_an_amend_with_a_bad_track_table_changes_nothing(tmp_path: Path) -> None:
    from axialtrack.store import InvalidTableError
    from axialtrack.store.amend import append_localizations_to_run

    path = tmp_path / "run.zarr"
    cols = ("t_s", "x_um", "y_um", "z_um", "dz_um", "photons", "background")
    with RunWriter(path, kind="live", plane_shape=(8, 8), pixel_size_um=0.1) as w:
        for _ in range(3):
            w.append_frame(np.zeros((2, 8, 8), np.uint16))
    new = {c: np.full(2, 2.0) for c in cols}
    new["frame"] = np.array([0, 2])
    bad = {"track_id": np.arange(3), "D_um2_s": np.ones(2)}  # unequal lengths
    with pytest.raises(InvalidTableError, match="differ in length"):
        append_localizations_to_run(path, new, frames_analyzed=[0, 2], tracks=bad)
    run = open_run(path)
    assert len(run.localizations) == 0
    assert not run.frame_meta["analyzed"].any()
    assert not list(path.glob("*.amend-*"))


def test_a_frame_that_waited_while_the_writer_failed_is_refused(
    tmp_path: Path,
) -> None:
    import errno

    from axialtrack.store import DiskFullError

    frame = np.zeros((2, 64, 64), np.uint16)  # 16 KB
    w = RunWriter(
        tmp_path / "run.zarr",
        kind="live",
        plane_shape=(64, 64),
        pixel_size_um=0.1,
        options=WriterOptions(queue_mb=0.01, block_timeout_s=10.0),  # 2 buffers
    )

    def fails(i, f):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        raise OSError(errno.ENOSPC, "No space left on device")

    w._sink.write = fails  # type: ignore[method-assign]
    assert w._n_slots == 2
    assert w.append_frame(frame) == 0  # the two buffers taken
    assert w.append_frame(frame) == 1
    # waits for the buffer, which comes back after the write failed: this
    # frame would be dropped, so it must not be accepted
    with pytest.raises(DiskFullError):
        w.append_frame(frame)
    with pytest.raises(DiskFullError):
        w.close()

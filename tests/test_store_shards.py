"""Sharded frame arrays: a file per shard of frames, with the same guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from store_common import H, W, crash_writer, make_frame, make_meta
from store_common import wait_for as _wait_for

from axialtrack.store import (
    RunWriter,
    WriterOptions,
    open_run,
    read_attrs,
    recover,
    summarize,
)

HELPER = Path(crash_writer.__file__)

N = 8  # frames per shard


def _opts(**kw: Any) -> WriterOptions:
    return WriterOptions(
        commit_interval_s=0.01, table_flush_interval_s=0.01, shard_frames=N, **kw
    )


def _chunk_files(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "frames" / "0").glob("c.*"))


@pytest.mark.parametrize("compression", [None, "zstd", "blosc-lz4"])
def test_sharded_round_trip_and_foreign_readers(
    tmp_path: Path, compression: str | None, io_paths: str
) -> None:
    """Also with what Windows gets (no ``os.pwrite``: seek and write; the
    ``io_paths`` fixture of conftest.py)."""
    path = tmp_path / "run.zarr"
    n = 21  # two full shards and a partial one
    with RunWriter(
        path,
        kind="live",
        plane_shape=(H, W),
        pixel_size_um=0.1,
        compression=compression,  # type: ignore[arg-type]
        options=_opts(),
    ) as w:
        for i in range(n):
            w.append_frame(make_frame(i, H, W), make_meta(i))
    assert _chunk_files(path) == ["c.0.0.0.0", "c.1.0.0.0", "c.2.0.0.0"]
    run = open_run(path)
    assert run.frames.shape == (n, 2, H, W)
    for i in range(n):
        np.testing.assert_array_equal(run.frames[i], make_frame(i, H, W))
    arr = zarr.open_array(str(path / "frames" / "0"), mode="r")
    np.testing.assert_array_equal(arr[20], make_frame(20, H, W))
    meta = json.loads((path / "frames" / "0" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [N, 2, H, W]
    yaozarrs = pytest.importorskip("yaozarrs")
    yaozarrs.validate_zarr_store(str(path))
    ts = pytest.importorskip("tensorstore")
    t = ts.open(
        {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(path / "frames/0")},
        }
    ).result()
    np.testing.assert_array_equal(t[13].read().result(), make_frame(13, H, W))


def test_growing_sharded_run_shows_committed_frames(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=_opts()
    ) as w:
        for i in range(5):
            w.append_frame(make_frame(i, H, W), make_meta(i))
        _wait_for(lambda: w.frames_committed == 5, "5 frames committed")
        arr = zarr.open_array(str(path / "frames" / "0"), mode="r")
        assert arr.shape[0] == 5
        np.testing.assert_array_equal(
            arr[:5], np.stack([make_frame(i, H, W) for i in range(5)])
        )
        for i in range(5, 12):
            w.append_frame(make_frame(i, H, W), make_meta(i))
        _wait_for(lambda: w.frames_committed == 12, "12 frames committed")
        arr = zarr.open_array(str(path / "frames" / "0"), mode="r")
        assert arr.shape[0] == 12
        np.testing.assert_array_equal(arr[11], make_frame(11, H, W))
        yaozarrs = pytest.importorskip("yaozarrs")
        yaozarrs.validate_zarr_store(str(path))


def test_shard_frames_needs_the_direct_backend() -> None:
    with pytest.raises(ValueError, match="shard_frames needs backend='direct'"):
        WriterOptions(backend="zarr", shard_frames=8)
    with pytest.raises(ValueError, match="less than or equal to 255"):
        WriterOptions(shard_frames=256)  # its index would not fit in a page


def test_sharded_crash_sigkill_keeps_committed_frames_and_recovers_the_tail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(path), str(H), str(W), str(N)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                committed = read_attrs(path)["n_frames"]
            except Exception:
                committed = 0
            # stop inside a shard, not at its end
            if committed >= 3 * N and committed % N not in (0, N - 1):
                break
            time.sleep(0.002)
        assert committed >= 3 * N, "the writer did not commit frames in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = open_run(path)
    n = run.n_frames
    assert n >= committed
    for i in range(n):
        np.testing.assert_array_equal(run.frames[i], make_frame(i, H, W))
    assert summarize(path)["state"] == "open"
    report = recover(path)
    assert report.frames == n
    run = open_run(path)
    assert run.state == "closed"
    assert run.frames.shape == (n, 2, H, W)
    for i in range(n):
        np.testing.assert_array_equal(run.frames[i], make_frame(i, H, W))
    # no shard past the last committed frame; the last one ends at its last frame
    files = _chunk_files(path)
    assert files == [f"c.{s}.0.0.0" for s in range((n - 1) // N + 1)]
    last = path / "frames" / "0" / files[-1]
    from axialtrack.store._sinks import read_shard_index

    idx = read_shard_index(str(last), N)
    assert idx is not None
    k = n - (len(files) - 1) * N
    assert (idx[k:] == np.uint64(2**64 - 1)).all()
    assert last.stat().st_size == int((idx[:k, 0] + idx[:k, 1]).max())
    assert not list(path.rglob("*.partial"))


def _torn_index_reads(
    monkeypatch: pytest.MonkeyPatch, path: Path, shard: int, reads: int
) -> list[int]:
    """Make the next ``reads`` frame reads meet shard ``shard``'s index half
    rewritten: the new entries with the old index's checksum, as a reader sees
    it in the middle of the writer's in-place rewrite; after each such read
    the rewrite completes (the whole new index is on disk). Returns the list
    the patched reads count into."""
    from axialtrack.store._sinks import (
        SHARD_MISSING,
        read_shard_index,
        shard_index_bytes,
    )

    f = path / "frames" / "0" / f"c.{shard}.0.0.0"
    new = read_shard_index(str(f), N)
    assert new is not None
    k = int((new[:, 0] != SHARD_MISSING).sum())
    old = new.copy()
    old[k - 1 :] = SHARD_MISSING  # the index before the last commit
    whole = shard_index_bytes(new)
    torn = whole[:-4] + shard_index_bytes(old)[-4:]
    calls: list[int] = []
    real = zarr.Array.__getitem__

    def racing(self: zarr.Array, key: Any) -> Any:
        calls.append(1)
        if len(calls) > reads:
            return real(self, key)
        with open(f, "r+b") as fh:
            fh.write(torn)
        try:
            return real(self, key)
        finally:
            with open(f, "r+b") as fh:
                fh.write(whole)

    monkeypatch.setattr(zarr.Array, "__getitem__", racing)
    return calls


def test_a_read_racing_a_shard_index_rewrite_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_run's frames and the napari reader's planes never show the
    checksum error of an index read while the writer rewrites it: they read
    again. An index that stays bad is damage: a StoreError saying so."""
    from axialtrack.napari_plugin._reader import _plane_data
    from axialtrack.store import StoreError

    path = tmp_path / "run.zarr"
    with RunWriter(
        path, kind="live", plane_shape=(H, W), pixel_size_um=0.1, options=_opts()
    ) as w:
        for i in range(10):
            w.append_frame(make_frame(i, H, W), make_meta(i))
    run = open_run(path)
    calls = _torn_index_reads(monkeypatch, path, shard=1, reads=1)
    np.testing.assert_array_equal(run.frames[9], make_frame(9, H, W))
    assert len(calls) == 2  # the torn read, then the whole one
    calls = _torn_index_reads(monkeypatch, path, shard=1, reads=1)
    plane = _plane_data(run, 1)[8].compute()
    np.testing.assert_array_equal(plane, make_frame(8, H, W)[1])
    assert len(calls) == 2
    from axialtrack.store.reader import CHECKSUM_RETRIES

    calls = _torn_index_reads(monkeypatch, path, shard=1, reads=10**6)
    with pytest.raises(StoreError, match="checksum on 20 reads in a row"):
        run.frames[8]
    assert len(calls) == CHECKSUM_RETRIES == 20

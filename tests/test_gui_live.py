"""The Live panel's runs on the one MDA path (``axialtrack.live.LiveRun``, as
``axialtrack live``): stopped from the window, replacing a store with the
put-back, frames per file; and ``axialtrack live --shard-frames``."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if importlib.util.find_spec("pymmcore_widgets") is None:
    pytest.skip("needs the gui extra", allow_module_level=True)
pytest.importorskip("pytestqt")

from qtpy.QtWidgets import QMessageBox

from axialtrack.store import open_run, read_attrs

#: small planes: a record-only run is cheap
PLANE_PX = 64


def _shard_frames(store: Path) -> int | None:
    """Frames per shard of a run store's frame array (None: not sharded)."""
    meta = json.loads((store / "frames" / "0" / "zarr.json").read_text())
    for codec in meta.get("codecs", []):
        if codec.get("name") == "sharding_indexed":
            return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    return None


@pytest.fixture
def panel(qtbot: Any) -> Any:
    from types import SimpleNamespace

    from axialtrack.gui._backend import prepare_core
    from axialtrack.gui._icons import offline_icons
    from axialtrack.gui._live import LivePanel
    from axialtrack.rig import load_rig

    offline_icons()
    core = load_rig(None)
    prepare_core(core)
    cam = core.getCameraDevice()
    for prop in ("PlaneWidth", "PlaneHeight"):
        core.setProperty(cam, prop, str(PLANE_PX))
    p = LivePanel(core, SimpleNamespace(config_name="the simulated rig"))
    qtbot.addWidget(p)
    errors: list[BaseException] = []
    p.error.connect(errors.append)
    p.test_errors = errors
    yield p
    if p.running:
        p.stop()
        p.wait_done(60)
    core.unloadAllDevices()


def _run_and_stop(qtbot: Any, p: Any, frames: int = 10) -> Any:
    """Start (confirming a replacement), wait for ``frames`` stored, Stop."""
    assert p.start(overwrite=p.out_field.text() and Path(p.out_field.text()).exists())
    stored: list[int] = []
    p.session.events.framesStored.connect(stored.append)
    qtbot.waitUntil(lambda: bool(stored) and stored[-1] >= frames, timeout=60_000)
    p.stop_button.click()
    qtbot.waitUntil(lambda: not p.running, timeout=120_000)
    return p.metrics


def test_a_run_stopped_from_the_window_leaves_a_closed_store(
    qtbot: Any, panel: Any, tmp_path: Path
) -> None:
    out = tmp_path / "live.zarr"
    panel.out_field.setText(str(out))
    panel.duration_spin.setValue(600)  # far longer than the test: Stop ends it
    panel.shard_spin.setValue(4)
    m = _run_and_stop(qtbot, panel)
    assert panel.test_errors == []
    assert m.stop_reason == "stopped from the window"
    assert m.frames_written >= 10
    assert read_attrs(out)["state"] == "closed"
    run = open_run(out)
    assert len(run.frames) == m.frames_written == len(run.frame_meta)
    assert run.frames.shape[1:] == (2, PLANE_PX, PLANE_PX)
    # the frames per file asked for in the panel (WriterOptions.shard_frames)
    assert _shard_frames(out) == 4
    assert "stopped from the window" in panel.state_label.text()


def test_a_replacement_that_stores_nothing_puts_the_old_store_back(
    qtbot: Any, panel: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing a run store from the panel (confirmed in the dialog) uses the
    CLI's put-back: a new run that never starts loses nothing."""
    out = tmp_path / "live.zarr"
    panel.out_field.setText(str(out))
    first = _run_and_stop(qtbot, panel, frames=5)
    before = open_run(out).frame_meta.copy()
    assert len(before) == first.frames_written

    from axialtrack.live import LiveRunner

    def no_camera(self: Any, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("camera did not start")

    monkeypatch.setattr(LiveRunner, "run", no_camera)
    asked: list[str] = []

    def confirm(*a: Any, **k: Any) -> Any:
        asked.append(a[2])
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", confirm)
    panel.start_button.click()
    assert len(asked) == 1
    assert "live.zarr" in asked[0]
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    assert len(panel.test_errors) == 1
    assert "camera did not start" in str(panel.test_errors[0])
    assert "previous store is back" in panel.state_label.text()
    after = open_run(out)
    assert read_attrs(out)["state"] == "closed"
    assert len(after.frame_meta) == len(before)
    import pandas as pd

    pd.testing.assert_frame_equal(after.frame_meta, before)
    assert not list(tmp_path.glob(".live.zarr.replaced-*"))


def test_cli_live_shard_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``axialtrack live --shard-frames N`` writes N frames per file."""
    from axialtrack.cli import main

    out = tmp_path / "run.zarr"
    code = main(
        [
            *("live", "--frames", "12", "--out", str(out)),
            *("--shard-frames", "4", "--no-status"),
        ]
    )
    assert code == 0
    assert _shard_frames(out) == 4
    assert open_run(out).n_frames == 12
    # out of range: refused by the option (exit 2, one line), nothing written
    argv = ["live", "--frames", "3", "--out", str(tmp_path / "x.zarr")]
    assert main([*argv, "--shard-frames", "1"]) == 2
    assert "2 to 255" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()

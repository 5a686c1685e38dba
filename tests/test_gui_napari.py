"""The Runs panel's "Open in napari": the project's napari reader
(``axialtrack.napari_plugin``), headless and in a real napari window under a
display (Xvfb where there is none)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if importlib.util.find_spec("pymmcore_widgets") is None:
    pytest.skip("needs the gui extra", allow_module_level=True)
pytest.importorskip("pytestqt")
pytest.importorskip("napari")

from axialtrack.store import RunWriter

H = W = 16
PX = 0.1
N = 5


def _write(path: Path) -> None:
    """A small live run: two spots a frame, linked into two tracks."""
    with RunWriter(path, kind="live", plane_shape=(H, W), pixel_size_um=PX) as w:
        for i in range(N):
            f = np.full((2, H, W), 100, np.uint16)
            f[:, 4, 4 + i] = f[:, 10, 8] = 1000
            w.append_frame(f, {"t_s": 0.01 * i})
            w.append_localizations(
                {
                    "frame": np.full(2, i, np.int64),
                    "t_s": np.full(2, 0.01 * i),
                    "x_um": np.array([(4 + i) * PX, 8 * PX]),
                    "y_um": np.array([4 * PX, 10 * PX]),
                    "z_um": np.array([1.0, 2.0]),
                    "dz_um": np.zeros(2),
                    "sigma_z_um": np.full(2, 0.03),
                    "photons": np.array([1500.0, 2500.0]),
                    "background": np.full(2, 10.0),
                    "track_id": np.array([0, 1], np.int64),
                }
            )


def test_open_in_napari_uses_the_plugin_reader(tmp_path: Path) -> None:
    from napari.components import ViewerModel

    from axialtrack.gui._runs import open_in_napari

    path = tmp_path / "live.zarr"
    _write(path)
    viewer = open_in_napari(path, ViewerModel())
    layers = {layer.name: layer for layer in viewer.layers}
    assert sorted(layers) == [
        "live localizations",
        "live plane 0",
        "live plane 1",
        "live tracks",
    ]
    assert layers["live plane 0"].data.shape == (N, H, W)
    assert len(layers["live localizations"].data) == 2 * N
    assert layers["live plane 0"].metadata["axialtrack_path"] == str(path)


_WINDOW_SCRIPT = """
import sys
from pathlib import Path
from qtpy.QtWidgets import QApplication
app = QApplication.instance() or QApplication([])
from axialtrack.gui._icons import offline_icons
offline_icons()
from axialtrack.gui._runs import RunsPanel
panel = RunsPanel()
errors = []
panel.error.connect(errors.append)
panel.path_field.setText(sys.argv[1])
panel.napari_button.click()
viewer = panel.viewer
assert not errors, errors
win = viewer.window._qt_window
app.processEvents()
assert win.isVisible(), "no napari window"
names = sorted(layer.name for layer in viewer.layers)
print("LAYERS", names, app.platformName())
viewer.close()
"""


def test_open_in_napari_opens_a_napari_window(tmp_path: Path) -> None:
    """The button opens a real napari window (Qt on X11: the display there
    is, else Xvfb) with the run's layers."""
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env["QT_QPA_PLATFORM"] = "xcb"
    cmd = [sys.executable, "-c", _WINDOW_SCRIPT]
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            pytest.skip("no display and no xvfb-run: a napari window cannot open")
        cmd = [xvfb, "-a", "-s", "-screen 0 1280x1024x24", *cmd]
    path = tmp_path / "live.zarr"
    _write(path)
    out = subprocess.run(
        [*cmd, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LAYERS"))
    assert "'live plane 0'" in line
    assert "'live tracks'" in line
    assert line.rstrip().endswith("xcb")


def test_open_in_napari_error_goes_to_the_dialog(qtbot: Any, tmp_path: Path) -> None:
    """A path that is no run store: the error signal (the window's dialog),
    no viewer."""
    from axialtrack.gui._icons import offline_icons
    from axialtrack.gui._runs import RunsPanel

    offline_icons()
    panel = RunsPanel()
    qtbot.addWidget(panel)
    errors: list[BaseException] = []
    panel.error.connect(errors.append)
    (tmp_path / "notarun").mkdir()
    panel.path_field.setText(str(tmp_path / "notarun"))
    panel.napari_button.click()
    assert len(errors) == 1
    assert getattr(panel, "viewer", None) is None

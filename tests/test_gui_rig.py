"""The Rig panel's camera ROI (pymmcore-widgets' CameraRoiWidget) on the
simulated camera."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if importlib.util.find_spec("pymmcore_widgets") is None:
    pytest.skip("needs the gui extra", allow_module_level=True)
pytest.importorskip("pytestqt")


def test_camera_roi_on_the_simulated_camera(qtbot: Any) -> None:
    """Made before the config loads (it raised ``KeyError: ''`` /
    ``No device with label ""`` in its slots, which pytest-qt turns into a
    failure), it follows the planes' size and a refused crop is reported."""
    from axialtrack.gui._backend import load_config, prepare_core
    from axialtrack.gui._icons import offline_icons
    from axialtrack.gui._rig import camera_roi_widget
    from axialtrack.rig import new_core

    offline_icons()
    core = new_core()
    prepare_core(core)
    errors: list[BaseException] = []
    roi = camera_roi_widget(core, errors.append)
    qtbot.addWidget(roi)
    try:
        load_config(core, None)
        qtbot.waitUntil(lambda: roi.camera == core.getCameraDevice(), timeout=10_000)
        cam = roi.camera
        info = roi.value()[cam]
        assert (info.pixel_width, info.pixel_height) == (
            core.getImageWidth(),
            core.getImageHeight(),
        )
        core.setProperty(cam, "PlaneWidth", "96")
        core.setProperty(cam, "PlaneHeight", "80")
        assert (core.getImageWidth(), core.getImageHeight()) == (192, 80)
        qtbot.waitUntil(lambda: roi.value()[cam].pixel_width == 192, timeout=10_000)
        assert roi.value()[cam].pixel_height == 80
        assert "192 px * 80 px" in roi.lbl_info.text()
        # a crop: the simulated camera keeps both planes whole and refuses it
        roi.camera_roi_combo.setCurrentText("Custom ROI")
        roi.roi_width.setValue(64)
        roi.roi_height.setValue(64)
        roi.crop_btn.click()
        assert len(errors) == 1
        assert "PlaneWidth" in str(errors[0])
        # a preset size: refused too, and the widget back to the full chip
        roi.camera_roi_combo.setCurrentIndex(roi.camera_roi_combo.count() - 1)
        assert len(errors) == 2
        assert roi.camera_roi_combo.currentText() == "Full Chip"
        assert list(core.getROI()) == [0, 0, 192, 80]
    finally:
        core.unloadAllDevices()

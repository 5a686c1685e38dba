"""The Rig panel: config, devices, stage and Z, exposure, camera ROI, and the
two planes side by side (registered) from snap or live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._widgets import DualPlaneView, register_planes

__all__ = ["RigPanel", "camera_roi_widget"]

SIM_LABEL = "sim-dualplane (simulated rig)"

#: Camera properties that change the sensor's size (the simulated camera's
#: planes; binning)
SIZE_PROPERTIES = frozenset({"PlaneWidth", "PlaneHeight", "Binning"})


def camera_roi_widget(core: Any, on_error: Any) -> QWidget:
    """pymmcore-widgets' ``CameraRoiWidget`` for ``core``, made safe for this
    rig (pymmcore-widgets 0.12):

    - before a camera is loaded (or while a config loads, when the pixel
      size changes first) it has no camera: its ``self._cameras[""]`` raised
      ``KeyError: ''`` and ``getROI("")`` a ``RuntimeError``; it now waits
      for the config;
    - the sensor's size follows the camera's size properties (the simulated
      camera's ``PlaneWidth`` / ``PlaneHeight``; it kept the size it first
      read);
    - a camera whose size cannot be read (e.g. a second rig loaded in
      another core of the process) leaves the widget disabled with the
      reason, instead of raising while the window is built;
    - a crop the camera refuses (the simulated camera keeps both planes
      whole) goes to ``on_error`` (the window's dialog), not to a traceback
      on the terminal.
    """
    from pymmcore_widgets import CameraRoiWidget

    class RigCameraRoi(CameraRoiWidget):
        def _has_camera(self) -> bool:
            return bool(self.camera) and self.camera in self._cameras

        def _on_sys_cfg_loaded(self) -> None:
            try:
                super()._on_sys_cfg_loaded()
            except Exception as exc:  # a camera whose size cannot be read
                self._cameras.clear()
                self._enable(False)
                self.lbl_info.setText(" ".join(str(exc).split()))

        def _update_lbl_info(self) -> None:
            if self._has_camera():
                super()._update_lbl_info()

        def _on_roi_set(
            self, camera: str, x: int, y: int, width: int, height: int
        ) -> None:
            if camera in self._cameras and self._has_camera():
                super()._on_roi_set(camera, x, y, width, height)

        def _on_property_changed(self, device: str, prop: str, value: str) -> None:
            if prop in SIZE_PROPERTIES and device in self._cameras:
                self._on_sys_cfg_loaded()  # the sensor's new size
                return
            super()._on_property_changed(device, prop, value)

        def _on_crop_button_clicked(self) -> None:
            try:
                super()._on_crop_button_clicked()
            except Exception as exc:
                on_error(exc)

        def _on_crop_roi_mode_change(self, value: str) -> None:
            try:
                super()._on_crop_roi_mode_change(value)
            except Exception as exc:  # a preset size the camera refuses
                self._on_sys_cfg_loaded()  # back to the full chip
                on_error(exc)

    return RigCameraRoi(mmcore=core)


class RigPanel(QWidget):
    """Load a hardware config and run the microscope by hand."""

    configLoaded = Signal(str)
    error = Signal(object)

    def __init__(self, core: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._icons import import_widgets

        import_widgets()  # before any other import of pymmcore-widgets
        from pymmcore_widgets import (
            ExposureWidget,
            LiveButton,
            PropertyBrowser,
            SnapButton,
        )

        self.core = core
        self.config: str | None = None
        self._browser: QDialog | None = None
        self._PropertyBrowser = PropertyBrowser

        # config
        self.config_combo = QComboBox()
        self.config_combo.setEditable(False)
        from axialtrack.rig import list_configs

        self.config_combo.addItem(SIM_LABEL, None)
        for p in list_configs():
            if p.stem != "sim-dualplane":
                self.config_combo.addItem(p.name, str(p))
        self.open_button = QPushButton("Open...")
        self.open_button.clicked.connect(self._open_config)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self._load_selected)
        self.devices_button = QPushButton("Device properties...")
        self.devices_button.clicked.connect(self.show_properties)
        row = QHBoxLayout()
        row.addWidget(self.config_combo, 1)
        row.addWidget(self.open_button)
        row.addWidget(self.load_button)
        row.addWidget(self.devices_button)
        cfg_box = QGroupBox("Hardware config")
        cfg_box.setLayout(row)

        # devices
        self.exposure = ExposureWidget(mmcore=core)
        self.snap_button = SnapButton(mmcore=core)
        self.live_button = LiveButton(mmcore=core)
        self.scene_combo = QComboBox()
        self.scene_combo.currentTextChanged.connect(self._set_scene)
        self.stage_box = QHBoxLayout()
        self._stages: list[QWidget] = []
        ctl = QFormLayout()
        ctl.addRow("Exposure", self.exposure)
        snap_row = QHBoxLayout()
        snap_row.addWidget(self.snap_button)
        snap_row.addWidget(self.live_button)
        ctl.addRow("Camera", snap_row)
        ctl.addRow("Sample (simulated camera)", self.scene_combo)
        self.geometry_label = QLabel()
        self.geometry_label.setWordWrap(True)
        ctl.addRow("Splitter", self.geometry_label)
        ctl_box = QGroupBox("Acquisition")
        ctl_box.setLayout(ctl)
        stage_group = QGroupBox("Stage and Z")
        stage_group.setLayout(self.stage_box)
        self.roi = camera_roi_widget(core, self.error.emit)
        roi_box = QGroupBox("Camera ROI")
        QVBoxLayout(roi_box).addWidget(self.roi)

        left = QVBoxLayout()
        left.addWidget(cfg_box)
        left.addWidget(ctl_box)
        left.addWidget(stage_group)
        left.addWidget(roi_box)
        left.addStretch(1)
        self.view = DualPlaneView()
        lay = QHBoxLayout(self)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(520)
        lay.addWidget(lw)
        lay.addWidget(self.view, 1)

        core.events.imageSnapped.connect(self._on_snapped)
        core.events.systemConfigurationLoaded.connect(self._refresh)
        self._live_timer = QTimer(self)
        self._live_timer.setInterval(100)  # 10 Hz
        self._live_timer.timeout.connect(self._show_live)
        core.events.continuousSequenceAcquisitionStarted.connect(self._live_timer.start)
        core.events.sequenceAcquisitionStopped.connect(
            lambda *_: self._live_timer.stop()
        )
        self._refresh()

    # ------------------------------------------------------------ config
    def _open_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a Micro-Manager config", "", "Micro-Manager config (*.cfg)"
        )
        if path:
            self.load_config(path)

    def _load_selected(self) -> None:
        self.load_config(self.config_combo.currentData())

    def load_config(self, config: str | None) -> bool:
        """Load ``config`` (``None``: the simulated rig) into the core; a
        refusal goes to :attr:`error` (the previous devices are unloaded, as
        Micro-Manager does). Returns whether it loaded."""
        from ._backend import load_config

        try:
            load_config(self.core, config)
        except Exception as exc:
            self.error.emit(exc)
            try:  # the rig as it was before
                load_config(self.core, self.config)
            except Exception as again:
                self.error.emit(again)
            return False
        self.show_config(config)
        self.configLoaded.emit(config or "")
        return True

    def show_config(self, config: str | None) -> None:
        """Record ``config`` as the loaded one and select it in the list."""
        self.config = config
        if config is not None and self.config_combo.findData(config) < 0:
            self.config_combo.addItem(Path(config).name, config)
        self.config_combo.setCurrentIndex(max(self.config_combo.findData(config), 0))

    @property
    def config_name(self) -> str:
        return self.config or "the simulated rig"

    def show_properties(self) -> None:
        """pymmcore-widgets' property browser of every device, in a window."""
        if self._browser is None:
            dlg = QDialog(self)
            dlg.setWindowTitle("Device properties")
            lay = QVBoxLayout(dlg)
            lay.addWidget(self._PropertyBrowser(mmcore=self.core))
            dlg.resize(720, 560)
            self._browser = dlg
        self._browser.show()

    def _refresh(self) -> None:
        from pymmcore_widgets import StageWidget

        core = self.core
        for w in self._stages:
            w.setParent(None)
            w.deleteLater()
        self._stages = []
        for dev in (core.getFocusDevice(), core.getXYStageDevice()):
            if dev:
                w = StageWidget(dev, mmcore=core)
                self.stage_box.addWidget(w)
                self._stages.append(w)
        cam = core.getCameraDevice()
        self.scene_combo.blockSignals(True)
        self.scene_combo.clear()
        has_scene = bool(cam) and core.hasProperty(cam, "Scene")
        if has_scene:
            self.scene_combo.addItems(list(core.getAllowedPropertyValues(cam, "Scene")))
            self.scene_combo.setCurrentText(core.getProperty(cam, "Scene"))
        self.scene_combo.setEnabled(has_scene)
        self.scene_combo.blockSignals(False)
        self.geometry_label.setText(self.geometry_text())

    def geometry(self) -> Any:
        from axialtrack.rig import splitter_geometry

        return splitter_geometry(self.core)

    def geometry_text(self) -> str:
        """The plane offset and the registration of plane 1 onto plane 0."""
        try:
            g = self.geometry()
        except Exception as exc:  # a config without a splitter
            return f"no dual-plane splitter ({exc})"
        return (
            f"{g.layout}, plane offset {g.plane_offset_um:g} um, plane-1 mirror "
            f"{g.mirror}, shift ({g.shift_px[0]:g}, {g.shift_px[1]:g}) px, "
            f"rotation {g.rotation_deg:g} deg, scale {g.scale:g}"
        )

    def _set_scene(self, scene: str) -> None:
        cam = self.core.getCameraDevice()
        if scene and cam and self.core.hasProperty(cam, "Scene"):
            self.core.setProperty(cam, "Scene", scene)

    # ------------------------------------------------------------- images
    def show_raw(self, raw: np.ndarray) -> None:
        """Split a sensor frame into its planes, register plane 1 and show."""
        from axialtrack.geometry import split_frame

        geo = self.geometry()
        planes = split_frame(np.asarray(raw), geo)
        aff = geo.plane1_affine(planes.shape[-2:])
        self.view.set_planes(register_planes(planes, aff))
        self.view.set_caption(f"plane offset {geo.plane_offset_um:g} um")

    def _on_snapped(self, *_: Any) -> None:
        try:
            self.show_raw(self.core.getImage())
        except Exception as exc:
            self.error.emit(exc)

    def _show_live(self) -> None:
        core = self.core
        if core.getRemainingImageCount() == 0:
            return
        try:
            self.show_raw(core.getLastImage())
        except Exception:
            return  # the next tick shows the next frame

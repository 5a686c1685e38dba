"""The main window: the Rig, Calibration, Model, Live tracking and Runs
panels around one core, settings kept between sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QMainWindow, QMessageBox, QTabWidget, QWidget

from ._widgets import error_text, show_error

__all__ = ["MainWindow", "settings"]

ORG, APP = "axialtrack", "axialtrack-gui"


def settings() -> QSettings:
    """The panel's settings (user scope, INI format)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


class MainWindow(QMainWindow):
    """The axialtrack control panel.

    Parameters
    ----------
    core
        The core to drive (default: a new one, with ``config`` loaded).
    config
        Hardware config to load (``None``: the last one used, else the
        simulated rig).
    qsettings
        Where settings persist (default: :func:`settings`).
    dialogs
        Show errors as dialogs (tests keep them in :attr:`errors` only).
    """

    def __init__(
        self,
        core: Any = None,
        *,
        config: str | None = None,
        qsettings: QSettings | None = None,
        dialogs: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        from ._icons import offline_icons, stage_roles

        offline_icons()
        stage_roles()
        from axialtrack.rig import new_core

        from ._calibration import CalibrationPanel
        from ._live import LivePanel
        from ._model import ModelPanel
        from ._rig import RigPanel
        from ._runs import RunsPanel

        self.setWindowTitle("axialtrack")
        self.qsettings = qsettings if qsettings is not None else settings()
        self.dialogs = dialogs
        self.errors: list[str] = []
        self.last_dialog: QMessageBox | None = None
        self._core_given = core is not None
        self.core = core if core is not None else new_core()
        from ._backend import prepare_core

        prepare_core(self.core)
        # the devices load before the widgets that show them are made
        if config is None:
            config = self.qsettings.value("config", "", type=str) or None
        load_error: BaseException | None = None
        if not (self._core_given and config is None):
            from ._backend import load_config

            try:
                load_config(self.core, config)
            except Exception as exc:  # shown once the window exists
                load_error = exc
                config = None
                load_config(self.core, None)
        self.rig = RigPanel(self.core)
        self.rig.show_config(config)
        self.calibration = CalibrationPanel(self.core, self.rig)
        self.model = ModelPanel()
        self.live = LivePanel(self.core, self.rig)
        self.runs = RunsPanel()
        self.tabs = QTabWidget()
        for panel, title in (
            (self.rig, "Rig"),
            (self.calibration, "Calibration"),
            (self.model, "Model"),
            (self.live, "Live tracking"),
            (self.runs, "Runs"),
        ):
            self.tabs.addTab(panel, title)
            panel.error.connect(self.report_error)
        self.setCentralWidget(self.tabs)
        self.resize(1280, 760)
        self._status("ready")

        # the results flow on: calibration -> model -> live -> runs
        self.calibration.calibrationFinished.connect(self._calibrated)
        self.model.trainFinished.connect(self._trained)
        self.live.runFinished.connect(self._live_done)
        self._restore()
        if load_error is not None:
            self.report_error(load_error)

    # ---------------------------------------------------------- settings
    def _restore(self) -> None:
        s = self.qsettings
        folder = s.value("output_folder", "", type=str)
        model = s.value("model", "", type=str)
        if model:
            self.live.model_field.setText(model)
            self.model.model_field.setText(model)
        if folder:
            self.calibration.out_field.setText(str(Path(folder) / "calibration.zarr"))
            self.model.out_field.setText(str(Path(folder) / "beads.axialmodel"))
            self.live.out_field.setText(str(Path(folder) / "live.zarr"))
        self.rig.configLoaded.connect(self._remember_config)

    def _remember_config(self, config: str) -> None:
        self.qsettings.setValue("config", config)

    def remember_output(self, path: Path) -> None:
        self.qsettings.setValue("output_folder", str(Path(path).parent))

    def remember_model(self, path: Path) -> None:
        self.qsettings.setValue("model", str(path))

    # ------------------------------------------------------------ results
    def _calibrated(self, outcome: Any) -> None:
        if isinstance(outcome, BaseException) or outcome.cancelled:
            return
        self.remember_output(outcome.path)
        self.model.calib_field.setText(str(outcome.path))
        if not self.model.out_field.text():
            self.model.out_field.setText(str(outcome.path.parent / "beads.axialmodel"))

    def _trained(self, res: Any) -> None:
        if isinstance(res, BaseException) or res[1] is None:
            return
        path = res[1]
        self.remember_model(path)
        self.live.model_field.setText(str(path))
        if not self.live.out_field.text():
            self.live.out_field.setText(str(path.parent / "live.zarr"))

    def _live_done(self, res: Any) -> None:
        if isinstance(res, BaseException) or self.live.last_store is None:
            return
        self.remember_output(self.live.last_store)
        self.runs.open_run(self.live.last_store)

    def _status(self, text: str) -> None:
        bar = self.statusBar()
        if bar is not None:
            bar.showMessage(text)

    # -------------------------------------------------------------- errors
    def report_error(self, exc: BaseException | str) -> None:
        """Every error of every panel: a dialog with the one-line message and
        the details expandable; also kept in :attr:`errors`."""
        self.errors.append(error_text(exc))
        self._status(error_text(exc))
        if self.dialogs:
            self.last_dialog = show_error(self, exc)

    def closeEvent(self, event: Any) -> None:
        if self.live.running:
            self.live.stop()
            self.live.wait_done(60.0)
        if self.calibration.running:
            self.calibration.cancel()
        self.model._stop.set()
        self.qsettings.sync()
        if not self._core_given and self.core.getLoadedDevices():
            # a core this window made: its Python devices must not outlive it
            # (one simulated rig per process)
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()
            self.core.unloadAllDevices()
        super().closeEvent(event)

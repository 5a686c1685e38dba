"""The Qt control panel (``axialtrack gui``).

Built from pymmcore-widgets (property browser, stage, exposure, camera ROI,
snap / live) and this package's panels: Rig, Calibration, Model, Live
tracking and Runs. Needs the ``gui`` extra (qtpy, superqt, pymmcore-widgets
and a Qt binding). See ``docs/gui.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._main import MainWindow

__all__ = ["MainWindow", "main", "run_self_test"]


def __getattr__(name: str) -> Any:
    if name == "MainWindow":
        from ._main import MainWindow

        return MainWindow
    if name == "run_self_test":
        from ._selftest import run_self_test

        return run_self_test
    raise AttributeError(name)


def main(
    config: str | None = None,
    *,
    self_test: bool = False,
    screenshot: str | None = None,
    out: str | None = None,
) -> int:
    """Open the control panel (or run its self-test); the exit status."""
    import os

    if self_test and "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["axialtrack"])
    if self_test:
        from ._selftest import run_self_test

        return run_self_test(screenshot, out)
    from ._main import MainWindow

    win = MainWindow(config=config)
    win.show()
    return int(app.exec())

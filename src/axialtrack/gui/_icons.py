"""Icons without the network.

pymmcore-widgets draws its buttons with iconify icons, which pyconify
downloads from api.iconify.design on first use. On a rig computer without
network (most are) each download waits for a time-out: the window took a
minute to open here, and the stage widget raised. :func:`offline_icons`
makes superqt draw its own fallback (the icon's name as text) and gives the
stage widget's arrows a small local SVG: no request is ever made.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["import_widgets", "offline_icons", "stage_roles"]

_installed = False
_dir: Path | None = None

#: Triangle pointing each way (a 24 x 24 view box).
_POINTS = {
    "up": "12,5 20,18 4,18",
    "down": "4,6 20,6 12,19",
    "left": "5,12 18,4 18,20",
    "right": "6,4 19,12 6,20",
}


def _no_download(*key: str, **_kwargs: Any) -> Path:
    """Stands in for pyconify's ``svg_path`` in superqt: superqt catches the
    ``OSError`` and draws its text fallback."""
    raise OSError(f"icon {':'.join(key)} not fetched (no network use)")


def _local_svg(*key: str, color: str | None = None, **_kwargs: Any) -> Path:
    """A local SVG arrow for ``key`` (direction read from its name)."""
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="axialtrack-icons-"))
    name = ":".join(key)
    way = next((w for w in _POINTS if w in name), "up")
    fill = color or "gray"
    path = _dir / f"{abs(hash((name, fill)))}.svg"
    if not path.exists():
        path.write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
            f'<polygon points="{_POINTS[way]}" fill="{fill}"/></svg>'
        )
    return path


def import_widgets() -> None:
    """Import pymmcore-widgets without letting it change the process's
    environment.

    Its import sets ``PYMM_SIGNALS_BACKEND=qt`` for the whole process: every
    core made later, even without a Qt application, then got Qt signals, and a
    calibration run with no Qt event loop received no frame (the test suite's
    acquisition tests failed once a GUI test had been collected). The
    variable is put back as it was; the window's core gets Qt signals anyway
    (a Qt application runs) and psygnal MDA events
    (:func:`~axialtrack.gui._backend.prepare_core`).
    """
    import os
    import sys

    if "pymmcore_widgets" in sys.modules:
        return
    key = "PYMM_SIGNALS_BACKEND"
    before = os.environ.get(key)
    try:
        import pymmcore_widgets  # noqa: F401
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def offline_icons() -> None:
    """Make the widgets' iconify icons never use the network (idempotent)."""
    global _installed
    if _installed:
        return
    import_widgets()
    import superqt.iconify as iconify

    iconify.svg_path = _no_download  # type: ignore[assignment]
    try:
        import pymmcore_widgets.control._stage_widget as stage

        stage.svg_path = _local_svg  # type: ignore[assignment]
    except (ImportError, AttributeError):  # another pymmcore-widgets layout
        pass
    warnings.filterwarnings(
        "ignore", message="Error fetching icon", category=UserWarning
    )
    _installed = True


def _set_role(self: Any, state: bool) -> None:
    """The stage widget's "set as default" radio button, through the core's
    role setters: UniMMCore refuses ``setProperty("Core", "Focus", ...)`` for a
    Python device (a known UniMMCore gotcha) and the widget raised."""
    from pymmcore_plus import DeviceType

    core, dev = self._mmc, self._device
    two = self._is_2axis
    if state:
        (core.setXYStageDevice if two else core.setFocusDevice)(dev)
    elif (
        len(
            core.getLoadedDevicesOfType(DeviceType.XYStage if two else DeviceType.Stage)
        )
        == 1
    ):
        self._set_as_default_btn.blockSignals(True)
        self._set_as_default_btn.setChecked(True)
        self._set_as_default_btn.blockSignals(False)
    else:
        (core.setXYStageDevice if two else core.setFocusDevice)("")


def stage_roles() -> None:
    """Make pymmcore-widgets' StageWidget set the focus / XY stage roles with
    the core's setters (idempotent)."""
    import_widgets()
    try:
        from pymmcore_widgets.control._stage_widget import StageWidget
    except ImportError:
        return
    if hasattr(StageWidget, "_on_radiobutton_toggled"):
        StageWidget._on_radiobutton_toggled = _set_role  # type: ignore[method-assign]

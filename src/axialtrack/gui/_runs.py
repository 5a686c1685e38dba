"""The Runs panel: open a run store (info, QC, metrics) and view it in
napari."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._widgets import PathField

__all__ = ["RunsPanel", "open_in_napari"]


def napari_plugin_registered() -> None:
    """Make sure npe2 knows this package's napari plugin
    (:mod:`axialtrack.napari_plugin`): installed, it is found by its entry
    point; run from a source tree, its manifest is registered here."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    pm.discover()
    if "axialtrack" not in pm._manifests:
        import axialtrack.napari_plugin as plugin

        pm.register(
            PluginManifest.from_file(Path(plugin.__file__).parent / "napari.yaml")
        )


def open_in_napari(path: Path, viewer: Any = None) -> Any:
    """Open a run store in napari with this package's reader
    (:func:`axialtrack.napari_plugin.read_run`: both planes read lazily, the
    localizations and tracks, co-registered in the run's world frame), as
    napari's File > Open does. Returns the viewer (``viewer``, e.g. a
    headless ``ViewerModel``, or a new ``napari.Viewer`` window)."""
    napari_plugin_registered()
    if viewer is None:
        import napari

        viewer = napari.Viewer(title=f"axialtrack: {Path(path).name}")
    viewer.open(str(path), plugin="axialtrack")
    return viewer


def _calibration_qc(path: Path) -> dict[str, Any] | None:
    """The calibration QC a calibration run store holds (``None``: none)."""
    import zarr

    try:
        qc = zarr.open_group(str(path), mode="r").attrs.get("axialtrack_calibration")
    except Exception:
        return None
    return dict(qc) if isinstance(qc, dict) else None


class RunsPanel(QWidget):
    """Open a run store: what ``axialtrack info`` says, its QC and metrics."""

    error = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path_field = PathField(
            "run store (.zarr)", mode="dir", caption="Run store"
        )
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open_run)
        self.napari_button = QPushButton("Open in napari")
        self.napari_button.clicked.connect(self._napari)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.summary: dict[str, Any] | None = None
        self.viewer: Any = None
        row = QHBoxLayout()
        row.addWidget(self.path_field, 1)
        row.addWidget(self.open_button)
        row.addWidget(self.napari_button)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.text, 1)

    def open_run(self, path: str | Path | None = None) -> bool:
        """Show the summary, QC and metrics of a run store."""
        from axialtrack.store import format_summary, read_attrs, summarize

        if path is not None:
            self.path_field.setText(str(path))
        try:
            p = Path(self.path_field.text()).expanduser()
            summary = summarize(p)
            attrs = read_attrs(p)
        except Exception as exc:
            self.error.emit(exc)
            return False
        self.summary = summary
        parts = [format_summary(summary)]
        for key, title in (
            ("live_metrics", "Live metrics"),
            ("acquisition", "Acquisition"),
        ):
            if attrs.get(key):
                parts.append(
                    f"\n{title}\n"
                    + json.dumps(attrs[key], indent=1, default=str)[:20000]
                )
        qc = _calibration_qc(p)
        if qc:
            parts.append(
                "\nCalibration QC\n" + json.dumps(qc, indent=1, default=str)[:20000]
            )
        self.text.setPlainText("\n".join(parts))
        return True

    def _napari(self) -> None:
        try:
            self.viewer = open_in_napari(Path(self.path_field.text()).expanduser())
        except Exception as exc:
            self.error.emit(exc)

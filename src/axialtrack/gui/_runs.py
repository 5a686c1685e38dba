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


def open_in_napari(path: Path, viewer: Any = None) -> Any:
    """Open a run store in napari: the two planes (lazily, from zarr), the
    localizations as points (t, y, x in pixels, colored by z) and the tracks.
    Returns the viewer (``viewer``, or a new one)."""
    import napari
    import numpy as np

    from axialtrack.pipeline import to_napari_tracks
    from axialtrack.store import open_run

    run = open_run(path)
    px = float(run.attrs.get("pixel_size_um") or 1.0)
    if viewer is None:
        viewer = napari.Viewer(title=f"axialtrack: {Path(path).name}")
    frames = run.frames
    if len(frames):
        viewer.add_image(
            frames, channel_axis=1, name=["plane 0", "plane 1"], scale=(1, px, px)
        )
    locs = run.localizations
    if len(locs):
        pts = np.column_stack([locs["frame"], locs["y_um"], locs["x_um"]])
        viewer.add_points(
            pts,
            name="localizations",
            size=4 * px,
            features={"z_um": locs["z_um"].to_numpy()},
            face_color="z_um",
            face_colormap="viridis",
        )
        linked = locs[locs["track_id"] >= 0]
        if len(linked):
            data, props = to_napari_tracks(linked)
            # (track_id, t, z, y, x) -> 2D tracks over the image: (id, t, y, x)
            viewer.add_tracks(data[:, [0, 1, 3, 4]], properties=props, name="tracks")
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

"""A dock widget that follows a run store while it is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from axialtrack.napari_plugin._reader import run_layers
from axialtrack.store import StoreError, open_run

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from axialtrack.store import Run

__all__ = ["FollowRunWidget"]


class FollowRunWidget(QWidget):
    """Keep the layers of the run stores open in the viewer up to date.

    Every ``interval_ms`` the widget re-reads the committed counts of each run
    whose layers are in the viewer (layers opened by the axialtrack reader) and,
    where they grew, replaces the layers' data: new frames, localizations and
    tracks appear; a closed run is then left alone.

    Parameters
    ----------
    napari_viewer
        The viewer (given by napari).
    interval_ms
        Time between two looks at the stores.
    """

    def __init__(self, napari_viewer: napari.Viewer, interval_ms: int = 500) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._runs: dict[str, Run] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        self.follow = QCheckBox("Follow runs being written")
        self.follow.setChecked(True)
        self.status = QLabel("")
        lay = QVBoxLayout(self)
        self.save_button = QPushButton("Save tracks of selected points...")
        self.save_button.clicked.connect(self._save_clicked)
        lay.addWidget(self.follow)
        lay.addWidget(self.save_button)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.timer = QTimer(self)
        self.timer.setInterval(int(interval_ms))
        self.timer.timeout.connect(self.update_layers)
        self.timer.start()

    def _paths(self) -> set[str]:
        return {
            str(layer.metadata["axialtrack_path"])
            for layer in self.viewer.layers
            if "axialtrack_path" in layer.metadata
        }

    def update_layers(self) -> int:
        """Look at each run once; return how many runs had new data."""
        if not self.follow.isChecked():
            return 0
        changed = 0
        lines = []
        for path in sorted(self._paths()):
            try:
                run = self._runs.get(path)
                if run is None:
                    run = self._runs[path] = open_run(path)
                else:
                    run.refresh()
            except StoreError as exc:
                lines.append(f"{path}: {exc}")
                continue
            counts = (run.n_frames, run.n_localizations)
            lines.append(
                f"{run.path.name}: {counts[0]} frames, {counts[1]} localizations, "
                f"{run.state}"
            )
            if self._counts.get(path) == counts:
                continue
            first = path not in self._counts
            self._counts[path] = counts
            if not first:
                self._apply(path, run)
                changed += 1
        self.status.setText("\n".join(lines))
        return changed

    def selected_tracks(self) -> pd.DataFrame:
        """Every localization (world frame) of the tracks that the selected
        points of the viewer's axialtrack localization layers belong to."""
        import pandas as pd

        from axialtrack.store.world import world_localizations

        parts = []
        for layer in self.viewer.layers:
            meta = layer.metadata
            if meta.get("axialtrack_layer") != "localizations":
                continue
            sel = sorted(getattr(layer, "selected_data", ()) or ())
            if not sel:
                continue
            ids = set(layer.features["track_id"].to_numpy()[sel].tolist()) - {-1}
            if not ids:
                continue
            path = str(meta["axialtrack_path"])
            run = self._runs.get(path) or open_run(path)
            world = world_localizations(run, dt=meta.get("frame_interval_s"))
            rows = world[world["track_id"].isin(sorted(ids))]
            parts.append(rows.assign(run=run.path.name))
        if not parts:
            return pd.DataFrame()
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values(["run", "track_id", "frame"], kind="stable")

    def save_selected_tracks(self, path: str) -> int:
        """Write :meth:`selected_tracks` to ``path`` (CSV); return the rows."""
        table = self.selected_tracks()
        table.to_csv(path, index=False)
        return len(table)

    def _save_clicked(self) -> None:  # pragma: no cover - a file dialog
        path, _ = QFileDialog.getSaveFileName(
            self, "Save tracks of the selected points", "", "CSV (*.csv)"
        )
        if path:
            n = self.save_selected_tracks(path)
            self.status.setText(f"{n} localizations written to {path}")

    def _apply(self, path: str, run: Run) -> None:
        by_role: dict[str, Any] = {
            layer.metadata.get("axialtrack_layer"): layer
            for layer in self.viewer.layers
            if layer.metadata.get("axialtrack_path") == path
        }
        for data, kwargs, kind in run_layers(run):
            role = kwargs["metadata"]["axialtrack_layer"]
            layer = by_role.get(role)
            if layer is None:
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
                continue
            layer.scale = kwargs["scale"]
            if kind == "image":
                layer.data = data
            elif kind == "points":
                layer.data = data
                layer.features = kwargs["features"]
            else:
                layer.data = data
                layer.features = kwargs["features"]

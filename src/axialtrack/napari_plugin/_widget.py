"""A dock widget that follows a run store while it is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget

from axialtrack.napari_plugin._reader import run_layers
from axialtrack.store import StoreError, open_run

if TYPE_CHECKING:
    import napari

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
        lay.addWidget(self.follow)
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

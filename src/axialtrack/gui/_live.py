"""The Live tracking panel: start / stop a tracked run into a run store, live
metrics at <= 10 Hz, the image with localizations and track tails, the track
summary at the end."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from axialtrack.live import LiveOutcome

from ._errors import InputError
from ._widgets import (
    DualPlaneView,
    PanelJob,
    PathField,
    TrackPlot,
    register_planes,
)

__all__ = ["LivePanel"]

#: Metrics shown, as (LiveMetrics attribute, label, format).
METRICS = (
    ("fps_in", "fps in", "{:.1f}"),
    ("fps_analyzed", "fps analyzed", "{:.1f}"),
    ("fps_written", "fps written", "{:.1f}"),
    ("latency_ms_p50", "latency p50 (ms)", "{:.0f}"),
    ("latency_ms_p99", "latency p99 (ms)", "{:.0f}"),
    ("frames_skipped", "frames skipped", "{:d}"),
    ("localizations", "particles (rows)", "{:d}"),
    ("tracks", "tracks", "{:d}"),
)

#: Frames of track tail drawn.
TAIL_FRAMES = 30


def _run_job(session: Any) -> tuple[Any, Any]:
    """A run of the panel, in its worker: the analysis process starts and the
    store opens here, off the GUI thread (a refusal writes nothing; a
    replaced store is put back); then the run, and the track table read for
    the summary. ``(LiveOutcome, tracks)``."""
    session.prepare()
    outcome = session.run()
    return outcome, _read_tracks(session.out, outcome)


def _read_tracks(path: Path | None, outcome: Any) -> Any:
    """The track table of a finished run store (None without one; the
    exception where it cannot be read): read off the GUI thread."""
    if path is None or (outcome is not None and outcome.metrics is None):
        return None
    from axialtrack.store import open_run

    try:
        return open_run(path).tracks
    except Exception as exc:
        return exc


class _Bridge(QObject):
    """Carries a run's end from its thread to the GUI thread (queued)."""

    done = Signal(object, object)  # metrics, error


class LivePanel(QWidget):
    """Start and stop a live tracking run; see it while it runs."""

    error = Signal(object)
    runFinished = Signal(object)  # LiveMetrics, or the exception

    def __init__(self, core: Any, rig: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.core = core
        self.rig = rig
        self.session: Any = None
        self.metrics: Any = None
        self.last_store: Path | None = None
        self.tracks: Any = None
        self.status_updates = 0
        self.rows_shown = 0
        self.started_at: float | None = None
        self._latest_status: Any = None
        self._rows: deque[dict[str, np.ndarray]] = deque()
        self._rows_lock = threading.Lock()
        self._recent: dict[int, deque[tuple[int, float, float, float]]] = {}
        self._last_frame = -1
        self._z_range = (np.inf, -np.inf)
        self._bridge = _Bridge()
        self._bridge.done.connect(self._on_done)
        self._attached: tuple[Any, float, Any] | None = None

        self.model_field = PathField(
            "model bundle (.axialmodel)", mode="dir", caption="Choose a model bundle"
        )
        self.out_field = PathField(
            "run store to write (.zarr)",
            mode="save",
            caption="Live run store",
            filters="Run store (*.zarr)",
        )
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.duration_spin = QDoubleSpinBox()
        self.duration_spin.setRange(1.0, 3600.0)
        self.duration_spin.setValue(60.0)
        self.duration_spin.setSuffix(" s")
        self.duration_spin.setToolTip(
            "The run stops after this long, or at Stop (axialtrack live --duration)"
        )
        self.shard_spin = QSpinBox()
        self.shard_spin.setRange(1, 255)
        self.shard_spin.setValue(1)
        self.shard_spin.setSpecialValueText("one file per frame")
        self.shard_spin.setToolTip(
            "Frames per file of the frame array (axialtrack live --shard-frames): "
            "fewer, larger files for long runs at a high frame rate"
        )
        form = QFormLayout()
        form.addRow("Model", self.model_field)
        form.addRow("Output", self.out_field)
        form.addRow("Duration", self.duration_spin)
        form.addRow("Frames per file", self.shard_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        form.addRow(buttons)
        self.state_label = QLabel("idle")
        form.addRow("State", self.state_label)
        self.metric_labels: dict[str, QLabel] = {}
        mform = QFormLayout()
        for key, label, _fmt in METRICS:
            lab = QLabel("-")
            self.metric_labels[key] = lab
            mform.addRow(label, lab)
        mbox = QGroupBox("Live metrics")
        mbox.setLayout(mform)
        self.summary = QTableWidget(0, 0)
        self.summary_label = QLabel("")
        sbox = QGroupBox("Tracks (summary at the end of the run)")
        sl = QVBoxLayout(sbox)
        sl.addWidget(self.summary_label)
        sl.addWidget(self.summary)

        left = QVBoxLayout()
        left.addLayout(form)
        left.addWidget(mbox)
        left.addWidget(sbox, 1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(460)
        self.view = DualPlaneView()
        self.track_plot = TrackPlot()
        right = QVBoxLayout()
        right.addWidget(self.view, 3)
        right.addWidget(self.track_plot, 1)
        lay = QHBoxLayout(self)
        lay.addWidget(lw)
        lay.addLayout(right, 1)

        # everything the run shows is pulled at 10 Hz on the GUI thread
        self.job = PanelJob(self, refresh=self._refresh, busy=self._set_running)
        self.timer = self.job.timer  # also drives runs shown with attach()

    # --------------------------------------------------------------- run
    @property
    def running(self) -> bool:
        return self.job.running

    def start(self, *, overwrite: bool | None = None) -> bool:
        """Check the inputs, open the store and start the run in its own
        thread. An existing output is replaced only once confirmed
        (``overwrite=True`` confirms without asking). Returns whether it
        started; a refusal goes to :attr:`error` and writes nothing."""
        if self.running:
            return False
        from ._backend import LiveJob, check_output

        out_text, model_text = self.out_field.text(), self.model_field.text()
        try:
            if not out_text:
                raise ValueError("Output: give the run store to write (.zarr).")
            out = Path(out_text).expanduser()
            if out.suffix != ".zarr":
                out = out.with_name(out.name + ".zarr")
            if overwrite is None:
                overwrite = False
                if out.exists():
                    ans = QMessageBox.question(
                        self,
                        "Replace the run store?",
                        f"{out} already exists. Replace it?",
                    )
                    if ans != QMessageBox.StandardButton.Yes:
                        return False
                    overwrite = True
            check_output(out, overwrite)  # refused at once, nothing written
            bundle = Path(model_text).expanduser() if model_text else None
            if bundle is not None:
                from axialtrack.model import load_bundle

                load_bundle(bundle)  # BundleError: refused at once
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()
            shards = int(self.shard_spin.value())
            session = LiveJob(
                core=self.core,
                out=out,
                bundle=bundle,
                overwrite=overwrite,
                config_name=self.rig.config_name,
                duration_s=float(self.duration_spin.value()),
                shard_frames=shards if shards >= 2 else None,
            )
        except Exception as exc:
            self.error.emit(exc)
            return False
        self.session = session
        self._attached = None
        self._reset()
        self._connect(session.events)
        self.last_store = session.out
        self.job.start(
            _run_job,
            session,
            on_done=lambda res: self._on_done(*res),
            on_error=lambda exc: self._on_done(None, exc),
        )
        return True

    def _reset(self) -> None:
        self.metrics = None
        self.tracks = None
        self.status_updates = 0
        self.rows_shown = 0
        self._latest_status = None
        self._recent.clear()
        self._last_frame = -1
        self._z_range = (np.inf, -np.inf)
        with self._rows_lock:
            self._rows.clear()
        self.started_at = None

    def _connect(self, events: Any) -> None:
        events.started.connect(self._on_started)
        events.status.connect(self._on_status)
        events.batchAnalyzed.connect(self._on_batch)

    def attach(
        self,
        events: Any,
        *,
        geometry: Any,
        pixel_size_um: float,
        last_frame: Any = None,
    ) -> None:
        """Show a run started elsewhere (a script, a benchmark): its
        :class:`~axialtrack.events.RunSignals` drive the metrics, the overlay
        and, at the end, the track summary; ``last_frame()`` (optional) gives
        the raw frame to show. The panel neither starts nor stops that run."""
        self.session = None
        self._reset()
        self._attached = (geometry, float(pixel_size_um), last_frame)
        self._connect(events)
        events.finished.connect(self._attached_finished)
        events.failed.connect(lambda e: self._bridge.done.emit(None, e))
        self.state_label.setText("showing a run started elsewhere")
        self.timer.start()

    def _attached_finished(self, metrics: Any) -> None:
        # the run's thread: the track table is read in another one, so that
        # neither the run nor the GUI thread waits on it
        def read() -> None:
            outcome = LiveOutcome(metrics=metrics)
            self._bridge.done.emit(outcome, _read_tracks(self.last_store, outcome))

        threading.Thread(target=read, name="axialtrack-gui-tracks", daemon=True).start()

    def _display(self) -> tuple[Any, Any, float]:
        """(last-frame function, geometry, pixel size) of the run shown."""
        if self.session is not None:
            s = self.session
            return s.last_frame, s.geometry, float(s.pixel_size_um or 0.0)
        if self._attached is not None:
            geo, px, fn = self._attached
            return fn, geo, px
        return None, None, 0.0

    def stop(self) -> None:
        """Stop the run: everything received is stored and the store closed."""
        if self.session is not None:
            self.state_label.setText("stopping: storing what was received...")
            self.stop_button.setEnabled(False)
            self.session.stop()

    # subscribers: these run in the run's threads and only store references
    def _on_started(self, path: Any) -> None:
        self.started_at = time.monotonic()
        if self.session is None:
            self.last_store = Path(path)

    def _on_status(self, metrics: Any) -> None:
        self._latest_status = metrics

    def _on_batch(self, frames: Any, rows: Any) -> None:
        if rows and len(rows.get("frame", ())):
            with self._rows_lock:
                self._rows.append(rows)

    # ------------------------------------------------------------ display
    def _refresh(self) -> None:
        m = self._latest_status
        if m is not None:
            self._latest_status = None
            self._show_metrics(m)
            self.status_updates += 1
        with self._rows_lock:
            batches = list(self._rows)
            self._rows.clear()
        for rows in batches:
            self._add_rows(rows)
        frame_fn, geo, _px = self._display()
        raw = frame_fn() if frame_fn is not None else None
        if raw is not None and geo is not None:
            from axialtrack.geometry import split_frame

            planes = split_frame(np.asarray(raw), geo)
            self.view.set_planes(
                register_planes(planes, geo.plane1_affine(planes.shape[-2:]))
            )
        self._draw_overlay()

    def _show_metrics(self, m: Any) -> None:
        for key, _label, fmt in METRICS:
            v = getattr(m, key, None)
            if v is None:
                continue
            try:
                self.metric_labels[key].setText(fmt.format(v))
            except (ValueError, TypeError):
                self.metric_labels[key].setText(str(v))

    def _add_rows(self, rows: dict[str, np.ndarray]) -> None:
        frames = np.asarray(rows["frame"])
        self.rows_shown += len(frames)
        x, y, z = (np.asarray(rows[k], float) for k in ("x_um", "y_um", "z_um"))
        tid = np.asarray(rows.get("track_id", np.full(len(frames), -1)))
        fin = np.isfinite(z)
        if fin.any():
            lo, hi = self._z_range
            self._z_range = (min(lo, float(z[fin].min())), max(hi, float(z[fin].max())))
        self._last_frame = max(self._last_frame, int(frames.max()))
        for f, xi, yi, zi, t in zip(frames, x, y, z, tid, strict=False):
            key = int(t) if t >= 0 else -1 - len(self._recent)
            tail = self._recent.setdefault(key, deque(maxlen=TAIL_FRAMES))
            tail.append((int(f), float(xi), float(yi), float(zi)))

    def _draw_overlay(self) -> None:
        _fn, _geo, px = self._display()
        if not px:
            return
        newest = self._last_frame
        for key in [
            k for k, t in self._recent.items() if t[-1][0] < newest - TAIL_FRAMES
        ]:
            del self._recent[key]
        pts, zs, tails = [], [], []
        for tail in self._recent.values():
            f, x, y, z = tail[-1]
            if f >= newest - 2:
                pts.append((x / px, y / px))
                zs.append(z)
            if len(tail) > 1:
                tails.append(np.array([(t[1] / px, t[2] / px) for t in tail]))
        lo, hi = self._z_range
        zn = (np.asarray(zs) - lo) / (hi - lo) if hi > lo else np.full(len(zs), 0.5)
        self.view.set_overlay(np.asarray(pts).reshape(-1, 2), zn, tails)
        self.track_plot.set_tails(
            [np.asarray(t, dtype=float) for k, t in self._recent.items() if k >= 0]
        )
        if hi > lo:
            self.view.set_caption(f"z {lo:.2f} .. {hi:.2f} um (viridis)")

    # ---------------------------------------------------------------- end
    def _on_done(self, outcome: Any, extra: Any) -> None:
        """The run ended: ``(LiveOutcome, tracks)``, or ``(None, error)``
        from a run that did not start (or an attached one that failed)."""
        self.timer.stop()
        self._refresh()
        self._set_running(False)
        if outcome is None:  # the run did not start, or failed attached
            outcome, extra = LiveOutcome(metrics=None, error=extra), None
        metrics, tracks, put_back = outcome.metrics, extra, outcome.put_back
        error = outcome.error or outcome.acquisition_error
        if metrics is None:
            if error is None:
                error = InputError(
                    "No frame was stored: the camera delivered none before the "
                    "run ended. Check the camera (exposure, trigger) and start "
                    "again."
                )
            self.state_label.setText(
                "failed" + (" (the previous store is back)" if put_back else "")
            )
            self.error.emit(error)
            self.runFinished.emit(error)
            return
        self.metrics = metrics
        self._show_metrics(metrics)
        self.state_label.setText(
            f"done ({metrics.stop_reason}): {metrics.frames_written} frames stored "
            f"in {self.last_store}"
        )
        self._show_summary(tracks)
        if error is not None:
            self.error.emit(error)
        self.runFinished.emit(metrics)

    def _show_summary(self, tracks: Any) -> None:
        self.tracks = tracks
        if isinstance(tracks, BaseException):
            self.error.emit(tracks)
            return
        if tracks is None or not len(tracks):
            self.summary_label.setText("no track in this run")
            self.summary.setRowCount(0)
            return
        cols = list(tracks.columns)[:8]
        shown = tracks.head(200)
        self.summary.setUpdatesEnabled(False)
        self.summary.setColumnCount(len(cols))
        self.summary.setHorizontalHeaderLabels(cols)
        self.summary.setRowCount(len(shown))
        for i, row in enumerate(shown[cols].itertuples(index=False)):
            for j, v in enumerate(row):
                text = f"{v:.4g}" if isinstance(v, float) else str(v)
                self.summary.setItem(i, j, QTableWidgetItem(text))
        self.summary.setUpdatesEnabled(True)
        self.summary_label.setText(
            f"{len(tracks)} tracks"
            + (f" (first {len(shown)} shown)" if len(shown) < len(tracks) else "")
        )

    def _set_running(self, on: bool) -> None:
        self.start_button.setEnabled(not on)
        self.stop_button.setEnabled(on)
        for w in (self.out_field, self.model_field):
            w.setEnabled(not on)
        for spin in (self.duration_spin, self.shard_spin):
            spin.setEnabled(not on)
        if on:
            self.state_label.setText(f"running -> {self.last_store}")

    def metrics_text(self, key: str) -> str:
        """The text a live metric shows (``"-"`` before the first update)."""
        return self.metric_labels[key].text()

    def wait_done(self, timeout_s: float = 60.0) -> bool:
        """Process events until the run has ended (tests, the self-test)."""
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
        return not self.running

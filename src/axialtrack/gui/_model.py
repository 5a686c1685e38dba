"""The Model panel: train from a calibration run with a live loss plot and
cancel, evaluate against held-out beads (precision and bias per dz vs the
CRLB), compile the inference engine."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._widgets import LinePlot, PanelJob, PathField

__all__ = ["ModelPanel"]


def evaluate_job(bundle: Path, calibration: Path) -> Any:
    """:func:`axialtrack.model.evaluate` on the test beads, CRLB where known,
    in a child process (its imports held the interpreter lock for 0.5 s at a
    time in a thread: the window froze that long)."""
    from ._train_process import call_in_process

    return call_in_process(_evaluate, bundle, calibration)


def _evaluate(bundle: Path, calibration: Path) -> Any:
    from axialtrack.model import evaluate

    return evaluate(bundle, calibration, "test", crlb="auto")


def compile_job(bundle: Path, backend: str) -> dict[str, Any]:
    """Select and build the engine as ``axialtrack compile`` does."""
    import time

    from axialtrack.engine import select_engine
    from axialtrack.model import load_bundle

    t0 = time.perf_counter()
    engine = select_engine(load_bundle(bundle), backend)
    with engine:
        engine.warmup()
        return {
            "name": engine.name,
            "precision": engine.precision,
            "reason": engine.reason,
            "cache": getattr(engine, "cache_status", None),
            "build_s": time.perf_counter() - t0,
        }


class ModelPanel(QWidget):
    """Train, evaluate and compile a model bundle."""

    error = Signal(object)
    trainFinished = Signal(object)  # (TrainResult, path or None) or the exception
    evaluateFinished = Signal(object)
    compileFinished = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from axialtrack.events import TrainSignals

        self.history: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bundle_path: Path | None = None
        self.eval_result: Any = None
        self.engine_info: dict[str, Any] | None = None
        self.events = TrainSignals()
        self.events.epochFinished.connect(self._on_epoch)

        self.calib_field = PathField(
            "calibration run store (.zarr)", mode="dir", caption="Calibration run"
        )
        self.out_field = PathField(
            "model bundle to write (.axialmodel)", caption="Model bundle"
        )
        self.steps = QSpinBox()
        self.steps.setRange(10, 1_000_000)
        self.steps.setValue(4000)
        self.max_time = QDoubleSpinBox()
        self.max_time.setRange(0, 1e6)
        self.max_time.setValue(0)
        self.max_time.setSpecialValueText("no limit")
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        form = QFormLayout()
        form.addRow("Calibration", self.calib_field)
        form.addRow("Bundle", self.out_field)
        form.addRow("Optimizer steps", self.steps)
        form.addRow("Time limit (s)", self.max_time)
        row = QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.state_label = QLabel("idle")
        self.state_label.setWordWrap(True)
        form.addRow("State", self.state_label)
        tbox = QGroupBox("Training")
        tbox.setLayout(form)

        self.model_field = PathField(
            "model bundle (.axialmodel)", mode="dir", caption="Model bundle"
        )
        self.eval_button = QPushButton("Evaluate on test beads")
        self.eval_button.clicked.connect(self.evaluate)
        self.backend = QComboBox()
        from axialtrack.engine import ENGINE_CHOICES

        self.backend.addItems(list(ENGINE_CHOICES))
        self.compile_button = QPushButton("Compile engine")
        self.compile_button.clicked.connect(self.compile)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        eform = QFormLayout()
        eform.addRow("Model", self.model_field)
        eform.addRow(self.eval_button)
        crow = QHBoxLayout()
        crow.addWidget(self.backend)
        crow.addWidget(self.compile_button)
        eform.addRow("Backend", crow)
        eform.addRow(self.result_label)
        ebox = QGroupBox("Evaluate / compile")
        ebox.setLayout(eform)

        left = QVBoxLayout()
        left.addWidget(tbox)
        left.addWidget(ebox)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(460)
        self.loss_plot = LinePlot("loss", xlabel="epoch", log_y=True)
        self.rmse_plot = LinePlot("validation RMSE (nm)", xlabel="epoch")
        self.eval_plot = LinePlot(
            "test beads: precision and bias per dz (nm)", xlabel="dz (um)"
        )
        right = QVBoxLayout()
        right.addWidget(self.loss_plot, 1)
        right.addWidget(self.rmse_plot, 1)
        right.addWidget(self.eval_plot, 1)
        rw = QWidget()
        rw.setLayout(right)
        lay = QHBoxLayout(self)
        lay.addWidget(lw)
        lay.addWidget(rw, 1)
        # the training's epochs drawn at 5 Hz; evaluate and compile draw at
        # their end only
        self._training = False
        self.job = PanelJob(
            self, refresh=self._draw_history, interval_ms=200, busy=self._set_busy
        )

    @property
    def busy(self) -> bool:
        return self.job.running

    def _start(
        self, func: Any, *args: Any, done: Any, timer: bool = False, **kwargs: Any
    ) -> None:
        self.job.start(
            func, *args, on_done=done, on_error=self._failed, timer=timer, **kwargs
        )

    def _set_busy(self, on: bool) -> None:
        for b in (self.train_button, self.eval_button, self.compile_button):
            b.setEnabled(not on)
        self.cancel_button.setEnabled(on and self._training)

    def _failed(self, exc: BaseException) -> None:
        self._training = False
        self.state_label.setText("failed")
        self.error.emit(exc)
        self.trainFinished.emit(exc)

    # -------------------------------------------------------------- train
    def train(self, *, overwrite: bool | None = None) -> bool:
        """Start a training (an existing bundle is replaced only once
        confirmed); a refusal goes to :attr:`error`."""
        if self.busy:
            return False
        calib, out = self.calib_field.text(), self.out_field.text()
        if not calib or not out:
            self.error.emit(
                ValueError("Give the calibration run and the bundle to write.")
            )
            return False
        if overwrite is None:
            overwrite = False
            target = Path(out).expanduser()
            if not target.name.endswith(".axialmodel"):
                target = target.with_name(target.name + ".axialmodel")
            if target.exists():
                ans = QMessageBox.question(
                    self, "Replace?", f"{target} already exists. Replace it?"
                )
                if ans != QMessageBox.StandardButton.Yes:
                    return False
                overwrite = True
        self._stop = threading.Event()
        self.history = []
        with self._lock:
            self._pending = []
        self.state_label.setText("training...")
        from ._train_process import run_training

        self._training = True
        self._start(
            run_training,
            Path(calib).expanduser(),
            Path(out),
            steps=self.steps.value(),
            max_time_s=self.max_time.value() or None,
            overwrite=overwrite,
            events=self.events,
            stop=self._stop,
            done=self._trained,
            timer=True,
        )
        return True

    def cancel(self) -> None:
        """End the training after the current epoch; nothing is written."""
        self._stop.set()
        self.state_label.setText("cancelling after this epoch...")

    def _on_epoch(self, row: dict[str, Any]) -> None:
        with self._lock:  # from the training thread
            self._pending.append(dict(row))

    def _draw_history(self) -> None:
        with self._lock:
            new, self._pending = self._pending, []
        if not new:
            return
        self.history.extend(new)
        h = self.history
        ep = [r["epoch"] for r in h]
        self.loss_plot.set_series("train loss", ep, [r["train_loss"] for r in h])
        self.loss_plot.set_series("validation loss", ep, [r["val_loss"] for r in h])
        self.rmse_plot.set_series("validation RMSE", ep, [r["val_rmse_nm"] for r in h])
        last = h[-1]
        self.rmse_plot.title = (
            f"validation RMSE (nm): epoch {last['epoch']}/{last.get('epochs', '?')}, "
            f"{last['val_rmse_nm']:.1f} nm"
        )

    def _trained(self, res: tuple[dict[str, Any], Path | None]) -> None:
        self._training = False
        m, path = res
        if path is None:
            self.state_label.setText(
                f"cancelled after {m['epochs_run']} epochs; no bundle written"
            )
        else:
            self.bundle_path = path
            self.model_field.setText(str(path))
            self.state_label.setText(
                f"{m['epochs_run']} epochs ({m.get('stopped_by')}) in "
                f"{m['train_time_s']:.0f} s: validation RMSE "
                f"{m['val_rmse_nm']:.1f} nm, "
                f"test RMSE {m['test_rmse_nm']:.1f} nm -> {path}"
            )
        self.trainFinished.emit(res)

    # ----------------------------------------------------------- evaluate
    def evaluate(self) -> bool:
        if self.busy:
            return False
        bundle, calib = self.model_field.text(), self.calib_field.text()
        if not bundle or not calib:
            self.error.emit(
                ValueError("Give the model bundle and the calibration run.")
            )
            return False
        self.result_label.setText("evaluating...")
        self._start(evaluate_job, Path(bundle), Path(calib), done=self._evaluated)
        return True

    def _evaluated(self, res: Any) -> None:
        self.eval_result = res
        s = res.summary
        self.result_label.setText(
            f"{s['n']} examples of {s['n_beads']} beads: RMSE {s['rmse_nm']:.1f} nm, "
            f"bias {s['bias_nm']:+.1f} nm, {100 * s['frac_within_50nm']:.0f} % "
            "within +-50 nm"
        )
        b = res.bins
        x = b["dz_center_um"]
        self.eval_plot.clear()
        self.eval_plot.set_series("precision", x, b["precision_nm"])
        self.eval_plot.set_series("bias", x, b["bias_nm"])
        if "crlb_nm" in b:
            self.eval_plot.set_series("CRLB", x, b["crlb_nm"], dashed=True)
        self.evaluateFinished.emit(res)

    # ------------------------------------------------------------ compile
    def compile(self) -> bool:
        if self.busy:
            return False
        bundle = self.model_field.text()
        if not bundle:
            self.error.emit(ValueError("Give the model bundle to compile."))
            return False
        self.result_label.setText("building the engine...")
        self._start(
            compile_job, Path(bundle), self.backend.currentText(), done=self._compiled
        )
        return True

    def _compiled(self, info: dict[str, Any]) -> None:
        self.engine_info = info
        cache = f", engine cache: {info['cache']}" if info.get("cache") else ""
        self.result_label.setText(
            f"engine {info['name']} ({info['precision']}) ready in "
            f"{info['build_s']:.2f} s{cache}; why: {info['reason']}"
        )
        self.compileFinished.emit(info)

"""The Calibration panel: bead Z-stacks over several fields, run with progress
and cancel, then the quality control in the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ._widgets import PathField, PlotCanvas, start_worker

__all__ = ["CalibrationPanel"]

#: Colors of the rejection reasons on the bead map.
_REASON_COLORS = ("red", "orange", "magenta", "cyan", "yellow", "white")


def _spin(
    lo: float, hi: float, value: float, step: float, decimals: int = 3
) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setValue(value)
    return s


class CalibrationPanel(QWidget):
    """Acquire and analyze a bead calibration on the loaded rig."""

    error = Signal(object)
    calibrationFinished = Signal(object)  # CalibrationOutcome

    def __init__(self, core: Any, rig: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from axialtrack.events import CalibrationSignals

        self.core = core
        self.rig = rig
        self.outcome: Any = None
        self.worker: Any = None
        self._progress = (0, 0)
        self.events = CalibrationSignals()
        self.events.started.connect(lambda _p, n: self._set_progress(0, n))
        self.events.frameStored.connect(self._set_progress)

        self.out_field = PathField(
            "calibration run store (.zarr)", caption="Calibration run store"
        )
        self.z_range = _spin(0.1, 10.0, 1.5, 0.1)
        self.z_step = _spin(0.005, 1.0, 0.05, 0.01)
        self.fields = QSpinBox()
        self.fields.setRange(1, 100)
        self.fields.setValue(4)
        self.spacing = _spin(0.0, 10000.0, 0.0, 10.0, 1)
        self.spacing.setSpecialValueText("auto")
        self.exposure = _spin(0.0, 10000.0, 0.0, 1.0, 1)
        self.exposure.setSpecialValueText("the camera's")
        self.psf_fit = QCheckBox("fit the PSF (pupil) to the accepted beads")
        form = QFormLayout()
        form.addRow("Output", self.out_field)
        form.addRow("Z range +- (um)", self.z_range)
        form.addRow("Z step (um)", self.z_step)
        form.addRow("Fields of view", self.fields)
        form.addRow("Field spacing (um)", self.spacing)
        form.addRow("Exposure (ms)", self.exposure)
        form.addRow("", self.psf_fit)
        self.positions: tuple[tuple[float, float, float], ...] | None = None
        self.edit_button = QPushButton("Edit as MDA sequence...")
        self.edit_button.clicked.connect(self.edit_sequence)
        self.sequence_label = QLabel("fields around the current position")
        self.sequence_label.setWordWrap(True)
        form.addRow(self.edit_button, self.sequence_label)
        self.run_button = QPushButton("Run calibration")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        form.addRow("Progress", self.progress)
        self.state_label = QLabel("idle")
        self.state_label.setWordWrap(True)
        form.addRow("State", self.state_label)
        box = QGroupBox("Calibration run")
        box.setLayout(form)

        self.report = QTextBrowser()
        self.plot = PlotCanvas(figsize=(6.0, 3.2))
        right = QVBoxLayout()
        right.addWidget(QLabel("Quality control"))
        right.addWidget(self.report, 1)
        right.addWidget(self.plot, 2)
        left = QVBoxLayout()
        left.addWidget(box)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(460)
        lay = QHBoxLayout(self)
        lay.addWidget(lw)
        rw = QWidget()
        rw.setLayout(right)
        lay.addWidget(rw, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self._show_progress)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _set_progress(self, n: int, total: int) -> None:
        # from the MDA thread: a tuple store, shown by the timer
        self._progress = (int(n), int(total))

    def _show_progress(self) -> None:
        n, total = self._progress
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(n)

    def run(self, *, overwrite: bool | None = None) -> bool:
        """Start the calibration (replacing an existing output only once
        confirmed); a refusal goes to :attr:`error`, nothing written."""
        if self.running:
            return False
        try:
            text = self.out_field.text()
            if not text:
                raise ValueError("Output: give the calibration run store (.zarr).")
            out = Path(text).expanduser()
            if out.suffix != ".zarr":
                out = out.with_name(out.name + ".zarr")
            if overwrite is None:
                overwrite = False
                if out.exists():
                    ans = QMessageBox.question(
                        self, "Replace?", f"{out} already exists. Replace it?"
                    )
                    if ans != QMessageBox.StandardButton.Yes:
                        return False
                    overwrite = True
            req = self.request(out, overwrite)
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()
        except Exception as exc:
            self.error.emit(exc)
            return False
        return self._start(req, out)

    def request(self, out: Path, overwrite: bool = False) -> Any:
        """The :class:`~axialtrack.gui._backend.CalibrationRequest` the
        fields (and an edited sequence's positions) make."""
        from ._backend import CalibrationRequest

        return CalibrationRequest(
            out=out,
            z_range_um=self.z_range.value(),
            z_step_um=self.z_step.value(),
            fields=self.fields.value(),
            spacing_um=self.spacing.value() or None,
            exposure_ms=self.exposure.value() or None,
            overwrite=overwrite,
            psf_fit=self.psf_fit.isChecked(),
            positions=self.positions,
        )

    def edit_sequence(self) -> bool:
        """Open the calibration's sequence in pymmcore-widgets' MDA sequence
        widget; on OK its positions, Z range and step become the calibration's
        (a position list clears with "Reset" in the dialog)."""
        from pymmcore_widgets import MDASequenceWidget
        from qtpy.QtWidgets import QDialog, QDialogButtonBox

        from ._backend import request_from_sequence

        try:
            base = self.request(Path("unused.zarr"))
            seq = base.sequence(self.core)
        except Exception as exc:
            self.error.emit(exc)
            return False
        dlg = QDialog(self)
        dlg.setWindowTitle("Calibration sequence")
        lay = QVBoxLayout(dlg)
        mda = MDASequenceWidget()
        mda.setValue(seq)
        lay.addWidget(mda)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.Reset
        )
        buttons.accepted.connect(dlg.accept)
        buttons.rejected.connect(dlg.reject)
        reset = buttons.button(QDialogButtonBox.StandardButton.Reset)
        if reset is not None:
            reset.clicked.connect(lambda: dlg.done(2))
        lay.addWidget(buttons)
        self.sequence_dialog = dlg  # tests reach the widget through it
        self.sequence_widget = mda
        result = dlg.exec()
        if result == 2:
            self.apply_sequence(None)
            return True
        if result != QDialog.DialogCode.Accepted:
            return False
        try:
            req = request_from_sequence(mda.value(), base)
        except Exception as exc:
            self.error.emit(exc)
            return False
        self.apply_sequence(req)
        return True

    def apply_sequence(self, req: Any) -> None:
        """Take the Z range, step and positions of ``req`` (``None``: back to
        fields around the current position)."""
        if req is None:
            self.positions = None
            self.fields.setEnabled(True)
            self.spacing.setEnabled(True)
            self.sequence_label.setText("fields around the current position")
            return
        self.positions = req.positions
        self.z_range.setValue(req.z_range_um)
        self.z_step.setValue(req.z_step_um)
        self.fields.setValue(req.fields)
        self.fields.setEnabled(False)
        self.spacing.setEnabled(False)
        self.sequence_label.setText(
            f"edited sequence: {req.fields} position(s), +-{req.z_range_um:g} um "
            f"in {req.z_step_um:g} um steps"
        )

    def _start(self, req: Any, out: Path) -> bool:
        from ._backend import run_calibration_job

        self.outcome = None
        self._progress = (0, 0)
        self.state_label.setText(f"acquiring into {out} ...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.timer.start()
        self.worker = start_worker(
            run_calibration_job,
            self.core,
            req,
            events=self.events,
            config_name=self.rig.config_name,
            on_done=self._done,
            on_error=self._failed,
        )
        return True

    def cancel(self) -> None:
        """Cancel the acquisition (its frames are kept, not analyzed)."""
        from ._backend import cancel_calibration

        if self.running:
            self.state_label.setText("cancelling...")
            cancel_calibration(self.core)

    def _end(self) -> None:
        self.timer.stop()
        self._show_progress()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _failed(self, exc: BaseException) -> None:
        self._end()
        self.state_label.setText("failed")
        self.error.emit(exc)
        self.calibrationFinished.emit(exc)

    def _done(self, outcome: Any) -> None:
        self._end()
        self.outcome = outcome
        acq = outcome.acquisition
        if outcome.cancelled:
            self.state_label.setText(
                f"cancelled: {acq.get('n_frames')}/{acq.get('n_planned')} frames kept "
                f"in {outcome.path} (not analyzed)"
            )
        else:
            self.state_label.setText(f"done: {outcome.path}")
            self.show_qc(outcome.result, outcome.stack)
        self.calibrationFinished.emit(outcome)

    # ----------------------------------------------------------------- QC
    def show_qc(self, result: Any, stack: Any) -> None:
        """The quality control of ``axialtrack calibrate`` and the bead map
        (accepted / rejected with the reason) of the first fields."""
        qc = result.qc
        reg = qc["registration"]
        refz = qc["ref_z"]
        ex = qc["examples"]
        rows = [
            (
                "fields x Z steps",
                f"{qc['n_fields']} x {qc['n_z']} ({qc['z_step_um']:.4f} um)",
            ),
            ("beads accepted / detected", f"{qc['n_accepted']} / {qc['n_detected']}"),
        ]
        rows += [(f"rejected: {r}", str(n)) for r, n in qc["rejected"].items() if n]
        rows += [
            (
                "plane registration residual",
                f"{reg['residual_nm']:.1f} nm ({reg['n_matched']} beads, "
                f"rotation {reg['rotation_deg']:.3f} deg)",
            ),
            ("reference Z method", f"{refz['method']} (asked: {refz['requested']})"),
            (
                "training examples",
                f"{ex['n']} (beads: "
                + ", ".join(f"{k} {v}" for k, v in ex["split_beads"].items())
                + ")",
            ),
        ]
        truth = qc.get("truth")
        if truth:
            rows.append(
                ("reference Z vs truth", f"RMS {truth['rms_mean_nm']:.1f} nm (mean)")
            )
        if qc.get("psf_fit"):
            rows.append(("PSF fit", "fitted (stored in the run's psf/ group)"))
        html = (
            "<table>"
            + "".join(
                f"<tr><td>{k}</td><td align='right'><b>{v}</b></td></tr>"
                for k, v in rows
            )
            + "</table>"
        )
        self.report.setHtml(html)
        self._bead_map(result, stack)

    def _bead_map(self, result: Any, stack: Any) -> None:
        import numpy as np

        fig = self.plot.figure
        fig.clear()
        beads = result.beads
        n = min(stack.n_fields, 3)
        reasons = [r for r in beads["reason"].unique() if r]
        colors = dict(zip(reasons, _REASON_COLORS * 3, strict=False))
        for p in range(n):
            ax = fig.add_subplot(1, n, p + 1)
            mp = np.asarray(stack.frames[p][:, 0]).max(axis=0)
            lo, hi = np.percentile(mp, [1, 99.8])
            ax.imshow(mp, cmap="gray", vmin=lo, vmax=hi)
            fb = beads[beads["field"] == p]
            acc = fb[fb["status"] == "accepted"]
            ax.scatter(
                acc["x_px0"],
                acc["y_px0"],
                s=40,
                facecolors="none",
                edgecolors="lime",
                label="accepted",
            )
            for reason, color in colors.items():
                rj = fb[fb["reason"] == reason]
                if len(rj):
                    ax.scatter(
                        rj["x_px0"],
                        rj["y_px0"],
                        s=40,
                        marker="x",
                        c=color,
                        label=reason,
                    )
            ax.set_title(f"field {p}: {len(acc)}/{len(fb)} accepted", fontsize=8)
            ax.set_axis_off()
            if p == 0:
                ax.legend(loc="upper right", fontsize=6)
        self.plot.draw()

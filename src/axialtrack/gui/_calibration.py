"""The Calibration panel: bead Z-stacks over several fields, run with progress
and cancel, or recorded stacks imported (``axialtrack calibrate --from``);
then the quality control in the window, with the figures of ``axialtrack
calibrate --report`` (bead map; fitted-PSF slices and residuals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ._widgets import FigureImage, PanelJob, PathField

__all__ = ["CalibrationPanel"]

#: The figures shown, as (qc_images name, tab title).
FIGURES = (
    ("beads", "Bead map"),
    ("psf_slices", "PSF: measured vs model"),
    ("psf_residuals", "PSF residuals"),
)

#: The splitter layouts ``calibrate --from --layout`` takes ("" : found).
LAYOUTS = (
    "",
    "side-by-side",
    "top-bottom",
    "two-files",
    "single-plane-pairs",
    "dual-plane",
)

#: The plane-1 flips ``calibrate --from --mirror`` takes.
MIRRORS = ("auto", "none", "horizontal", "vertical", "both")


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
        ibox = self._import_box()

        self.report = QTextBrowser()
        self.figure_tabs = QTabWidget()
        self.figures: dict[str, FigureImage] = {}
        for name, title in FIGURES:
            self.figures[name] = FigureImage()
            self.figure_tabs.addTab(self.figures[name], title)
        right = QVBoxLayout()
        right.addWidget(QLabel("Quality control"))
        right.addWidget(self.report, 1)
        right.addWidget(self.figure_tabs, 2)
        left = QVBoxLayout()
        left.addWidget(box)
        left.addWidget(ibox)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(460)
        lay = QHBoxLayout(self)
        lay.addWidget(lw)
        rw = QWidget()
        rw.setLayout(right)
        lay.addWidget(rw, 1)

        self.job = PanelJob(self, refresh=self._show_progress, busy=self._set_busy)

    def _import_box(self) -> QWidget:
        """The import of recorded stacks: the options of ``axialtrack
        calibrate --from`` (zero / "auto" / empty: found as the command finds
        it)."""
        self.import_sources = QLineEdit()
        self.import_sources.setPlaceholderText(
            "files or globs (field*.tif), ';' between several"
        )
        browse = QPushButton("...")
        browse.clicked.connect(self._browse_sources)
        src = QHBoxLayout()
        src.addWidget(self.import_sources, 1)
        src.addWidget(browse)
        self.import_second = QLineEdit()
        self.import_second.setPlaceholderText("plane-1 files (two-files), ';'")
        self.import_layout = QComboBox()
        self.import_layout.addItems(LAYOUTS)
        self.import_layout.setItemText(0, "found (metadata, beads)")
        self.import_mirror = QComboBox()
        self.import_mirror.addItems(MIRRORS)
        self.import_fields = QSpinBox()
        self.import_fields.setRange(0, 1000)
        self.import_fields.setSpecialValueText("one per file")
        self.import_z_step = _spin(0.0, 10.0, 0.0, 0.01, 4)
        self.import_z_step.setSpecialValueText("from metadata")
        self.import_z_start = _spin(-1e4, 1e4, 0.0, 1.0, 3)
        self.import_z_span = _spin(0.0, 1000.0, 0.0, 1.0, 3)
        self.import_z_span.setSpecialValueText("frames x step")
        self.import_offset = _spin(0.0, 5.0, 0.0, 0.05, 3)
        self.import_offset.setSpecialValueText("from metadata")
        self.import_pixel = _spin(0.0, 5.0, 0.0, 0.01, 4)
        self.import_pixel.setSpecialValueText("from metadata")
        self.import_camera_file = PathField(
            "camera JSON (axialtrack camera)",
            mode="open",
            caption="Camera file",
            filters="Camera (*.json)",
        )
        self.import_cam_offset = _spin(-1.0, 65535.0, -1.0, 1.0, 1)
        self.import_cam_offset.setSpecialValueText("file / run store / default")
        self.import_cam_gain = _spin(0.0, 1000.0, 0.0, 0.1, 3)
        self.import_cam_gain.setSpecialValueText("file / run store / default")
        self.import_cam_noise = _spin(-1.0, 1000.0, -1.0, 0.1, 2)
        self.import_cam_noise.setSpecialValueText("file / run store / default")
        self.import_button = QPushButton("Import and analyze")
        self.import_button.clicked.connect(self.import_stacks)
        f = QFormLayout()
        f.addRow("Stacks", src)
        f.addRow("Plane-1 files", self.import_second)
        f.addRow("Layout", self.import_layout)
        f.addRow("Plane-1 mirror", self.import_mirror)
        f.addRow("Fields per file", self.import_fields)
        f.addRow("Z step (um)", self.import_z_step)
        f.addRow("Z of first frame (um)", self.import_z_start)
        f.addRow("Z span (um)", self.import_z_span)
        f.addRow("Plane offset (um)", self.import_offset)
        f.addRow("Pixel size (um)", self.import_pixel)
        f.addRow("Camera file", self.import_camera_file)
        f.addRow("Camera offset (ADU)", self.import_cam_offset)
        f.addRow("Camera gain (e-/ADU)", self.import_cam_gain)
        f.addRow("Read noise (e-)", self.import_cam_noise)
        f.addRow(self.import_button)
        from superqt import QCollapsible

        inner = QWidget()
        inner.setLayout(f)
        self.import_box = QCollapsible("Import recorded stacks (calibrate --from)")
        self.import_box.addWidget(inner)  # folded away until wanted
        return self.import_box

    def _browse_sources(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        files, _ = QFileDialog.getOpenFileNames(self, "Recorded bead stacks")
        if files:
            self.import_sources.setText(";".join(files))

    def import_request(self, overwrite: bool = False) -> Any:
        """The :class:`~axialtrack.gui._backend.CalibrationImport` the import
        fields make (the Output field: where the calibration is written;
        empty: into an imported run store)."""
        from ._backend import CalibrationImport, InputError

        def paths(text: str) -> tuple[str, ...]:
            return tuple(t.strip() for t in text.split(";") if t.strip())

        sources = paths(self.import_sources.text())
        if not sources:
            raise InputError(
                "Import: give the recorded stacks (files or globs, ';' between)."
            )
        cam: dict[str, float] = {}
        if self.import_cam_offset.value() >= 0:
            cam["offset_adu"] = self.import_cam_offset.value()
        if self.import_cam_gain.value() > 0:
            cam["e_per_adu"] = self.import_cam_gain.value()
        if self.import_cam_noise.value() >= 0:
            cam["read_noise_e"] = self.import_cam_noise.value()
        out = self.out_field.text()
        cam_file = self.import_camera_file.text()
        return CalibrationImport(
            sources=sources,
            out=_zarr_path(out) if out else None,
            overwrite=overwrite,
            layout=LAYOUTS[self.import_layout.currentIndex()] or None,
            second=paths(self.import_second.text()),
            fields=self.import_fields.value() or None,
            z_step_um=self.import_z_step.value() or None,
            z_start_um=self.import_z_start.value(),
            z_span_um=self.import_z_span.value() or None,
            plane_offset_um=self.import_offset.value() or None,
            pixel_size_um=self.import_pixel.value() or None,
            mirror=self.import_mirror.currentText(),
            camera_file=Path(cam_file).expanduser() if cam_file else None,
            camera=cam,
            psf_fit=self.psf_fit.isChecked(),
        )

    def import_stacks(self, *, overwrite: bool | None = None) -> bool:
        """Import and analyze the recorded stacks in a worker (replacing an
        existing output only once confirmed); a refusal goes to
        :attr:`error`, nothing written."""
        from ._backend import import_calibration_job

        if self.running:
            return False
        try:
            req = self.import_request()
            if req.out is not None and overwrite is None:
                overwrite = False
                if req.out.exists():
                    ans = QMessageBox.question(
                        self, "Replace?", f"{req.out} already exists. Replace it?"
                    )
                    if ans != QMessageBox.StandardButton.Yes:
                        return False
                    overwrite = True
            req = req.model_copy(update={"overwrite": bool(overwrite)})
        except Exception as exc:
            self.error.emit(exc)
            return False
        self.outcome = None
        self.state_label.setText(f"importing {', '.join(req.sources)} ...")
        self.job.start(
            import_calibration_job,
            req,
            on_done=self._done,
            on_error=self._failed,
            timer=False,
        )
        return True

    def _set_busy(self, on: bool) -> None:
        self.run_button.setEnabled(not on)
        self.import_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)

    @property
    def running(self) -> bool:
        return self.job.running

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
            out = _zarr_path(text)
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
        self.job.start(
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

    def _failed(self, exc: BaseException) -> None:
        self.state_label.setText("failed")
        self.error.emit(exc)
        self.calibrationFinished.emit(exc)

    def _done(self, outcome: Any) -> None:
        self.outcome = outcome
        acq = outcome.acquisition
        if outcome.cancelled:
            self.state_label.setText(
                f"cancelled: {acq.get('n_frames')}/{acq.get('n_planned')} frames kept "
                f"in {outcome.path} (not analyzed)"
            )
        else:
            self.state_label.setText(f"done: {outcome.path}")
            self.show_qc(outcome)
        self.calibrationFinished.emit(outcome)

    # ----------------------------------------------------------------- QC
    def show_qc(self, outcome: Any) -> None:
        """The quality control of ``axialtrack calibrate`` and its report's
        figures, rendered in the worker (:func:`~axialtrack.gui._backend.qc_images`):
        the bead map (accepted / rejected with the reason), and the fitted-PSF
        slices and residuals where the calibration has a PSF fit."""
        qc = outcome.qc
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
        figures = getattr(outcome, "figures", None) or {}
        for i, (name, _title) in enumerate(FIGURES):
            self.figures[name].set_rgba(figures.get(name))
            self.figure_tabs.setTabEnabled(i, name in figures)
        self.figure_tabs.setCurrentIndex(0)


def _zarr_path(text: str) -> Path:
    """The run store a path field names (``.zarr`` added)."""
    out = Path(text).expanduser()
    return out if out.suffix == ".zarr" else out.with_name(out.name + ".zarr")

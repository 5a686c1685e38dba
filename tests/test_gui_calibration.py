"""The Calibration panel's import of recorded stacks (the options of
``axialtrack calibrate --from``) and its quality-control figures, drawn by
``calibrate/report.py``'s functions in the worker."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if importlib.util.find_spec("pymmcore_widgets") is None:
    pytest.skip("needs the gui extra", allow_module_level=True)
pytest.importorskip("pytestqt")

import numpy as np
import tifffile
from psf_import import (
    BEADS_PER_FIELD,
    DELTA_UM,
    GAIN_E_PER_ADU,
    N_Z,
    OFFSET_ADU,
    PIXEL_UM,
    STEP_UM,
    Rendered,
    render,
)
from qtpy.QtWidgets import QMessageBox

from axialtrack.store import read_attrs

N_FIELDS = 2


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(N_FIELDS, mirror="horizontal", seed=3)


@pytest.fixture
def panel(qtbot: Any) -> Any:
    from types import SimpleNamespace

    from axialtrack.gui._calibration import CalibrationPanel
    from axialtrack.gui._icons import offline_icons

    offline_icons()
    p = CalibrationPanel(None, SimpleNamespace(config_name="none"))
    qtbot.addWidget(p)
    errors: list[BaseException] = []
    p.error.connect(errors.append)
    p.test_errors = errors
    return p


def _fill(p: Any, rendered: Rendered, files: str, out: Path) -> None:
    p.out_field.setText(str(out))
    p.import_sources.setText(files)
    p.import_layout.setCurrentText("side-by-side")
    p.import_z_step.setValue(STEP_UM)
    p.import_z_start.setValue(float(rendered.stage_z_um[0]))
    p.import_offset.setValue(DELTA_UM)
    p.import_pixel.setValue(PIXEL_UM)
    p.import_cam_offset.setValue(OFFSET_ADU)
    p.import_cam_gain.setValue(GAIN_E_PER_ADU)


def test_import_recorded_stacks_as_calibrate_from(
    qtbot: Any, panel: Any, rendered: Rendered, tmp_path: Path
) -> None:
    """A glob of one file per field, the mirror found from the beads, the
    camera given in the window: the calibration the command would write."""
    for f in range(N_FIELDS):
        tifffile.imwrite(tmp_path / f"beads_field{f}.tif", rendered.raw[f])
    out = tmp_path / "cal.zarr"
    _fill(panel, rendered, str(tmp_path / "beads_field*.tif"), out)
    req = panel.import_request()
    assert req.mirror == "auto"
    assert req.camera == {"offset_adu": OFFSET_ADU, "e_per_adu": GAIN_E_PER_ADU}
    assert panel.import_stacks()
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    assert panel.test_errors == []
    oc = panel.outcome
    qc = oc.qc
    assert qc["n_fields"] == N_FIELDS
    assert qc["n_z"] == N_Z
    assert qc["n_accepted"] == N_FIELDS * BEADS_PER_FIELD
    assert qc["registration"]["mirror"] == "horizontal"
    attrs = read_attrs(out)
    assert attrs["kind"] == "calibration"
    cam = attrs["camera"]
    assert cam["offset_adu"] == OFFSET_ADU
    assert cam["e_per_adu"] == GAIN_E_PER_ADU
    assert "beads accepted / detected" in panel.report.toPlainText()
    # the bead map of calibrate --report, rendered in the worker; no PSF fit
    # asked: its tabs are off
    beads = panel.figures["beads"]
    assert len(beads.shape) == 3
    assert beads.shape[2] == 4
    assert beads.shape[0] > 100
    assert panel.figure_tabs.isTabEnabled(0)
    assert not panel.figure_tabs.isTabEnabled(1)
    assert not panel.figure_tabs.isTabEnabled(2)


def test_import_refusals_write_nothing(
    qtbot: Any,
    panel: Any,
    rendered: Rendered,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no stack given: refused at once
    panel.out_field.setText(str(tmp_path / "cal.zarr"))
    assert not panel.import_stacks()
    assert "give the recorded stacks" in str(panel.test_errors[-1])
    # files that are not there: the command's error, in the dialog
    _fill(panel, rendered, str(tmp_path / "nothing*.tif"), tmp_path / "cal.zarr")
    assert panel.import_stacks()
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    assert len(panel.test_errors) == 2
    assert "\n" not in str(panel.test_errors[-1]).strip()
    assert not (tmp_path / "cal.zarr").exists()
    # an existing output, declined: untouched
    existing = tmp_path / "old.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("data")
    tifffile.imwrite(tmp_path / "f0.tif", rendered.raw[0])
    _fill(panel, rendered, str(tmp_path / "f0.tif"), existing)
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No
    )
    assert not panel.import_stacks()
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert np.asarray(rendered.raw[0]).ndim == 3


def test_fitted_psf_slices_and_residuals_are_shown(panel: Any) -> None:
    """A calibration with a PSF fit: the worker renders the report's measured
    vs model slices and residuals, and the panel shows them in their tabs
    beside the bead map (a calibration without one clears those tabs)."""
    import dataclasses
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from calib_sim import make_stack
    from test_model_synthetic import aberrated_fit

    from axialtrack.calibrate import analyze
    from axialtrack.gui._backend import CalibrationOutcome, qc_images

    stack = make_stack(n_fields=1, n_beads=12, seed=0)
    result = analyze(stack)
    ids = np.unique(result.examples.bead)
    beads = pd.DataFrame(
        {
            "bead": ids,
            "x_um": 0.0,
            "y_um": 0.0,
            "dx1_um": 0.0,
            "dy1_um": 0.0,
            "coverslip_um": 0.0,
            "photons": np.linspace(3000.0, 6000.0, len(ids)),
            "background0": 10.0,
            "background1": 10.0,
            "used": True,
            "outlier": False,
            "reduced_deviance": 1.0,
        }
    )
    camera = {"offset_adu": 100.0, "e_per_adu": 0.5, "qe": 0.8, "read_noise_e": 1.0}
    fit = dataclasses.replace(aberrated_fit(), beads=beads, camera=camera)
    figures = qc_images(result, stack, psf_fit=fit)
    assert set(figures) == {"beads", "psf_slices", "psf_residuals"}
    for img in figures.values():
        assert img.ndim == 3
        assert img.shape[2] == 4
        assert img[..., :3].std() > 10  # drawn, not blank
    qc = dict(result.qc, psf_fit=True)
    panel.show_qc(CalibrationOutcome(Path("c.zarr"), {}, qc=qc, figures=figures))
    for name in ("beads", "psf_slices", "psf_residuals"):
        assert panel.figures[name].shape == figures[name].shape
    assert "PSF fit" in panel.report.toHtml()
    plain = qc_images(result, stack)
    panel.show_qc(
        CalibrationOutcome(Path("c.zarr"), {}, qc=dict(result.qc), figures=plain)
    )
    assert panel.figures["psf_slices"].shape == ()
    assert panel.figures["beads"].shape == plain["beads"].shape

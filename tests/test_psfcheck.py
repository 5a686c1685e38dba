"""The live check that the bundle's PSF still fits the microscope."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from axialtrack.pipeline.psfcheck import (
    DISAGREE,
    MISFIT,
    NO_FIT,
    NOT_CHECKED,
    PSFChangeMonitor,
    PSFCheckConfig,
    classify,
    select_isolated,
)

W = 160  # plane side (px)
DZ = np.linspace(-0.6, 0.9, 8)  # defocus of the frames (um)


# ------------------------------------------------------------------ units
def test_classify_codes() -> None:
    from scipy.stats import chi2

    dof = 236
    cfg = PSFCheckConfig(p_value=0.01, dz_sigmas=5.0, dz_floor_um=0.25)
    llr = np.array([dof, chi2.isf(0.001, dof), dof, dof, np.nan])
    dz_net = np.array([0.1, 0.1, 0.1 + 0.3, 0.1 + 0.3, 0.0])
    dz_mle = np.array([0.1, 0.1, 0.1, 0.1, 0.0])
    sigma = np.array([0.02, 0.02, 0.02, 0.005, 0.02])
    fitted = np.array([True, True, True, True, False])
    code = classify(llr, dof, dz_net, dz_mle, sigma, fitted, cfg)
    # 0.3 um apart: beyond 0.25 + 5 x 0.005, within 0.25 + 5 x 0.02
    assert code.tolist() == [0, MISFIT, 0, DISAGREE, NO_FIT]


def test_select_isolated_keeps_the_fitted_and_spreads_the_rest() -> None:
    nn = np.array([3.0, 20.0, np.inf, 20.0, 20.0, 20.0, 20.0, 5.0, 20.0, 20.0])
    usable = np.ones(10, bool)
    usable[4] = False
    rows = select_isolated(
        nn, usable, min_separation_px=11.0, already=np.array([0, 9]), per_batch=3
    )
    # 0 is crowded though fitted; 9 fitted and isolated; 3 of 1,2,3,5,6,8
    assert rows.tolist() == [1, 3, 8, 9]
    assert (
        select_isolated(
            nn, usable, min_separation_px=11.0, already=[], per_batch=0
        ).tolist()
        == []
    )


def test_monitor_trips_and_clears_with_hysteresis() -> None:
    mon = PSFChangeMonitor(window=100, min_checked=50, max_fraction=0.2)
    good = {"psf_check": np.array([0] * 9 + [NOT_CHECKED] * 5 + [MISFIT])}
    for _ in range(10):
        assert mon.update(good) is None
    assert mon.checked == 100
    assert mon.out_of_bounds == 10
    assert mon.fraction == pytest.approx(0.1)
    assert not mon.changed
    assert mon.status() == ""
    bad = {"psf_check": np.array([MISFIT, DISAGREE, 0, 0, 0])}
    msgs = [mon.update(bad) for _ in range(20)]  # window: 40 % out after all
    said = [m for m in msgs if m is not None]
    assert len(said) == 1
    assert "the PSF has changed" in said[0]
    assert "recalibrated" in said[0]
    assert mon.changed
    assert mon.fraction == pytest.approx(0.4)
    assert "PSF CHANGED (40 % misfit)" in mon.status()
    # 15 % is below the bound but above half of it: still changed
    for _ in range(20):
        mon.update({"psf_check": np.array([0] * 17 + [MISFIT] * 3)})
    assert mon.changed
    assert mon.fraction == pytest.approx(0.15)
    msgs = [mon.update({"psf_check": np.zeros(20, np.int8)}) for _ in range(5)]
    assert next(m for m in msgs if m).startswith("the PSF fits again")
    assert not mon.changed
    assert mon.update({"frame": np.zeros(3)}) is None  # rows without the column
    with pytest.raises(ValueError, match="min_checked"):
        PSFChangeMonitor(window=10, min_checked=20)


# ------------------------------------------------- rendered frames, real model
def _cases() -> dict[str, dict[str, Any]]:
    from axialtrack.geometry import SplitterGeometry
    from axialtrack.optics import Optics

    return {
        # the optics the bundle was calibrated with (its recorded PSF)
        "same": {},
        # 0.1 waves RMS of oblique astigmatism more
        "astigmatism": {"optics": Optics(zernike={5: 0.1})},
        # plane 1 0.25 um further from plane 0 than calibrated
        "plane offset": {"geometry": SplitterGeometry(plane_offset_um=0.75)},
    }


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    """``(8, 2, W, W)`` frames of 20 beads at ``DZ`` per optics case."""
    from test_pipeline_localize import PX, _frame, _renderer

    from axialtrack.sim import Beads

    beads = Beads.on_coverslip(
        20, size_um=(W * PX * 0.85,) * 2, min_separation_um=2.0, seed=11
    )
    out = {}
    for name, kw in _cases().items():
        r = _renderer(beads, (W, W), seed=12, **kw)
        zf = float(r.z_focus_um(0.05))
        out[name] = np.stack(
            [_frame(r, (0.0, 0.0, zf - d), i) for i, d in enumerate(DZ)]
        )
    return out


def _localizer(bundle: Path, **cfg: Any):
    from test_pipeline_localize import PX, BundleEngine

    from axialtrack.model import load_bundle
    from axialtrack.pipeline.config import LocalizerConfig
    from axialtrack.pipeline.localize import Localizer

    return Localizer(
        BundleEngine(load_bundle(bundle)),
        plane_shape=(W, W),
        pixel_size_um=PX,
        affine=np.eye(2, 3),  # the calibrated geometry, whatever the frames'
        config=LocalizerConfig(**cfg),
    )


def test_the_right_psf_stays_quiet_a_changed_one_trips(
    sim_bundle: Path, frames: dict[str, np.ndarray]
) -> None:
    """Every isolated row checked (per_batch large): the fraction out of bounds
    is ~1 % with the optics of the calibration, most rows with 0.1 waves of
    astigmatism more, about a fifth with plane 1 0.25 um further out (measured
    0.01 / 0.9 / 0.19 at the default bounds)."""
    frac = {}
    for name, planes in frames.items():
        loc = _localizer(sim_bundle, psf_check=PSFCheckConfig(per_batch=1000))
        locs = loc.localize(planes, np.arange(len(DZ)), 0.01 * np.arange(len(DZ)), 0)
        code = locs["psf_check"].to_numpy()
        checked = code >= 0
        # the beads are 2 um apart: nearly all rows are isolated
        assert checked.sum() >= 120, (name, checked.sum())
        assert not locs["refined"].any()  # checked, not refined
        mon = PSFChangeMonitor()
        msg = mon.update({"psf_check": code})
        frac[name] = mon.fraction
        assert mon.changed == (msg is not None)
        if name == "same":
            assert msg is None, msg
        else:
            assert msg is not None, name
            assert "the PSF has changed" in msg
    assert frac["same"] < 0.03, frac
    assert frac["astigmatism"] > 0.6, frac
    assert frac["plane offset"] > 0.12, frac


def test_default_check_fits_a_few_rows_per_batch_and_none_without_a_psf(
    sim_bundle: Path, frames: dict[str, np.ndarray]
) -> None:
    loc = _localizer(sim_bundle)
    locs = loc.localize(frames["same"][:2], [0, 1], [0.0, 0.01], 0)
    code = locs["psf_check"].to_numpy()
    # per_batch 8 (default) of the batch's 40 rows, the rest not checked
    assert np.count_nonzero(code >= 0) == 8
    assert np.count_nonzero(code[code >= 0]) <= 1  # 1 % expected at p < 0.01
    # with refinement on, every isolated refined row is checked too
    loc = _localizer(sim_bundle, refine=True)
    locs = loc.localize(frames["same"][:2], [0, 1], [0.0, 0.01], 0)
    assert locs["refined"].all()
    iso = locs["neighbour_px"].to_numpy() > loc.refine_size_px
    assert np.all((locs["psf_check"].to_numpy() >= 0) == iso)
    # off: no row checked
    loc = _localizer(sim_bundle, psf_check=PSFCheckConfig(per_batch=0))
    locs = loc.localize(frames["same"][:2], [0, 1], [0.0, 0.01], 0)
    assert np.all(locs["psf_check"].to_numpy() == NOT_CHECKED)


class _Frames:
    """A camera replaying given dual-plane frames as fast as they are taken."""

    def __init__(self, planes: np.ndarray, geometry: Any) -> None:
        self.planes = planes
        self.geometry = geometry
        self.n = len(planes)
        self.k = 0
        self.stopped = False

    def start(self, n_frames: int | None = None) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def finished(self) -> bool:
        return self.k >= self.n or self.stopped

    def next(self, timeout_s: float):
        from axialtrack.geometry import compose_frame
        from axialtrack.live import SourceFrame

        if self.finished():
            return None
        k = self.k
        self.k += 1
        raw = compose_frame(self.planes[k], self.geometry)
        return SourceFrame(raw, 0.05 * k, 50.0, 0.0, 0.0, k)


@pytest.mark.parametrize("case", ["same", "astigmatism"])
def test_live_run_says_when_the_psf_has_changed(
    case: str, sim_bundle: Path, frames: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Through the live runner: status line, metrics and a ``warning`` event."""
    from test_pipeline_localize import PX, BundleEngine

    from axialtrack.geometry import SplitterGeometry
    from axialtrack.live import LiveRunner, RunnerConfig, open_live_writer
    from axialtrack.model import load_bundle
    from axialtrack.pipeline import TrackingAnalyzer
    from axialtrack.pipeline.config import LocalizerConfig

    geo = SplitterGeometry()
    planes = np.concatenate([frames[case]] * 2)  # 16 frames, ~8 checked each
    ana = TrackingAnalyzer(
        BundleEngine(load_bundle(sim_bundle)),
        plane_shape=(W, W),
        pixel_size_um=PX,
        affine=np.eye(2, 3),
        localizer=LocalizerConfig(),
    )
    writer = open_live_writer(
        tmp_path / "run.zarr", geometry=geo, plane_shape=(W, W), pixel_size_um=PX
    )
    cfg = RunnerConfig(
        max_batch_frames=1,
        analysis_queue_frames=64,  # nothing skipped: every frame analyzed
        ring_frames=96,
        status_interval_s=0.05,
        log_status=False,
    )
    runner = LiveRunner(_Frames(planes, geo), ana, writer, geometry=geo, config=cfg)
    warned: list[str] = []
    lock = threading.Lock()

    def on_warning(msg: str) -> None:
        with lock:
            warned.append(msg)

    runner.events.warning.connect(on_warning)
    final = runner.run()
    assert final.frames_analyzed == len(planes)
    assert final.psf_checked == 8 * len(planes)
    psf_warnings = [w for w in warned if "PSF" in w]
    if case == "same":
        assert not final.psf_changed
        assert final.psf_out_of_bounds < 0.03
        assert psf_warnings == []
        assert "PSF CHANGED" not in final.status_line()
    else:
        assert final.psf_changed
        assert final.psf_out_of_bounds > 0.6
        assert len(psf_warnings) == 1
        assert "the PSF has changed" in psf_warnings[0]
        assert "PSF CHANGED" in final.status_line()
        assert "recalibration due" in final.status_line()
        rows = dict(final.summary_rows())
        assert "PSF CHANGED" in rows["PSF check: recent out of bounds (%)"]
    # the rows in the store carry the check
    code = open_run_codes(tmp_path / "run.zarr")
    assert np.count_nonzero(code >= 0) == final.psf_checked


def open_run_codes(path: Path) -> np.ndarray:
    from axialtrack.store import open_run

    return open_run(path).localizations["psf_check"].to_numpy()

"""``axialtrack gui --self-test``: the panel drives itself through calibrate ->
train -> live -> stop on the simulated rig, offscreen, and checks each
result."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_self_test"]

#: Fast settings: 128 x 128 px planes, 2 fields, +-1 um in 0.1 um steps, a
#: short training, 5 s live.
PLANE_PX = 128
LIVE_S = 5.0


def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    """Process Qt events until ``cond()`` (or the time-out)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        QApplication.processEvents()
        time.sleep(0.005)
    return True


def _shoot(win: Any, index: int, path: Path | None) -> None:
    win.tabs.setCurrentIndex(index)
    _wait(lambda: False, 0.3)  # let the tab paint
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        win.grab().save(str(path))


class _SelfTest:
    """The self-test's steps on one window; each records its result."""

    def __init__(self, win: Any, out: Path, shots: Path | None, log: Any) -> None:
        self.win, self.out, self.shots, self.log = win, out, shots, log
        self.results: dict[str, bool] = {}

    def step(self, name: str, ok: bool, detail: str) -> bool:
        self.results[name] = ok
        self.log(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        return ok

    def shoot(self, index: int, name: str) -> None:
        _shoot(self.win, index, self.shots and self.shots / f"gui-{name}.png")

    def rig(self) -> bool:
        win = self.win
        core = win.core
        cam = core.getCameraDevice()
        for prop, v in (("PlaneWidth", PLANE_PX), ("PlaneHeight", PLANE_PX)):
            core.setProperty(cam, prop, str(v))
        win.rig.scene_combo.setCurrentText("beads")
        win.rig.snap_button.click()
        _wait(lambda: win.rig.view.frames_shown > 0, 10.0)
        ok = self.step("rig", win.rig.view.frames_shown > 0, win.rig.geometry_text())
        self.shoot(0, "rig")
        return ok

    def calibrate(self) -> bool:
        t0 = time.perf_counter()
        win = self.win
        c = win.calibration
        c.out_field.setText(str(self.out / "calibration.zarr"))
        c.z_range.setValue(1.0)
        c.z_step.setValue(0.1)
        c.fields.setValue(2)
        win.tabs.setCurrentIndex(1)
        c.run_button.click()
        _wait(lambda: not c.running, 120.0)
        oc = c.outcome
        ok = oc is not None and not oc.cancelled and oc.qc is not None
        n_acc = oc.qc["n_accepted"] if ok else 0
        ok = self.step(
            "calibrate",
            ok and n_acc > 0,
            f"{n_acc} beads accepted, {time.perf_counter() - t0:.1f} s"
            + ("" if ok else f"; errors: {win.errors}"),
        )
        self.shoot(1, "calibration")
        return ok

    def train(self, steps: int, max_s: float) -> bool:
        t0 = time.perf_counter()
        win = self.win
        m = win.model
        m.steps.setValue(steps)
        m.max_time.setValue(max_s)
        win.tabs.setCurrentIndex(2)
        m.train_button.click()
        _wait(lambda: not m.busy, 180.0)
        ok = m.bundle_path is not None and m.bundle_path.exists()
        ok = self.step(
            "train",
            ok and len(m.history) > 0,
            f"{len(m.history)} epochs, bundle {m.bundle_path}, "
            f"{time.perf_counter() - t0:.1f} s"
            + ("" if ok else f"; errors: {win.errors}"),
        )
        self.shoot(2, "model")
        return ok

    def live(self, live_s: float) -> bool:
        from axialtrack.store import read_attrs

        t0 = time.perf_counter()
        win = self.win
        lv = win.live
        win.rig.scene_combo.setCurrentText("diffusing")
        _focus_in_particles(win.core)
        win.tabs.setCurrentIndex(3)
        lv.start_button.click()
        started = lv.running
        # stop live_s seconds after the camera started (or on a failure)
        _wait(lambda: not lv.running or lv.started_at is not None, 120.0)
        _wait(
            lambda: (
                not lv.running or time.monotonic() - (lv.started_at or 0.0) > live_s
            ),
            live_s + 30,
        )
        self.shoot(3, "live")
        lv.stop_button.click()
        lv.wait_done(120.0)
        met = lv.metrics
        points_seen = lv.view.max_points
        closed = (
            lv.last_store is not None
            and read_attrs(lv.last_store).get("state") == "closed"
        )
        ok = (
            started
            and met is not None
            and met.frames_written > 0
            and met.frames_analyzed > 0
            and lv.status_updates > 0
            and points_seen > 0
            and closed
            and lv.tracks is not None
            and len(lv.tracks) > 0
        )
        detail = (
            (
                f"{met.frames_written} frames stored, {met.frames_analyzed} analyzed, "
                f"{met.localizations} localizations, {len(lv.tracks)} tracks, "
                f"{points_seen} particles drawn, up to "
                f"{lv.track_plot.max_tracks} tracks plotted, store closed: {closed}, "
                f"{time.perf_counter() - t0:.1f} s"
            )
            if met is not None and lv.tracks is not None
            else f"no result; errors: {win.errors}"
        )
        ok = self.step("live", ok, detail)
        self.shoot(3, "live")
        return ok

    def runs(self) -> bool:
        win = self.win
        ok = self.step(
            "runs", win.runs.summary is not None, f"opened {win.live.last_store}"
        )
        self.shoot(4, "runs")
        return ok


def run_self_test(
    screenshot_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
    train_steps: int = 400,
    train_max_s: float = 10.0,
    live_s: float = LIVE_S,
) -> int:
    """Run the self-test; 0 if every step produced its result, else 1.

    Steps: rig (a snap shown), calibrate (store with QC, beads accepted),
    train (bundle written, loss plotted), live ``live_s`` s then Stop (store
    closed, frames stored and analyzed, metrics shown, localizations drawn,
    track summary), runs (the store summarized). A screenshot of each panel
    goes to ``screenshot_dir``.
    """
    from qtpy.QtCore import QSettings
    from qtpy.QtWidgets import QApplication

    from ._main import MainWindow

    app = QApplication.instance() or QApplication(["axialtrack-gui-self-test"])
    shots = Path(screenshot_dir) if screenshot_dir else None
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="axialtrack-gui-")
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qs = QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(config=None, qsettings=qs, dialogs=False)
    win.show()
    t_all = time.perf_counter()
    test = _SelfTest(win, out, shots, log)
    try:
        # each step needs the one before (a later one is not run)
        test.rig()
        _ = (
            test.calibrate()
            and test.train(train_steps, train_max_s)
            and test.live(live_s)
            and test.runs()
        )
    finally:
        win.close()
        app.processEvents()
        if tmp is not None:
            tmp.cleanup()
    good = all(test.results.values()) and len(test.results) == 5
    log(
        f"self-test {'passed' if good else 'FAILED'} in "
        f"{time.perf_counter() - t_all:.1f} s"
        + (f"; screenshots in {shots}" if shots else "")
    )
    return 0 if good else 1


def _focus_in_particles(core: Any) -> None:
    """On the simulated rig: focus where the diffusing particles are (as the
    demo does), so that the live run sees them."""
    from axialtrack.devices import SimCamera, get_device

    cam = get_device(core, core.getCameraDevice(), SimCamera)
    renderer = cam.renderer()
    z = float(renderer.sample.coverslip_z_um) + float(
        renderer.psf_model.in_focus_offset(0.3)
    )
    focus = core.getFocusDevice()
    core.setPosition(focus, z)
    core.waitForDevice(focus)

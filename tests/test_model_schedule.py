"""The default training schedule: set by optimizer steps, converging on small
calibrations, and saying when it did not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from axialtrack.calibrate import analyze
from axialtrack.model import CalibrationData, train
from axialtrack.model._schedule import SLOPE_TOLERANCE, schedule

sys.path.insert(0, str(Path(__file__).parent))
from calib_sim import make_stack


@pytest.fixture(scope="module")
def data() -> CalibrationData:
    stack = make_stack(n_fields=2, z_half_range_um=1.2, seed=3)
    result = analyze(stack)
    return CalibrationData(examples=result.examples, beads=result.beads)


def test_schedule_is_set_by_steps_not_epochs() -> None:
    small = schedule(
        10, epochs=None, steps=4000, patience=None, lr_patience=None, ema_decay="auto"
    )
    large = schedule(
        100, epochs=None, steps=4000, patience=None, lr_patience=None, ema_decay="auto"
    )
    # the same number of optimizer steps, whatever the calibration's size
    assert small["epochs"] * 10 == large["epochs"] * 100 == 4000
    # the weight average spans about one epoch
    assert small["ema_decay"] == pytest.approx(0.9)
    assert large["ema_decay"] == pytest.approx(0.99)
    assert small["patience"] == 100
    assert large["patience"] == 10
    fixed = schedule(
        10, epochs=7, steps=4000, patience=None, lr_patience=None, ema_decay=0.95
    )
    assert fixed["epochs"] == 7
    assert fixed["ema_decay"] == 0.95
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        schedule(
            10, epochs=0, steps=4000, patience=None, lr_patience=None, ema_decay="auto"
        )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        schedule(
            10, epochs=None, steps=0, patience=None, lr_patience=None, ema_decay="auto"
        )


def test_defaults_converge_where_the_old_ones_compressed(data) -> None:
    steps = 300
    new = train(data, steps=steps, seed=0, progress=False)
    m = new.metrics
    assert m["epochs_run"] * m["steps_per_epoch"] >= 0.5 * steps
    assert m["test_rmse_nm"] < 100.0
    assert abs(m["test_slope"] - 1) <= SLOPE_TOLERANCE
    assert not [w for w in m["warnings"] if "compressed" in w]
    assert "recalibration" in m
    assert "helps" in m["recalibration"]

    # the former defaults (a 0.998 weight average, plateau schedule) over the
    # same steps: the average lags, predictions are compressed, and it is said
    old = train(
        data,
        epochs=int(np.ceil(steps / m["steps_per_epoch"])),
        patience=15,
        lr_patience=5,
        ema_decay=0.998,
        lr_schedule="plateau",
        recalibrate=False,
        seed=0,
        progress=False,
    )
    o = old.metrics
    assert o["test_slope"] < 1 - SLOPE_TOLERANCE
    assert o["test_rmse_nm"] > 1.5 * m["test_rmse_nm"]
    assert any("compressed" in w for w in o["warnings"])


def test_training_events_and_stop(data) -> None:
    """A live loss plot gets every epoch; a cancel button ends the training
    after the current epoch with the best model so far."""
    import threading

    from axialtrack.events import TrainSignals

    events = TrainSignals()
    stop = threading.Event()
    got: dict[str, list] = {"started": [], "epoch": [], "finished": []}
    events.started.connect(got["started"].append)
    events.finished.connect(got["finished"].append)

    def on_epoch(row: dict) -> None:
        got["epoch"].append(row)
        if row["epoch"] == 3:
            stop.set()

    events.epochFinished.connect(on_epoch)
    res = train(data, epochs=50, seed=0, progress=False, events=events, stop=stop)
    assert len(got["started"]) == 1
    assert got["started"][0]["epochs_planned"] == 50
    assert [r["epoch"] for r in got["epoch"]] == [1, 2, 3]
    assert [r["val_loss"] for r in got["epoch"]] == [h["val_loss"] for h in res.history]
    assert all(r["epochs"] == 50 for r in got["epoch"])
    assert got["finished"] == [res.metrics]
    assert res.metrics["stopped_by"] == "stopped"
    assert res.metrics["epochs_run"] == 3
    assert 1 <= res.best_epoch <= 3

"""The demo's summary: figures beside their references, no NaN, clear errors."""

from __future__ import annotations

import math
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from axialtrack.cli import main
from axialtrack.demo import (
    DemoError,
    DemoResult,
    _status_printer,
    _training_line,
    check_live_run,
    summary_table,
    training_summary,
)
from axialtrack.live import LiveMetrics


def _history(vals: list[float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "val_rmse_nm": v} for i, v in enumerate(vals)]


def test_training_summary_says_the_time_limit_stopped_it() -> None:
    vals = [500.0 - 10 * i for i in range(19)]  # still falling at the stop
    metrics = {
        "epochs_run": 19,
        "epochs_planned": 80,
        "best_epoch": 19,
        "stopped_by": "time limit",
        "val_rmse_nm": 320.0,
        "test_rmse_nm": 330.0,
        "warnings": ["the validation RMSE was still falling at the end"],
    }
    t = training_summary(metrics, _history(vals), max_time_s=40.0)
    assert t["stopped_by"] == "time limit"
    assert (t["epochs_run"], t["max_epochs"]) == (19, 80)
    assert t["warnings"] == metrics["warnings"]
    trend = t["val_rmse_trend_nm"]
    assert trend["epoch_to"] == 19
    assert trend["epoch_from"] == 15  # a quarter of the way back
    assert trend["from"] == pytest.approx(360.0)
    assert trend["to"] == pytest.approx(320.0)
    line = _training_line(t)
    assert "19 of 80 epochs" in line
    assert "40 s time limit" in line
    assert "still falling" in line
    # early stopping is told apart from the time limit
    t = training_summary(
        {**metrics, "epochs_run": 45, "best_epoch": 25, "stopped_by": "early stop"},
        _history([100.0] * 45),
        max_time_s=40.0,
    )
    assert "no better validation loss since epoch 25" in _training_line(t)


def test_an_empty_live_run_is_a_clear_error(tmp_path: Path) -> None:
    live = tmp_path / "live.zarr"
    with pytest.raises(DemoError, match=r"live\.zarr stored no frame.*--duration"):
        check_live_run({"frames_written": 0, "stop_reason": "duration"}, live)
    with pytest.raises(DemoError, match=r"none of the 7 frames.*axialtrack localize"):
        check_live_run(
            {"frames_written": 7, "frames_analyzed": 0, "stop_reason": "duration"},
            live,
        )
    check_live_run({"frames_written": 7, "frames_analyzed": 1}, live)


def test_the_demo_command_reports_a_demo_error_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import axialtrack.demo as demo

    def empty_run(*a, **k):  # type: ignore[no-untyped-def]
        check_live_run({"frames_written": 0, "stop_reason": "duration"}, tmp_path)
        raise AssertionError("not reached")

    monkeypatch.setattr(demo, "run_demo", empty_run)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    out = capsys.readouterr().out
    assert "stored no frame" in out
    assert "Traceback" not in out
    assert main(["demo", "--duration", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--duration: must be > 0" in err
    assert len(err.strip().splitlines()) == 1


def test_status_line_before_the_first_latency() -> None:
    class Early:
        def as_dict(self) -> dict:
            d = LiveMetrics().as_dict()
            d["latency_ms_p99"] = None  # no frame analyzed yet
            return d

    buf = StringIO()
    _status_printer(Console(file=buf, width=200))(Early())  # was a TypeError
    assert "latency p99 n/a ms" in buf.getvalue()


def test_summary_of_a_run_without_links_prints_no_nan(tmp_path: Path) -> None:
    res = DemoResult(out=tmp_path, calibration=tmp_path, bundle=tmp_path, live=tmp_path)
    m = LiveMetrics(frames_in=3, frames_written=3, frames_analyzed=1, fps_in=40.6)
    res.live_metrics = m.as_dict()
    res.camera = {"exposure_ms": 10.0, "interval_ms": 0.0, "nominal_fps": 100.0}
    nan = math.nan
    res.score = {
        "recall": nan,
        "precision": nan,
        "rmse_x_nm": nan,
        "rmse_y_nm": nan,
        "rmse_z_nm": nan,
        "bias_z_nm": nan,
        "n_links": 0,
        "link_accuracy": nan,
    }
    res.crlb = {"rmse_z_nm": nan, "crlb_z_nm": nan, "bins": []}
    res.trackpy = {"frames": 3, "fps": 812.0}
    res.diffusion = {"true_um2_s": 0.2, "median_track_um2_s": nan}
    res.training = {"epochs_run": 19, "max_epochs": 80, "stopped_by": "time limit"}
    buf = StringIO()
    Console(file=buf, width=200).print(summary_table(res, 0))
    text = buf.getvalue()
    assert "nan" not in text.lower()
    assert "no links scored" in text
    assert "100.0 / 40.6 fps" in text  # nominal beside achieved
    assert "812.0" in text
    assert "19 / 80" in text


def test_trackpy_baseline_of_frames_without_features(tmp_path: Path) -> None:
    """An empty first frame (nothing for trackpy to find) is timed, not a crash
    in trackpy's warm-up link."""
    import numpy as np

    from axialtrack.demo import trackpy_baseline
    from axialtrack.store import RunWriter

    path = tmp_path / "dark.zarr"
    with RunWriter(path, kind="live", plane_shape=(32, 32), pixel_size_um=0.1) as w:
        for _ in range(4):
            w.append_frame(np.full((2, 32, 32), 100, np.uint16))
    r = trackpy_baseline(path, 3, 0.1)
    assert r["frames"] == 3
    assert r["features_per_frame"] == 0
    assert r["tracks"] == 0

"""Refusals of the ``axialtrack`` command: one line on stderr, exit code 2,
nothing created (and no traceback) for bad options, files, models and configs."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, Field, ValidationError
from sim_model import SIM_RIG

from axialtrack.cli import main

SIM_CFG = Path(__file__).parents[1] / "hardware_configs" / "sim-dualplane.cfg"
PIXEL_UM = 0.108333


def _refused(capsys: pytest.CaptureFixture[str], rc: int, *words: str) -> str:
    """Assert exit code 2 and a one-line message on stderr holding ``words``."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle for the sim rig (its files are what matters here)."""
    from axialtrack.model import save_bundle
    from axialtrack.model.config import ModelConfig
    from axialtrack.model.network import AxialNet

    return save_bundle(
        AxialNet(ModelConfig()),
        tmp_path_factory.mktemp("bundle") / "untrained",
        **SIM_RIG,
    )


def _copy(bundle: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.axialmodel"
    shutil.copytree(bundle, out)
    return out


def _edit_json(path: Path, **changes: object) -> None:
    mj = path / "model.json"
    meta = json.loads(mj.read_text())
    for key, value in changes.items():
        d = meta
        *parents, last = key.split("__")
        for k in parents:
            d = d[k]
        d[last] = value
    mj.write_text(json.dumps(meta))


def _run_store(path: Path, *, analyzed: bool, n: int = 4) -> Path:
    """A closed run store of ``n`` blank 32 x 32 dual-plane frames."""
    from axialtrack.geometry import SplitterGeometry
    from axialtrack.store import FrameMeta, RunWriter

    with RunWriter(
        path,
        kind="live",
        plane_shape=(32, 32),
        pixel_size_um=PIXEL_UM,
        splitter=SplitterGeometry(),
        frame_interval_s=0.01,
    ) as w:
        for i in range(n):
            w.append_frame(
                np.full((2, 32, 32), 100, np.uint16),
                FrameMeta(t_s=0.01 * i, stage_z_um=50.0, image_number=i),
            )
        if analyzed:
            w.set_analyzed(np.arange(n), True)
    return path


# --------------------------------------------------------- option values
@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--z-step", "0", ("--z-step", "must be > 0", "got 0")),
        ("--fields", "0", ("--fields", "must be >= 1", "got 0")),
        ("--z-range", "-1", ("--z-range", "must be > 0", "got -1")),
        ("--exposure", "0", ("--exposure", "must be > 0", "got 0")),
        ("--z-step", "nan", ("--z-step", "finite")),
    ],
)
def test_calibrate_refuses_bad_scan_values(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    words: tuple[str, ...],
) -> None:
    out = tmp_path / "cal.zarr"
    rc = main(["calibrate", "--out", str(out), option, value, "--no-progress"])
    _refused(capsys, rc, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--plane-offset", "0", ("--plane-offset", "0.05 to 5 um")),
        ("--plane-offset", "-0.5", ("--plane-offset", "0.05 to 5 um")),
        ("--plane-offset", "50", ("--plane-offset", "0.05 to 5 um")),
        ("--pixel-size", "1000", ("--pixel-size", "0.01 to 5 um")),
    ],
)
def test_calibrate_from_refuses_implausible_geometry(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    words: tuple[str, ...],
) -> None:
    stack = tmp_path / "stack.npy"
    np.save(stack, np.zeros((3, 16, 32), np.uint16))
    out = tmp_path / "cal.zarr"
    argv = ["calibrate", "--from", str(stack), "--out", str(out), option, value]
    line = _refused(capsys, main(argv), *words)
    assert "SplitterGeometry" not in line
    assert not out.exists()


def test_localize_movie_refuses_implausible_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    movie = tmp_path / "movie.npy"
    np.save(movie, np.zeros((3, 16, 32), np.uint16))
    out = tmp_path / "run.zarr"
    argv = ["localize", str(movie), "--model", "m", "--out", str(out)]
    argv += ["--pixel-size", "0.1", "--plane-offset", "50"]
    line = _refused(capsys, main(argv), "--plane-offset", "0.05 to 5 um")
    assert "SplitterGeometry" not in line
    assert not out.exists()


def test_a_validation_error_past_the_options_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --z-range 200 passes the option's own check (> 0) but not the plan's
    # (<= 100 um): the pydantic error becomes one line naming the option
    out = tmp_path / "cal.zarr"
    rc = main(["calibrate", "--out", str(out), "--z-range", "200", "--no-progress"])
    _refused(capsys, rc, "--z-range", "must be <= 100", "got 200")
    assert not out.exists()


def test_fail_prints_brackets_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    from axialtrack._cli import fail

    assert fail("shape [batch, 2, 15, 15] in /data/[red]/x", "fix it") == 2
    err = capsys.readouterr().err
    assert err == "Error: shape [batch, 2, 15, 15] in /data/[red]/x fix it\n"


def test_validation_message_maps_fields_to_options() -> None:
    from axialtrack._cli import validation_message

    class Plan(BaseModel):
        z_step_um: float = Field(gt=0)
        exposure_ms: float = Field(gt=0, le=1000)
        other: int = Field(ge=1)

    with pytest.raises(ValidationError) as info:
        Plan(z_step_um=0, exposure_ms=5000, other=0)
    msg = validation_message(info.value, ["--z-step", "--exposure"])
    assert "\n" not in msg
    assert "--z-step must be > 0; got 0" in msg
    assert "--exposure must be <= 1000; got 5000" in msg
    assert "Plan.other must be >= 1; got 0" in msg


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--engine", "bogus"], ("--engine", "bogus", "onnxruntime", "torch-cpu")),
        (["--axial-scale", "0"], ("--axial-scale", "must be > 0")),
        (["--interval-ms", "-5"], ("--interval-ms", "must be >= 0")),
        (["--rate", "0"], ("--rate", "must be > 0")),
        (["--frames", "0"], ("--frames", "must be >= 1")),
    ],
)
def test_live_refuses_bad_option_values(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    words: tuple[str, ...],
) -> None:
    out = tmp_path / "run.zarr"
    rc = main(["live", "--frames", "5", "--out", str(out), "--no-status", *argv])
    line = _refused(capsys, rc, *words)
    assert "threads" not in line
    assert not out.exists()


def test_train_refuses_zero_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.axialmodel"
    rc = main(["train", str(tmp_path / "cal.zarr"), "--out", str(out), "--epochs", "0"])
    _refused(capsys, rc, "--epochs", "must be >= 1", "got 0")
    assert not out.exists()


# ------------------------------------------------------------ files, disks
def test_calibrate_out_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    out = blocker / "cal.zarr"
    rc = main(["calibrate", "--out", str(out), "--no-progress"])
    _refused(capsys, rc, "--out", "is not a folder")
    assert blocker.read_text() == "keep"


def test_calibrate_out_on_a_read_only_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import axialtrack._cli as cli_util

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    # root may write anywhere, so the read-only mount is simulated
    monkeypatch.setattr(cli_util.tempfile, "mkstemp", read_only)
    out = tmp_path / "ro" / "cal.zarr"
    rc = main(["calibrate", "--out", str(out), "--no-progress"])
    _refused(capsys, rc, "--out", "not writable", "Read-only file system")
    assert not out.exists()
    assert not (tmp_path / "ro").exists()


def test_live_replay_source_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.zarr"
    argv = ["live", "--config", "replay-dualplane", "--source"]
    argv += [str(tmp_path / "missing.zarr"), "--frames", "5", "--out", str(out)]
    _refused(capsys, main(argv), "--source", "missing.zarr", "does not exist")
    assert not out.exists()


def test_localize_on_a_full_disk_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bundle: Path,
) -> None:
    import axialtrack.store.amend as amend

    run = _run_store(tmp_path / "run.zarr", analyzed=False)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(amend, "_set_flags", full)
    rc = main(["localize", str(run), "--model", str(bundle)])
    _refused(capsys, rc, "DiskFullError")


def test_main_reports_a_full_disk_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import axialtrack.cli as cli

    def writes_on_a_full_disk(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cal.zarr")

    parser = cli.build_parser
    monkeypatch.setattr(
        cli,
        "build_parser",
        lambda: _with_func(parser(), "info", writes_on_a_full_disk),
    )
    rc = cli.main(["info", "x.zarr"])
    _refused(capsys, rc, "DiskFullError", "/data/cal.zarr")


def _with_func(parser: object, command: str, func: object) -> object:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices[command].set_defaults(func=func)
    return parser


# ------------------------------------------------------------------ models
def test_model_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.zarr"
    model = tmp_path / "nope.axialmodel"
    argv = ["live", "--model", str(model), "--frames", "5", "--out", str(out)]
    line = _refused(capsys, main(argv), "nope.axialmodel", "does not exist")
    assert "no model.json" not in line
    assert not out.exists()


def test_weights_that_are_not_a_state_dict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bundle: Path
) -> None:
    import torch

    from axialtrack.model import load_bundle

    bad = _copy(bundle, tmp_path, "pickled")
    # a whole pickled network, with model.json's hash updated to match
    torch.save(load_bundle(bundle).model, bad / "weights.pt")
    digest = hashlib.sha256((bad / "weights.pt").read_bytes()).hexdigest()
    meta = json.loads((bad / "model.json").read_text())
    meta["sha256"]["weights.pt"] = digest
    (bad / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "run.zarr"
    argv = ["live", "--model", str(bad), "--engine", "torch-cpu", "--frames", "5"]
    argv += ["--out", str(out), "--analysis", "threads", "--no-status"]
    line = _refused(
        capsys, main(argv), f"weights.pt of {bad} is not a state dict of this network"
    )
    assert "weights_only=False" not in line
    assert not out.exists()


def test_onnx_crop_size_disagreeing_with_model_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bundle: Path
) -> None:
    bad = _copy(bundle, tmp_path, "crop")
    _edit_json(bad, crop_size=21, config__crop_size=21)
    meta = json.loads((bad / "model.json").read_text())
    meta["inputs"]["image"] = ["batch", 2, 21, 21]
    (bad / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "run.zarr"
    # the default: the analysis process with onnxruntime, whose error is
    # reported once, as the model's, not retried in threads
    argv = ["live", "--model", str(bad), "--frames", "5", "--out", str(out)]
    line = _refused(capsys, main(argv), "crop size 21", "model.onnx", "15")
    assert "threads" not in line
    assert not out.exists()


def test_crop_sizes_disagreeing_within_model_json(tmp_path: Path, bundle: Path) -> None:
    from axialtrack.model import BundleError, load_bundle

    bad = _copy(bundle, tmp_path, "json")
    _edit_json(bad, crop_size=21)
    with pytest.raises(BundleError, match="crop sizes disagree") as info:
        load_bundle(bad)
    assert "crop_size 21, config.crop_size 15" in str(info.value)


def test_localize_checks_the_model_even_with_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_store(tmp_path / "run.zarr", analyzed=True)
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    before = sorted(p.name for p in run.rglob("*"))
    rc = main(["localize", str(run), "--model", str(not_a_model)])
    _refused(capsys, rc, "not a model bundle", "notes")
    assert sorted(p.name for p in run.rglob("*")) == before


# ------------------------------------------------------------------ configs
def _typo_config(tmp_path: Path, old: str, new: str) -> Path:
    text = SIM_CFG.read_text()
    assert old in text
    cfg = tmp_path / "typo.cfg"
    cfg.write_text(text.replace(old, new))
    return cfg


def test_check_config_catches_a_device_reference_typo(tmp_path: Path) -> None:
    from axialtrack.rig import RigConfigError, check_config

    cfg = _typo_config(
        tmp_path, "#py Property,Camera,ZStage,Z\n", "#py Property,Camera,ZStage,Zz\n"
    )
    with pytest.raises(RigConfigError) as info:
        check_config(cfg)
    err = info.value
    assert err.line == 37
    assert err.text == "#py Property,Camera,ZStage,Zz"
    assert "no device 'Zz' is loaded" in err.problem
    assert "SimZPiezo" in err.fix
    assert "loaded: Z)" in err.fix


def test_check_config_catches_a_reference_to_the_wrong_kind(tmp_path: Path) -> None:
    from axialtrack.rig import RigConfigError, check_config

    cfg = _typo_config(
        tmp_path,
        "#py Property,Camera,Splitter,Splitter\n",
        "#py Property,Camera,Splitter,XY\n",
    )
    with pytest.raises(RigConfigError, match="must name a DualPlaneSplitter"):
        check_config(cfg)


def test_check_config_catches_a_default_reference_to_nothing(tmp_path: Path) -> None:
    from axialtrack.rig import RigConfigError, check_config

    # the light source renamed, the camera left on its default 'Light'
    text = SIM_CFG.read_text().replace("#py Property,Camera,LightSource,Light\n", "")
    text = text.replace(",Light,", ",Lamp,").replace("Shutter,Light", "Shutter,Lamp")
    cfg = tmp_path / "renamed.cfg"
    cfg.write_text(text)
    with pytest.raises(RigConfigError) as info:
        check_config(cfg)
    assert "Camera.LightSource is 'Light' (its default)" in info.value.problem
    assert info.value.text is not None
    assert "SimCamera" in info.value.text


@pytest.mark.parametrize("command", ["live", "calibrate"])
def test_commands_refuse_a_config_with_a_reference_typo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    cfg = _typo_config(
        tmp_path, "#py Property,Camera,ZStage,Z\n", "#py Property,Camera,ZStage,Zz\n"
    )
    out = tmp_path / "run.zarr"
    argv = [command, "--config", str(cfg), "--out", str(out)]
    argv += ["--frames", "5", "--no-status"] if command == "live" else ["--no-progress"]
    _refused(capsys, main(argv), "typo.cfg, line 37", "'Zz'", "Fix:")
    assert not out.exists()


def test_shipped_configs_pass_the_reference_check() -> None:
    from axialtrack.rig import check_config, resolve_config

    for name in ("sim-dualplane", "replay-dualplane"):
        assert check_config(resolve_config(name))


def test_calibrate_on_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import axialtrack.store._sinks as sinks

    real = sinks.atomic_write
    calls = []

    def fills_up(path: str, data: object, **kw: object) -> int:
        calls.append(path)
        if len(calls) > 3:  # the disk fills up after three chunks
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sinks, "atomic_write", fills_up)
    out = tmp_path / "cal.zarr"
    argv = ["calibrate", "--out", str(out), "--fields", "1", "--z-range", "0.3"]
    _refused(capsys, main([*argv, "--no-progress"]), "DiskFullError", str(out))
    assert len(calls) > 3
    # no quality control was written over the frames that were stored
    assert not (out / "calibration").exists()

"""TrainConfig shared by train(), ``axialtrack train`` and the demo; the
model package's rooms (private modules, no import cycle)."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import axialtrack.model as model_pkg
from axialtrack.model import DEFAULT_SYNTHETIC, CalibrationData, TrainConfig
from axialtrack.model.cli import _settings, add_parsers

MODEL_DIR = Path(model_pkg.__file__).parent


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return parser


def test_cli_defaults_are_the_train_config_defaults() -> None:
    args = _train_parser().parse_args(["train", "calib.zarr", "--out", "m"])
    assert _settings(args) == TrainConfig()
    args = _train_parser().parse_args(
        ["train", "c.zarr", "--out", "m", "--lr", "0.003", "--ema-decay", "0",
         "--photons", "100", "500", "--finetune", "50"]
    )  # fmt: skip
    s = _settings(args)
    assert s.lr == 0.003
    assert s.ema_decay is None  # 0: off
    assert s.photons == (100.0, 500.0)
    assert s.finetune_steps == 50


def test_train_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from axialtrack.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Adam learning rate (default: 0.001)" in text
    assert "mini-batch (default: 64)" in text
    assert "(default: a quarter of the epochs, at least 10)" in text
    assert "default: one epoch's time constant" in text
    assert f"default {TrainConfig().steps}" in text
    assert f"default {DEFAULT_SYNTHETIC}" in text


def test_train_config_refuses_what_train_cannot_run() -> None:
    with pytest.raises(ValidationError, match="neighbours is a probability"):
        TrainConfig(neighbours=1.5)
    with pytest.raises(ValidationError, match="synthetic_fraction"):
        TrainConfig(synthetic_fraction=-0.1)
    with pytest.raises(ValidationError, match="stepz"):
        model_pkg.train(np.zeros(0), stepz=10)  # type: ignore[arg-type]


def test_public_names_are_functions_and_modules_private() -> None:
    import axialtrack.model._evaluate as ev
    import axialtrack.model._train as tr

    # importing the private modules leaves the package's functions in place
    assert model_pkg.train is tr.train
    assert model_pkg.evaluate is ev.evaluate
    assert callable(model_pkg.train)
    assert callable(model_pkg.evaluate)
    assert not (MODEL_DIR / "train.py").exists()
    assert not (MODEL_DIR / "evaluate.py").exists()
    for name in model_pkg.__all__:
        assert getattr(model_pkg, name) is not None, name


def _imports(path: Path) -> set[str]:
    """Sibling modules of axialtrack.model that ``path`` imports (anywhere in
    it, function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "axialtrack.model."
        ):
            found.add(node.module.split(".")[2])  # type: ignore[union-attr]
    modules = {p.stem for p in MODEL_DIR.glob("*.py")}
    return found & modules


def test_model_import_graph_has_no_cycle() -> None:
    graph = {p.stem: _imports(p) for p in MODEL_DIR.glob("*.py")}
    # the package __init__ and the CLI sit on top: they may import anything
    for top in ("__init__", "cli"):
        graph.pop(top)
    for deps in graph.values():
        deps.discard("__init__")
        deps.discard("cli")

    def visit(node: str, path: list[str]) -> None:
        for dep in graph.get(node, ()):
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for start in graph:
        visit(start, [start])
    assert "_train" not in graph["bundle"]
    assert "bundle" in graph["_train"]


def test_recipe_renders_the_default_synthetic_examples(monkeypatch) -> None:
    """train_from_config (the CLI's and the demo's training) renders
    DEFAULT_SYNTHETIC examples when the calibration carries a PSF, none
    without one, and passes the settings on to train()."""
    recipe = importlib.import_module("axialtrack.model._recipe")
    from axialtrack.calibrate.examples import Examples

    ex = Examples(
        crops=np.zeros((4, 2, 15, 15), np.float32),
        dz_um=np.zeros(4),
        stage_z_um=np.zeros(4),
        ref_z_um=np.zeros(4),
        xy_norm=np.zeros((4, 2)),
        bead=np.arange(4),
        field=np.zeros(4, int),
        split=np.array([0, 0, 1, 2]),
    )
    rendered: list[int] = []
    calls: list[dict[str, Any]] = []

    class FakeSynthetic:
        def __len__(self) -> int:
            return rendered[-1]

    def fake_render(data: Any, n: int, **kw: Any) -> Any:
        rendered.append(n)
        return FakeSynthetic()

    class FakeResult:
        def __init__(self) -> None:
            self.settings: dict[str, Any] = {}
            self.metrics: dict[str, Any] = {}
            self.train_config: Any = None

    def fake_train(data: Any, **kw: Any) -> Any:
        calls.append(kw)
        return FakeResult()

    monkeypatch.setattr(recipe, "synthetic_examples", fake_render)
    monkeypatch.setattr(recipe, "train", fake_train)
    with_psf = CalibrationData(examples=ex, optics={"na": 1.4})
    settings = TrainConfig(steps=7, seed=3)
    res = recipe.train_from_config(with_psf, settings, progress=False)
    assert rendered == [DEFAULT_SYNTHETIC]
    assert calls[-1]["settings"] is settings
    assert isinstance(calls[-1]["synthetic"], FakeSynthetic)
    assert res.train_config is settings
    assert res.settings["synthetic"]["n"] == DEFAULT_SYNTHETIC
    lines: list[str] = []
    recipe.train_from_config(
        CalibrationData(examples=ex), settings, progress=False, log=lines.append
    )
    assert rendered == [DEFAULT_SYNTHETIC]  # nothing rendered without a PSF
    assert calls[-1]["synthetic"] is None
    assert "bead examples only" in lines[0]


def test_localize_refines_by_default_when_the_bundle_has_a_fitted_psf(
    tmp_path: Path,
) -> None:
    """Offline ``localize`` refines by MLE unless told not to, when the bundle
    carries its calibration's fitted PSF (bench_import: isolated Z RMSE 12.9x
    -> 1.05x the CRLB); without one it stays off."""
    import json

    from axialtrack.pipeline.cli import _has_psf_fit
    from axialtrack.pipeline.cli import add_parsers as add_pipeline

    parser = argparse.ArgumentParser()
    add_pipeline(parser.add_subparsers())
    base = ["localize", "movie.tif", "--model", "m.axialmodel"]
    assert parser.parse_args(base).refine is None  # decided from the bundle
    assert parser.parse_args([*base, "--refine"]).refine is True
    assert parser.parse_args([*base, "--no-refine"]).refine is False
    fitted = tmp_path / "fitted.axialmodel"
    fitted.mkdir()
    (fitted / "model.json").write_text(json.dumps({"psf_fit": {"kind": "pupil"}}))
    bare = tmp_path / "bare.axialmodel"
    bare.mkdir()
    (bare / "model.json").write_text(json.dumps({"psf_fit": None}))
    assert _has_psf_fit(str(fitted))
    assert not _has_psf_fit(str(bare))
    assert not _has_psf_fit(str(tmp_path / "missing.axialmodel"))

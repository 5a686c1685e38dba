"""How the house is built: which package imports which, private modules behind
curated ``__init__``s, one name for the engine choice, complete ``--help``."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "axialtrack"


def _imported_modules(path: Path) -> set[str]:
    """The absolute ``axialtrack`` modules a file imports (anywhere in it)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("axialtrack")}


def test_pipeline_never_imports_live() -> None:
    """The live machinery imports the per-frame localization, never the
    reverse (pipeline/cli.py, the commands, is the one exception left: it
    moves out of the package)."""
    offenders = {
        f"{p.name}: {m}"
        for p in sorted((SRC / "pipeline").glob("*.py"))
        if p.name != "cli.py"
        for m in _imported_modules(p)
        if m == "axialtrack.live" or m.startswith("axialtrack.live.")
    }
    assert not offenders
    live_imports = set().union(
        *(_imported_modules(p) for p in (SRC / "live").glob("*.py"))
    )
    assert any(m.startswith("axialtrack.pipeline") for m in live_imports)


def test_live_names_have_one_home() -> None:
    import axialtrack.live as live
    import axialtrack.pipeline as pipeline

    assert not set(live.__all__) & set(pipeline.__all__)
    for name in ("LiveRunner", "TrackingHandler", "AnalysisProcess", "RunSignals"):
        assert hasattr(live, name)
        assert not hasattr(pipeline, name)


def test_pipeline_modules_are_private_behind_the_init() -> None:
    """``axialtrack.pipeline.detect`` is the function; its module is private and
    its helpers are reachable (they were hidden by the function before)."""
    import axialtrack.pipeline as pipeline
    from axialtrack.pipeline import _detect, _tracks

    assert callable(pipeline.detect)
    assert pipeline.detect is _detect.detect
    assert pipeline.smooth is _detect.smooth
    assert pipeline.summarize_tracks is _tracks.summarize_tracks
    img = np.zeros((9, 11), np.float32)
    img[4, 5] = 1.0
    out = pipeline.smooth(img, 1.0)
    assert out.shape == img.shape
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # normalized, edges replicated
    assert out[4, 5] == out.max()
    for name in pipeline.__all__:
        assert hasattr(pipeline, name), name


def test_calibrate_help_gives_the_defaults() -> None:
    from axialtrack.cli import build_parser

    parser = build_parser()
    sub = next(
        a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    text = " ".join(sub.choices["calibrate"].format_help().split())  # type: ignore[attr-defined]
    for option, default in (
        ("--z-range Z_RANGE", "default: 1.5"),
        ("--z-step Z_STEP", "default: 0.05"),
        ("--spacing SPACING", "default: 1.2 fields of view"),
        ("--exposure EXPOSURE", "default: the camera's exposure"),
        ("--fields FIELDS", "default 4"),
    ):
        at = text.index(option, text.index("options:"))
        assert default in text[at : at + 200], option


def test_analyze_settings_are_one_config() -> None:
    from pydantic import ValidationError

    from axialtrack.calibrate import AnalysisConfig, analyze

    cfg = AnalysisConfig(dz_range_um=0.8)
    assert cfg.crop_size == 15
    assert cfg.dz_range_um == 0.8
    with pytest.raises(ValidationError):
        AnalysisConfig(crop_size=15, dz_range=1.0)  # type: ignore[call-arg]
    # a setting that does not exist is refused before the stack is touched
    with pytest.raises(TypeError, match="dz_range"):
        analyze(object(), dz_range=1.0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_engine import _bundle

    return _bundle(tmp_path_factory.mktemp("arch"), "field")


def test_engine_is_the_one_name_old_ones_warn(bundle: Path) -> None:
    from axialtrack.engine import select_engine
    from axialtrack.model import load_bundle
    from axialtrack.pipeline import make_analyzer

    b = load_bundle(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with select_engine(b, engine="onnxruntime") as eng:
            assert eng.name == "onnxruntime"
            assert "engine='onnxruntime'" in eng.reason
    with (
        pytest.warns(DeprecationWarning, match="prefer= is deprecated"),
        select_engine(b, prefer="onnxruntime") as eng,
    ):
        assert eng.name == "onnxruntime"
    with pytest.raises(TypeError, match="both given"):
        select_engine(b, "torch-cpu", prefer="onnxruntime")
    kw = {"plane_shape": (64, 64), "pixel_size_um": b.pixel_size_um}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        an = make_analyzer(bundle, engine="onnxruntime", **kw)
        assert an.engine.name == "onnxruntime"
        an.engine.close()
    with pytest.warns(DeprecationWarning, match="engine_prefer= is deprecated"):
        an = make_analyzer(bundle, engine_prefer="onnxruntime", **kw)
    assert an.engine.name == "onnxruntime"
    an.engine.close()


def _runtime_import_graph() -> dict[str, set[str]]:
    """Module -> the ``axialtrack`` modules it imports when run (at the top or
    in a function; imports under ``if TYPE_CHECKING:`` are for the type
    checker only and left out). Imports of a module's own package and of the
    root package are left out too."""
    mods: dict[str, Path] = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(x)
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
            for x in ast.walk(n)
        }
        pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for n in ast.walk(tree):
            if id(n) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = pkg[: len(pkg) - (n.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                    for a in n.names
                ]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t not in (mod, "axialtrack") and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def test_the_runtime_import_graph_has_no_cycle() -> None:
    """No module imports, directly or through others, a module that imports it
    back when the code runs (type-checking-only imports aside)."""
    graph = _runtime_import_graph()
    assert len(graph) > 150
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, [" -> ".join(c) for c in cycles[:5]]

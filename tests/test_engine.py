"""Inference engines: parity across backends, batching, errors, engine cache."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sim_model import SIM_RIG

from axialtrack.engine import (
    BACKENDS,
    DEFAULT_BUCKETS,
    Engine,
    EngineError,
    InferResult,
    available_backends,
    select_engine,
)
from axialtrack.engine.base import CPU_BUCKETS, plan_chunks
from axialtrack.engine.cache import (
    CACHE_ENV,
    EngineKey,
    cache_root,
    load_or_build,
    plan_path,
    sidecar_path,
    validate_plan,
    write_plan,
)
from axialtrack.model import (
    AxialNet,
    BundleError,
    ModelConfig,
    load_bundle,
    save_bundle,
)

AVAILABLE = available_backends()
FP32_TOL_UM = 1e-3
#: fp16 tolerance (um): the trunk runs in fp16, the input normalization in fp32.
FP16_TOL_UM = 2e-2
HAS_CUDA = torch.cuda.is_available()


def _bundle(tmp: Path, name: str, **cfg: object) -> Path:
    torch.manual_seed(0)
    model = AxialNet(ModelConfig(**cfg))  # type: ignore[arg-type]
    # non-trivial BatchNorm statistics so outputs vary across inputs
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return save_bundle(model.eval(), tmp / name, **SIM_RIG)


@pytest.fixture(scope="module")
def field_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default architecture: field branch, dz only."""
    return _bundle(tmp_path_factory.mktemp("engine"), "field")


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No field branch; uncertainty and sub-pixel heads."""
    return _bundle(
        tmp_path_factory.mktemp("engine"),
        "full",
        field_branch=False,
        uncertainty=True,
        subpixel=True,
    )


def _pairs(n: int, s: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint16 crop pairs: a blob of random width/brightness on an offset."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s] - s // 2
    w = rng.uniform(1.0, 3.0, (n, 2, 1, 1))
    amp = rng.uniform(50, 2000, (n, 2, 1, 1))
    img = 100 + amp * np.exp(-(xx**2 + yy**2) / (2 * w**2))
    img = rng.poisson(img).astype(np.uint16)
    xy = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return img, xy


def _reference(path: Path, pairs: np.ndarray, xy: np.ndarray | None) -> np.ndarray:
    """Plain torch-CPU outputs (N, K)."""
    b = load_bundle(path)
    with torch.no_grad():
        args = [torch.from_numpy(pairs.astype(np.float32))]
        if b.config.field_branch:
            assert xy is not None
            args.append(torch.from_numpy(xy))
        return b.model(*args).numpy()


def _as_matrix(r: InferResult, names: list[str]) -> np.ndarray:
    return np.stack([getattr(r, n) for n in names], axis=1)


def _need(name: str) -> None:
    if AVAILABLE[name] is not None:
        pytest.skip(f"{name} unavailable: {AVAILABLE[name]}")


# -- availability and selection -------------------------------------------------


def test_available_backends_here() -> None:
    assert list(AVAILABLE) == list(BACKENDS)
    assert AVAILABLE["torch-cpu"] is None
    assert AVAILABLE["onnxruntime"] is None
    if not HAS_CUDA:
        assert "CUDA" in str(AVAILABLE["tensorrt"])
        assert "CUDA" in str(AVAILABLE["torch-cuda"])


def test_auto_picks_first_available(field_bundle: Path) -> None:
    with select_engine(field_bundle) as eng:
        first = next(n for n in BACKENDS if AVAILABLE[n] is None)
        assert eng.name == first
        assert eng.reason.startswith(f"auto: {first}")
        assert eng.precision == "fp32"
        cpu = eng.name == "onnxruntime"
        assert eng.buckets == (CPU_BUCKETS if cpu else DEFAULT_BUCKETS)
        assert eng.crop_size == 15
        assert eng.needs_xy


def test_prefer_torch_alias_and_unknown(field_bundle: Path) -> None:
    b = load_bundle(field_bundle)
    eng = select_engine(b, "torch")
    assert eng.name == ("torch-cuda" if HAS_CUDA else "torch-cpu")
    assert "requested" in eng.reason
    eng.close()
    with pytest.raises(EngineError, match="unknown backend"):
        select_engine(b, "openvino")


def test_cuda_probe_asks_torch_only_where_a_driver_loads(
    field_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from axialtrack.engine import _cuda

    # a driver but no GPU torch can use: torch is asked and says so
    monkeypatch.setattr(_cuda, "cuda_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cuda.cuda_unavailable() == "no CUDA GPU visible to torch"
    monkeypatch.undo()
    if _cuda.cuda_driver_present():
        pytest.skip("an NVIDIA driver is installed here")
    # no driver: the onnxruntime engine is chosen (and run) without importing
    # torch at all
    code = (
        "import sys, numpy as np\n"
        "from axialtrack.engine import select_engine\n"
        f"eng = select_engine({str(field_bundle)!r})\n"
        "res = eng.infer(np.full((3, 2, 15, 15), 100, np.uint16), np.zeros((3, 2)))\n"
        "print(eng.name, len(res.dz_um), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["onnxruntime", "3", "False"]


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only error")
def test_unavailable_backend_says_why(field_bundle: Path) -> None:
    with pytest.raises(EngineError, match=r"no CUDA GPU.*available: onnxruntime"):
        select_engine(field_bundle, "tensorrt")
    with pytest.raises(EngineError, match="torch-cuda"):
        select_engine(field_bundle, "torch-cuda")


def test_fp16_on_cpu(field_bundle: Path) -> None:
    with pytest.raises(EngineError, match="fp32 only"):
        select_engine(field_bundle, "onnxruntime", precision="fp16")
    with pytest.raises(EngineError, match="fp32 only"):
        select_engine(field_bundle, "torch-cpu", precision="fp16")
    if not HAS_CUDA:
        eng = select_engine(field_bundle, precision="fp16")
        assert eng.precision == "fp32"
        assert "GPU-only" in eng.reason


def test_threads_option(field_bundle: Path) -> None:
    from axialtrack.engine.onnx import OnnxRuntimeEngine, default_threads

    eng = select_engine(field_bundle, "onnxruntime", threads=2)
    assert isinstance(eng, OnnxRuntimeEngine)
    assert eng.threads == 2
    assert eng._session.get_session_options().intra_op_num_threads == 2
    assert select_engine(field_bundle, "onnxruntime").threads == default_threads()
    assert 1 <= default_threads() <= 4


# -- numerical parity --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["field", "full"])
def test_fp32_parity_with_torch_cpu(
    backend: str, which: str, field_bundle: Path, full_bundle: Path
) -> None:
    _need(backend)
    path = field_bundle if which == "field" else full_bundle
    pairs, xy = _pairs(53, seed=3)
    ref = _reference(path, pairs, xy)
    with select_engine(path, backend, cache_dir=path.parent / "cache") as eng:
        assert eng.name == backend
        res = eng.infer(pairs, xy)
        names = eng.bundle.output_names
    got = _as_matrix(res, names)
    assert got.shape == ref.shape == (53, len(names))
    assert float(np.ptp(ref[:, 0])) > 1e-3  # outputs vary: a real comparison
    np.testing.assert_allclose(got, ref, rtol=0, atol=FP32_TOL_UM)


def test_heads_fill_columns(field_bundle: Path, full_bundle: Path) -> None:
    pairs, xy = _pairs(9)
    with select_engine(field_bundle, "onnxruntime") as eng:
        r = eng.infer(pairs, xy)
    for col in r:
        assert col.dtype == np.float32
        assert col.shape == (9,)
    assert np.isfinite(r.dz_um).all()
    assert np.isnan(r.sigma_z_um).all()
    assert np.isnan(r.dx_px).all()
    assert np.isnan(r.dy_px).all()
    with select_engine(full_bundle, "onnxruntime") as eng:
        assert not eng.needs_xy
        r = eng.infer(pairs)  # xy not needed
        r2 = eng.infer(pairs, xy)  # and ignored when given
    ref = _reference(full_bundle, pairs, None)
    assert (r.sigma_z_um > 0).all()
    np.testing.assert_allclose(r.sigma_z_um, ref[:, 1], atol=FP32_TOL_UM)
    np.testing.assert_allclose(r.dx_px, ref[:, 2], atol=FP32_TOL_UM)
    np.testing.assert_allclose(r.dy_px, ref[:, 3], atol=FP32_TOL_UM)
    np.testing.assert_array_equal(r.dz_um, r2.dz_um)


@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_fp16_parity_gpu(backend: str, full_bundle: Path) -> None:
    _need(backend)
    pairs, _ = _pairs(70, seed=4)
    pairs[0] = 65535  # saturated: would overflow fp16 before normalization
    ref = _reference(full_bundle, pairs, None)
    with select_engine(
        full_bundle, backend, precision="fp16", cache_dir=full_bundle.parent / "c16"
    ) as eng:
        assert eng.precision == "fp16"
        got = _as_matrix(eng.infer(pairs), eng.bundle.output_names)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=0, atol=FP16_TOL_UM)


def test_half_onnx_runs_on_onnxruntime(full_bundle: Path, tmp_path: Path) -> None:
    """The half-precision ONNX TensorRT builds from, checked on the CPU."""
    import onnx
    import onnxruntime as ort

    from axialtrack.engine.half_onnx import to_half_onnx

    b = load_bundle(full_bundle)
    dst = to_half_onnx(b.onnx_path, tmp_path / "half.onnx")
    m = onnx.load(str(dst))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == [f32]
    conv_w = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    inits = {t.name: t.data_type for t in m.graph.initializer}
    assert len(conv_w) == 3
    assert all(inits[w] == f16 for w in conv_w)
    pairs, _ = _pairs(40, seed=5)
    pairs[0] = 65535
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": pairs.astype(np.float32)})[0]
    ref = _reference(full_bundle, pairs, None)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=0, atol=FP16_TOL_UM)
    assert np.abs(got - ref).max() > 0  # really ran in reduced precision


@pytest.mark.parametrize("which", ["field", "full", "single"])
def test_onnxruntime_background_split_is_exact(
    which: str, field_bundle: Path, full_bundle: Path, tmp_path: Path
) -> None:
    """The graph without TopK (background from numpy) gives the same outputs."""
    _need("onnxruntime")
    from axialtrack.engine.onnx import OnnxRuntimeEngine

    path = {"field": field_bundle, "full": full_bundle}.get(which)
    if path is None:  # plane 0 only: the percentile over one plane
        path = _bundle(tmp_path, "single", channels=1)
    b = load_bundle(path)
    pairs, xy = _pairs(300, seed=7)
    pairs[:3] = 65535  # flat saturated pairs: ties at the percentile
    xy_in = xy if b.config.field_branch else None
    split = OnnxRuntimeEngine(b, threads=1)
    plain = OnnxRuntimeEngine(b, threads=1, split_background=False)
    assert split.background_split
    assert not plain.background_split
    got = _as_matrix(split.infer(pairs, xy_in), b.output_names)
    ref = _as_matrix(plain.infer(pairs, xy_in), b.output_names)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    torch_ref = _reference(path, pairs, xy_in)
    np.testing.assert_allclose(got, torch_ref, rtol=0, atol=FP32_TOL_UM)


def test_background_split_leaves_other_graphs(tmp_path: Path) -> None:
    """A graph without the normalization's TopK pattern is not rewritten."""
    from onnx import TensorProto, helper

    from axialtrack.engine._ort_graph import kth_smallest, split_background

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 2, 3, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 18])
    g = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["out"], axis=1)], "g", [x], [y]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert split_background(m.SerializeToString(), 2) is None
    img = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)[:, ::-1]
    np.testing.assert_array_equal(
        kth_smallest(img, 1, 2)[:, 0], img.min(axis=(1, 2, 3))
    )
    np.testing.assert_array_equal(
        kth_smallest(img, 18, 2)[:, 0], img.max(axis=(1, 2, 3))
    )
    np.testing.assert_array_equal(kth_smallest(img, 3, 1)[:, 0], [11.0, 29.0])
    assert kth_smallest(img[:0], 2, 2).shape == (0, 1)


# -- batching and inputs ----------------------------------------------------------


def test_plan_chunks() -> None:
    b = (1, 16, 64)
    assert list(plan_chunks(0, b)) == []
    assert list(plan_chunks(1, b)) == [(0, 1, 1)]
    assert list(plan_chunks(17, b)) == [(0, 17, 64)]
    assert list(plan_chunks(130, b)) == [(0, 64, 64), (64, 128, 64), (128, 130, 16)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_batch_sizes(backend: str, field_bundle: Path) -> None:
    _need(backend)
    pairs, xy = _pairs(1025, seed=6)
    ref = _reference(field_bundle, pairs, xy)[:, 0]
    with select_engine(
        field_bundle, backend, cache_dir=field_bundle.parent / "cache"
    ) as eng:
        for n in (0, 1, 17, 1025):
            r = eng.infer(pairs[:n], xy[:n])
            assert all(c.shape == (n,) for c in r)
            np.testing.assert_allclose(r.dz_um, ref[:n], atol=FP32_TOL_UM)


@pytest.mark.parametrize("pad", [False, True])
def test_small_buckets_chunk_and_pad(field_bundle: Path, pad: bool) -> None:
    pairs, xy = _pairs(23, seed=7)
    ref = _reference(field_bundle, pairs, xy)[:, 0]
    eng = select_engine(field_bundle, "torch-cpu", buckets=(4, 1, 8, 4))
    assert eng.buckets == (1, 4, 8)
    eng.pad_to_bucket = pad
    r = eng.infer(pairs, xy)  # chunks 8, 8, 8 (7 padded to 8 when pad)
    np.testing.assert_allclose(r.dz_um, ref, atol=FP32_TOL_UM)
    if pad:
        assert set(eng._img_bufs) == {8}
        assert not eng._img_bufs[8][7:].any()  # padding rows zeroed
    with pytest.raises(ValueError, match="positive"):
        select_engine(field_bundle, "torch-cpu", buckets=(0, 4))


def test_empty_batch(field_bundle: Path) -> None:
    with select_engine(field_bundle, "onnxruntime") as eng:
        r = eng.infer(np.zeros((0, 2, 15, 15), np.uint16), np.zeros((0, 2)))
    assert isinstance(r, InferResult)
    assert all(c.shape == (0,) and c.dtype == np.float32 for c in r)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-cpu"])
def test_input_dtypes(backend: str, field_bundle: Path) -> None:
    pairs, xy = _pairs(20, seed=8)
    with select_engine(field_bundle, backend) as eng:
        r16 = eng.infer(pairs, xy)
        r32 = eng.infer(pairs.astype(np.float32), xy)
        r64 = eng.infer(pairs.astype(np.float64), xy.astype(np.float64))
        ri = eng.infer(pairs.astype(np.int32), xy)
        # a non-contiguous view works too
        big = np.zeros((20, 2, 17, 17), np.uint16)
        big[:, :, 1:-1, 1:-1] = pairs
        rv = eng.infer(big[:, :, 1:-1, 1:-1], xy)
    np.testing.assert_array_equal(r16.dz_um, r32.dz_um)
    np.testing.assert_array_equal(r16.dz_um, ri.dz_um)
    np.testing.assert_array_equal(r16.dz_um, rv.dz_um)
    np.testing.assert_allclose(r16.dz_um, r64.dz_um, atol=1e-6)


def test_bad_inputs(field_bundle: Path) -> None:
    pairs, xy = _pairs(5)
    with select_engine(field_bundle, "onnxruntime") as eng:
        with pytest.raises(ValueError, match="field_xy"):
            eng.infer(pairs)
        with pytest.raises(ValueError, match=r"field_xy must have shape \(5, 2\)"):
            eng.infer(pairs, xy[:4])
        with pytest.raises(ValueError, match=r"\(N, 2, 15, 15\)"):
            eng.infer(pairs[:, :, :13, :13], xy)
        with pytest.raises(ValueError, match="real"):
            eng.infer(pairs.astype(np.complex64), xy)


# -- bundle errors and the compile command ----------------------------------------


def test_missing_and_corrupt_bundle(field_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nope\.axialmodel does not exist"):
        select_engine(tmp_path / "nope.axialmodel")
    bad = tmp_path / "bad.axialmodel"
    shutil.copytree(field_bundle, bad)
    onnx_file = bad / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupted"):
        select_engine(bad, "onnxruntime")


def _compile(argv: list[str]) -> int:
    from axialtrack.engine.cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    args = p.parse_args(["compile", *argv])
    return int(args.func(args))


def test_compile_command(
    field_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compile([str(field_bundle), "--batch", "16"]) == 0
    out = capsys.readouterr().out
    first = next(n for n in BACKENDS if AVAILABLE[n] is None)
    assert f"Backend {first}" in out
    assert "batch 16:" in out
    assert "pairs/s" in out
    assert _compile([str(tmp_path / "missing.axialmodel")]) == 2
    assert "Cannot load the model bundle" in capsys.readouterr().out
    bad = tmp_path / "bad.axialmodel"
    shutil.copytree(field_bundle, bad)
    (bad / "model.json").write_text("{not json")
    assert _compile([str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().out
    if not HAS_CUDA:
        assert _compile([str(field_bundle), "--backend", "tensorrt"]) == 2
        assert "unavailable" in capsys.readouterr().out


# -- engine cache (no TensorRT needed) --------------------------------------------

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    backend_version="10.3.0",
    gpu_name="NVIDIA GeForce RTX 4090",
    compute_capability="8.9",
    precision="fp16",
    profile=(1, 16, 64, 256, 1024),
)
OTHER = {
    "onnx_sha256": "cd" * 32,
    "backend_version": "11.0.0",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "precision": "fp32",
    "profile": (1, 16, 64),
}


@pytest.mark.parametrize("field", list(OTHER))
def test_cache_key_parts(field: str, tmp_path: Path) -> None:
    other = KEY.model_copy(update={field: OTHER[field]})
    assert other != KEY
    assert other.digest() != KEY.digest()
    assert plan_path(other, tmp_path) != plan_path(KEY, tmp_path)
    same = EngineKey(**KEY.model_dump())
    assert same.digest() == KEY.digest()


def test_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    default = cache_root()
    assert default.name == "engines"
    assert "axialtrack" in str(default)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert plan_path(KEY).parent == tmp_path / "env"


class FakeBuilder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"plan-{self.calls}".encode() * 100


def test_cache_build_hit_and_rebuild(tmp_path: Path) -> None:
    build = FakeBuilder()
    plan, status = load_or_build(KEY, build, tmp_path)
    assert (status, build.calls) == ("built", 1)
    path = plan_path(KEY, tmp_path)
    assert path.read_bytes() == plan
    side = json.loads(sidecar_path(path).read_text())
    assert side["key"]["gpu_name"] == KEY.gpu_name
    assert validate_plan(path, KEY) is None
    # hit: the builder is not called
    plan2, status = load_or_build(KEY, build, tmp_path)
    assert (plan2, status, build.calls) == (plan, "cached", 1)
    # corrupt plan (one flipped byte) -> refused and rebuilt
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    assert "corrupt" in str(validate_plan(path, KEY))
    plan3, status = load_or_build(KEY, build, tmp_path)
    assert status.startswith("rebuilt: the plan is corrupt")
    assert build.calls == 2
    assert plan3 == path.read_bytes() != plan
    # truncated plan
    path.write_bytes(plan3[:10])
    assert load_or_build(KEY, build, tmp_path)[1].startswith("rebuilt")
    assert build.calls == 3
    # no temporary files left behind
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".plan"]


def test_cache_stale_and_foreign(tmp_path: Path) -> None:
    build = FakeBuilder()
    path = plan_path(KEY, tmp_path)
    # a plan for another GPU stored under this key's name: stale, rebuilt
    foreign = KEY.model_copy(update={"gpu_name": "NVIDIA A100"})
    write_plan(path, b"foreign plan", foreign)
    why = validate_plan(path, KEY)
    assert why is not None
    assert why.startswith("stale")
    assert "gpu_name" in why
    plan, status = load_or_build(KEY, build, tmp_path)
    assert status.startswith("rebuilt: stale")
    assert plan != b"foreign plan"
    assert validate_plan(path, KEY) is None
    # missing or unreadable sidecar
    sidecar_path(path).unlink()
    assert "no sidecar" in str(validate_plan(path, KEY))
    assert load_or_build(KEY, build, tmp_path)[1].startswith("rebuilt")
    sidecar_path(path).write_text("{garbage")
    assert "unreadable" in str(validate_plan(path, KEY))
    assert load_or_build(KEY, build, tmp_path)[1].startswith("rebuilt")
    assert build.calls == 3
    with pytest.raises(RuntimeError, match="empty plan"):
        load_or_build(foreign, lambda: b"", tmp_path)


# -- GPU-only -----------------------------------------------------------------------


def test_tensorrt_engine_cache_reuse(field_bundle: Path, tmp_path: Path) -> None:
    _need("tensorrt")
    from axialtrack.engine.tensorrt import TensorRTEngine

    e1 = select_engine(field_bundle, "tensorrt", cache_dir=tmp_path)
    assert isinstance(e1, TensorRTEngine)
    assert e1.cache_status == "built"
    e1.close()
    e2 = TensorRTEngine(load_bundle(field_bundle), cache_dir=tmp_path)
    assert e2.cache_status == "cached"
    e2.plan_path.write_bytes(b"\0" * 64)  # corrupt on disk -> rebuilt
    e3 = TensorRTEngine(load_bundle(field_bundle), cache_dir=tmp_path)
    assert e3.cache_status.startswith("rebuilt")
    pairs, xy = _pairs(17)
    np.testing.assert_allclose(
        e3.infer(pairs, xy).dz_um,
        _reference(field_bundle, pairs, xy)[:, 0],
        atol=FP32_TOL_UM,
    )


def test_torch_cuda_graphs(field_bundle: Path) -> None:
    _need("torch-cuda")
    pairs, xy = _pairs(100, seed=9)
    ref = _reference(field_bundle, pairs, xy)[:, 0]
    with select_engine(field_bundle, "torch-cuda") as eng:
        assert isinstance(eng, Engine)
        for n in (3, 100, 64):  # replays captured graphs with new data
            np.testing.assert_allclose(
                eng.infer(pairs[:n], xy[:n]).dz_um, ref[:n], atol=FP32_TOL_UM
            )
        assert set(eng._graphs) == {16, 64, 256}  # type: ignore[attr-defined]


def test_torch_cuda_without_graphs(
    field_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("torch-cuda")
    pairs, xy = _pairs(100, seed=9)
    ref = _reference(field_bundle, pairs, xy)[:, 0]
    monkeypatch.setenv("AXIALTRACK_CUDA_GRAPHS", "0")
    with select_engine(field_bundle, "torch-cuda") as eng:
        assert not eng.cuda_graphs  # type: ignore[attr-defined]
        for n in (3, 100):
            np.testing.assert_allclose(
                eng.infer(pairs[:n], xy[:n]).dz_um, ref[:n], atol=FP32_TOL_UM
            )
        assert not eng._graphs  # type: ignore[attr-defined]

"""Ensembles of axial networks: the mean of members, in one bundle and one graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sim_model import SIM_RIG

from axialtrack.model import (
    AxialEnsemble,
    AxialNet,
    ModelConfig,
    load_bundle,
    save_bundle,
)


def _members(k: int, **cfg: object) -> list[AxialNet]:
    out = []
    for i in range(k):
        torch.manual_seed(10 + i)
        m = AxialNet(ModelConfig(**cfg))  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(20 + i)
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
        out.append(m.eval())
    return out


def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:15, :15] - 7
    amp = rng.uniform(100, 3000, (n, 2, 1, 1))
    img = rng.poisson(100 + amp * np.exp(-(xx**2 + yy**2) / 4.0)).astype(np.float32)
    xy = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return torch.from_numpy(img), torch.from_numpy(xy)


def test_ensemble_is_the_mean_of_its_members() -> None:
    members = _members(3)
    ens = AxialEnsemble(members).eval()
    img, xy = _pairs(40)
    with torch.no_grad():
        got = ens(img, xy)
        mean = torch.stack([m(img, xy) for m in members]).mean(0)
    torch.testing.assert_close(got, mean)
    assert ens.output_names == ["dz_um"]
    # the members really differ: the mean is not any one of them
    assert not torch.allclose(got, members[0](img, xy))
    with pytest.raises(ValueError, match="share one ModelConfig"):
        AxialEnsemble([members[0], _members(1, dense_width=64)[0]])
    with pytest.raises(ValueError, match="at least one"):
        AxialEnsemble([])


def test_ensemble_bundle_round_trip_onnx_and_engine(tmp_path: Path) -> None:
    from axialtrack.engine import select_engine

    ens = AxialEnsemble(_members(3)).eval()
    # verifies ONNX vs torch on save
    path = save_bundle(ens, tmp_path / "ens", **SIM_RIG)
    b = load_bundle(path)
    assert b.meta["ensemble_members"] == 3
    assert isinstance(b.model, AxialEnsemble)
    assert b.meta["onnx_parity_max_abs"] < 1e-4
    img, xy = _pairs(33, seed=2)
    with torch.no_grad():
        ref = ens(img, xy).numpy()
    torch.testing.assert_close(b.model(img, xy), torch.from_numpy(ref))
    with select_engine(b, "onnxruntime") as eng:
        got = eng.infer(img.numpy().astype(np.uint16), xy.numpy())
        np.testing.assert_allclose(got.dz_um, ref[:, 0], atol=1e-4)
    # a single network's bundle says it is one
    single = load_bundle(save_bundle(_members(1)[0], tmp_path / "one", **SIM_RIG))
    assert single.meta["ensemble_members"] is None
    assert isinstance(single.model, AxialNet)


def test_train_ensemble_members_and_metrics() -> None:
    from axialtrack.calibrate import analyze
    from axialtrack.calibrate.simulate import simulated_stack
    from axialtrack.model import CalibrationData, train_ensemble

    stack = simulated_stack(n_fields=1, z_half_range_um=1.0, seed=2)
    result = analyze(stack)
    data = CalibrationData(examples=result.examples, beads=result.beads)
    res = train_ensemble(
        data, members=2, seed=4, epochs=2, batch_size=32, progress=False
    )
    assert isinstance(res.model, AxialEnsemble)
    assert len(res.model.members) == 2
    assert [m["seed"] for m in res.metrics["members"]] == [4, 5]
    assert res.settings["ensemble_members"] == 2
    w0, w1 = (m.head.weight for m in res.model.members)  # type: ignore[union-attr]
    assert not torch.equal(w0, w1)
    assert np.isfinite(res.metrics["test_rmse_nm"])
    with pytest.raises(ValueError, match="members"):
        train_ensemble(data, members=0)

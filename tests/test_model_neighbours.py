"""Neighbour augmentation of crop pairs (model training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axialtrack.model.neighbours import add_neighbours


def _spots(b: int, s: int = 15) -> torch.Tensor:
    """Background 100 plus one Gaussian spot per plane at the centre."""
    yy, xx = np.mgrid[:s, :s] - s // 2
    spot = np.exp(-(xx**2 + yy**2) / 2.0)
    amp = np.linspace(500, 1500, b)[:, None, None, None]
    ratio = np.array([1.0, 0.4])[None, :, None, None]
    return torch.from_numpy(100 + amp * ratio * spot).float()


def test_neighbour_added_at_distance_keeps_background() -> None:
    x = _spots(64)
    out = add_neighbours(x, torch.Generator().manual_seed(0), p=1.0)
    assert out.shape == x.shape
    diff = (out - x).numpy()
    changed = np.abs(diff).reshape(64, -1).max(axis=1) > 1.0
    # neighbours 8-14 px away may lie outside the 15 px crop (only a tail enters)
    assert changed.mean() > 0.6
    c = 15 // 2
    for i in np.flatnonzero(changed):
        # the centre particle is intact; the added peak lies 5-14 px away
        d = diff[i].sum(axis=0)
        py, px = np.unravel_index(np.argmax(d), d.shape)
        r = np.hypot(px - c, py - c)
        assert 4.0 <= r <= 14.5
        assert abs(d[c, c]) < 0.05 * x[i, 0, c, c].item()
        # the same shift in both planes, the neighbour's own plane ratio
        p0 = np.unravel_index(np.argmax(diff[i, 0]), d.shape)
        p1 = np.unravel_index(np.argmax(diff[i, 1]), d.shape)
        assert p0 == p1
        assert diff[i, 1].max() == pytest.approx(0.4 * diff[i, 0].max(), rel=1e-4)
    # nothing negative added: the background level of the target is kept
    assert diff.min() >= 0.0


def test_probability_zero_and_determinism() -> None:
    x = _spots(32)
    same = add_neighbours(x, torch.Generator().manual_seed(1), p=0.0)
    torch.testing.assert_close(same, x)
    a = add_neighbours(x, torch.Generator().manual_seed(2), p=0.5)
    b = add_neighbours(x, torch.Generator().manual_seed(2), p=0.5)
    torch.testing.assert_close(a, b)
    n = int(((a - x).abs().flatten(1).max(dim=1).values > 1).sum())
    assert 6 <= n <= 26
    with pytest.raises(ValueError, match="p must be"):
        add_neighbours(x, torch.Generator(), p=1.5)


def test_training_with_neighbours_wired_and_recorded() -> None:
    from axialtrack.calibrate import analyze
    from axialtrack.calibrate.simulate import simulated_stack
    from axialtrack.model import CalibrationData, train

    stack = simulated_stack(n_fields=1, z_half_range_um=1.0, seed=2)
    result = analyze(stack)
    data = CalibrationData(examples=result.examples, beads=result.beads)

    def run(p: float):  # type: ignore[no-untyped-def]
        return train(
            data,
            neighbours=p,
            epochs=1,
            batch_size=32,
            seed=3,
            progress=False,
            ema_decay=None,
        )

    plain, crowded, again = run(0.0), run(1.0), run(1.0)
    w = [r.model.head.weight.detach() for r in (plain, crowded, again)]
    assert not torch.equal(w[0], w[1])  # the augmentation reached the batches
    torch.testing.assert_close(w[1], w[2])  # and is seeded
    assert crowded.settings["neighbours"] == 1.0
    with pytest.raises(ValueError, match="neighbours"):
        run(1.5)

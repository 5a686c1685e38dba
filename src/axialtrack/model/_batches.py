"""Mini-batches of the training: bead and synthetic examples as tensors."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from axialtrack.calibrate.examples import Examples
    from axialtrack.sim.synthetic import SyntheticExamples

__all__ = ["Batches", "deterministic", "example_tensors", "synthetic_tensors"]


@contextmanager
def deterministic() -> Iterator[None]:
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def example_tensors(ex: Examples, dxy: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    n = len(ex)
    has = np.ones(n, bool) if dxy is not None else np.zeros(n, bool)
    d = dxy if dxy is not None else np.zeros((n, 2))
    return (
        torch.from_numpy(np.ascontiguousarray(ex.crops, np.float32)),
        torch.from_numpy(np.ascontiguousarray(ex.xy_norm, np.float32)),
        torch.from_numpy(np.ascontiguousarray(ex.dz_um, np.float32)),
        torch.from_numpy(np.ascontiguousarray(d, np.float32)),
        torch.from_numpy(has),
        torch.full((n,), -1.0),  # contamination unknown
    )


def synthetic_tensors(syn: SyntheticExamples) -> tuple[torch.Tensor, ...]:
    n = len(syn)
    return (
        torch.from_numpy(np.ascontiguousarray(syn.crops, np.float32)),
        torch.from_numpy(np.ascontiguousarray(syn.xy_norm, np.float32)),
        torch.from_numpy(np.ascontiguousarray(syn.dz_um, np.float32)),
        torch.from_numpy(np.ascontiguousarray(syn.dxy_px, np.float32)),
        torch.ones(n, dtype=torch.bool),
        torch.from_numpy(np.asarray(syn.contaminated, np.float32)),
    )


class Batches:
    """Mini-batches of ``n_real`` shuffled real examples (without replacement
    within an epoch; the last partial batch dropped when there are more than
    ``n_real``) followed by ``n_syn`` synthetic ones (drawn with replacement),
    ``steps`` per epoch."""

    def __init__(
        self,
        real: tuple[torch.Tensor, ...],
        n_real: int,
        gen: torch.Generator,
        steps: int,
        syn: tuple[torch.Tensor, ...] | None,
        n_syn: int,
    ) -> None:
        self.real, self.n_real, self.gen, self.steps = real, n_real, gen, steps
        self.syn, self.n_syn = syn, n_syn

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        n = int(self.real[0].shape[0])
        order = torch.randperm(n, generator=self.gen)
        pos = 0
        for _ in range(self.steps):
            parts: list[list[torch.Tensor]] = []
            if self.n_real:
                if pos + self.n_real > n and pos > 0:
                    order = torch.randperm(n, generator=self.gen)
                    pos = 0
                idx = order[pos : pos + self.n_real]
                pos += self.n_real
                parts.append([t[idx] for t in self.real])
            if self.syn is not None and self.n_syn:
                m = int(self.syn[0].shape[0])
                idx = torch.randint(0, m, (self.n_syn,), generator=self.gen)
                parts.append([t[idx] for t in self.syn])
            yield [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]

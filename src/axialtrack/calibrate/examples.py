"""Training examples from bead stacks, the by-bead split, a torch Dataset, storage.

Sign convention: ``dz_um = ref_z_um - stage_z_um``, the quantity the model
predicts, so that a localization's ``z_um = stage_z_um + dz_um`` (DESIGN data
contract). Every example also carries ``stage_z_um`` and ``ref_z_um``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

__all__ = [
    "SPLITS",
    "CalibrationDataset",
    "Examples",
    "load_examples",
    "save_examples",
    "split_by_bead",
]

#: Split codes of :attr:`Examples.split`.
SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}

GROUP = "calibration"
EXAMPLES = "examples"


@dataclass
class Examples:
    """Training pairs, one row per (bead, frame).

    Attributes
    ----------
    crops
        ``(N, 2, S, S)`` float32 crop pairs (raw counts; plane 1 cropped at the
        registered position).
    dz_um
        ``(N,)`` label, ``ref_z_um - stage_z_um``.
    stage_z_um, ref_z_um
        ``(N,)`` stage position of the frame and the bead's reference Z.
    xy_norm
        ``(N, 2)`` bead position in plane 0 normalized to ``[-1, 1]``.
    bead
        ``(N,)`` bead id (unique over all fields).
    field
        ``(N,)`` field index.
    split
        ``(N,)`` int8 split code (:data:`SPLITS`).
    """

    crops: np.ndarray
    dz_um: np.ndarray
    stage_z_um: np.ndarray
    ref_z_um: np.ndarray
    xy_norm: np.ndarray
    bead: np.ndarray
    field: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return int(self.dz_um.shape[0])

    def subset(self, split: str) -> Examples:
        """Examples of one split (``"train"``, ``"validation"``, ``"test"``)."""
        sel = self.split == SPLITS[split]
        return Examples(**{f.name: getattr(self, f.name)[sel] for f in fields(self)})

    @classmethod
    def empty(cls, crop_size: int) -> Examples:
        """No examples."""
        z = np.zeros(0)
        return cls(
            crops=np.zeros((0, 2, crop_size, crop_size), np.float32),
            dz_um=z,
            stage_z_um=z.copy(),
            ref_z_um=z.copy(),
            xy_norm=np.zeros((0, 2)),
            bead=np.zeros(0, np.int64),
            field=np.zeros(0, np.int64),
            split=np.zeros(0, np.int8),
        )


def split_by_bead(
    bead_ids: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[int, int]:
    """Assign every bead to one split (train, validation, test).

    Beads are shuffled with ``seed`` and cut by ``fractions``; with three or more
    beads each split gets at least one.
    """
    ids = np.unique(np.asarray(bead_ids))
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(
            f"fractions must be three non-negative numbers; got {fractions}"
        )
    f = f / f.sum()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ids)
    n = len(perm)
    n_val = round(f[1] * n)
    n_test = round(f[2] * n)
    if n >= 3:
        n_val = max(n_val, 1 if f[1] > 0 else 0)
        n_test = max(n_test, 1 if f[2] > 0 else 0)
    n_train = n - n_val - n_test
    codes = np.concatenate(
        [np.zeros(n_train), np.ones(n_val), np.full(n_test, 2)]
    ).astype(int)
    return {int(b): int(c) for b, c in zip(perm, codes, strict=True)}


class CalibrationDataset(Dataset):
    """Torch dataset over :class:`Examples`.

    Items are ``(image, xy, dz)``: ``image`` float32 ``(2, S, S)``, ``xy``
    float32 ``(2,)`` normalized field position, ``dz`` float32 scalar (um).

    Parameters
    ----------
    examples
        The examples.
    split
        ``"train"``, ``"validation"``, ``"test"`` or ``None`` for all.
    """

    def __init__(self, examples: Examples, split: str | None = None) -> None:
        ex = examples if split is None else examples.subset(split)
        self.images = torch.from_numpy(np.ascontiguousarray(ex.crops, np.float32))
        self.xy = torch.from_numpy(np.ascontiguousarray(ex.xy_norm, np.float32))
        self.dz = torch.from_numpy(np.ascontiguousarray(ex.dz_um, np.float32))

    def __len__(self) -> int:
        return int(self.dz.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.xy[i], self.dz[i]


def _open_group(target: str | Path | zarr.Group) -> zarr.Group:
    if isinstance(target, zarr.Group):
        root = target
    else:
        root = zarr.open_group(str(target), mode="a")
    return root.require_group(GROUP)


def save_examples(target: str | Path | zarr.Group, examples: Examples) -> None:
    """Write examples as plain zarr arrays under ``calibration/examples/``.

    Parameters
    ----------
    target
        The run store (path or open root group). Existing examples are replaced.
    examples
        What to write.
    """
    grp = _open_group(target)
    if EXAMPLES in grp:
        del grp[EXAMPLES]
    ex = grp.create_group(EXAMPLES)
    for f in fields(examples):
        arr = np.ascontiguousarray(getattr(examples, f.name))
        chunks: Any = arr.shape if arr.ndim else ()
        if f.name == "crops" and arr.shape[0] > 0:
            chunks = (min(4096, arr.shape[0]), *arr.shape[1:])
        ex.create_array(f.name, data=arr, chunks=tuple(max(1, c) for c in chunks))
    ex.attrs["n_examples"] = len(examples)
    ex.attrs["dz_convention"] = "dz_um = ref_z_um - stage_z_um"
    ex.attrs["splits"] = SPLITS


def load_examples(target: str | Path | zarr.Group) -> Examples:
    """Read examples written by :func:`save_examples`."""
    if isinstance(target, zarr.Group):
        root = target
    else:
        root = zarr.open_group(str(target), mode="r")
    try:
        ex = cast("zarr.Group", root[f"{GROUP}/{EXAMPLES}"])
    except KeyError as e:
        raise FileNotFoundError(
            f"no calibration examples in {target} (expected group "
            f"'{GROUP}/{EXAMPLES}'; run the calibration analysis first)"
        ) from e
    return Examples(
        **{
            f.name: np.asarray(cast("zarr.Array", ex[f.name])[...])
            for f in fields(Examples)
        }
    )

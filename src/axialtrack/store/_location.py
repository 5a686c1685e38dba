"""Where a store may be created: an existing path, hidden copies beside it, an
unwritable location."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from axialtrack.store._registry import writer_alive
from axialtrack.store.errors import (
    StoreExistsError,
    StoreInUseError,
    UnwritableStoreError,
)
from axialtrack.store.layout import ATTRS_KEY, read_json
from axialtrack.store.replace import find_leftovers_beside, is_run_store, refusal

__all__ = ["check_location", "prepare_path", "warn_hidden_copies"]


def prepare_path(path: Path, overwrite: bool) -> bool:
    """Check that a store may be created at ``path``; return whether something
    (a run store of ours, or an empty directory) is there to be replaced.

    Nothing is deleted here: the new store is built beside it and swapped in.
    """
    why = refusal(path, overwrite, "store")
    if why is not None:
        raise StoreExistsError(why.replace("--overwrite", "overwrite=True"))
    if not (path.exists() or path.is_symlink()):
        return False
    if is_run_store(path):
        try:
            attrs = read_json(path / "zarr.json")["attributes"][ATTRS_KEY]
        except (OSError, ValueError, KeyError, TypeError):
            attrs = {}
        if (
            isinstance(attrs, dict)
            and attrs.get("state") == "open"
            and writer_alive(attrs, path)
        ):
            raise StoreInUseError(
                f"{path} is being written by process "
                f"{attrs['writer']['pid']}; stop that run before overwriting it."
            )
    return True


def warn_hidden_copies(path: Path) -> None:
    """Warn about a previous store an interrupted ``--overwrite`` hid beside
    ``path``: it is kept, and must not be forgotten."""
    for left in find_leftovers_beside(path):
        if left.what == "replaced" and not left.alive:
            warnings.warn(
                f"{left.path} holds a previous {path.name}, set aside by an "
                f"--overwrite that was interrupted (process {left.pid}); it is "
                f"kept. Run `axialtrack recover {path}` to restore or delete it.",
                stacklevel=4,
            )


def check_location(path: Path) -> None:
    """Fail early, and clearly, when ``path`` cannot be created."""
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UnwritableStoreError(
            f"Cannot create run store {path}: {anc} is a file, not a directory. "
            "Choose an output path inside a directory.",
            path=path,
            frames_safe=0,
            rows_safe=0,
        )
    if not os.access(anc, os.W_OK):
        raise UnwritableStoreError(
            f"Cannot create run store {path}: {anc} is not writable (permissions "
            "or a read-only mount). Choose a writable location.",
            path=path,
            frames_safe=0,
            rows_safe=0,
        )

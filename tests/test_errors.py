"""Every error axialtrack raises on purpose shares one root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import axialtrack
from axialtrack import AxialtrackError


def _package_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for mod in pkgutil.walk_packages(axialtrack.__path__, "axialtrack."):
        if mod.name.endswith("__main__"):  # runs the CLI
            continue
        try:
            module = importlib.import_module(mod.name)
        except ImportError:  # an optional dependency (TensorRT, napari, ...)
            continue
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("axialtrack.")
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return found


def test_every_package_error_is_an_axialtrack_error() -> None:
    errors = _package_exceptions()
    assert len(errors) >= 20  # the store's, the bundle's, the rig's, ...
    stray = sorted(k for k, e in errors.items() if not issubclass(e, AxialtrackError))
    assert stray == []


def test_specific_errors_keep_their_builtin_bases() -> None:
    from axialtrack.model import BundleError
    from axialtrack.store import StoreExistsError

    assert issubclass(BundleError, ValueError)
    assert issubclass(StoreExistsError, FileExistsError)
    with pytest.raises(AxialtrackError, match=r"x\.zarr"):
        raise StoreExistsError("x.zarr already exists")

"""Shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack.rig import load_rig

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def core() -> Iterator[UniMMCore]:
    """The simulated dual-plane rig, loaded from the default config."""
    c = load_rig()
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


@pytest.fixture(scope="session")
def sim_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained on a simulated calibration of the default sim rig."""
    from sim_model import train_sim_bundle

    return train_sim_bundle(tmp_path_factory.mktemp("sim_bundle") / "sim")


@pytest.fixture(params=["native", "portable"])
def io_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run-store test runs twice: with the Linux fast paths (O_DIRECT, file
    system type from /proc/self/mounts) where this machine has them, and with
    what Windows and macOS get (neither), chosen at run time."""
    import os

    if request.param == "portable":
        from axialtrack.store import _sinks

        monkeypatch.setenv(_sinks.PORTABLE_ENV, "1")
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
        assert _sinks.o_direct() == 0
        assert _sinks.filesystem_type(os.getcwd()) is None
    return str(request.param)

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

"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack.rig import load_rig


@pytest.fixture
def core() -> Iterator[UniMMCore]:
    """The simulated dual-plane rig, loaded from the default config."""
    c = load_rig()
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()

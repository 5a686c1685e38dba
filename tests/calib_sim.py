"""The simulated calibration stack the tests use: an injected plane-1 misalignment."""

from __future__ import annotations

from typing import Any

from axialtrack.calibrate import CalibrationStack
from axialtrack.calibrate.simulate import simulated_stack
from axialtrack.geometry import SplitterGeometry

#: Splitter geometry with an injected plane-1 shift and rotation.
SIM_GEOMETRY = SplitterGeometry(
    layout="side-by-side", plane_offset_um=0.5, shift_px=(3.3, -2.1), rotation_deg=0.7
)


def make_stack(**kwargs: Any) -> CalibrationStack:
    """:func:`~axialtrack.calibrate.simulate.simulated_stack` with SIM_GEOMETRY."""
    kwargs.setdefault("geometry", SIM_GEOMETRY)
    return simulated_stack(**kwargs)

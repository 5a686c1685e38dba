"""UniMMCore Python devices of the simulated dual-plane rig and the splitter.

Load them from a hardware config with ``#py`` lines, e.g.::

    #py pyDevice,Camera,axialtrack.devices,SimCamera
    #py pyDevice,Splitter,axialtrack.devices,DualPlaneSplitter

- :class:`SimCamera`: renders the virtual sample (:mod:`axialtrack.sim`) at the
  positions of the stages, through the splitter, under the light source.
- :class:`SimZPiezo`: objective piezo with range limits, settling, jitter and
  camera-triggered position sequences.
- :class:`SimXYStage`: XY stage.
- :class:`SimLightSource`: excitation light with a shutter and a power setting.
- :class:`DualPlaneSplitter`: the dual-plane splitter description, used by real
  rigs too.
- :class:`SimMultiCamera`: two simulated cameras (one per plane) as one, as
  Micro-Manager's Utilities ``Multi Camera`` combines two real ones.
- :class:`ReplayCamera`: streams a recorded run or movie at a set frame rate as if
  live.

Importing this package does not import the simulator (torch); the camera loads it
when it renders its first frame.
"""

from __future__ import annotations

from ._base import (
    AxialDevice,
    Choices,
    as_bool,
    as_choice,
    as_float,
    as_int,
    get_device,
)
from .camera import SCENES, SimCamera
from .light import SimLightSource
from .multicamera import SimMultiCamera
from .replay import ReplayCamera, open_movie
from .splitter import DualPlaneSplitter
from .stages import SimXYStage, SimZPiezo

__all__ = [
    "SCENES",
    "AxialDevice",
    "Choices",
    "DualPlaneSplitter",
    "ReplayCamera",
    "SimCamera",
    "SimLightSource",
    "SimMultiCamera",
    "SimXYStage",
    "SimZPiezo",
    "as_bool",
    "as_choice",
    "as_float",
    "as_int",
    "get_device",
    "open_movie",
]

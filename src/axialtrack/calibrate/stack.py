"""The calibration stack: bead Z-stacks of several fields, both planes, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from axialtrack.geometry import SplitterGeometry


@dataclass
class CalibrationStack:
    """Dual-plane bead Z-stacks over one or more fields of view.

    Attributes
    ----------
    frames
        ``(P, Z, 2, H, W)`` array (any numeric dtype; ``uint16`` from cameras):
        field ``p``, Z step ``k``, plane ``c`` (0 = focus plane, 1 = offset plane,
        already split and un-mirrored, not registered).
    stage_z_um
        ``(P, Z)`` focus-stage position of every frame (stage frame, um).
    pixel_size_um
        Sample-plane pixel size.
    geometry
        The splitter geometry (``plane_offset_um`` is delta).
    stage_xy_um
        ``(P, 2)`` XY stage position of each field.
    source
        Where the data came from (path or run store), for provenance.
    truth
        Simulation only: ground truth per field, e.g. a structured array per field
        with bead ``x_px0, y_px0, x_px1, y_px1, z_focus_um``; ``None`` otherwise.
    meta
        Anything else worth carrying (camera gain/offset, exposure, ...).
    """

    frames: np.ndarray
    stage_z_um: np.ndarray
    pixel_size_um: float
    geometry: SplitterGeometry
    stage_xy_um: np.ndarray | None = None
    source: str = ""
    truth: list[np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim == 4:  # a single field
            frames = frames[None]
        if frames.ndim != 5 or frames.shape[2] != 2:
            raise ValueError(
                "calibration frames must have shape (fields, Z, 2, H, W); "
                f"got {frames.shape} from {self.source or 'input'}"
            )
        self.frames = frames
        z = np.asarray(self.stage_z_um, dtype=float)
        if z.ndim == 1:
            z = np.broadcast_to(z, frames.shape[:2]).copy()
        if z.shape != frames.shape[:2]:
            raise ValueError(
                f"stage_z_um has shape {z.shape} but the frames hold "
                f"{frames.shape[0]} field(s) x {frames.shape[1]} Z steps "
                f"({self.source or 'input'})"
            )
        self.stage_z_um = z
        if self.stage_xy_um is None:
            self.stage_xy_um = np.zeros((frames.shape[0], 2))
        self.stage_xy_um = np.asarray(self.stage_xy_um, dtype=float).reshape(-1, 2)
        if not self.pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be > 0; got {self.pixel_size_um}")

    @property
    def n_fields(self) -> int:
        """Number of fields of view."""
        return int(self.frames.shape[0])

    @property
    def n_z(self) -> int:
        """Number of Z steps per field."""
        return int(self.frames.shape[1])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one plane."""
        return int(self.frames.shape[3]), int(self.frames.shape[4])

    @property
    def z_step_um(self) -> float:
        """Median Z step (um)."""
        if self.n_z < 2:
            return 0.0
        return float(np.median(np.diff(self.stage_z_um, axis=1)))

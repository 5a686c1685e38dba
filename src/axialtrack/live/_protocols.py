"""What the live runner works with: the frames a source gives
(:class:`SourceFrame`, :class:`FrameSource`), the analyzers it drives
(:class:`FrameAnalyzer`, :class:`StagedAnalyzer`) and the helpers that
read their tables."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from axialtrack.store import (
    FrameMeta,
)

if TYPE_CHECKING:
    import pandas as pd


logger = logging.getLogger(__name__)


# ------------------------------------------------------------- protocols
class SourceFrame(NamedTuple):
    """One raw camera frame and what is known about it.

    Attributes
    ----------
    raw
        The sensor frame: ``(H, 2W)`` side-by-side, ``(2H, W)`` top-bottom or
        ``(2, H, W)`` for two cameras (see :func:`axialtrack.geometry.split_frame`).
    t_s
        Camera timestamp, seconds (stored as ``t_s`` of the frame).
    stage_z_um, stage_x_um, stage_y_um
        Stage positions during the exposure (NaN if unknown).
    image_number
        The camera's image counter (-1 if unknown).
    position_index
        Stage position (field) index in multi-position acquisitions.
    t_host
        ``time.perf_counter()`` time that corresponds to ``t_s`` (the frame
        arriving in the camera buffer), for the end-to-end latency; NaN: the time
        the runner received the frame is used.
    """

    raw: np.ndarray
    t_s: float
    stage_z_um: float = math.nan
    stage_x_um: float = math.nan
    stage_y_um: float = math.nan
    image_number: int = -1
    position_index: int = 0
    t_host: float = math.nan


@runtime_checkable
class FrameSource(Protocol):
    """Where the runner takes raw frames from (a camera sequence, a queue, ...)."""

    def start(self, n_frames: int | None = None) -> None:
        """Start delivering frames (``n_frames`` of them, or until stopped)."""

    def stop(self) -> None:
        """Stop acquiring; frames already acquired may still be returned."""

    def next(self, timeout_s: float) -> SourceFrame | tuple | None:
        """The next frame, or None if none arrived within ``timeout_s``.

        A plain tuple ``(raw, t_s, stage_z_um, stage_x_um, stage_y_um,
        image_number)`` is accepted too.
        """

    def finished(self) -> bool:
        """True when no more frames will come (stopped or done, buffer empty)."""


class FrameAnalyzer(Protocol):
    """The analysis the runner applies to batches of frames (one thread)."""

    def analyze(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> pd.DataFrame:
        """Localizations of a batch of frames.

        Parameters
        ----------
        planes
            ``(F, 2, H, W)`` uint16 split (and un-mirrored) frames.
        indices
            ``(F,)`` int64 run frame indices, increasing, with gaps where frames
            were skipped.
        meta
            The :class:`~axialtrack.store.FrameMeta` of each frame (``t_s`` is
            the camera timestamp, ``stage_z_um`` the focus position, ...).

        Returns
        -------
        pandas.DataFrame
            Localization rows (``frame``, ``t_s``, ``x_um``, ... ``track_id``) for
            these frames; possibly empty.
        """
        ...

    def finish(self) -> pd.DataFrame | None:
        """At the end of the run: the per-track summary table (or None)."""
        ...


@runtime_checkable
class StagedAnalyzer(Protocol):
    """A :class:`FrameAnalyzer` split in two stages the runner can overlap.

    ``analyze(planes, indices, meta)`` must equal
    ``complete(prepare(planes, indices, meta))``. ``prepare`` (detection, crops)
    runs in the ``live-detect`` thread and must not touch what ``complete``
    (inference, linking; ``live-analyze`` thread, in frame order) changes.
    """

    def analyze(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> pd.DataFrame:
        """Both stages at once."""
        ...

    def prepare(
        self, planes: np.ndarray, indices: np.ndarray, meta: Sequence[FrameMeta]
    ) -> Any:
        """First stage of a batch; its result goes to :meth:`complete`."""
        ...

    def complete(self, prepared: Any) -> pd.DataFrame:
        """Second stage: the localization rows of the batch."""
        ...

    def finish(self) -> pd.DataFrame | None:
        """At the end of the run: the per-track summary table (or None)."""
        ...


def _columns_variant(analyzer: Any, name: str) -> Any:
    """``analyzer.<name>_columns`` where it has one (rows as a dict of column
    arrays), else ``analyzer.<name>``."""
    fn = getattr(analyzer, f"{name}_columns", None)
    return fn if callable(fn) else getattr(analyzer, name)


def _n_rows(table: Any) -> int:
    """Rows of a DataFrame or of a dict of equal-length column arrays."""
    if table is None:
        return 0
    if isinstance(table, Mapping):
        return len(next(iter(table.values()))) if table else 0
    return len(table)


def _as_columns(table: Any) -> dict[str, np.ndarray]:
    """A batch's rows as a dict of column arrays (``{}`` for none)."""
    if table is None:
        return {}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    return {str(c): table[c].to_numpy() for c in table.columns}


def _rows_before(table: Any, n_frames: int) -> Any:
    """The rows of ``table`` (DataFrame or dict of columns) whose ``frame`` is
    below ``n_frames``."""
    if table is None or not _n_rows(table):
        return table
    keep = np.asarray(table["frame"]) < n_frames
    if keep.all():
        return table
    if isinstance(table, Mapping):
        return {k: np.asarray(v)[keep] for k, v in table.items()}
    return table[keep]


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

"""The run store: every calibration and live run as one zarr v3 store (format 1).

Write with :class:`RunWriter`, read with :func:`open_run`, tidy a run whose writer
was killed with :func:`recover`, and describe one with :func:`summarize` /
:func:`format_summary` (``axialtrack info``). Frames form an OME-Zarr 0.5 image
(``RUN.zarr/frames``) that any OME-Zarr reader opens; the tables need only zarr
and pandas.
"""

from __future__ import annotations

from axialtrack.store.amend import append_localizations_to_run
from axialtrack.store.errors import (
    DiskFullError,
    InvalidFrameError,
    InvalidTableError,
    NotARunStoreError,
    StoreClosedError,
    StoreError,
    StoreExistsError,
    StoreInUseError,
    StoreWriteError,
    UnsupportedFormatError,
    UnwritableStoreError,
    WriterTooSlowError,
)
from axialtrack.store.info import format_summary, run_info, summarize
from axialtrack.store.layout import (
    FORMAT_VERSION,
    FRAME_META_COLUMNS,
    LOCALIZATION_COLUMNS,
)
from axialtrack.store.reader import (
    FrameArray,
    RecoveryReport,
    Run,
    open_run,
    read_attrs,
    recover,
)
from axialtrack.store.writer import FrameMeta, RunWriter, WriterOptions, WriterStats

__all__ = [
    "FORMAT_VERSION",
    "FRAME_META_COLUMNS",
    "LOCALIZATION_COLUMNS",
    "DiskFullError",
    "FrameArray",
    "FrameMeta",
    "InvalidFrameError",
    "InvalidTableError",
    "NotARunStoreError",
    "RecoveryReport",
    "Run",
    "RunWriter",
    "StoreClosedError",
    "StoreError",
    "StoreExistsError",
    "StoreInUseError",
    "StoreWriteError",
    "UnsupportedFormatError",
    "UnwritableStoreError",
    "WriterOptions",
    "WriterStats",
    "WriterTooSlowError",
    "append_localizations_to_run",
    "format_summary",
    "open_run",
    "read_attrs",
    "recover",
    "run_info",
    "summarize",
]

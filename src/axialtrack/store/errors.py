"""Errors raised by the run store.

Every error names the path it concerns and, for write failures, how much of the run
is safely stored, so that the message alone says what happened and what to do.
"""

from __future__ import annotations

import errno
from pathlib import Path

from axialtrack.errors import AxialtrackError

__all__ = [
    "DiskFullError",
    "InvalidFrameError",
    "InvalidTableError",
    "NotARunStoreError",
    "StoreClosedError",
    "StoreError",
    "StoreExistsError",
    "StoreInUseError",
    "StoreWriteError",
    "UnsupportedFormatError",
    "UnwritableStoreError",
    "WriterTooSlowError",
]


class StoreError(AxialtrackError):
    """Base class of every error the run store raises."""


class NotARunStoreError(StoreError):
    """The path is not an axialtrack run store (missing, not zarr v3, no attrs)."""


class UnsupportedFormatError(StoreError):
    """The run store was written in a format version this axialtrack cannot read."""


class StoreExistsError(StoreError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""


class StoreInUseError(StoreError):
    """A live process is still writing the run store."""


class StoreClosedError(StoreError):
    """An append was made after :meth:`RunWriter.close`."""


class InvalidFrameError(StoreError, ValueError):
    """A frame or its metadata does not match the run (shape, dtype, fields)."""


class InvalidTableError(StoreError, ValueError):
    """A localization or track table is missing columns or has bad dtypes."""


class StoreWriteError(StoreError):
    """Writing the run store failed; what was committed before is intact.

    Parameters
    ----------
    message
        What happened and what to do.
    path
        The run store.
    frames_safe
        Frames committed (readable, bit-exact) when the error happened.
    rows_safe
        Localization rows committed when the error happened.
    """

    def __init__(
        self, message: str, *, path: Path, frames_safe: int, rows_safe: int
    ) -> None:
        super().__init__(message)
        self.path = path
        self.frames_safe = frames_safe
        self.rows_safe = rows_safe


class DiskFullError(StoreWriteError):
    """The file system holding the run store is full (or over quota)."""


class UnwritableStoreError(StoreWriteError):
    """The run store's location cannot be written (permissions, read-only mount)."""


class WriterTooSlowError(StoreWriteError):
    """Storage cannot keep up with the frame rate: the frame queue stayed full.

    The frame passed to the failing :meth:`RunWriter.append_frame` call was not
    stored; every frame accepted before it is.
    """


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(
    exc: BaseException, *, path: Path, frames_safe: int, rows_safe: int, doing: str
) -> StoreWriteError:
    """Translate an exception raised while writing into a :class:`StoreWriteError`.

    Parameters
    ----------
    exc
        The exception the file system (or zarr) raised.
    path
        The run store.
    frames_safe, rows_safe
        What is committed.
    doing
        What the writer was doing, e.g. ``"writing frame 12"``.
    """
    if isinstance(exc, StoreWriteError):
        return exc
    safe = (
        f"{frames_safe} frame(s) and {rows_safe} localization row(s) are safely "
        "stored and readable; nothing already written was changed."
    )
    err_no = getattr(exc, "errno", None)
    if err_no in _DISK_FULL:
        return DiskFullError(
            f"Run store {path}: the disk is full ({exc}) while {doing}. {safe} "
            "Free space or record to another disk, then start a new run.",
            path=path,
            frames_safe=frames_safe,
            rows_safe=rows_safe,
        )
    if err_no in _UNWRITABLE or isinstance(exc, PermissionError):
        return UnwritableStoreError(
            f"Run store {path} cannot be written ({exc}) while {doing}. {safe} "
            "Check that the location is writable (permissions, read-only mount).",
            path=path,
            frames_safe=frames_safe,
            rows_safe=rows_safe,
        )
    return StoreWriteError(
        f"Run store {path}: writing failed ({type(exc).__name__}: {exc}) while "
        f"{doing}. {safe}",
        path=path,
        frames_safe=frames_safe,
        rows_safe=rows_safe,
    )

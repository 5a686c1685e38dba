"""Compiled loops of the live analysis (numba), with the numpy code as fallback.

The per-localization XY fit works on a few hundred 7 x 7 windows per batch:
as whole-array numpy expressions each step is a separate pass with its own
call overhead, holding the GIL between calls. A numba loop over the windows
does the same arithmetic in one pass and releases the GIL, so the two stages
of the analysis process overlap.

``numba`` is imported lazily on first use; where it is missing, fails to
compile, or ``AXIALTRACK_NO_NUMBA=1`` is set, :func:`available` is false and
callers use their numpy code (the results agree to float rounding; the tests
compare both).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

__all__ = ["available", "fit_windows", "windows"]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _compile() -> dict[str, Any] | None:
    """The compiled kernels, or ``None`` (numba missing or disabled)."""
    if os.environ.get("AXIALTRACK_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    from . import _numba_kernels as nk

    # compile (or load from the on-disk cache) now, not in the first batch
    nk.fit_windows(
        np.ones((1, 7, 7), np.float32),
        True,
        1.2,
        1,
        np.empty((1, 2)),
        np.empty(1),
        np.empty(1, dtype=bool),
    )
    planes = np.zeros((1, 2, 4, 4), np.uint16)
    one = np.zeros(1, np.int64)
    nk.gather_windows(
        planes,
        one,
        1,
        np.zeros((1, 2), np.int64),
        np.zeros(1, np.float32),
        np.empty((1, 3, 3), np.float32),
    )
    return {"fit_windows": nk.fit_windows, "gather_windows": nk.gather_windows}


def _kernels() -> dict[str, Any] | None:
    if "k" not in _STATE:
        with _LOCK:
            if "k" not in _STATE:
                try:
                    _STATE["k"] = _compile()
                except Exception as exc:  # pragma: no cover - a broken install
                    logger.warning("numba kernels unavailable (%s): numpy instead", exc)
                    _STATE["k"] = None
    return _STATE["k"]


def available() -> bool:
    """Whether the compiled kernels are in use."""
    return _kernels() is not None


def fit_windows(
    img: np.ndarray, method: str, sigma_px: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The compiled :func:`axialtrack.pipeline.localize._fit_windows`, or
    ``None`` where the kernels are unavailable (the caller uses numpy)."""
    k = _kernels()
    if k is None:
        return None
    img = np.ascontiguousarray(img, dtype=np.float32)
    n = img.shape[0]
    xy = np.empty((n, 2))
    amp = np.empty(n)
    good = np.empty(n, dtype=bool)
    k["fit_windows"](img, method == "fit", float(sigma_px), int(n_iter), xy, amp, good)
    return xy, amp, good


def windows(
    planes: np.ndarray,
    frame_index: np.ndarray,
    plane: int,
    centers: np.ndarray,
    size: int,
    background: np.ndarray,
    out: np.ndarray,
) -> bool:
    """Background-subtracted float32 ``size x size`` windows of one plane into
    ``out`` ``(N, size, size)`` (edge-clamped). ``False`` (nothing written)
    where the kernels are unavailable or ``planes`` is not a C-contiguous
    ``(F, 2, H, W)`` uint16 array."""
    k = _kernels()
    if (
        k is None
        or planes.dtype != np.uint16
        or planes.ndim != 4
        or not planes.flags.c_contiguous
        or not out.flags.c_contiguous
        or out.shape[1:] != (size, size)
    ):
        return False
    k["gather_windows"](
        planes,
        np.ascontiguousarray(frame_index, dtype=np.int64),
        int(plane),
        np.ascontiguousarray(centers, dtype=np.int64),
        np.ascontiguousarray(background, dtype=np.float32).reshape(-1),
        out,
    )
    return True

"""Whether a CUDA GPU can be used, asking torch only where a driver exists.

Importing torch takes about a second; on a machine without an NVIDIA driver
(most laptops, CI) the answer is known without it, so choosing the onnxruntime
engine there does not import torch at all.
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

__all__ = ["cuda_driver_present", "cuda_unavailable"]


@lru_cache(maxsize=1)
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver's CUDA library loads (``libcuda`` /
    ``nvcuda.dll``; it is installed with the driver, not with torch)."""
    if sys.platform == "win32":
        names: tuple[str, ...] = ("nvcuda.dll",)
    elif sys.platform.startswith("linux"):
        names = ("libcuda.so.1", "libcuda.so")
    else:  # macOS and others: no CUDA
        return False
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def cuda_unavailable() -> str | None:
    """Why no CUDA GPU can be used here, or ``None`` (one is visible to torch)."""
    if not cuda_driver_present():
        return "no CUDA GPU (no NVIDIA driver: its CUDA library does not load)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None

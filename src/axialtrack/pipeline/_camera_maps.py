"""Per-pixel sCMOS camera maps: offset, gain and read-noise variance.

An sCMOS camera's pixels each have their own offset, gain and read noise (Huang
et al., Nature Methods 2013); SMAP and DECODE take them as maps measured from
dark and flat frames. Here they correct the refinement's photoelectrons and its
noise model per pixel (``localize --camera-map FILE``).

File formats:

- ``.npz`` with arrays ``offset`` (ADU), ``gain`` (e-/ADU) and ``variance``
  (read-noise variance of dark frames, ADU^2);
- ``.tif`` / ``.tiff`` holding the three in that order, as a ``(3, 2, H, W)``
  array (or three pages of ``(2, H, W)``).

Each map has the shape of the stored frames, ``(2, H, W)``: one plane per
focal plane, split (and mirrored) as the frames are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from axialtrack.errors import AxialtrackError

__all__ = ["MAP_NAMES", "CameraMapError", "CameraMaps", "load_camera_maps"]

#: The maps' names in an ``.npz`` file, and their order in a tif.
MAP_NAMES = ("offset", "gain", "variance")


class CameraMapError(AxialtrackError, ValueError):
    """A camera map file that cannot be used (missing, wrong shape, invalid)."""


@dataclass(frozen=True)
class CameraMaps:
    """Per-pixel camera calibration, each ``(2, H, W)`` float64.

    Attributes
    ----------
    offset_adu
        Dark level, ADU.
    e_per_adu
        Gain, photoelectrons per ADU.
    variance_adu2
        Read-noise variance, ADU^2.
    """

    offset_adu: np.ndarray
    e_per_adu: np.ndarray
    variance_adu2: np.ndarray

    @property
    def read_noise_e(self) -> np.ndarray:
        """Read noise, e- RMS, per pixel."""
        return np.sqrt(self.variance_adu2) * self.e_per_adu

    def stacked(self) -> np.ndarray:
        """``(3, 2, H, W)``: offset, gain and read noise (e-) for cropping."""
        return np.stack([self.offset_adu, self.e_per_adu, self.read_noise_e])


def _read(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as z:
            missing = [k for k in MAP_NAMES if k not in z.files]
            if missing:
                raise CameraMapError(
                    f"{path}: lacks {', '.join(repr(k) for k in missing)} (has "
                    f"{', '.join(z.files) or 'nothing'}); save offset (ADU), gain "
                    "(e-/ADU) and variance (ADU^2) with numpy.savez"
                )
            return {k: np.asarray(z[k], dtype=np.float64) for k in MAP_NAMES}
    if suffix in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path), dtype=np.float64)
        if arr.ndim < 1 or arr.shape[0] != 3:
            raise CameraMapError(
                f"{path}: holds an array of shape {arr.shape}; a camera-map tif "
                "holds (3, 2, H, W): offset (ADU), gain (e-/ADU), variance (ADU^2)"
            )
        return dict(zip(MAP_NAMES, arr, strict=True))
    raise CameraMapError(
        f"{path}: unknown camera-map format {suffix or '(no suffix)'!r}; give an "
        ".npz (offset, gain, variance) or a .tif"
    )


def load_camera_maps(path: str | Path, plane_shape: tuple[int, int]) -> CameraMaps:
    """Read and check camera maps against the frames' ``(H, W)`` per plane.

    Raises
    ------
    CameraMapError
        The file is missing or unreadable, a map is missing, its shape is not
        ``(2, H, W)``, or a value is not finite, a gain not positive or a
        variance negative; the message names the file, the map and the fix.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CameraMapError(f"{p}: no such file (--camera-map)")
    try:
        maps = _read(p)
    except CameraMapError:
        raise
    except Exception as exc:  # a corrupt file: zipfile, tifffile, numpy errors
        first = " ".join(str(exc).split())[:160]
        raise CameraMapError(f"{p}: cannot be read as camera maps ({first})") from exc
    want = (2, int(plane_shape[0]), int(plane_shape[1]))
    for name, m in maps.items():
        if m.shape != want:
            raise CameraMapError(
                f"{p}: map {name!r} has shape {m.shape}, the frames are {want} "
                "(planes, H, W); give one map per plane, split like the frames"
            )
        if not np.all(np.isfinite(m)):
            raise CameraMapError(f"{p}: map {name!r} holds NaN or inf")
    if np.any(maps["gain"] <= 0):
        raise CameraMapError(f"{p}: map 'gain' has values <= 0 (e-/ADU must be > 0)")
    if np.any(maps["variance"] < 0):
        raise CameraMapError(f"{p}: map 'variance' has negative values (ADU^2)")
    return CameraMaps(
        offset_adu=maps["offset"],
        e_per_adu=maps["gain"],
        variance_adu2=maps["variance"],
    )

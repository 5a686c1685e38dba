"""The PSF table of the renderer: the two planes' PSFs on a depth x defocus
grid, interpolated (Catmull-Rom) and shifted by a phase ramp per emitter,
cached on disk by the PSF model's code and parameters (:class:`PSFTable`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
import scipy.sparse
import torch

from axialtrack.optics import Optics, PSFModel

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


__all__ = ["PSFTable", "default_cache_dir"]

logger = logging.getLogger("axialtrack.sim.render")

# depth grid of the PSF table: node spacing min(step, _H0 + _R * depth)
_H0 = 0.02
_R = 0.25


def _catmull_rom(t: np.ndarray) -> np.ndarray:
    """Catmull-Rom weights ``(M, 4)`` for nodes ``i-1, i, i+1, i+2`` at ``t``."""
    t2 = t * t
    t3 = t2 * t
    return np.stack(
        [
            0.5 * (-t3 + 2 * t2 - t),
            0.5 * (3 * t3 - 5 * t2 + 2),
            0.5 * (-3 * t3 + 4 * t2 + t),
            0.5 * (t3 - t2),
        ],
        axis=1,
    )


def _code_fingerprint() -> str:
    """Hash of the PSF model's source, so cached tables follow code changes."""
    h = hashlib.sha256()
    try:
        package = Path(inspect.getfile(PSFModel)).parent
        for path in sorted(package.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    except (OSError, TypeError):  # pragma: no cover - no source available
        h.update(PSFModel.__qualname__.encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """Directory of the on-disk PSF-table cache."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("axialtrack")) / "psf_tables"


# ----------------------------------------------------------------- PSF table
class PSFTable:
    """Fourier-domain PSF lookup table on a (depth, defocus) grid.

    Parameters
    ----------
    optics
        Optical parameters.
    size
        Odd patch size in pixels.
    taper_px
        Width of the raised-cosine taper at the patch border; the central
        ``size - 2 * taper_px`` pixels are exact.
    defocus_range_um
        Largest ``|defocus|`` (focus minus the depth's best focus) tabulated.
    defocus_step_um
        Defocus spacing of the table.
    depth_step_um
        Largest depth spacing (the spacing is finer near the coverslip).
    fixed_depth_um
        If given, the table has this single depth (exact for emitters at that
        depth, e.g. beads on a coverslip) until another depth is requested.
    device
        Torch device used to compute the PSFs.
    cache_dir
        Directory for cached table rows; ``None`` keeps them in memory only.
    """

    def __init__(
        self,
        optics: Optics,
        *,
        size: int = 45,
        taper_px: int = 4,
        defocus_range_um: float = 3.0,
        defocus_step_um: float = 0.05,
        depth_step_um: float = 0.4,
        fixed_depth_um: float | None = None,
        device: torch.device | str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"psf size must be an odd integer >= 3; got {size}")
        if defocus_step_um <= 0 or defocus_range_um <= 0:
            raise ValueError("defocus_range_um and defocus_step_um must be > 0")
        if depth_step_um < _H0:
            raise ValueError(f"depth_step_um must be >= {_H0}; got {depth_step_um}")
        self.optics = optics
        self.size = int(size)
        self.taper_px = int(taper_px)
        if not 0 <= self.taper_px < self.size // 2:
            raise ValueError(f"taper_px must be in [0, size // 2); got {taper_px}")
        self.range_um = float(defocus_range_um)
        self.du = float(defocus_step_um)
        self.hmax = float(depth_step_um)
        self.n_u = round(2 * self.range_um / self.du) + 3
        self.u0 = -self.range_um - self.du  # defocus of node 0
        cutoff = 2.0 * optics.na / optics.wavelength_um  # cycles/um
        if cutoff > 1.0 / (2.0 * optics.pixel_size_um):
            logger.warning(
                "pixel size %.3f um undersamples the PSF (cutoff %.2f cycles/um > "
                "Nyquist %.2f): sub-pixel shifts of table PSFs are approximate",
                optics.pixel_size_um,
                cutoff,
                1.0 / (2.0 * optics.pixel_size_um),
            )
        self.model = PSFModel(optics, device=device)
        self._point_model = PSFModel(
            optics.model_copy(update={"oversample": 1}), device=device
        )
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        s = self.size
        fy = np.fft.fftfreq(s)[:, None]
        fx = np.fft.rfftfreq(s)[None, :]
        self._box = (np.sinc(fy) * np.sinc(fx)).astype(np.float64)
        # raised-cosine taper over the outer ``taper_px`` pixels: the patch fades to
        # zero instead of ending in a hard square edge, and the circular sub-pixel
        # shift does not wrap light from one side to the other
        dist = s // 2 - np.abs(np.arange(s) - s // 2) + 0.5  # 0.5 at the border
        w1 = np.clip(0.5 - 0.5 * np.cos(np.pi * dist / (self.taper_px + 0.5)), 0, 1)
        w1[dist > self.taper_px] = 1.0
        self._taper = w1[:, None] * w1[None, :]
        self.fy = fy.astype(np.float32)
        self.fx = fx.astype(np.float32)
        # depth nodes: either one fixed depth, or grid nodes lo..lo+len-1
        self._rows: dict[int, np.ndarray] = {}  # node -> (n_u, S, K) complex64
        self._key = self._cache_key()
        self._state: tuple[float | None, int, np.ndarray] = (
            None,
            0,
            np.zeros((0, s, s // 2 + 1), dtype=np.complex64),
        )
        if fixed_depth_um is not None:
            fixed = float(fixed_depth_um)
            self._state = (fixed, 0, self._compute_row(fixed))

    # -- depth grid
    @property
    def d_star(self) -> float:
        return (self.hmax - _H0) / _R

    @property
    def s_star(self) -> float:
        return math.log1p(_R * self.d_star / _H0) / _R

    def depth_to_s(self, d: ArrayLike) -> np.ndarray:
        """Continuous node coordinate of depths ``d``."""
        dd = np.maximum(np.asarray(d, dtype=float), 0.0)
        return np.where(
            dd <= self.d_star,
            np.log1p(_R * dd / _H0) / _R,
            self.s_star + (dd - self.d_star) / self.hmax,
        )

    def s_to_depth(self, s: ArrayLike) -> np.ndarray:
        """Depth of the node coordinate ``s``."""
        ss = np.asarray(s, dtype=float)
        return np.where(
            ss <= self.s_star,
            _H0 * np.expm1(_R * ss) / _R,
            self.d_star + (ss - self.s_star) * self.hmax,
        )

    @property
    def fixed_depth_um(self) -> float | None:
        """The single tabulated depth, or ``None`` for a depth grid."""
        return self._state[0]

    @property
    def depth_nodes_um(self) -> np.ndarray:
        """Depths of the tabulated rows."""
        fixed, lo, flat = self._state
        if fixed is not None:
            return np.array([fixed])
        n = flat.shape[0] // self.n_u
        return self.s_to_depth(lo + np.arange(n))

    @property
    def nbytes(self) -> int:
        """Memory held by the table."""
        return int(self._state[2].nbytes)

    @property
    def defocus_nodes_um(self) -> np.ndarray:
        return self.u0 + self.du * np.arange(self.n_u)

    # -- computation
    def _cache_key(self) -> str:
        text = "|".join(
            [
                self.optics.model_dump_json(),
                str(self.size),
                str(self.taper_px),
                repr(self.range_um),
                repr(self.du),
                _code_fingerprint(),
                "v1",
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _row_path(self, depth: float) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / self._key / f"depth_{depth:.9f}.npy"

    def _compute_row(self, depth: float) -> np.ndarray:
        s, k = self.size, self.size // 2 + 1
        path = self._row_path(depth)
        if path is not None and path.is_file():
            try:
                row = np.load(path, allow_pickle=False)
                if (
                    row.shape == (self.n_u, s, k)
                    and row.dtype == np.complex64
                    and np.all(np.isfinite(row))
                ):
                    return row
            except (OSError, ValueError):
                pass
            logger.warning("ignoring unreadable PSF table cache file %s", path)
        focus = float(self.model.in_focus_offset(depth)) + self.defocus_nodes_um
        xyz = np.zeros((self.n_u, 3))
        xyz[:, 2] = depth
        with torch.no_grad():
            psf = self._point_model.psf(xyz, focus, s).cpu().numpy().astype(np.float64)
        psf *= self._taper
        row = (scipy.fft.rfft2(psf, axes=(-2, -1)) * self._box).astype(np.complex64)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:
                    np.save(fh, row, allow_pickle=False)
                os.replace(tmp, path)
            except OSError as e:  # pragma: no cover - read-only cache
                logger.warning("cannot write PSF table cache %s: %s", path, e)
        return row

    def ensure_depths(self, depth_min: float, depth_max: float) -> None:
        """Make sure depths in ``[depth_min, depth_max]`` can be interpolated."""
        with self._lock:
            fixed, lo, flat = self._state
            if fixed is not None and depth_min == depth_max == fixed:
                return
            need_lo = max(int(np.floor(self.depth_to_s(depth_min))) - 1, 0)
            need_hi = int(np.floor(self.depth_to_s(depth_max))) + 2
            if fixed is None and self._rows:
                have_lo, have_hi = lo, lo + flat.shape[0] // self.n_u - 1
                if have_lo <= need_lo and need_hi <= have_hi:
                    return
                need_lo, need_hi = min(need_lo, have_lo), max(need_hi, have_hi)
            elif fixed is not None:
                logger.info(
                    "PSF table: switching from one depth (%.3f um) to a depth grid",
                    fixed,
                )
            for i in range(need_lo, need_hi + 1):
                if i not in self._rows:
                    self._rows[i] = self._compute_row(float(self.s_to_depth(i)))
            new_flat = np.concatenate(
                [self._rows[i] for i in range(need_lo, need_hi + 1)], axis=0
            )
            self._state = (None, need_lo, new_flat)

    # -- lookup
    def spectra(
        self,
        depth: np.ndarray,
        defocus: np.ndarray,
        dx: np.ndarray,
        dy: np.ndarray,
        scale: np.ndarray | None = None,
    ) -> np.ndarray:
        """Interpolated, shifted PSF spectra ``(M, S, S//2+1)`` complex64.

        Parameters
        ----------
        depth, defocus
            ``(M,)`` depth above the coverslip and defocus (focus minus the
            depth's best focus), within the table
            (``|defocus| <= defocus_range_um``).
        dx, dy
            ``(M,)`` sub-pixel shift of the emitter from the patch centre, px.
        scale
            ``(M,)`` factor per emitter (photons); 1 if omitted.
        """
        fixed, lo, flat = self._state
        m = depth.shape[0]
        s, k = self.size, self.size // 2 + 1
        v = (np.asarray(defocus, dtype=float) - self.u0) / self.du
        j = np.clip(np.floor(v).astype(np.int64), 1, self.n_u - 3)
        wu = _catmull_rom(v - j)  # (M, 4)
        iu = j[:, None] + np.arange(-1, 3)[None, :]
        if fixed is not None:
            if np.any(depth != fixed):
                raise ValueError(f"the PSF table holds depth {fixed} um only")
            idx, w = iu, wu
        else:
            n_nodes = flat.shape[0] // self.n_u
            sd = self.depth_to_s(depth)
            i = np.floor(sd).astype(np.int64)
            wd = _catmull_rom(sd - i)
            idd = np.clip(i[:, None] + np.arange(-1, 3)[None, :], 0, None) - lo
            if np.any(idd < 0) or np.any(idd >= n_nodes):
                raise ValueError("depth outside the PSF table; call ensure_depths")
            idx = (idd[:, :, None] * self.n_u + iu[:, None, :]).reshape(m, 16)
            w = (wd[:, :, None] * wu[:, None, :]).reshape(m, 16)
        # interpolation = sparse (M x rows) @ table; the table is viewed as float32
        taps = idx.shape[1]
        weights = scipy.sparse.csr_matrix(
            (
                w.ravel().astype(np.float32),
                idx.ravel(),
                np.arange(0, m * taps + 1, taps),
            ),
            shape=(m, flat.shape[0]),
        )
        real = weights @ flat.view(np.float32).reshape(flat.shape[0], -1)
        spec = np.ascontiguousarray(real, dtype=np.float32).view(np.complex64)
        spec = spec.reshape(m, s, k)
        ey = np.exp((-2j * np.pi) * (self.fy[None] * dy[:, None, None])).astype(
            np.complex64
        )
        ex = np.exp((-2j * np.pi) * (self.fx[None] * dx[:, None, None])).astype(
            np.complex64
        )
        if scale is not None:
            ex *= np.asarray(scale, dtype=np.float32)[:, None, None]
        spec *= ey
        spec *= ex
        return spec

"""A PSF sampled on a 3D grid per focal plane, evaluated by cubic B-splines.

Maximum-likelihood refinement evaluates the PSF and its derivatives for every
pixel of every crop at every iteration; the pupil model (:class:`PSFModel`) is far
too slow for that. :class:`SampledPSF` samples each plane's pixel-integrated PSF
once, on a grid of axial positions and of sub-pixel emitter offsets
(``oversample`` per pixel in x and y), and evaluates it, with its derivatives with
respect to x, y and z, by tricubic B-spline interpolation (the cubic-spline PSF of
SMAP / fit3Dcspline, here on an oversampled lateral grid).

Coordinates
-----------
- ``x, y`` (um): the emitter's offset from the centre of the central pixel of an
  odd ``size x size`` crop (``x`` along columns, ``y`` along rows), as in
  :meth:`PSFModel.psf`.
- ``z`` (um): the grid's axial coordinate. For :meth:`SampledPSF.from_model` and
  :func:`psf_for_bundle` it is the network's ``dz_um`` (stage frame): the
  focus-stage position at which the emitter is in focus in plane 0 minus the
  current stage position, so ``z_um = stage_z_um + dz_um``, exactly as the
  calibration beads sample it.
- Values are the fraction of the emitter's plane-0 photons per pixel of plane
  ``k`` divided by the plane's ``transmission[k]``: the expected image of plane
  ``k`` is ``photons * transmission[k] * h_k + background_k``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from axialtrack.errors import AxialtrackError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._crlb import CRLBResult
    from .psf import PSFModel

__all__ = ["SampledPSF", "SampledPSFError", "optics_record"]

#: Version of the :meth:`SampledPSF.to_arrays` layout.
FORMAT_VERSION = 1


class SampledPSFError(AxialtrackError, ValueError):
    """A sampled PSF cannot be built or read (the message says why and what to do)."""


def _spline_coefficients(samples: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients ``(K, Nz, G, G)`` interpolating ``samples``."""
    from scipy.ndimage import spline_filter

    out = np.empty(samples.shape, dtype=np.float64)
    for k in range(samples.shape[0]):
        out[k] = spline_filter(
            np.asarray(samples[k], dtype=np.float64), order=3, mode="mirror"
        )
    return out


class SampledPSF:
    """PSF of ``K`` focal planes on a ``(z, y, x)`` grid, cubic-spline evaluated.

    Parameters
    ----------
    samples
        ``(K, Nz, G, G)`` with ``G = size * oversample``: ``samples[k, i, v, u]``
        is plane ``k``'s PSF (fraction of the photons per pixel) in the pixel whose
        centre is offset by ``((u - c) d, (v - c) d)`` from an emitter at axial
        position ``z0_um + i dz_um``; ``d = pixel_size_um / oversample`` and
        ``c = oversample * (size // 2)``.
    z0_um, dz_um
        Axial position of node 0 and the node spacing (> 0).
    pixel_size_um
        Camera pixel size in the sample.
    oversample
        Grid nodes per pixel in x and y.
    transmission
        Photons reaching each plane relative to plane 0 (plane 0 is 1).
    plane_offsets_um
        Focus offset of each plane relative to plane 0 (recorded, not used by the
        evaluation).
    info
        JSON-able description of where the PSF came from.
    """

    def __init__(
        self,
        samples: ArrayLike,
        *,
        z0_um: float,
        dz_um: float,
        pixel_size_um: float,
        oversample: int,
        transmission: Sequence[float] | None = None,
        plane_offsets_um: Sequence[float] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        arr = np.asarray(samples, dtype=np.float64)
        if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
            raise SampledPSFError(
                f"samples must have shape (planes, z, G, G); got {arr.shape}"
            )
        k, nz, g, _ = arr.shape
        oversample = int(oversample)
        if oversample < 1 or g % oversample:
            raise SampledPSFError(
                f"the lateral grid ({g}) must be a multiple of oversample "
                f"({oversample})"
            )
        size = g // oversample
        if size % 2 == 0:
            raise SampledPSFError(f"the sampled patch must be odd; got {size} px")
        if nz < 4:
            raise SampledPSFError(f"at least 4 z nodes are needed; got {nz}")
        if not (dz_um > 0 and pixel_size_um > 0):
            raise SampledPSFError("dz_um and pixel_size_um must be > 0")
        if not np.all(np.isfinite(arr)):
            raise SampledPSFError("samples hold NaN or inf")
        trans = (
            np.ones(k)
            if transmission is None
            else np.asarray(transmission, dtype=float).reshape(-1)
        )
        if trans.size != k or np.any(trans <= 0):
            raise SampledPSFError(
                f"transmission needs {k} positive values; got {trans.tolist()}"
            )
        self.samples = arr
        self.z0_um = float(z0_um)
        self.dz_um = float(dz_um)
        self.pixel_size_um = float(pixel_size_um)
        self.oversample = oversample
        self.size = size
        self.transmission = tuple(float(v) for v in trans)
        self.plane_offsets_um = (
            None
            if plane_offsets_um is None
            else tuple(float(v) for v in plane_offsets_um)
        )
        self.info = dict(info or {})
        self.coefficients = _spline_coefficients(arr)

    def __repr__(self) -> str:
        lo, hi = self.z_range_um
        return (
            f"SampledPSF(planes={self.n_planes}, z=[{lo:.3f}, {hi:.3f}] um "
            f"step {self.dz_um:g}, size={self.size} px, "
            f"oversample={self.oversample})"
        )

    # ------------------------------------------------------------- properties
    @property
    def n_planes(self) -> int:
        """Number of focal planes."""
        return int(self.samples.shape[0])

    @property
    def z_nodes_um(self) -> np.ndarray:
        """Axial positions of the grid nodes, um."""
        return self.z0_um + self.dz_um * np.arange(self.samples.shape[1])

    @property
    def z_range_um(self) -> tuple[float, float]:
        """Axial range where the spline is evaluated (one node in from each end)."""
        nz = self.samples.shape[1]
        return (self.z0_um + self.dz_um, self.z0_um + (nz - 2) * self.dz_um)

    def max_shift_px(self, size: int) -> float:
        """Largest ``|x|, |y|`` (px) a ``size`` crop can be evaluated at."""
        self._check_size(size)
        d = self.size // 2 - size // 2
        os_ = self.oversample
        return float(min(d - 1.0 / os_, d + 1 - 2.0 / os_))

    def _check_size(self, size: int) -> None:
        if int(size) != size or size < 1 or size % 2 == 0:
            raise ValueError(f"crop size must be a positive odd integer; got {size}")
        if size + 2 > self.size:
            raise ValueError(
                f"a {size} px crop needs a sampled patch of at least {size + 2} px; "
                f"this PSF has {self.size} px"
            )

    # ------------------------------------------------------------ evaluation
    def _kernel_args(self) -> tuple[float, float, int, float, float]:
        return (
            float(self.oversample * (self.size // 2)),
            self.oversample / self.pixel_size_um,
            self.oversample,
            self.z0_um,
            self.dz_um,
        )

    def evaluate(
        self, xyz_um: ArrayLike, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PSF and its derivatives in ``size x size`` crops of every plane.

        Parameters
        ----------
        xyz_um
            ``(N, 3)`` positions (the same crop offset in every plane) or
            ``(N, K, 3)`` (one crop offset per plane, shared ``z``).
        size
            Odd crop side, at most the sampled patch minus 2 px.

        Returns
        -------
        h : numpy.ndarray
            ``(N, K, size, size)`` PSF values (NaN where ``ok`` is false).
        dh : numpy.ndarray
            ``(N, K, size, size, 3)`` derivatives with respect to x, y, z (per um).
        ok : numpy.ndarray
            ``(N,)`` bool: the crops lie inside the grid (see
            :attr:`z_range_um` and :meth:`max_shift_px`).
        """
        from ._spline import eval_batch

        self._check_size(size)
        xyz = np.asarray(xyz_um, dtype=np.float64)
        if xyz.ndim == 2 and xyz.shape[1] == 3:
            xyz = np.repeat(xyz[:, None, :], self.n_planes, axis=1)
        if xyz.ndim != 3 or xyz.shape[1:] != (self.n_planes, 3):
            raise ValueError(
                f"xyz_um must have shape (N, 3) or (N, {self.n_planes}, 3); "
                f"got {np.shape(xyz_um)}"
            )
        xyz = np.ascontiguousarray(xyz)
        n = xyz.shape[0]
        h = np.full((n, self.n_planes, size, size), np.nan)
        dh = np.full((n, self.n_planes, size, size, 3), np.nan)
        ok = np.zeros(n, dtype=bool)
        eval_batch(self.coefficients, xyz, int(size), *self._kernel_args(), h, dh, ok)
        return h, dh, ok

    def expected(
        self,
        xyz_um: ArrayLike,
        size: int,
        photons: ArrayLike,
        background: ArrayLike,
    ) -> np.ndarray:
        """Expected images ``(N, K, size, size)``: ``N t_k h_k + b_k`` (photons).

        ``photons``: plane-0 photons, scalar or ``(N,)``; ``background``: photons
        per pixel, scalar, ``(K,)`` or ``(N, K)``.
        """
        h, _, ok = self.evaluate(xyz_um, size)
        if not ok.all():
            raise ValueError(
                f"{int((~ok).sum())} position(s) lie outside the sampled PSF "
                f"(z in {self.z_range_um}, |x|, |y| <= {self.max_shift_px(size):g} px)"
            )
        n = h.shape[0]
        ph = np.broadcast_to(np.asarray(photons, dtype=float), (n,))
        bg = np.broadcast_to(np.asarray(background, dtype=float), (n, self.n_planes))
        t = np.asarray(self.transmission)
        scale = ph[:, None, None, None] * t[None, :, None, None]
        return scale * h + bg[..., None, None]

    def crlb(
        self,
        z_um: ArrayLike,
        *,
        x_um: ArrayLike = 0.0,
        y_um: ArrayLike = 0.0,
        photons: float = 2000.0,
        background: float | Sequence[float] = 10.0,
        size: int = 11,
        read_noise: ArrayLike | None = None,
    ) -> CRLBResult:
        """CRLB of ``(x, y, z, photons, background_k)`` from this PSF.

        Same model and Fisher information as :func:`axialtrack.optics.crlb`
        (photons in plane 0, one background per plane, the planes' transmission),
        with the derivatives from the spline. ``z`` is this grid's axial
        coordinate (stage frame for :meth:`from_model`).
        """
        from ._crlb import PSFDerivatives, crlb_from_derivatives

        z = np.atleast_1d(np.asarray(z_um, dtype=float))
        m = z.size
        x = np.broadcast_to(np.asarray(x_um, dtype=float), (m,))
        y = np.broadcast_to(np.asarray(y_um, dtype=float), (m,))
        h, dh, ok = self.evaluate(np.stack([x, y, z], axis=1), size)
        if not ok.all():
            raise ValueError(
                f"z_um outside the sampled PSF's range {self.z_range_um}, or x/y "
                "outside the crop"
            )
        derivs = PSFDerivatives(
            depth_um=z,
            focus_um=np.full(m, np.nan),
            plane_offsets_um=self.plane_offsets_um or tuple([0.0] * self.n_planes),
            h=h.reshape(m, self.n_planes, -1),
            dh=dh.reshape(m, self.n_planes, -1, 3),
        )
        return crlb_from_derivatives(
            derivs,
            photons=photons,
            background=background,
            transmission=list(self.transmission),
            read_noise=read_noise,
        )

    def single_plane(self, plane: int = 0) -> SampledPSF:
        """The PSF of one plane alone (for single- vs dual-plane comparisons)."""
        return SampledPSF(
            self.samples[plane : plane + 1],
            z0_um=self.z0_um,
            dz_um=self.dz_um,
            pixel_size_um=self.pixel_size_um,
            oversample=self.oversample,
            transmission=(1.0,),
            plane_offsets_um=None
            if self.plane_offsets_um is None
            else (self.plane_offsets_um[plane],),
            info={**self.info, "plane": plane},
        )

    # ----------------------------------------------------------- construction
    @classmethod
    def from_render(
        cls,
        render: Callable[[np.ndarray], Any],
        z_um: ArrayLike,
        size: int,
        oversample: int,
        *,
        pixel_size_um: float,
        transmission: Sequence[float] | None = None,
        plane_offsets_um: Sequence[float] | None = None,
        batch: int = 1024,
        info: Mapping[str, Any] | None = None,
    ) -> SampledPSF:
        """Sample a renderer on a grid of axial positions and sub-pixel offsets.

        Parameters
        ----------
        render
            ``render(xyz_um) -> (N, K, size, size)`` (numpy or torch): the
            pixel-integrated PSF of emitters at ``xyz_um (N, 3)`` in every plane,
            normalized as :meth:`PSFModel.psf` (fraction of the photons per
            pixel; an unbounded patch sums to 1).
        z_um
            Uniformly spaced, increasing axial positions (>= 4).
        size
            Odd patch side in pixels (the largest crop that can be evaluated is
            ``size - 2`` px, with ``max_shift_px`` of room to move).
        oversample
            Sub-pixel offsets per pixel in x and y (2 is enough for NA 1.45 and
            ~100 nm pixels; the spline interpolates between them).
        pixel_size_um
            Camera pixel size in the sample.
        transmission, plane_offsets_um, info
            As for :class:`SampledPSF`.
        batch
            Emitters per call of ``render``.
        """
        z = np.asarray(z_um, dtype=float).reshape(-1)
        if z.size < 4:
            raise SampledPSFError(f"at least 4 z positions are needed; got {z.size}")
        steps = np.diff(z)
        dz = float(steps.mean())
        if not dz > 0 or np.max(np.abs(steps - dz)) > 1e-6 * max(dz, 1e-9) + 1e-9:
            raise SampledPSFError("z_um must be uniformly spaced and increasing")
        size = int(size)
        if size < 3 or size % 2 == 0:
            raise SampledPSFError(f"size must be odd and >= 3; got {size}")
        os_ = int(oversample)
        if os_ < 1:
            raise SampledPSFError(f"oversample must be >= 1; got {oversample}")
        step = float(pixel_size_um) / os_
        sy, sx = np.meshgrid(np.arange(os_), np.arange(os_), indexing="ij")
        # the emitter at (-sx d, -sy d) puts pixel i's centre at grid node i os + s
        offs = np.stack([-sx.ravel() * step, -sy.ravel() * step], axis=1)  # (os^2, 2)
        xyz = np.concatenate(
            [
                np.repeat(offs, z.size, axis=0),
                np.tile(z, os_ * os_)[:, None],
            ],
            axis=1,
        )
        parts = []
        for i in range(0, xyz.shape[0], int(batch)):
            out = render(xyz[i : i + int(batch)])
            if hasattr(out, "detach"):
                out = out.detach().cpu().numpy()
            parts.append(np.asarray(out, dtype=np.float64))
        imgs = np.concatenate(parts, axis=0)
        if (
            imgs.ndim != 4
            or imgs.shape[0] != xyz.shape[0]
            or imgs.shape[2:]
            != (
                size,
                size,
            )
        ):
            raise SampledPSFError(
                f"render returned shape {imgs.shape}; expected "
                f"({xyz.shape[0]}, planes, {size}, {size})"
            )
        n_planes = imgs.shape[1]
        # (os_y, os_x, Nz, K, S, S) -> (K, Nz, S, os_y, S, os_x)
        imgs = imgs.reshape(os_, os_, z.size, n_planes, size, size)
        samples = imgs.transpose(3, 2, 4, 0, 5, 1).reshape(
            n_planes, z.size, size * os_, size * os_
        )
        return cls(
            samples,
            z0_um=float(z[0]),
            dz_um=dz,
            pixel_size_um=float(pixel_size_um),
            oversample=os_,
            transmission=transmission,
            plane_offsets_um=plane_offsets_um,
            info=info,
        )

    @classmethod
    def from_model(
        cls,
        model: PSFModel,
        plane_offsets_um: Sequence[float] = (0.0, 0.5),
        *,
        depth_um: float = 0.05,
        z_um: ArrayLike | None = None,
        size: int = 17,
        oversample: int = 2,
        transmission: float | Sequence[float] = 1.0,
    ) -> SampledPSF:
        """Sample the pupil model of a bead at ``depth_um`` through focus.

        The axial coordinate is ``dz`` in the stage frame, as a bead calibration
        samples it: plane ``k``'s nominal focus is
        ``model.in_focus_offset(depth_um) - dz + plane_offsets_um[k]``.

        Parameters
        ----------
        model
            The pupil model (evaluated in float64).
        plane_offsets_um
            Focus offset of each plane relative to plane 0 (stage frame).
        depth_um
            Emitter depth above the coverslip (the calibration beads' depth).
        z_um
            Axial grid (uniform); default -1.6 to 1.6 um in 20 nm steps.
        size, oversample
            As for :meth:`from_render`.
        transmission
            Plane-1 (and later planes') transmission relative to plane 0, or one
            value per plane.
        """
        import torch

        offsets = np.asarray(plane_offsets_um, dtype=float).reshape(-1)
        k = offsets.size
        trans = np.atleast_1d(np.asarray(transmission, dtype=float))
        if trans.size == 1 and k > 1:
            trans = np.concatenate([[1.0], np.full(k - 1, float(trans[0]))])
        if trans.size != k:
            raise SampledPSFError(
                f"transmission needs 1 or {k} values; got {trans.size}"
            )
        mdl = model.to(dtype=torch.float64)
        f0 = float(mdl.in_focus_offset(float(depth_um)))
        zs = (
            np.round(np.arange(-1.6, 1.6 + 1e-9, 0.02), 10)
            if z_um is None
            else np.asarray(z_um, dtype=float)
        )

        def render(xyz: np.ndarray) -> np.ndarray:
            n = xyz.shape[0]
            pos = np.repeat(
                np.stack([xyz[:, 0], xyz[:, 1], np.full(n, float(depth_um))], 1),
                k,
                axis=0,
            )
            foc = (f0 - xyz[:, 2])[:, None] + offsets[None, :]
            with torch.no_grad():
                img = mdl.psf(pos, foc.reshape(-1), size)
            return img.cpu().numpy().reshape(n, k, size, size)

        return cls.from_render(
            render,
            zs,
            size,
            oversample,
            pixel_size_um=mdl.pixel_size_um,
            transmission=trans.tolist(),
            plane_offsets_um=offsets.tolist(),
            info={
                "source": "pupil-model",
                "optics": mdl.optics.model_dump(mode="json"),
                "depth_um": float(depth_um),
                "z_frame": "stage dz_um (plane-0 focus minus stage position)",
            },
        )

    # ---------------------------------------------------------------- storage
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: an ``np.savez``-able dict and a JSON-able dict.

        :meth:`from_arrays` rebuilds an identical PSF (the spline coefficients
        are recomputed from the samples).
        """
        arrays = {"samples": self.samples.copy()}
        meta: dict[str, Any] = {
            "format": "axialtrack-sampled-psf",
            "format_version": FORMAT_VERSION,
            "z0_um": self.z0_um,
            "dz_um": self.dz_um,
            "pixel_size_um": self.pixel_size_um,
            "oversample": self.oversample,
            "transmission": list(self.transmission),
            "plane_offsets_um": None
            if self.plane_offsets_um is None
            else list(self.plane_offsets_um),
            "info": self.info,
        }
        return arrays, meta

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> SampledPSF:
        """Inverse of :meth:`to_arrays`."""
        version = meta.get("format_version")
        if meta.get("format") != "axialtrack-sampled-psf" or version != FORMAT_VERSION:
            raise SampledPSFError(
                f"not a sampled PSF of format version {FORMAT_VERSION} "
                f"(format={meta.get('format')!r}, format_version={version!r})"
            )
        if "samples" not in arrays:
            raise SampledPSFError("the sampled PSF's arrays lack 'samples'")
        try:
            return cls(
                np.asarray(arrays["samples"]),
                z0_um=float(meta["z0_um"]),
                dz_um=float(meta["dz_um"]),
                pixel_size_um=float(meta["pixel_size_um"]),
                oversample=int(meta["oversample"]),
                transmission=meta.get("transmission"),
                plane_offsets_um=meta.get("plane_offsets_um"),
                info=meta.get("info") or {},
            )
        except KeyError as e:
            raise SampledPSFError(f"the sampled PSF's metadata lacks {e}") from e


# ---------------------------------------------------------------- bundles
def optics_record(
    optics: Any,
    *,
    depth_um: float = 0.05,
    transmission: float = 1.0,
    source: str = "simulation",
) -> dict[str, Any]:
    """The nominal-PSF record a calibration run and a bundle carry (``"optics"``).

    ``optics``: an :class:`Optics`; ``depth_um``: the calibration beads' depth
    above the coverslip; ``transmission``: plane 1's photons relative to plane 0.
    """
    return {
        "optics": optics.model_dump(mode="json"),
        "depth_um": float(depth_um),
        "transmission": float(transmission),
        "source": str(source),
    }

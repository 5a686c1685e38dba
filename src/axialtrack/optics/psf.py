"""Pupil-function PSF model in torch: scalar and vectorial, with index mismatch.

The field in the image of a point emitter is the Fourier transform of the field in
the objective's pupil. The pupil is sampled on a square grid of
``Optics.pupil_samples`` points across its diameter in units of ``n sin(theta)``
(the numerical aperture); for each emitter the pupil carries

- the refractive-index mismatch phase for an emitter at depth ``d`` above the
  coverslip in a sample of index ``n_s``, imaged with the objective's nominal focus
  at ``f`` (the focus-stage position relative to the coverslip) in an immersion
  medium of index ``n_i``::

      phase = k0 * (d * sqrt(n_s^2 - rho^2) - f * sqrt(n_i^2 - rho^2)),

  ``rho = n_i sin(theta_i)``, ``k0 = 2 pi / wavelength``. The square root is
  complex, so angles beyond the critical angle (``rho > n_s``) are evanescent in
  the sample and decay as ``exp(-k0 d sqrt(rho^2 - n_s^2))``. With ``n_s == n_i``
  the phase is pure defocus in ``d - f``;
- optional Zernike aberrations (Noll indices, waves RMS);
- a lateral shift ``exp(-i k.(x, y))``.

Scalar mode uses a uniform pupil amplitude (as the Gibson-Lanni model does).
Vectorial mode models a freely rotating (isotropic) dipole: the intensity is the sum
of ``|E|^2`` over the three dipole orientations and the two transverse field
components in the image, with Fresnel transmission of the p and s waves through the
sample/coverslip interface, the dipole's ``1 / (n_s cos(theta_s))`` plane-wave
weight and the aplanatic ``sqrt(cos(theta_i))`` factor of the objective.

The transform from pupil to image is a matrix DFT (a chirp-Z transform restricted
to the wanted pixels): the image is evaluated exactly on an ``oversample``-times
finer grid aligned to the camera pixels, then summed into pixels. Each emitter has
its own pair of DFT matrices (they carry its lateral offset), and all emitters go
through batched matrix products, so there is no Python loop over emitters and the
result is differentiable with respect to the emitter position.

Intensities are normalized by the power the pupil collects from that emitter
(Parseval), so a PSF summed over an unbounded patch is 1: multiplying by the number
of detected photons gives expected photons per pixel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._zernike import zernike_phase
from .params import Optics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

__all__ = ["PSFModel"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}

# Depth step of the cached best-focus lookup table near the coverslip, um, and its
# largest depth.
_TABLE_STEP_UM = 0.05
_TABLE_MAX_UM = 200.0


class PSFModel:
    """Pixelated 3D PSF of a point emitter, batched and differentiable, in torch.

    Parameters
    ----------
    optics
        Optical parameters; the defaults of :class:`Optics` if omitted.
    device
        Torch device for the computation (``"cpu"``, ``"cuda"``, ...).
    dtype
        ``torch.float32`` (fast, default) or ``torch.float64``.
    max_batch
        Emitters computed per batch of matrix products; larger batches are split
        (the results are concatenated, gradients flow through).

    Examples
    --------
    >>> from axialtrack.optics import PSFModel
    >>> model = PSFModel()
    >>> xyz = [[0.0, 0.0, 1.0], [0.05, -0.02, 1.2]]
    >>> img = model.psf(xyz, model.in_focus_offset([1.0, 1.0]), size=15)
    >>> img.shape
    torch.Size([2, 15, 15])
    """

    def __init__(
        self,
        optics: Optics | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_batch: int = 512,
    ) -> None:
        if dtype not in _COMPLEX:
            raise ValueError(
                f"dtype must be torch.float32 or torch.float64; got {dtype}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        self.optics = optics if optics is not None else Optics()
        self.device = (
            torch.device(device) if device is not None else torch.device("cpu")
        )
        self.dtype = dtype
        self.cdtype = _COMPLEX[dtype]
        self.max_batch = int(max_batch)
        self._build_pupil()
        # best-focus lookup table (depths, focus positions), replaced atomically
        self._focus_table: tuple[np.ndarray, np.ndarray] | None = None
        self._focus_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"PSFModel({self.optics!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype})"
        )

    # ---------------------------------------------------------------- properties
    @property
    def pixel_size_um(self) -> float:
        """Camera pixel size in the sample, um."""
        return self.optics.pixel_size_um

    @property
    def k0(self) -> float:
        """Vacuum wavenumber ``2 pi / wavelength``, rad/um."""
        return 2.0 * np.pi / self.optics.wavelength_um

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PSFModel:
        """A model with the same optics on another device and/or dtype.

        Returns ``self`` when nothing changes. The best-focus table is shared.
        """
        device = torch.device(device) if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        other = PSFModel(
            self.optics, device=device, dtype=dtype, max_batch=self.max_batch
        )
        other._focus_table = self._focus_table
        return other

    # --------------------------------------------------------------------- pupil
    def _build_pupil(self) -> None:
        o = self.optics
        n_p = o.pupil_samples
        na, ni, ns = o.na, o.n_immersion, o.n_sample
        du = 2.0 * na / n_p
        u = (np.arange(n_p) + 0.5 - n_p / 2.0) * du  # pupil coordinate, NA units

        # Fraction of each pupil cell inside the aperture (8x8 sub-samples), so
        # the circular edge is integrated better than by a binary staircase.
        sub = 8
        off = ((np.arange(sub) + 0.5) / sub - 0.5) * du
        uu = u[:, None] + off[None, :]  # (n_p, sub)
        r2 = uu[:, None, :, None] ** 2 + uu[None, :, None, :] ** 2  # (b, a, sb, sa)
        coverage = (r2 <= na**2).mean(axis=(2, 3))

        uy, ux = np.meshgrid(u, u, indexing="ij")  # row index = y, column = x
        rho = np.hypot(ux, uy)
        inside = coverage > 0
        # evaluate the pupil functions at most on the aperture edge
        rho_e = np.minimum(rho, na)
        phi = np.arctan2(uy, ux)

        kz_i = np.sqrt(ni**2 - rho_e**2)  # n_i cos(theta_i), real because na < n_i
        kz_s = np.sqrt((ns**2 - rho_e**2).astype(complex))  # imag >= 0 (evanescent)
        cos_i = kz_i / ni

        if o.vectorial:
            cos_s = kz_s / ns
            sin_s = rho_e / ns
            # Fresnel t_p, t_s (sample -> immersion) times the dipole plane-wave
            # weight 1/(n_s cos_s) and the aplanatic factor sqrt(cos_i).
            sq = np.sqrt(cos_i)
            a_p = 2.0 * sq / (ni * cos_s + ns * cos_i)
            a_s = 2.0 * sq / (ns * cos_s + ni * cos_i)
            # Image-plane field components: for a dipole along x, y, z the pupil
            # fields (E_x, E_y) are
            #   xx = A cos^2 + B sin^2, xy = yx = (A - B) cos sin, xz = -C cos,
            #   yy = A sin^2 + B cos^2, yz = -C sin     (of phi),
            # with A = a_p cos_s, B = a_s, C = a_p sin_s. The isotropic sum of
            # |F(.)|^2 over the six equals the sum over these five (F is linear):
            # |xx|^2 + |yy|^2 = (|xx + yy|^2 + |xx - yy|^2) / 2 and xy == yx.
            amp_a = a_p * cos_s
            amp_c = a_p * sin_s
            h = np.sqrt(0.5)
            comps = np.stack(
                [
                    h * (amp_a + a_s),
                    h * (amp_a - a_s) * np.cos(2 * phi),
                    h * (amp_a - a_s) * np.sin(2 * phi),
                    amp_c * np.cos(phi),
                    amp_c * np.sin(phi),
                ]
            )
        else:
            comps = np.ones((1, n_p, n_p), dtype=complex)

        comps = comps * coverage[None]
        if o.zernike:
            zphase = zernike_phase(o.zernike, rho_e / na, phi)
            comps = comps * np.exp(1j * zphase)[None]
        comps = np.where(inside[None], comps, 0.0)

        # keep only the rows/columns that touch the aperture
        keep = inside.any(axis=1)
        # float64 numpy copies (best-focus table)
        self._np_u = u[keep]
        self._np_comps = comps[:, keep][:, :, keep]
        self._np_kz_i = kz_i[keep][:, keep]
        self._np_kz_s = kz_s[keep][:, keep]
        self._np_inside = inside[keep][:, keep]
        self._np_power = (np.abs(self._np_comps) ** 2).sum(axis=0)
        self._du = du
        self._has_evanescent = bool(np.any(self._np_kz_s.imag[self._np_inside] > 0))

        dev, rdt, cdt = self.device, self.dtype, self.cdtype
        self._kx = torch.as_tensor(self.k0 * self._np_u, dtype=rdt, device=dev)
        self._comps_bca = torch.as_tensor(
            np.ascontiguousarray(self._np_comps.transpose(1, 0, 2)),
            dtype=cdt,
            device=dev,
        )
        self._kz_i = torch.as_tensor(self._np_kz_i, dtype=rdt, device=dev)
        self._kz_s_re = torch.as_tensor(self._np_kz_s.real, dtype=rdt, device=dev)
        self._kz_s_im = torch.as_tensor(self._np_kz_s.imag, dtype=rdt, device=dev)
        self._power = torch.as_tensor(self._np_power, dtype=rdt, device=dev)

    # ------------------------------------------------------------------ inputs
    def _as_tensor(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(value, dtype=float), dtype=self.dtype).to(
            self.device
        )

    def _check_inputs(
        self, xyz_um: Any, focus_um: Any, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xyz = self._as_tensor(xyz_um)
        if xyz.ndim == 1 and xyz.shape[0] == 3:
            xyz = xyz[None]
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"xyz_um must have shape (N, 3); got {tuple(xyz.shape)}")
        focus = self._as_tensor(focus_um)
        if focus.ndim == 0:
            focus = focus.expand(xyz.shape[0])
        if focus.ndim != 1 or focus.shape[0] != xyz.shape[0]:
            raise ValueError(
                f"focus_um must be a scalar or have shape (N,) = ({xyz.shape[0]},); "
                f"got {tuple(focus.shape)}"
            )
        if int(size) != size or size < 1 or size % 2 == 0:
            raise ValueError(f"size must be a positive odd integer; got {size}")
        if size * self.optics.pixel_size_um > self.optics.image_period_um:
            raise ValueError(
                f"a {size} px patch ({size * self.optics.pixel_size_um:.1f} um) does "
                f"not fit in the model's image period "
                f"({self.optics.image_period_um:.1f} um); increase "
                "Optics.pupil_samples"
            )
        if self._has_evanescent and xyz.shape[0] and bool((xyz[:, 2] < 0).any()):
            raise ValueError(
                "emitter depth z must be >= 0 (in the sample, above the coverslip); "
                f"na ({self.optics.na}) > n_sample ({self.optics.n_sample}) makes "
                "the model undefined below the coverslip"
            )
        return xyz, focus

    # -------------------------------------------------------------------- core
    def _pupil_phase(self, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``exp(i k0 (z kz_s - f kz_i))``, shape (N, Np, Np), complex."""
        k0 = self.k0
        zz = z[:, None, None]
        ang = k0 * (zz * self._kz_s_re - f[:, None, None] * self._kz_i)
        if self._has_evanescent:
            amp = torch.exp(-k0 * zz * self._kz_s_im)
            return torch.complex(amp * torch.cos(ang), amp * torch.sin(ang))
        return torch.complex(torch.cos(ang), torch.sin(ang))

    def _collected_power(self, z: torch.Tensor) -> torch.Tensor:
        """Power collected by the pupil (sum of |P|^2), shape (N,)."""
        if not self._has_evanescent:
            return self._power.sum().expand(z.shape[0])
        decay = torch.exp(-2.0 * self.k0 * z[:, None, None] * self._kz_s_im)
        return (decay * self._power).sum(dim=(1, 2))

    def _dft_matrix(self, pos: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``exp(i k (grid - pos))``: (N, S, Np) for positions (N,) and grid (S,)."""
        ang = (grid[None, :, None] - pos[:, None, None]) * self._kx[None, None, :]
        return torch.complex(torch.cos(ang), torch.sin(ang))

    def _psf_batch(
        self, xyz: torch.Tensor, focus: torch.Tensor, size: int
    ) -> torch.Tensor:
        o = self.optics
        os_ = o.oversample
        pix = o.pixel_size_um
        n_sub = size * os_
        grid = (torch.arange(n_sub, dtype=self.dtype, device=self.device) + 0.5) * (
            pix / os_
        ) - pix * size / 2.0
        x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]

        n, (n_b, n_c, n_a) = xyz.shape[0], self._comps_bca.shape
        # pupil (N, b, C, a): rows = pupil y, columns = pupil x, per component
        pupil = self._comps_bca[None] * self._pupil_phase(z, focus)[:, :, None, :]
        ay = self._dft_matrix(y, grid)  # (N, S, b)
        ax = self._dft_matrix(x, grid)  # (N, S, a)
        half = ay @ pupil.reshape(n, n_b, n_c * n_a)  # (N, S, C*a)
        field = half.reshape(n, n_sub * n_c, n_a) @ ax.transpose(1, 2)  # (N, S*C, S)
        inten = field.real.square() + field.imag.square()
        inten = inten.reshape(n, n_sub, n_c, n_sub).sum(dim=2)  # (N, S, S)
        binned = inten.reshape(n, size, os_, size, os_).sum(dim=(2, 4))
        dk = self.k0 * self._du
        scale = (pix / os_) ** 2 * dk**2 / (4.0 * np.pi**2)
        return binned * (scale / self._collected_power(z))[:, None, None]

    # --------------------------------------------------------------------- API
    def psf(
        self, xyz_um: ArrayLike | torch.Tensor, focus_um: Any, size: int
    ) -> torch.Tensor:
        """Pixelated PSF of N emitters, each in its own ``size x size`` patch.

        Parameters
        ----------
        xyz_um
            ``(N, 3)`` emitter positions: ``x, y`` = offset (um) of the emitter from
            the centre of the central pixel of the patch (``x`` along columns, ``y``
            along rows); ``z`` = depth above the coverslip (um, >= 0, in the sample
            medium). Tensor or array-like. Differentiable.
        focus_um
            ``(N,)`` or scalar: nominal focus position relative to the coverslip
            (the focus-stage movement, stage frame), um.
        size
            Odd patch size in pixels.

        Returns
        -------
        torch.Tensor
            ``(N, size, size)``: expected fraction of the emitter's detected photons
            in each pixel (an unbounded patch sums to 1).
        """
        xyz, focus = self._check_inputs(xyz_um, focus_um, size)
        size = int(size)
        n = xyz.shape[0]
        if n <= self.max_batch:
            return self._psf_batch(xyz, focus, size)
        parts = [
            self._psf_batch(
                xyz[i : i + self.max_batch], focus[i : i + self.max_batch], size
            )
            for i in range(0, n, self.max_batch)
        ]
        return torch.cat(parts, dim=0)

    def psf_stack(
        self,
        xyz_um: ArrayLike | torch.Tensor,
        focus_positions_um: ArrayLike | torch.Tensor,
        size: int,
    ) -> torch.Tensor:
        """PSFs of N emitters at F focus positions: ``(N, F, size, size)``.

        Parameters
        ----------
        xyz_um
            ``(N, 3)`` emitter positions as in :meth:`psf`.
        focus_positions_um
            ``(F,)`` nominal focus positions (stage frame), shared by all emitters.
        size
            Odd patch size in pixels.
        """
        xyz = self._as_tensor(xyz_um)
        if xyz.ndim == 1 and xyz.shape[0] == 3:
            xyz = xyz[None]
        focus = self._as_tensor(focus_positions_um).reshape(-1)
        n, f = xyz.shape[0], focus.shape[0]
        out = self.psf(xyz.repeat_interleave(f, dim=0), focus.repeat(n), size)
        return out.reshape(n, f, size, size)

    # ------------------------------------------------------------- best focus
    def _on_axis_intensity(
        self, depth: np.ndarray, focus_base: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """On-axis image intensity (unnormalized), shape (D, J).

        Evaluated for emitters at ``depth`` (D,) with the focus at
        ``focus_base[:, None] + offsets[None, :]``, in float64 on the model's
        device.
        """
        dev, f64 = self.device, torch.float64
        m = self._np_inside
        kz_s = torch.as_tensor(self._np_kz_s[m], device=dev)  # (K,) complex
        kz_i = torch.as_tensor(self._np_kz_i[m], dtype=f64, device=dev)
        comps = torch.as_tensor(self._np_comps[:, m], device=dev)  # (C, K)
        d = torch.as_tensor(depth, dtype=f64, device=dev)[:, None]
        fb = torch.as_tensor(focus_base, dtype=f64, device=dev)[:, None]
        off = torch.as_tensor(offsets, dtype=f64, device=dev)[:, None]
        a = torch.exp(1j * self.k0 * (d * kz_s - fb * kz_i))  # (D, K)
        b = torch.polar(torch.ones_like(off * kz_i), -self.k0 * off * kz_i)  # (J, K)
        weighted = (a[:, None, :] * comps[None]).reshape(-1, kz_i.shape[0])
        field = (weighted @ b.T).reshape(d.shape[0], comps.shape[0], -1)  # (D, C, J)
        return (field.real.square() + field.imag.square()).sum(dim=1).cpu().numpy()

    def _focus_ratio_bounds(self) -> tuple[float, float]:
        """Bounds on (best focus / depth): paraxial and RMS-wavefront slopes.

        The paraxial ratio is ``n_i / n_s``; the RMS one is the power-weighted
        least-squares slope of ``kz_s`` against ``kz_i`` over the propagating part
        of the pupil. Best focus lies between them (deep emitters approach the
        paraxial one).
        """
        o = self.optics
        paraxial = o.n_immersion / o.n_sample
        m = self._np_inside & (self._np_kz_s.imag == 0)
        w = self._np_power[m]
        a, b = self._np_kz_s.real[m], self._np_kz_i[m]
        a_c = a - (w * a).sum() / w.sum()
        b_c = b - (w * b).sum() / w.sum()
        var = float((w * b_c**2).sum())
        rms = float((w * a_c * b_c).sum()) / var if var > 0 else paraxial
        return min(paraxial, rms), max(paraxial, rms)

    def _best_focus(self, depth: np.ndarray) -> np.ndarray:
        """Focus position of maximum on-axis intensity for each depth (numerical).

        A coarse scan (50 nm steps) over a bracket around the paraxial and RMS
        estimates finds the main maximum; a fine scan (2.5 nm) around it and a
        parabola refine it.
        """
        lo_ratio, hi_ratio = self._focus_ratio_bounds()
        lo = 0.95 * lo_ratio * depth - 0.6
        hi = 1.05 * hi_ratio * depth + 0.6
        coarse_step = 0.05
        fine_step = coarse_step / 20
        n_f = int(np.ceil((hi - lo).max() / coarse_step)) + 1
        coarse = coarse_step * np.arange(n_f)
        fine = fine_step * np.arange(-20, 21)
        out = np.empty_like(depth)
        chunk = 32
        for i in range(0, depth.size, chunk):
            d = depth[i : i + chunk]
            r = np.arange(d.size)
            inten = self._on_axis_intensity(d, lo[i : i + chunk], coarse)
            inten[coarse[None, :] > (hi - lo)[i : i + chunk, None]] = -np.inf
            f0 = lo[i : i + chunk] + coarse[inten.argmax(axis=1)]
            inten = self._on_axis_intensity(d, f0, fine)
            j = np.clip(inten.argmax(axis=1), 1, fine.size - 2)
            y0, y1, y2 = inten[r, j - 1], inten[r, j], inten[r, j + 1]
            denom = y0 - 2 * y1 + y2
            safe = np.where(denom < 0, denom, -1.0)
            shift = np.where(denom < 0, 0.5 * (y0 - y2) / safe, 0.0)
            out[i : i + chunk] = f0 + fine[j] + np.clip(shift, -1.0, 1.0) * fine_step
        return out

    def _ensure_focus_table(self, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
        table = self._focus_table
        if table is not None and table[0][-1] >= max_depth:
            return table
        with self._focus_lock:
            table = self._focus_table
            if table is None or table[0][-1] < max_depth:
                current = 0.0 if table is None else float(table[0][-1])
                top = min(max(4.0, 2.0 * current, 1.25 * max_depth), _TABLE_MAX_UM)
                # 50 nm steps up to 5 um, where the focal shift is least linear,
                # then 250 nm
                fine = np.arange(0.0, min(top, 5.0) + 1e-9, _TABLE_STEP_UM)
                coarse = np.arange(5.25, top + 0.25 - 1e-9, 0.25)
                depths = np.concatenate([fine, coarse])
                values = self._best_focus(depths)
                depths.flags.writeable = False
                values.flags.writeable = False
                table = (depths, values)
                self._focus_table = table
        return table

    def in_focus_offset(self, depth_um: ArrayLike) -> np.ndarray:
        """Nominal focus position at which an emitter at ``depth_um`` is in focus.

        Best focus is the focus-stage position (relative to the coverslip, stage
        frame) that maximizes the on-axis image intensity of the emitter. It is
        found numerically on a depth grid (50 nm steps up to 5 um, 250 nm beyond;
        cached, extended on demand up to 200 um) and interpolated linearly.

        With an oil objective imaging into water the stage has to travel further
        than the depth: for the default optics about 1.41 x depth at 1 um and
        1.32 x at 3 um. With ``n_sample == n_immersion`` and no aberrations it
        equals the depth.

        Parameters
        ----------
        depth_um
            Emitter depth(s) above the coverslip, um (>= 0).

        Returns
        -------
        numpy.ndarray
            Focus positions, um, same shape as ``depth_um``.
        """
        d = np.asarray(depth_um, dtype=float)
        if d.size and np.nanmin(d) < 0:
            raise ValueError("depth_um must be >= 0 (above the coverslip)")
        max_d = float(np.nanmax(d)) if d.size and not np.all(np.isnan(d)) else 0.0
        if max_d > _TABLE_MAX_UM:
            raise ValueError(
                f"depth_um must be <= {_TABLE_MAX_UM:g} um (finite); got {max_d}"
            )
        depths, values = self._ensure_focus_table(max_d)
        return np.asarray(np.interp(d, depths, values))

    def depth_in_focus(self, focus_um: ArrayLike) -> np.ndarray:
        """Inverse of :meth:`in_focus_offset`: depth in focus at ``focus_um``.

        Parameters
        ----------
        focus_um
            Nominal focus position(s) relative to the coverslip (stage frame), um.
            Positions below the best focus of an emitter on the coverslip return 0.

        Returns
        -------
        numpy.ndarray
            Depth(s) above the coverslip, um, same shape as ``focus_um``.
        """
        f = np.asarray(focus_um, dtype=float)
        max_f = float(np.nanmax(f)) if f.size and not np.all(np.isnan(f)) else 0.0
        if max_f > _TABLE_MAX_UM:
            raise ValueError(
                f"focus_um must be <= {_TABLE_MAX_UM:g} um (finite); got {max_f}"
            )
        depths, values = self._ensure_focus_table(0.0)
        while values[-1] < max_f and depths[-1] < _TABLE_MAX_UM:
            depths, values = self._ensure_focus_table(2.0 * float(depths[-1]))
        mono = np.maximum.accumulate(values)
        return np.asarray(np.interp(f, mono, depths, left=0.0))

    def focus_table(self, depths_um: Sequence[float] | np.ndarray) -> np.ndarray:
        """Best focus for ``depths_um`` computed directly (no interpolation)."""
        d = np.asarray(depths_um, dtype=float)
        return self._best_focus(d.reshape(-1)).reshape(d.shape)

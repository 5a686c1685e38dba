"""The differentiable pupil PSF the bead fit optimizes (:class:`PupilPSF`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._zernike import zernike
from .params import Optics
from .psf import PSFModel

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["PupilPSF", "phase_rms_error_waves"]


class PupilPSF:
    """Differentiable pupil PSF with Zernike phase/amplitude as torch tensors.

    Built on :class:`PSFModel` (its pupil grid, vectorial components, index
    mismatch and matrix DFT); the aberrations are applied per image so that they
    can be fitted.

    Parameters
    ----------
    optics
        Nominal optics (its ``zernike`` is ignored: the aberrations are inputs).
    phase_noll, amplitude_noll
        Noll indices of the phase and amplitude terms.
    """

    def __init__(
        self,
        optics: Optics,
        phase_noll: Sequence[int],
        amplitude_noll: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.optics = optics.model_copy(update={"zernike": {}})
        self.base = PSFModel(self.optics, device=device, dtype=dtype)
        self.phase_noll = tuple(int(j) for j in phase_noll)
        self.amplitude_noll = tuple(int(j) for j in amplitude_noll)
        b = self.base
        u = b._np_u
        uy, ux = np.meshgrid(u, u, indexing="ij")
        na = self.optics.na
        rho = np.minimum(np.hypot(ux, uy), na) / na
        phi = np.arctan2(uy, ux)
        inside = b._np_inside

        def basis(js: tuple[int, ...]) -> torch.Tensor:
            arr = np.stack([zernike(j, rho, phi) * inside for j in js] or [rho * 0])
            return torch.as_tensor(arr[: len(js)], dtype=dtype, device=b.device)

        self.zp = basis(self.phase_noll)  # (J, b, a)
        self.za = basis(self.amplitude_noll)  # (K, b, a)
        self._rho = rho
        self._inside = inside
        self._kz_i_np = b._np_kz_i
        self._kz_s_np = b._np_kz_s
        # |comps|^2 summed over the vectorial components, (b, a)
        self._power0 = b._power

    @property
    def device(self) -> torch.device:
        """Torch device."""
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        """Real dtype."""
        return self.base.dtype

    def images(
        self,
        x_um: torch.Tensor,
        y_um: torch.Tensor,
        depth_um: torch.Tensor,
        focus_um: torch.Tensor,
        phase: torch.Tensor,
        amplitude: torch.Tensor,
        size: int,
    ) -> torch.Tensor:
        """PSF images ``(M, size, size)`` (fraction of the photons per pixel).

        Parameters
        ----------
        x_um, y_um, focus_um
            ``(M,)`` offsets from the centre pixel and nominal focus positions.
        depth_um
            Scalar or ``(M,)`` emitter depth above the coverslip.
        phase
            ``(M, J)`` or ``(J,)`` Zernike phase coefficients (waves RMS).
        amplitude
            ``(K,)`` amplitude coefficients.
        size
            Odd patch size.
        """
        b = self.base
        o = self.optics
        m = x_um.shape[0]
        depth = depth_um.expand(m) if depth_um.ndim == 0 else depth_um
        if phase.ndim == 1:
            phase = phase.expand(m, -1)
        w = torch.einsum("mj,jba->mba", phase, self.zp) * (2.0 * math.pi)
        logamp = torch.einsum("k,kba->ba", amplitude, self.za)
        amp = torch.exp(logamp)
        k0 = b.k0
        zz = depth[:, None, None]
        ang = k0 * (zz * b._kz_s_re - focus_um[:, None, None] * b._kz_i) + w
        mag = amp[None]
        if b._has_evanescent:
            mag = mag * torch.exp(-k0 * zz * b._kz_s_im)
        pp = torch.complex(mag * torch.cos(ang), mag * torch.sin(ang))  # (M, b, a)
        pupil = b._comps_bca[None] * pp[:, :, None, :]  # (M, b, C, a)
        os_ = o.oversample
        pix = o.pixel_size_um
        n_sub = size * os_
        grid = (torch.arange(n_sub, dtype=self.dtype, device=self.device) + 0.5) * (
            pix / os_
        ) - pix * size / 2.0
        n_b, n_c, n_a = b._comps_bca.shape
        ay = b._dft_matrix(y_um, grid)
        ax = b._dft_matrix(x_um, grid)
        half = ay @ pupil.reshape(m, n_b, n_c * n_a)
        fld = half.reshape(m, n_sub * n_c, n_a) @ ax.transpose(1, 2)
        inten = fld.real.square() + fld.imag.square()
        inten = inten.reshape(m, n_sub, n_c, n_sub).sum(dim=2)
        binned = inten.reshape(m, size, os_, size, os_).sum(dim=(2, 4))
        dk = k0 * b._du
        scale = (pix / os_) ** 2 * dk**2 / (4.0 * math.pi**2)
        power = (self._power0 * amp.square())[None]
        if b._has_evanescent:
            power = power * torch.exp(-2.0 * k0 * zz * b._kz_s_im)
        return binned * (scale / power.sum(dim=(1, 2)))[:, None, None]

    def aberration_phase(
        self, depth_um: float, coefficients: dict[int, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pupil phase in waves (index mismatch at ``depth_um`` + Zernike terms).

        Returns the phase on the propagating part of the pupil and that mask.
        The focus term is left in; :func:`phase_rms_error_waves` removes it.
        """
        lam = self.optics.wavelength_um
        ph = depth_um * self._kz_s_np.real / lam
        u = self.base._np_u
        uy, ux = np.meshgrid(u, u, indexing="ij")
        phi = np.arctan2(uy, ux)
        for j, a in coefficients.items():
            ph = ph + a * zernike(int(j), self._rho, phi)
        mask = self._inside & (self._kz_s_np.imag == 0)
        return ph, mask


def phase_rms_error_waves(
    model: PupilPSF,
    fitted: tuple[float, dict[int, float]],
    true: tuple[float, dict[int, float]],
) -> float:
    """RMS difference of two pupil phases, waves, over the propagating pupil.

    Each is ``(depth_um, {noll: waves})``. Piston, tilts and the focus term (the
    ``n_i cos(theta_i)`` shape a stage movement adds, with which defocus is
    degenerate) are removed by least squares first, since the beads' positions
    absorb them. So the figure compares the aberrations, with the index-mismatch
    phase and its Zernike equivalent counted alike.
    """
    p1, mask = model.aberration_phase(*fitted)
    p2, _ = model.aberration_phase(*true)
    d = (p1 - p2)[mask]
    u = model.base._np_u
    uy, ux = np.meshgrid(u, u, indexing="ij")
    kz = model._kz_i_np / model.optics.wavelength_um
    a = np.stack([np.ones_like(d), ux[mask], uy[mask], kz[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(a, d, rcond=None)
    r = d - a @ coef
    return float(np.sqrt(np.mean(r**2)))

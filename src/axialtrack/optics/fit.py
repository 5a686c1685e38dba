"""Maximum-likelihood fit of the microscope's pupil to calibration bead stacks.

The PSF of a real microscope differs from the nominal :class:`PSFModel`: the
objective and the splitter add aberrations, the pupil is not uniformly
transmitting, the beads' depth and the refractive-index mismatch are not exactly
known, and the second plane has its own aberrations and transmission. This module
fits those, as the pupil-based inverse-modelling tools of the field do (uiPSF,
INSPR), to the crops of the accepted calibration beads.

The model of bead ``b``, frame ``k`` (stage position ``z_k``), plane ``p``::

    mu_bkp = N_b t_p h_p(x_b + dx_p, y_b + dy_p; depth, focus = z_k - s_b + p delta)
             + bg_bp,

with ``h_p`` the pixelated vectorial PSF of :class:`PSFModel` whose pupil carries

- the index-mismatch phase of an emitter at the fitted ``depth`` (shared by the
  beads) in the nominal sample medium,
- Zernike phase ``2 pi sum_j a_j Z_j`` (Noll 5-15 by default: astigmatism, coma,
  trefoil, spherical, secondary astigmatism, quadrafoil), plus ``d_j`` for plane
  1 (the splitter's relative aberrations),
- the amplitude ``exp(sum_j c_j Z_j)`` (Noll 2, 3, 4, 11 by default:
  apodization, a linear and a radial fall-off),

``t_0 = 1``, ``t_1`` the plane-1 transmission, ``delta`` the plane offset,
``(dx_1, dy_1)`` the bead's registered sub-pixel position in plane 1 plus one
fitted shift, and per bead ``x_b, y_b`` (um from the crop centre), ``s_b`` (the
stage position of the coverslip under the bead), ``N_b`` photons and a background
per plane. Piston, tilt and defocus of the pupil phase are the bead positions.

Noise: camera counts are converted to photoelectrons with the camera's offset and
gain; Poisson shot noise plus Gaussian read noise of variance ``sigma^2`` is
approximated by the shifted Poisson model (``x + sigma^2 ~ Poisson(mu +
sigma^2)``, Huang et al. 2013), with an sCMOS per-pixel map when given. The
fitted quantity is the Poisson deviance, minimized by L-BFGS (strong Wolfe line
search) with torch autograd, batched over all crops.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from axialtrack.errors import AxialtrackError

from .params import Optics
from .psf import PSFModel
from .zernike import zernike

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike

    from ._splinefit import SplinePSFFit

__all__ = [
    "FitConfig",
    "PSFFit",
    "PSFFitError",
    "PupilPSF",
    "fit_beads",
    "fit_crlb",
    "phase_rms_error_waves",
]

#: Beads the fit needs at least (fewer cannot separate the pupil from the beads).
MIN_BEADS = 5
#: Median photons per bead (plane 0, photoelectrons) the fit needs at least.
MIN_PHOTONS = 500.0
#: Per-bead reduced deviance above ``median + OUTLIER_MAD * 1.4826 MAD`` and above
#: ``OUTLIER_RATIO x median`` marks the bead an outlier (doublet, dirt, a bead
#: that moved).
OUTLIER_MAD = 5.0
OUTLIER_RATIO = 1.3


class PSFFitError(AxialtrackError, ValueError):
    """The beads cannot give a trustworthy PSF fit (too few, dim, not converged)."""


class FitConfig(BaseModel):
    """Settings of :func:`fit_beads`.

    Parameters
    ----------
    phase_noll
        Noll indices of the fitted Zernike phase (both planes).
    plane1_noll
        Noll indices of plane 1's relative phase.
    amplitude_noll
        Noll indices of the pupil amplitude ``exp(sum c_j Z_j)``.
    fit_depth
        Fit the beads' depth (index mismatch); otherwise it stays at ``depth_um``.
        Not fitted when the sample's index equals the immersion's (it is then
        the same as a focus shift).
    depth_um
        Starting (or fixed) bead depth above the coverslip, um.
    dz_range_um
        Frames within this distance of a bead's reference Z are fitted.
    max_frames
        At most this many frames per bead (evenly spread over the range).
    max_beads
        At most this many beads (the brightest).
    max_iter
        L-BFGS iterations of the joint fit, at most.
    tolerance
        Converged when the total deviance (twice the negative log-likelihood)
        drops by less than this over five L-BFGS iterations: 2 is a change of
        the log-likelihood by 1, statistically nothing.
    exclude_outliers
        Refit without the beads flagged as outliers.
    pupil_samples, oversample
        Sampling of the model (see :class:`Optics`).
    chunk
        Crops per batch of matrix products (memory).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase_noll: tuple[int, ...] = tuple(range(5, 16))
    plane1_noll: tuple[int, ...] = tuple(range(5, 16))
    amplitude_noll: tuple[int, ...] = (2, 3, 4, 11)
    fit_depth: bool = True
    depth_um: float = Field(0.05, ge=0.0)
    dz_range_um: float = Field(1.0, gt=0.0)
    max_frames: int = Field(15, ge=5)
    max_beads: int = Field(50, ge=MIN_BEADS)
    max_iter: int = Field(150, ge=1)
    tolerance: float = Field(2.0, gt=0.0)
    exclude_outliers: bool = True
    pupil_samples: int = Field(64, ge=16)
    oversample: int = Field(3, ge=1)
    chunk: int = Field(256, ge=1)


# ----------------------------------------------------------------- the model
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


# ------------------------------------------------------------------ results
@dataclass
class PSFFit:
    """A fitted PSF: parameters, per-bead results, convergence, rendering.

    Attributes
    ----------
    optics
        Nominal optics the fit started from (pixel size, NA, wavelength, media).
    phase_noll, plane1_noll, amplitude_noll
        Noll indices of the fitted terms.
    zernike
        Plane-0 phase, Noll index -> waves RMS.
    plane1_zernike
        Plane 1's phase relative to plane 0, Noll index -> waves RMS.
    amplitude
        Pupil amplitude terms, Noll index -> coefficient of ``exp(sum c_j Z_j)``.
    depth_um
        Bead depth above the coverslip (fitted or fixed).
    plane_offset_um
        Plane 1's focus offset.
    transmission
        Photons in plane 1 per photon in plane 0.
    plane1_shift_um
        ``(dx, dy)`` shift of plane 1 beyond the registration.
    focus_dz0_um
        Nominal focus (relative to the coverslip) at which the beads' reference Z
        puts them: ``dz = 0`` of the training labels. :meth:`render` uses it.
    crop_size
        Size of the fitted crops.
    beads
        One row per fitted bead: ``bead``, ``x_um``, ``y_um``, ``coverslip_um``,
        ``photons``, ``background0``, ``background1``, ``nll`` (negative
        log-likelihood, shifted Poisson, photoelectrons), ``deviance``,
        ``reduced_deviance`` (per pixel), ``outlier`` (bool), ``used`` (in the
        final fit), ``n_frames``.
    converged
        The optimizer stopped on the tolerance, not the iteration limit.
    n_iter
        L-BFGS iterations.
    time_s
        Wall time of the fit.
    history
        Reduced deviance after each iteration.
    camera
        ``{"offset_adu", "e_per_adu", "read_noise_e"}`` used.
    message
        Why the optimizer stopped.
    selection
        How the calibration chose this model over a spline PSF (held-out
        negative log-likelihoods), when it compared them.
    """

    optics: Optics
    phase_noll: tuple[int, ...]
    plane1_noll: tuple[int, ...]
    amplitude_noll: tuple[int, ...]
    zernike: dict[int, float]
    plane1_zernike: dict[int, float]
    amplitude: dict[int, float]
    depth_um: float
    plane_offset_um: float
    transmission: float
    plane1_shift_um: tuple[float, float]
    focus_dz0_um: float
    crop_size: int
    beads: pd.DataFrame
    converged: bool
    n_iter: int
    time_s: float
    history: list[float] = field(default_factory=list)
    camera: dict[str, float] = field(default_factory=dict)
    message: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    _model: PupilPSF | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ rendering
    def model(self, dtype: torch.dtype = torch.float32) -> PupilPSF:
        """The pupil model (built once per dtype)."""
        if self._model is None or self._model.dtype != dtype:
            self._model = PupilPSF(
                self.optics,
                sorted(set(self.phase_noll) | set(self.plane1_noll)),
                self.amplitude_noll,
                dtype=dtype,
            )
        return self._model

    def _phase_vectors(self, mdl: PupilPSF) -> torch.Tensor:
        """``(2, J)`` phase coefficients of plane 0 and 1 on the model's basis."""
        p0 = [self.zernike.get(j, 0.0) for j in mdl.phase_noll]
        p1 = [
            self.zernike.get(j, 0.0) + self.plane1_zernike.get(j, 0.0)
            for j in mdl.phase_noll
        ]
        return torch.tensor([p0, p1], dtype=mdl.dtype, device=mdl.device)

    def render(
        self,
        xyz_um: ArrayLike | torch.Tensor,
        size: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Both planes' PSFs ``(N, 2, size, size)`` of emitters at ``(x, y, dz)``.

        ``x, y``: offset from the centre of the central pixel (um, plane-0 frame;
        plane 1 adds the fitted shift); ``dz``: ``ref_z - stage_z`` in the
        training labels' convention (um, stage frame): plane 0's focus is
        ``focus_dz0_um - dz``, plane 1's ``delta`` further. Each image is the
        fraction of the plane's own photons per pixel (plane 1's photons are
        ``transmission`` times plane 0's), as :meth:`PSFModel.psf` normalizes.
        Differentiable with respect to ``xyz_um`` when it is a tensor.
        """
        mdl = self.model(dtype)
        s = int(size or self.crop_size)
        xyz = torch.as_tensor(xyz_um, dtype=mdl.dtype, device=mdl.device)
        if xyz.ndim == 1:
            xyz = xyz[None]
        n = xyz.shape[0]
        ph = self._phase_vectors(mdl)
        amp = torch.tensor(
            [self.amplitude.get(j, 0.0) for j in mdl.amplitude_noll],
            dtype=mdl.dtype,
            device=mdl.device,
        )
        depth = torch.tensor(self.depth_um, dtype=mdl.dtype, device=mdl.device)
        sx, sy = self.plane1_shift_um
        out = []
        for p in (0, 1):
            f = self.focus_dz0_um - xyz[:, 2] + p * self.plane_offset_um
            out.append(
                mdl.images(
                    xyz[:, 0] + (sx if p else 0.0),
                    xyz[:, 1] + (sy if p else 0.0),
                    depth,
                    f,
                    ph[p],
                    amp,
                    s,
                )
            )
        return torch.stack(out, dim=1).reshape(n, 2, s, s)

    def bead_model(self, bead: int, stage_z_um: ArrayLike) -> np.ndarray:
        """Expected photoelectrons ``(F, 2, S, S)`` of a fitted bead at stage Z.

        Uses the bead's fitted position, coverslip, photons and backgrounds.
        """
        row = self.beads[self.beads["bead"] == bead].iloc[0]
        z = np.atleast_1d(np.asarray(stage_z_um, float))
        dz = self.focus_dz0_um - (z - float(row["coverslip_um"]))
        sx, sy = self.plane1_shift_um
        mdl = self.model()
        ph = self._phase_vectors(mdl)
        amp = torch.tensor(
            [self.amplitude.get(j, 0.0) for j in mdl.amplitude_noll], dtype=mdl.dtype
        )
        depth = torch.tensor(self.depth_um, dtype=mdl.dtype)
        out = []
        with torch.no_grad():
            for p in (0, 1):
                x = float(row["x_um"]) + (float(row["dx1_um"]) + sx if p else 0.0)
                y = float(row["y_um"]) + (float(row["dy1_um"]) + sy if p else 0.0)
                f = torch.as_tensor(
                    self.focus_dz0_um - dz + p * self.plane_offset_um, dtype=mdl.dtype
                )
                h = mdl.images(
                    torch.full_like(f, x),
                    torch.full_like(f, y),
                    depth,
                    f,
                    ph[p],
                    amp,
                    self.crop_size,
                ).numpy()
                n = float(row["photons"]) * (self.transmission if p else 1.0)
                out.append(n * h + float(row[f"background{p}"]))
        return np.stack(out, axis=1)

    def renderer(self, size: int | None = None) -> Callable[[Any], np.ndarray]:
        """``render`` as a function of ``xyz_um`` only, returning numpy (float64)."""

        def f(xyz_um: Any) -> np.ndarray:
            with torch.no_grad():
                return self.render(xyz_um, size).cpu().numpy().astype(np.float64)

        return f

    def sampled(self, dz_um: ArrayLike, size: int | None = None) -> np.ndarray:
        """``(2, Z, size, size)`` PSF stack of a centred emitter on a ``dz`` grid."""
        dz = np.asarray(dz_um, dtype=float).ravel()
        xyz = np.stack([np.zeros_like(dz), np.zeros_like(dz), dz], axis=1)
        return np.moveaxis(self.renderer(size)(xyz), 1, 0)

    # ------------------------------------------------------------- storage
    def to_json(self) -> dict[str, Any]:
        """JSON-able parameters and per-bead results (without the optics' cache)."""
        b = self.beads
        return {
            "format": 1,
            "model": "pupil",
            "optics": self.optics.model_dump(mode="json"),
            "phase_noll": list(self.phase_noll),
            "plane1_noll": list(self.plane1_noll),
            "amplitude_noll": list(self.amplitude_noll),
            "zernike": {str(k): v for k, v in self.zernike.items()},
            "plane1_zernike": {str(k): v for k, v in self.plane1_zernike.items()},
            "amplitude": {str(k): v for k, v in self.amplitude.items()},
            "depth_um": self.depth_um,
            "plane_offset_um": self.plane_offset_um,
            "transmission": self.transmission,
            "plane1_shift_um": list(self.plane1_shift_um),
            "focus_dz0_um": self.focus_dz0_um,
            "crop_size": self.crop_size,
            "converged": self.converged,
            "n_iter": self.n_iter,
            "time_s": self.time_s,
            "history": list(self.history),
            "camera": dict(self.camera),
            "message": self.message,
            "selection": dict(self.selection),
            "beads": {c: [_jsonable(v) for v in b[c].tolist()] for c in b.columns},
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> PSFFit:
        """Inverse of :meth:`to_json`."""
        if int(meta.get("format", 0)) != 1 or meta.get("model") != "pupil":
            raise ValueError(
                f"unknown fitted PSF format {meta.get('format')!r} / "
                f"{meta.get('model')!r}; this version reads format 1, model 'pupil'"
            )

        def d(key: str) -> dict[int, float]:
            return {int(k): float(v) for k, v in dict(meta[key]).items()}

        return cls(
            optics=Optics.model_validate(meta["optics"]),
            phase_noll=tuple(int(j) for j in meta["phase_noll"]),
            plane1_noll=tuple(int(j) for j in meta["plane1_noll"]),
            amplitude_noll=tuple(int(j) for j in meta["amplitude_noll"]),
            zernike=d("zernike"),
            plane1_zernike=d("plane1_zernike"),
            amplitude=d("amplitude"),
            depth_um=float(meta["depth_um"]),
            plane_offset_um=float(meta["plane_offset_um"]),
            transmission=float(meta["transmission"]),
            plane1_shift_um=(
                float(meta["plane1_shift_um"][0]),
                float(meta["plane1_shift_um"][1]),
            ),
            focus_dz0_um=float(meta["focus_dz0_um"]),
            crop_size=int(meta["crop_size"]),
            beads=pd.DataFrame(meta.get("beads", {})),
            converged=bool(meta["converged"]),
            n_iter=int(meta["n_iter"]),
            time_s=float(meta["time_s"]),
            history=[float(v) for v in meta.get("history", [])],
            camera={k: float(v) for k, v in dict(meta.get("camera", {})).items()},
            message=str(meta.get("message", "")),
            selection=dict(meta.get("selection") or {}),
        )

    def dumps(self) -> str:
        """:meth:`to_json` as a string."""
        return json.dumps(self.to_json())

    @property
    def outliers(self) -> np.ndarray:
        """Bead ids flagged as likelihood outliers."""
        b = self.beads
        return b["bead"].to_numpy()[b["outlier"].to_numpy(bool)]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


# ------------------------------------------------------------------ fitting
@dataclass
class _Data:
    """Fit input in photoelectrons, one row per (bead, frame)."""

    counts: torch.Tensor  # (R, 2, S, S) shifted counts x + sigma^2
    var: torch.Tensor  # (R, 2, S, S) or scalar: read-noise variance
    stage_z: torch.Tensor  # (R,)
    bead_idx: torch.Tensor  # (R,) 0..B-1
    bead_ids: np.ndarray  # (B,)
    off0_um: np.ndarray  # (B, 2) sub-pixel bead position in the plane-0 crop
    d01_um: np.ndarray  # (B, 2) plane-1 minus plane-0 sub-pixel offset
    ref_z: np.ndarray  # (B,)


def _prepare(
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    camera: dict[str, float],
    pixel_um: float,
    cfg: FitConfig,
    read_noise_map: np.ndarray | None,
    dtype: torch.dtype,
) -> _Data:
    dz = ref_z_um - stage_z_um
    ids_all = np.unique(bead)
    keep_rows: list[np.ndarray] = []
    bright: list[float] = []
    for b in ids_all:
        rows = np.nonzero((bead == b) & (np.abs(dz) <= cfg.dz_range_um))[0]
        if rows.size == 0:
            continue
        rows = rows[np.argsort(stage_z_um[rows])]
        if rows.size > cfg.max_frames:
            pick = np.unique(np.round(np.linspace(0, rows.size - 1, cfg.max_frames)))
            rows = rows[pick.astype(int)]
        keep_rows.append(rows)
        c = crops_adu[rows, 0].astype(float)
        bright.append(float((c - np.median(c)).sum(axis=(1, 2)).max()))
    order = np.argsort(bright)[::-1][: cfg.max_beads]
    keep_rows = [keep_rows[i] for i in sorted(order)]
    rows = np.concatenate(keep_rows) if keep_rows else np.zeros(0, int)
    ids = np.array([bead[r[0]] for r in keep_rows], dtype=np.int64)
    idx = (
        np.concatenate([np.full(r.size, i) for i, r in enumerate(keep_rows)])
        if (keep_rows)
        else np.zeros(0, int)
    )
    e = (crops_adu[rows].astype(np.float64) - camera["offset_adu"]) * camera[
        "e_per_adu"
    ]
    rn = camera.get("read_noise_e", 0.0)
    if read_noise_map is not None:
        var = np.asarray(read_noise_map, float) ** 2
        var = np.broadcast_to(var, e.shape).copy()
    else:
        var = np.full(e.shape, rn**2)
    counts = np.maximum(e + var, 0.0)
    off0 = np.zeros((ids.size, 2))
    d01 = np.zeros((ids.size, 2))
    for i, b in enumerate(ids):
        x0, y0, x1, y1 = positions_px[int(b)]
        o0 = np.array([x0 - np.rint(x0), y0 - np.rint(y0)])
        o1 = np.array([x1 - np.rint(x1), y1 - np.rint(y1)])
        off0[i] = o0 * pixel_um
        d01[i] = (o1 - o0) * pixel_um
    rz = np.array([ref_z_um[r[0]] for r in keep_rows]) if keep_rows else np.zeros(0)
    return _Data(
        counts=torch.as_tensor(counts, dtype=dtype),
        var=torch.as_tensor(var, dtype=dtype),
        stage_z=torch.as_tensor(stage_z_um[rows], dtype=torch.float64),
        bead_idx=torch.as_tensor(idx, dtype=torch.long),
        bead_ids=ids,
        off0_um=off0,
        d01_um=d01,
        ref_z=rz,
    )


class _Params(torch.nn.Module):
    """Fit parameters, each stored scaled to about unit steps."""

    def __init__(
        self,
        n_beads: int,
        n_phase: int,
        n_p1: int,
        n_amp: int,
        init: dict[str, Any],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()

        def p(v: Any) -> torch.nn.Parameter:
            return torch.nn.Parameter(
                torch.as_tensor(np.asarray(v, float), dtype=dtype)
            )

        self.phase = p(np.zeros(n_phase))
        self.p1 = p(np.zeros(n_p1))
        self.amp = p(np.zeros(n_amp))
        self.depth = p(init["depth"] / self.S_DEPTH)
        self.delta = p(0.0)
        self.logt = p(math.log(max(init["transmission"], 1e-3)) / self.S_LOGT)
        self.shift = p(np.zeros(2))
        self.xy = p(init["xy"] / self.S_XY)
        self.s = p(np.zeros(n_beads))
        self.logn = p(np.log(init["photons"]) / self.S_LOG)
        self.logb = p(np.log(np.maximum(init["bg"], 1e-2)) / self.S_LOG)
        self.delta0 = float(init["delta"])
        self.s0 = torch.as_tensor(init["s"], dtype=torch.float64)

    S_PHASE = 0.05  # waves
    S_AMP = 0.1
    S_DEPTH = 0.1  # um
    S_DELTA = 0.05  # um
    S_LOGT = 0.1
    S_SHIFT = 0.01  # um
    S_XY = 0.01  # um
    S_Z = 0.02  # um
    S_LOG = 0.1

    def globals_(self) -> list[torch.nn.Parameter]:
        return [
            self.phase,
            self.p1,
            self.amp,
            self.depth,
            self.delta,
            self.logt,
            self.shift,
        ]

    def locals_(self) -> list[torch.nn.Parameter]:
        return [self.xy, self.s, self.logn, self.logb]


def _model_counts(
    mdl: PupilPSF,
    prm: _Params,
    data: _Data,
    rows: torch.Tensor,
    p1_index: torch.Tensor,
    d01: torch.Tensor,
    size: int,
    fit_depth: bool,
) -> torch.Tensor:
    """Expected photoelectrons ``(len(rows), 2, S, S)``."""
    bi = data.bead_idx[rows]
    xy = prm.xy[bi] * prm.S_XY
    depth = prm.depth * prm.S_DEPTH
    depth = (
        torch.nn.functional.softplus(depth * 50.0) / 50.0
        if fit_depth
        else (depth.detach())
    )
    s = prm.s[bi] * prm.S_Z
    focus0 = (data.stage_z[rows] - prm.s0[bi]).to(prm.s.dtype) - s
    delta = prm.delta0 + prm.delta * prm.S_DELTA
    ph0 = prm.phase * prm.S_PHASE
    ph1 = ph0.index_add(0, p1_index, prm.p1 * prm.S_PHASE)
    amp = prm.amp * prm.S_AMP
    n = torch.exp(prm.logn[bi] * prm.S_LOG)
    t1 = torch.exp(prm.logt * prm.S_LOGT)
    bg = torch.exp(prm.logb[bi] * prm.S_LOG)  # (r, 2)
    sh = prm.shift * prm.S_SHIFT
    h0 = mdl.images(xy[:, 0], xy[:, 1], depth, focus0, ph0, amp, size)
    h1 = mdl.images(
        xy[:, 0] + d01[bi, 0] + sh[0],
        xy[:, 1] + d01[bi, 1] + sh[1],
        depth,
        focus0 + delta,
        ph1,
        amp,
        size,
    )
    mu0 = n[:, None, None] * h0 + bg[:, 0, None, None]
    mu1 = (n * t1)[:, None, None] * h1 + bg[:, 1, None, None]
    return torch.stack([mu0, mu1], dim=1)


def _deviance(mu: torch.Tensor, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Per-pixel shifted-Poisson deviance ``2 (mu' - x' + x' log(x'/mu'))``."""
    mup = mu.double() + var.double()
    x = x.double()
    xlogx = torch.where(x > 0, x * torch.log(torch.clamp(x, min=1e-12) / mup), 0.0)
    return 2.0 * (mup - x + xlogx)


def _nll(mu: torch.Tensor, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Per-pixel shifted-Poisson negative log-likelihood (with ``lgamma``)."""
    mup = mu.double() + var.double()
    x = x.double()
    return mup - x * torch.log(mup) + torch.lgamma(x + 1.0)


def _initial(
    data: _Data, size: int, pixel_um: float, transmission0: float, focus0: float
) -> dict[str, Any]:
    c = data.counts.double() - data.var.double()
    nb = data.bead_ids.size
    edge = torch.cat(
        [c[..., 0, :], c[..., -1, :], c[..., 1:-1, 0], c[..., 1:-1, -1]], dim=-1
    )
    bg_rows = edge.median(dim=-1).values  # (R, 2)
    bg = np.zeros((nb, 2))
    ph = np.zeros(nb)
    t = []
    for i in range(nb):
        sel = data.bead_idx == i
        b = bg_rows[sel].median(dim=0).values
        bg[i] = b.numpy()
        sums = (c[sel] - b[None, :, None, None]).sum(dim=(-1, -2))  # (r, 2)
        k = int(sums[:, 0].argmax())
        # the crop holds about 75 % of the photons near focus (halo, rings)
        ph[i] = max(float(sums[k, 0]) / 0.75, 10.0)
        t.append(float(sums[:, 1].max() / max(float(sums[:, 0].max()), 1e-9)))
    return {
        "xy": data.off0_um,
        "photons": ph,
        "bg": np.maximum(bg, 0.05),
        "transmission": float(np.median(t)) if t else transmission0,
        "s": data.ref_z - focus0,
    }


def fit_beads(
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    optics: Optics,
    plane_offset_um: float,
    camera: dict[str, float],
    config: FitConfig | None = None,
    read_noise_map: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> PSFFit:
    """Fit the pupil to bead crops by maximum likelihood.

    Parameters
    ----------
    crops_adu
        ``(R, 2, S, S)`` raw camera counts, one row per (bead, frame): plane 0
        cropped on the bead's pixel, plane 1 on its registered pixel (the
        calibration's :class:`~axialtrack.calibrate.Examples`).
    stage_z_um, bead, ref_z_um
        ``(R,)`` stage position of each row's frame, its bead id, and the bead's
        reference Z (stage frame, plane 0 in focus).
    positions_px
        Bead id -> ``(x0, y0, x1, y1)``: the bead's sub-pixel position in plane 0
        and its registered position in plane 1 (pixels; the crops are centred on
        the rounded positions).
    optics
        Nominal optics (pixel size, NA, wavelength, immersion and sample index).
    plane_offset_um
        Nominal plane offset (fitted from there).
    camera
        ``{"offset_adu", "e_per_adu", "read_noise_e"}``.
    config
        :class:`FitConfig`.
    read_noise_map
        sCMOS read noise (e- RMS) per crop pixel, broadcastable to ``crops_adu``
        (e.g. ``(R, 2, S, S)`` cut from the camera's map with the crops).
    dtype
        Torch dtype of the model (float32 is about twice as fast as float64).
    progress
        Called with a line of text after each stage.

    Raises
    ------
    PSFFitError
        Fewer than :data:`MIN_BEADS` beads, median photons below
        :data:`MIN_PHOTONS`, or no convergence within ``config.max_iter``
        iterations.
    """
    cfg = config or FitConfig()
    t0 = time.perf_counter()
    size = int(crops_adu.shape[-1])
    optics = optics.model_copy(
        update={
            "zernike": {},
            "pupil_samples": cfg.pupil_samples,
            "oversample": cfg.oversample,
        }
    )
    pix = optics.pixel_size_um
    if optics.n_sample == optics.n_immersion:
        # index-matched: the depth only shifts the focus, which the beads' Z does
        cfg = cfg.model_copy(update={"fit_depth": False})
    data = _prepare(
        np.asarray(crops_adu),
        np.asarray(stage_z_um, float),
        np.asarray(bead),
        np.asarray(ref_z_um, float),
        positions_px,
        camera,
        pix,
        cfg,
        read_noise_map,
        dtype,
    )
    nb = int(data.bead_ids.size)
    if nb < MIN_BEADS:
        raise PSFFitError(
            f"the PSF fit needs at least {MIN_BEADS} beads with frames within "
            f"{cfg.dz_range_um} um of focus; got {nb} (use more fields or "
            "calibrate --no-psf-fit)"
        )
    phase_all = tuple(sorted(set(cfg.phase_noll) | set(cfg.plane1_noll)))
    mdl = PupilPSF(optics, phase_all, cfg.amplitude_noll, dtype=dtype)
    p1_index = torch.tensor(
        [phase_all.index(j) for j in cfg.plane1_noll], dtype=torch.long
    )
    focus_init = float(mdl.base.in_focus_offset(cfg.depth_um))
    init = _initial(data, size, pix, 1.0, focus_init)
    med_ph = float(np.median(init["photons"]))
    if med_ph < MIN_PHOTONS:
        raise PSFFitError(
            f"the beads are too dim for a PSF fit: median {med_ph:.0f} photons per "
            f"bead in plane 0, need {MIN_PHOTONS:.0f} (longer exposure, brighter "
            "beads, or calibrate --no-psf-fit)"
        )
    init["depth"] = cfg.depth_um
    init["delta"] = plane_offset_um
    phase_mask = torch.tensor([j in cfg.phase_noll for j in phase_all], dtype=dtype)
    n_pix_total = float(data.counts.numel())
    d01 = torch.as_tensor(data.d01_um, dtype=dtype)

    def run(
        active: list[int], max_iter: int, stage: str, prm: _Params, tol: float
    ) -> tuple[bool, int, list[float], str]:
        params = prm.globals_() + prm.locals_()
        use = [params[i] for i in range(len(params)) if i in active]
        for i, q in enumerate(params):
            q.requires_grad_(i in active)
        opt = torch.optim.LBFGS(
            use,
            lr=1.0,
            max_iter=5,
            history_size=30,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )
        rows_all = active_rows

        def closure() -> torch.Tensor:
            opt.zero_grad()
            total = torch.zeros((), dtype=torch.float64)
            for i in range(0, rows_all.numel(), cfg.chunk):
                r = rows_all[i : i + cfg.chunk]
                mu = _model_counts(
                    mdl, prm, data, r, p1_index, d01, size, cfg.fit_depth
                )
                dev = _deviance(mu, data.counts[r], data.var[r]).sum() / n_pix_total
                dev.backward()
                total = total + dev.detach()
            with torch.no_grad():
                if prm.phase.grad is not None:
                    prm.phase.grad *= phase_mask
            return total

        hist: list[float] = []
        prev = math.inf
        msg = f"{stage}: iteration limit ({max_iter})"
        done = 0
        while done < max_iter:
            loss = float(opt.step(closure))
            state = opt.state[use[0]]
            done = int(state.get("n_iter", done + 1))
            if not math.isfinite(loss):
                return False, done, hist, f"{stage}: the deviance became {loss}"
            hist.append(loss * n_pix_total / max(n_pix_rows(), 1.0))
            if abs(prev - loss) * n_pix_total <= tol:
                msg = f"{stage}: deviance change below {tol:g} over 5 iterations"
                return True, done, hist, msg
            prev = loss
        return False, done, hist, msg

    def n_pix_rows() -> float:
        return float(active_rows.numel() * 2 * size * size)

    prm = _Params(
        nb, len(phase_all), len(cfg.plane1_noll), len(cfg.amplitude_noll), init, dtype
    )
    n_glob = len(prm.globals_())
    local_idx = list(range(n_glob, n_glob + 4))
    glob_idx = [0, 1, 2, 4, 5, 6] + ([3] if cfg.fit_depth else [])
    used = np.ones(nb, dtype=bool)
    active_rows = torch.arange(data.counts.shape[0])
    # 1. the beads with the nominal pupil, 2. everything jointly on every third
    # frame (coarse: most of the way at a third of the cost), 3. on all frames
    rank = torch.zeros(data.counts.shape[0], dtype=torch.long)
    for i in range(nb):
        sel = torch.nonzero(data.bead_idx == i).reshape(-1)
        rank[sel] = torch.arange(sel.numel())
    all_rows = torch.arange(data.counts.shape[0])
    active_rows = torch.nonzero(rank % 3 == 0).reshape(-1)
    _, it1, h1, _ = run(local_idx, 5, "beads", prm, 10 * cfg.tolerance)
    if progress:
        progress(f"PSF fit: beads placed ({it1} iterations, {h1[-1]:.3f} dev/px)")
    _, it2, h2, _ = run(
        glob_idx + local_idx, cfg.max_iter, "coarse", prm, cfg.tolerance / 3
    )
    if progress:
        progress(
            f"PSF fit: pupil on a third of the frames ({it2} iterations, "
            f"{h2[-1]:.3f} dev/px)"
        )
    active_rows = all_rows
    ok, it3, h3, msg = run(
        glob_idx + local_idx, cfg.max_iter, "joint", prm, cfg.tolerance
    )
    if progress:
        progress(f"PSF fit: pupil fitted ({it3} iterations, {h3[-1]:.3f} dev/px)")
    it2 += it3
    h2 += h3
    per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    outlier = _outliers(per["reduced_deviance"])
    n_iter = it1 + it2
    hist = h1 + h2
    if cfg.exclude_outliers and outlier.any() and (~outlier).sum() >= MIN_BEADS:
        used = ~outlier
        keep = torch.as_tensor(used)[data.bead_idx]
        active_rows = torch.nonzero(keep).reshape(-1)
        ok, it3, h3, msg = run(
            glob_idx + local_idx, cfg.max_iter, "refit", prm, cfg.tolerance
        )
        n_iter += it3
        hist += h3
        if progress:
            progress(
                f"PSF fit: refitted without {int(outlier.sum())} outlier bead(s) "
                f"({it3} iterations)"
            )
        per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    if not ok:
        raise PSFFitError(
            f"the PSF fit did not converge within {cfg.max_iter} L-BFGS iterations "
            f"(deviance tolerance {cfg.tolerance:g}; {msg}); check the beads "
            "(drift, doublets) or calibrate --no-psf-fit"
        )
    with torch.no_grad():
        phase = (prm.phase * prm.S_PHASE).double().numpy() * phase_mask.double().numpy()
        p1 = (prm.p1 * prm.S_PHASE).double().numpy()
        amp = (prm.amp * prm.S_AMP).double().numpy()
        depth_raw = float(prm.depth.detach()) * prm.S_DEPTH
        depth = (
            float(torch.nn.functional.softplus(torch.tensor(depth_raw * 50.0)) / 50.0)
            if cfg.fit_depth
            else depth_raw
        )
        s = prm.s0.numpy() + (prm.s * prm.S_Z).double().numpy()
        xy = (prm.xy * prm.S_XY).double().numpy()
        shift = (prm.shift * prm.S_SHIFT).double().numpy()
    focus_dz0 = float(np.median((data.ref_z - s)[used]))
    beads = pd.DataFrame(
        {
            "bead": data.bead_ids,
            "x_um": xy[:, 0],
            "y_um": xy[:, 1],
            "coverslip_um": s,
            "photons": per["photons"],
            "background0": per["bg"][:, 0],
            "background1": per["bg"][:, 1],
            "nll": per["nll"],
            "deviance": per["deviance"],
            "reduced_deviance": per["reduced_deviance"],
            "outlier": outlier,
            "used": used,
            "n_frames": per["n_frames"],
            "dx1_um": data.d01_um[:, 0],
            "dy1_um": data.d01_um[:, 1],
        }
    )
    return PSFFit(
        optics=optics,
        phase_noll=tuple(cfg.phase_noll),
        plane1_noll=tuple(cfg.plane1_noll),
        amplitude_noll=tuple(cfg.amplitude_noll),
        zernike={j: float(phase[phase_all.index(j)]) for j in cfg.phase_noll},
        plane1_zernike={j: float(p1[i]) for i, j in enumerate(cfg.plane1_noll)},
        amplitude={j: float(amp[i]) for i, j in enumerate(cfg.amplitude_noll)},
        depth_um=depth,
        plane_offset_um=float(prm.delta0 + float(prm.delta.detach()) * prm.S_DELTA),
        transmission=float(math.exp(float(prm.logt.detach()) * prm.S_LOGT)),
        plane1_shift_um=(float(shift[0]), float(shift[1])),
        focus_dz0_um=focus_dz0,
        crop_size=size,
        beads=beads,
        converged=ok,
        n_iter=n_iter,
        time_s=time.perf_counter() - t0,
        history=hist,
        camera={
            "offset_adu": float(camera["offset_adu"]),
            "e_per_adu": float(camera["e_per_adu"]),
            "read_noise_e": float(camera.get("read_noise_e", 0.0)),
        },
        message=msg,
    )


def _per_bead(
    mdl: PupilPSF,
    prm: _Params,
    data: _Data,
    p1_index: torch.Tensor,
    d01: torch.Tensor,
    size: int,
    cfg: FitConfig,
) -> dict[str, np.ndarray]:
    nb = data.bead_ids.size
    nll = np.zeros(nb)
    dev = np.zeros(nb)
    npx = np.zeros(nb)
    with torch.no_grad():
        for i in range(0, data.counts.shape[0], cfg.chunk):
            r = torch.arange(i, min(i + cfg.chunk, data.counts.shape[0]))
            mu = _model_counts(mdl, prm, data, r, p1_index, d01, size, cfg.fit_depth)
            x, v = data.counts[r], data.var[r]
            bi = data.bead_idx[r].numpy()
            np.add.at(nll, bi, _nll(mu, x, v).double().sum(dim=(1, 2, 3)).numpy())
            np.add.at(dev, bi, _deviance(mu, x, v).double().sum(dim=(1, 2, 3)).numpy())
            np.add.at(npx, bi, 2 * size * size)
        photons = torch.exp(prm.logn * prm.S_LOG).double().numpy()
        bg = torch.exp(prm.logb * prm.S_LOG).double().numpy()
    return {
        "nll": nll,
        "deviance": dev,
        "reduced_deviance": dev / np.maximum(npx, 1),
        "photons": photons,
        "bg": bg,
        "n_frames": (npx / (2 * size * size)).astype(np.int64),
    }


def _outliers(reduced: np.ndarray) -> np.ndarray:
    """Beads whose reduced deviance stands out (robust z-score and ratio)."""
    med = float(np.median(reduced))
    mad = float(np.median(np.abs(reduced - med))) * 1.4826
    return (reduced > med + OUTLIER_MAD * max(mad, 0.02 * med)) & (
        reduced > OUTLIER_RATIO * med
    )


def heldout_nll(
    fit: PSFFit,
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    config: FitConfig | None = None,
) -> float:
    """Negative log-likelihood of held-out beads under a fitted PSF.

    The pupil stays fixed; each held-out bead's position, photons and
    backgrounds are fitted (L-BFGS), as a localization would. Returns the total
    NLL (shifted Poisson, photoelectrons) over the beads' fitted frames.
    """
    cfg = (config or FitConfig()).model_copy(update={"exclude_outliers": False})
    data = _prepare(
        np.asarray(crops_adu),
        np.asarray(stage_z_um, float),
        np.asarray(bead),
        np.asarray(ref_z_um, float),
        positions_px,
        fit.camera,
        fit.optics.pixel_size_um,
        cfg,
        None,
        torch.float32,
    )
    phase_all = tuple(sorted(set(fit.phase_noll) | set(fit.plane1_noll)))
    mdl = PupilPSF(fit.optics, phase_all, fit.amplitude_noll)
    p1_index = torch.tensor([phase_all.index(j) for j in fit.plane1_noll])
    size = int(crops_adu.shape[-1])
    focus0 = fit.focus_dz0_um
    init = _initial(data, size, fit.optics.pixel_size_um, fit.transmission, focus0)
    init["depth"] = fit.depth_um
    init["delta"] = fit.plane_offset_um
    init["transmission"] = fit.transmission
    prm = _Params(
        data.bead_ids.size,
        len(phase_all),
        len(fit.plane1_noll),
        len(fit.amplitude_noll),
        init,
        torch.float32,
    )
    with torch.no_grad():
        prm.phase.copy_(
            torch.tensor([fit.zernike.get(j, 0.0) for j in phase_all]) / prm.S_PHASE
        )
        prm.p1.copy_(
            torch.tensor([fit.plane1_zernike[j] for j in fit.plane1_noll]) / prm.S_PHASE
        )
        prm.amp.copy_(
            torch.tensor([fit.amplitude[j] for j in fit.amplitude_noll]) / prm.S_AMP
        )
        prm.shift.copy_(torch.tensor(fit.plane1_shift_um) / prm.S_SHIFT)
    for q in prm.globals_():
        q.requires_grad_(False)
    d01 = torch.as_tensor(data.d01_um, dtype=torch.float32)
    n_pix = float(data.counts.numel())
    opt = torch.optim.LBFGS(
        prm.locals_(), max_iter=1, history_size=20, line_search_fn="strong_wolfe"
    )
    rows = torch.arange(data.counts.shape[0])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, rows.numel(), cfg.chunk):
            r = rows[i : i + cfg.chunk]
            mu = _model_counts(mdl, prm, data, r, p1_index, d01, size, False)
            dev = _deviance(mu, data.counts[r], data.var[r]).sum() / n_pix
            dev.backward()
            total = total + dev.detach().double()
        return total

    prev = math.inf
    for _ in range(cfg.max_iter):
        loss = float(opt.step(closure))
        if abs(prev - loss) <= cfg.tolerance * abs(loss) + 1e-12:
            break
        prev = loss
    per = _per_bead(mdl, prm, data, p1_index, d01, size, cfg)
    return float(per["nll"].sum())


# --------------------------------------------------------------------- CRLB
def fit_crlb(
    fit: PSFFit | SplinePSFFit,
    dz_um: ArrayLike,
    *,
    photons: float,
    background: float | Sequence[float],
    read_noise_e: float | None = None,
    roi_size: int | None = None,
) -> dict[str, np.ndarray]:
    """CRLB of x, y and dz from the fitted PSF, per ``dz`` (stage frame).

    As :func:`axialtrack.model.evaluate.crlb_stage_um` does for the nominal
    model: the emitter sits at the fitted depth, plane 0's focus is
    ``focus_dz0_um - dz``, plane 1's ``plane_offset_um`` further with the fitted
    transmission; the derivative is taken with respect to the emitter's depth
    and converted to the stage frame with the slope of the nominal optics'
    ``in_focus_offset`` at that depth.

    Parameters
    ----------
    fit
        The fitted PSF (a spline PSF: :meth:`SplinePSFFit.crlb`, NaN outside
        its ``dz`` range).
    dz_um
        ``(M,)`` ``ref_z - stage_z`` values, um.
    photons
        Photons in plane 0 (photoelectrons).
    background
        Background photoelectrons per pixel, one or one per plane.
    read_noise_e
        Read noise, e- RMS (``None``: Poisson only).
    roi_size
        ROI size (default: the fitted crop size).

    Returns
    -------
    dict
        ``sigma_x_um``, ``sigma_y_um``, ``sigma_z_um`` (stage frame), each
        ``(M,)``.
    """
    import torch.autograd.forward_ad as fwad

    from .crlb import PSFDerivatives, crlb_from_derivatives

    if not isinstance(fit, PSFFit):  # a spline PSF: its own z axis is dz
        return fit.crlb(
            dz_um, photons=photons, background=background, read_noise_e=read_noise_e
        )

    mdl = fit.model(torch.float64)
    dz = np.atleast_1d(np.asarray(dz_um, float))
    m = dz.size
    s = int(roi_size or fit.crop_size)
    ph = fit._phase_vectors(mdl)
    amp = torch.tensor(
        [fit.amplitude.get(j, 0.0) for j in mdl.amplitude_noll], dtype=torch.float64
    )
    sx, sy = fit.plane1_shift_um
    base = torch.zeros((m, 3), dtype=torch.float64)
    base[:, 2] = fit.depth_um
    hs, ds = [], []
    for p in (0, 1):
        foc = torch.as_tensor(
            fit.focus_dz0_um - dz + p * fit.plane_offset_um, dtype=torch.float64
        )

        def f(v: torch.Tensor, p: int = p, foc: torch.Tensor = foc) -> torch.Tensor:
            return mdl.images(
                v[:, 0] + (sx if p else 0.0),
                v[:, 1] + (sy if p else 0.0),
                v[:, 2],
                foc,
                ph[p],
                amp,
                s,
            )

        der = []
        h = None
        for i in range(3):
            tan = torch.zeros_like(base)
            tan[:, i] = 1.0
            with fwad.dual_level(), warnings.catch_warnings():
                # torch's forward-AD decompositions warn about torch.jit.script
                warnings.filterwarnings(
                    "ignore",
                    message=".*torch.jit.script.* is deprecated",
                    category=DeprecationWarning,
                )
                out = fwad.unpack_dual(f(fwad.make_dual(base, tan)))
            h = out.primal
            assert out.tangent is not None
            der.append(out.tangent.detach().numpy().reshape(m, -1))
        assert h is not None
        hs.append(h.detach().numpy().reshape(m, -1))
        ds.append(np.stack(der, axis=-1))
    derivs = PSFDerivatives(
        depth_um=np.full(m, fit.depth_um),
        focus_um=fit.focus_dz0_um - dz,
        plane_offsets_um=(0.0, fit.plane_offset_um),
        h=np.stack(hs, axis=1),
        dh=np.stack(ds, axis=1),
    )
    res = crlb_from_derivatives(
        derivs,
        photons=photons,
        background=background,
        transmission=fit.transmission,
        read_noise=read_noise_e,
    )
    nominal = PSFModel(fit.optics)
    d = fit.depth_um
    hstep = 0.02
    lo = max(d - hstep, 0.0)
    slope = float(
        (nominal.in_focus_offset(d + hstep) - nominal.in_focus_offset(lo))
        / (d + hstep - lo)
    )
    return {
        "sigma_x_um": np.asarray(res.sigma_x_um),
        "sigma_y_um": np.asarray(res.sigma_y_um),
        "sigma_z_um": np.asarray(res.sigma_z_um) * slope,
    }

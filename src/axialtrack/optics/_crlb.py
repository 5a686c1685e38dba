"""Cramer-Rao lower bound of 3D localization from one or several focal planes.

For an emitter with ``N`` detected photons (in plane 0) on a background of ``b_k``
photons per pixel in plane ``k``, the expected count in pixel ``p`` of plane ``k``
is::

    mu_kp = N t_k h_kp(x, y, z) + b_k,

with ``h_k`` the pixelated PSF (:meth:`PSFModel.psf`) at the plane's focus
``focus_um + plane_offsets_um[k]`` and ``t_k`` the plane's transmission relative to
plane 0. For Poisson noise plus independent Gaussian read noise of variance
``sigma_kp^2`` (sCMOS, in photoelectrons^2, the usual ``mu + sigma^2``
approximation) the Fisher information is::

    I_ij = sum_k sum_p (dmu_kp/dtheta_i)(dmu_kp/dtheta_j) / (mu_kp + sigma_kp^2),

over ``theta = (x, y, z, N, b_0, ..., b_{K-1})``, and the CRLB of parameter ``i``
is ``sqrt((I^-1)_ii)``. The PSF derivatives come from forward-mode autodiff
through the PSF model (``torch.autograd.forward_ad``), batched over all emitters
and planes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .psf import PSFModel

__all__ = [
    "CRLBResult",
    "PSFDerivatives",
    "crlb",
    "crlb_from_derivatives",
    "fisher_information",
    "psf_derivatives",
]


@dataclass(frozen=True)
class CRLBResult:
    """Cramer-Rao lower bounds (standard deviations) for a set of emitters.

    Attributes
    ----------
    depth_um
        ``(M,)`` true emitter depths above the coverslip, um.
    focus_um
        ``(M,)`` plane-0 nominal focus positions (stage frame), um.
    plane_offsets_um
        Focus offset of each plane relative to plane 0, um.
    params
        Parameter names, in the order of ``std`` and ``fisher``:
        ``("x", "y", "z", "photons", "background0", ...)``.
    std
        ``(M, P)`` CRLB standard deviations: um for x, y, z; photons for the rest.
        ``inf`` where the Fisher information is singular.
    fisher
        ``(M, P, P)`` Fisher information matrices.
    """

    depth_um: np.ndarray
    focus_um: np.ndarray
    plane_offsets_um: tuple[float, ...]
    params: tuple[str, ...]
    std: np.ndarray
    fisher: np.ndarray

    @property
    def sigma_x_um(self) -> np.ndarray:
        """CRLB of x, um."""
        return self.std[:, 0]

    @property
    def sigma_y_um(self) -> np.ndarray:
        """CRLB of y, um."""
        return self.std[:, 1]

    @property
    def sigma_z_um(self) -> np.ndarray:
        """CRLB of the depth z, um (sample frame)."""
        return self.std[:, 2]

    @property
    def sigma_photons(self) -> np.ndarray:
        """CRLB of the photon count (plane 0), photons."""
        return self.std[:, 3]

    @property
    def sigma_background(self) -> np.ndarray:
        """``(M, K)`` CRLB of the per-plane backgrounds, photons per pixel."""
        return self.std[:, 4:]

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary (lists), e.g. for JSON."""
        out: dict[str, Any] = {
            "depth_um": self.depth_um.tolist(),
            "focus_um": self.focus_um.tolist(),
            "plane_offsets_um": list(self.plane_offsets_um),
        }
        for i, name in enumerate(self.params):
            unit = "_um" if name in ("x", "y", "z") else ""
            out[f"sigma_{name}{unit}"] = self.std[:, i].tolist()
        return out


def fisher_information(
    jacobian: np.ndarray, mu: np.ndarray, noise_var: ArrayLike = 0.0
) -> np.ndarray:
    """Fisher information of independent Poisson (+ Gaussian) pixel counts.

    Parameters
    ----------
    jacobian
        ``(..., n_pixels, n_params)`` derivatives of the expected counts.
    mu
        ``(..., n_pixels)`` expected counts (photons), all > 0.
    noise_var
        Extra per-pixel variance (read noise, photoelectrons^2), broadcastable to
        ``mu``.

    Returns
    -------
    numpy.ndarray
        ``(..., n_params, n_params)``.
    """
    jac = np.asarray(jacobian, dtype=float)
    var = np.asarray(mu, dtype=float) + np.asarray(noise_var, dtype=float)
    if np.any(var <= 0):
        raise ValueError("expected counts plus read-noise variance must be > 0")
    weighted = jac / var[..., None]
    return np.einsum("...pi,...pj->...ij", weighted, jac)


def _inverse_diagonal(fisher: np.ndarray) -> np.ndarray:
    """``diag(I^-1)`` for a batch of symmetric matrices; inf where singular."""
    diag = np.diagonal(fisher, axis1=-2, axis2=-1)
    ok = np.all(diag > 0, axis=-1)
    scale = np.sqrt(np.where(diag > 0, diag, 1.0))
    corr = fisher / scale[..., :, None] / scale[..., None, :]
    out = np.full(diag.shape, np.inf)
    for m in np.flatnonzero(ok):
        try:
            inv = np.linalg.inv(corr[m])
        except np.linalg.LinAlgError:
            continue
        var = np.diagonal(inv) / scale[m] ** 2
        out[m] = np.where((var > 0) & np.isfinite(var), var, np.inf)
    return out


def _per_plane(value: ArrayLike, n_planes: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.size == 1:
        return np.full(n_planes, float(arr[0]))
    if arr.size != n_planes:
        raise ValueError(f"{name} needs 1 or {n_planes} values; got {arr.size}")
    return arr


@dataclass(frozen=True)
class PSFDerivatives:
    """Pixelated PSFs and their position derivatives for a set of emitters.

    Computed once by :func:`psf_derivatives`; :func:`crlb_from_derivatives` then
    gives the bound for any photon count, background, transmission or read noise
    without evaluating the PSF again.

    Attributes
    ----------
    depth_um
        ``(M,)`` emitter depths above the coverslip, um.
    focus_um
        ``(M,)`` plane-0 nominal focus positions (stage frame), um.
    plane_offsets_um
        Focus offset of each of the ``K`` planes relative to plane 0, um.
    h
        ``(M, K, roi_size**2)`` PSF (fraction of the photons per pixel).
    dh
        ``(M, K, roi_size**2, 3)`` derivatives of ``h`` with respect to x, y and
        z (per um).
    """

    depth_um: np.ndarray
    focus_um: np.ndarray
    plane_offsets_um: tuple[float, ...]
    h: np.ndarray
    dh: np.ndarray

    @property
    def roi_size(self) -> int:
        """ROI size in pixels."""
        return round(self.h.shape[-1] ** 0.5)


def psf_derivatives(
    model: PSFModel,
    z_um: ArrayLike,
    *,
    focus_um: ArrayLike = 0.0,
    x_um: ArrayLike = 0.0,
    y_um: ArrayLike = 0.0,
    plane_offsets_um: Sequence[float] = (0.0,),
    roi_size: int = 21,
    dtype: torch.dtype = torch.float64,
) -> PSFDerivatives:
    """PSFs of emitters in every plane, and their derivatives by forward-mode AD.

    Parameters are those of :func:`crlb`. All emitters and planes are evaluated in
    one batch; the three derivatives come from three Jacobian-vector products
    (``torch.autograd.forward_ad``), since each pixel depends on one emitter only.
    """
    mdl = model.to(dtype=dtype)
    offsets = tuple(float(v) for v in plane_offsets_um)
    n_planes = len(offsets)
    if n_planes < 1:
        raise ValueError("plane_offsets_um needs at least one plane")
    z = np.atleast_1d(np.asarray(z_um, dtype=float))
    if z.ndim != 1:
        raise ValueError(f"z_um must be 1-D; got shape {z.shape}")
    m = z.size
    focus = np.broadcast_to(np.asarray(focus_um, dtype=float), (m,)).copy()
    x = np.broadcast_to(np.asarray(x_um, dtype=float), (m,))
    y = np.broadcast_to(np.asarray(y_um, dtype=float), (m,))

    # emitters x planes, plane index fastest
    xyz = np.repeat(np.stack([x, y, z], axis=1), n_planes, axis=0)
    foc = (focus[:, None] + np.asarray(offsets)[None, :]).reshape(-1)
    xyz_t = torch.as_tensor(xyz, dtype=dtype, device=mdl.device)
    foc_t = torch.as_tensor(foc, dtype=dtype, device=mdl.device)

    def render(p: torch.Tensor) -> torch.Tensor:
        return mdl.psf(p, foc_t, roi_size)

    h = None
    derivs = []
    for i in range(3):
        tangent = torch.zeros_like(xyz_t)
        tangent[:, i] = 1.0
        with fwad.dual_level(), warnings.catch_warnings():
            # torch registers its forward-AD decompositions with torch.jit.script
            # on first use, which warns about its own deprecation
            warnings.filterwarnings(
                "ignore",
                message=".*torch.jit.script.* is deprecated",
                category=DeprecationWarning,
            )
            out = fwad.unpack_dual(render(fwad.make_dual(xyz_t, tangent)))
        if out.tangent is None:  # pragma: no cover - PSF independent of position
            raise RuntimeError("the PSF model returned no forward-mode derivative")
        h = out.primal
        derivs.append(out.tangent.detach().cpu().numpy().astype(float))
    assert h is not None
    shape = (m, n_planes, roi_size * roi_size)
    return PSFDerivatives(
        depth_um=z,
        focus_um=focus,
        plane_offsets_um=offsets,
        h=h.detach().cpu().numpy().astype(float).reshape(shape),
        dh=np.stack([d.reshape(shape) for d in derivs], axis=-1),
    )


def _plane_values(
    n_planes: int,
    photons: float,
    background: ArrayLike,
    transmission: ArrayLike,
) -> tuple[np.ndarray, np.ndarray]:
    """Validated per-plane background and transmission."""
    if not photons > 0:
        raise ValueError(f"photons must be > 0; got {photons}")
    bg = _per_plane(background, n_planes, "background")
    if np.any(bg < 0):
        raise ValueError("background must be >= 0")
    trans = np.atleast_1d(np.asarray(transmission, dtype=float))
    if trans.size == 1 and n_planes > 1:
        trans = np.concatenate([[1.0], np.full(n_planes - 1, float(trans[0]))])
    trans = _per_plane(trans, n_planes, "transmission")
    if np.any(trans <= 0):
        raise ValueError("transmission must be > 0")
    return bg, trans


def crlb_from_derivatives(
    derivatives: PSFDerivatives,
    *,
    photons: float = 2000.0,
    background: float | Sequence[float] = 10.0,
    transmission: float | Sequence[float] = 1.0,
    read_noise: ArrayLike | None = None,
) -> CRLBResult:
    """CRLB from precomputed PSF derivatives; see :func:`crlb` for the parameters."""
    d = derivatives
    m, n_planes, n_pix = d.h.shape
    roi = d.roi_size
    bg, trans = _plane_values(n_planes, photons, background, transmission)
    if read_noise is None:
        noise_var = np.zeros((n_planes, n_pix))
    else:
        rn = np.asarray(read_noise, dtype=float)
        if rn.ndim not in (0, 2, 3):
            raise ValueError(
                "read_noise must be a scalar, an (roi, roi) or a (K, roi, roi) map"
            )
        noise_var = np.broadcast_to(rn**2, (n_planes, roi, roi)).reshape(n_planes, -1)

    n_k = photons * trans  # photons per plane
    mu = n_k[None, :, None] * d.h + bg[None, :, None]
    n_params = 4 + n_planes
    jac = np.zeros((m, n_planes, n_pix, n_params))
    jac[..., :3] = n_k[None, :, None, None] * d.dh
    jac[..., 3] = trans[None, :, None] * d.h
    for k in range(n_planes):
        jac[:, k, :, 4 + k] = 1.0
    fisher = fisher_information(
        jac.reshape(m, -1, n_params), mu.reshape(m, -1), noise_var.reshape(1, -1)
    )
    std = np.sqrt(_inverse_diagonal(fisher))
    names = ("x", "y", "z", "photons", *(f"background{k}" for k in range(n_planes)))
    return CRLBResult(
        depth_um=d.depth_um,
        focus_um=d.focus_um,
        plane_offsets_um=d.plane_offsets_um,
        params=names,
        std=std,
        fisher=fisher,
    )


def crlb(
    model: PSFModel,
    z_um: ArrayLike,
    *,
    focus_um: ArrayLike = 0.0,
    x_um: ArrayLike = 0.0,
    y_um: ArrayLike = 0.0,
    plane_offsets_um: Sequence[float] = (0.0,),
    photons: float = 2000.0,
    background: float | Sequence[float] = 10.0,
    transmission: float | Sequence[float] = 1.0,
    roi_size: int = 21,
    read_noise: ArrayLike | None = None,
    dtype: torch.dtype = torch.float64,
) -> CRLBResult:
    """Cramer-Rao lower bound of (x, y, z, photons, backgrounds) per emitter.

    Parameters
    ----------
    model
        The PSF model (its optics, pixel size and device are used; the computation
        runs in ``dtype``).
    z_um
        ``(M,)`` true emitter depths above the coverslip, um (sample frame).
    focus_um
        Plane-0 nominal focus position(s) (stage frame), um: scalar or ``(M,)``.
        For a defocus scan at a fixed stage position, pass a scalar such as
        ``model.in_focus_offset(d)`` and depths around ``d``.
    x_um, y_um
        Emitter offset from the centre of the ROI's central pixel, um: scalar or
        ``(M,)``.
    plane_offsets_um
        Focus offset of each plane relative to plane 0 (stage frame), um:
        ``(0.0,)`` for one plane, ``(0.0, delta)`` for a dual-plane splitter.
    photons
        Detected photons in plane 0.
    background
        Background photons per pixel, one value for all planes or one per plane.
    transmission
        Photons reaching each plane relative to plane 0: a scalar applies to every
        plane after plane 0 (plane 0 is 1), or one value per plane.
    roi_size
        Odd ROI size in pixels over which the information is summed.
    read_noise
        Read noise in photoelectrons RMS (ADU RMS divided by the gain): ``None``
        (pure Poisson), a scalar, an ``(roi, roi)`` map for all planes or a
        ``(K, roi, roi)`` map per plane. Its variance is added to ``mu``.
    dtype
        Precision of the PSF evaluation (float64 keeps the bound accurate where
        the information is nearly singular).

    Returns
    -------
    CRLBResult
        Standard deviations (``inf`` or huge where z is not identifiable) and the
        Fisher matrices.

    Notes
    -----
    The derivatives are with respect to the emitter depth in the sample. To express
    ``sigma_z`` in the stage frame used by localizations, multiply it by the slope
    of :meth:`PSFModel.in_focus_offset` at that depth.

    Examples
    --------
    >>> from axialtrack.optics import PSFModel, crlb
    >>> model = PSFModel()
    >>> f0 = model.in_focus_offset(1.0)
    >>> res = crlb(model, [0.8, 1.0, 1.2], focus_um=f0, plane_offsets_um=(0, 0.5))
    >>> res.sigma_z_um.shape
    (3,)
    """
    _plane_values(len(plane_offsets_um), photons, background, transmission)
    derivs = psf_derivatives(
        model,
        z_um,
        focus_um=focus_um,
        x_um=x_um,
        y_um=y_um,
        plane_offsets_um=plane_offsets_um,
        roi_size=roi_size,
        dtype=dtype,
    )
    return crlb_from_derivatives(
        derivs,
        photons=photons,
        background=background,
        transmission=transmission,
        read_noise=read_noise,
    )

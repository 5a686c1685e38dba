"""Losses of the axial network: supervised, physics-informed; augmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from .neighbours import kth_smallest

if TYPE_CHECKING:
    from axialtrack.optics.sampled import SampledPSF

    from .config import ModelConfig

__all__ = ["augment", "physics_deviance", "supervised_loss"]

#: Weight of the sub-pixel (dx, dy) loss relative to the dz loss.
SUBPIXEL_WEIGHT = 0.1
#: Weight of the contamination (crowding flag) loss relative to the dz loss.
CONTAMINATION_WEIGHT = 0.1


def augment(
    images: torch.Tensor, gen: torch.Generator, *, p: float = 0.5
) -> torch.Tensor:
    """Random brightness jitter, Poisson and Gaussian noise on raw crop pairs.

    Each example is jittered independently; both planes of a pair always get the
    same brightness factor, so the plane ratio (the Z signal) is kept.

    Parameters
    ----------
    images
        ``(B, 2, S, S)`` raw counts.
    gen
        Random generator (CPU).
    p
        Probability of each of the three augmentations per example.
    """
    b = images.shape[0]
    dev = images.device
    x = images.cpu()
    flat = x.flatten(1)
    bg = kth_smallest(flat, 0.1).reshape(b, 1, 1, 1)
    sig = x - bg

    def coin() -> torch.Tensor:
        return (torch.rand(b, 1, 1, 1, generator=gen) < p).float()

    scale = 0.8 + 0.45 * torch.rand(b, 1, 1, 1, generator=gen)
    sig = sig * (1 + coin() * (scale - 1))
    # Poisson resampling of the signal at a random count scale c (extra shot noise)
    c = 0.1 + 0.9 * torch.rand(b, 1, 1, 1, generator=gen)
    pos = F.relu(sig)
    resampled = torch.poisson(pos / c, generator=gen) * c + (sig - pos)
    use = coin()
    sig = use * resampled + (1 - use) * sig
    # Gaussian noise scaled to the background spread of the example
    edge = torch.cat(
        [x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1
    ).flatten(1)
    spread = edge.std(dim=1).reshape(b, 1, 1, 1)
    amp = 0.5 * torch.rand(b, 1, 1, 1, generator=gen) * spread * coin()
    noise = torch.randn(x.shape, generator=gen) * amp
    return (bg + sig + noise).to(dev)


def supervised_loss(
    out: torch.Tensor,
    dz: torch.Tensor,
    dxy: torch.Tensor,
    has_dxy: torch.Tensor,
    cfg: ModelConfig,
    loss: str,
    contaminated: torch.Tensor | None = None,
) -> torch.Tensor:
    if loss == "nll":
        value = F.gaussian_nll_loss(out[:, 0], dz, out[:, 1] ** 2, full=False)
    else:
        value = F.mse_loss(out[:, 0], dz)
    if cfg.subpixel:
        i = 2 if cfg.uncertainty else 1
        w = has_dxy.float()
        err = ((out[:, i : i + 2] - dxy) ** 2).sum(dim=1)
        value = value + SUBPIXEL_WEIGHT * (err * w).sum() / torch.clamp(w.sum(), 1)
    if cfg.contamination and contaminated is not None:
        known = contaminated >= 0
        if bool(known.any()):
            prob = out[known, -1].clamp(1e-6, 1 - 1e-6)
            value = value + CONTAMINATION_WEIGHT * F.binary_cross_entropy(
                prob, contaminated[known]
            )
    return value


class _RenderPSF(torch.autograd.Function):
    """The sampled PSF ``(B, K, S, S)`` at ``xyz`` (um), differentiable in ``z``
    through the spline's own derivative."""

    @staticmethod
    def forward(ctx: Any, xyz: torch.Tensor, psf: Any, size: int) -> torch.Tensor:
        h, dh, ok = psf.evaluate(xyz.detach().cpu().double().numpy(), size)
        h = np.where(ok[:, None, None, None], h, 0.0)
        dh = np.where(ok[:, None, None, None, None], dh, 0.0)
        ctx.save_for_backward(torch.from_numpy(dh[..., 2]).to(xyz.dtype))
        return torch.from_numpy(h).to(xyz.dtype).to(xyz.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (dz,) = ctx.saved_tensors
        gz = (grad * dz.to(grad.device)).sum(dim=(1, 2, 3))
        zeros = torch.zeros_like(gz)
        return torch.stack([zeros, zeros, gz], dim=1), None, None


def physics_deviance(
    dz_um: torch.Tensor,
    dxy_px: torch.Tensor,
    crops: torch.Tensor,
    psf: SampledPSF,
    camera: Any,
) -> torch.Tensor:
    """Poisson deviance per pixel of each crop under the PSF at the predicted ``dz``.

    The emitter is rendered with ``psf`` at ``(dx, dy)`` (px, the sub-pixel
    offset when known, else 0) and the predicted ``dz``; its photons and the
    background of each plane are the least-squares fit of ``a h + b`` to the
    crop (not differentiated); the crops' ADU become photoelectrons through
    ``camera`` (offset, gain), read noise as a shifted Poisson (``+ sigma^2``),
    as the PSF fit counts them. Differentiable with respect to ``dz_um``.

    Returns
    -------
    torch.Tensor
        ``(B,)`` mean deviance per pixel (about 1 where the model fits).
    """
    lo, hi = psf.z_range_um
    s = int(crops.shape[-1])
    px = psf.pixel_size_um
    z = dz_um.double().clamp(lo + 1e-6, hi - 1e-6)
    xy = dxy_px.detach().double().clamp(-0.5, 0.5) * px
    h = _RenderPSF.apply(torch.cat([xy, z[:, None]], dim=1), psf, s)
    gain = float(camera.e_per_adu)
    rn2 = float(camera.read_noise_e) ** 2
    x = (crops.detach().double() - float(camera.offset_adu)) * gain
    b, k = x.shape[0], x.shape[1]
    hf = h.reshape(b, k, -1)
    xf = x.reshape(b, k, -1)
    with torch.no_grad():
        hm = hf.mean(dim=2, keepdim=True)
        xm = xf.mean(dim=2, keepdim=True)
        var = ((hf - hm) ** 2).sum(dim=2, keepdim=True).clamp(min=1e-12)
        a = (((hf - hm) * (xf - xm)).sum(dim=2, keepdim=True) / var).clamp(min=0)
        bg = (xm - a * hm).clamp(min=1e-3)
    mu = a * hf + bg + rn2
    obs = (xf + rn2).clamp(min=1e-6)
    dev = 2 * (obs * torch.log(obs / mu) - (obs - mu))
    return dev.mean(dim=(1, 2)).float()

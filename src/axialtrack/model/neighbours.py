"""Training augmentation: put a neighbouring particle into crop pairs.

Calibration beads are chosen isolated, but in a live sample a second particle
often lies within the crop. A network that never saw one reads Z badly there: on
the live benchmark (about 100 particles per 512 x 512 field) crops with a
neighbour 5-8 px away read Z with about 0.8 um RMS error. :func:`add_neighbours`
adds, to a random part of a batch, the background-subtracted signal of another
example of the same batch, shifted by a few pixels in a random direction
(the same shift in both planes, as a real neighbour appears) and scaled in
brightness. The label stays that of the centred particle, so the network learns
to read the particle in the middle and ignore the other.
"""

from __future__ import annotations

import math

import torch

__all__ = ["add_neighbours", "kth_smallest"]


def kth_smallest(flat: torch.Tensor, frac: float) -> torch.Tensor:
    """``(B, 1)``: the ``frac`` quantile (k-th smallest) of each row of ``flat``."""
    k = max(1, round(frac * flat.shape[1]))
    return torch.topk(flat, k, dim=1, largest=False).values[:, -1:]


def add_neighbours(
    images: torch.Tensor,
    gen: torch.Generator,
    *,
    p: float = 0.5,
    distance_px: tuple[float, float] = (5.0, 14.0),
    brightness: tuple[float, float] = (0.5, 1.5),
    background_fraction: float = 0.1,
) -> torch.Tensor:
    """Crop pairs with another example's particle added near the centre one.

    Parameters
    ----------
    images
        ``(B, 2, S, S)`` raw counts.
    gen
        Random generator (CPU).
    p
        Probability that an example gets a neighbour.
    distance_px
        Range of the neighbour's distance from the centre (px, uniform).
    brightness
        Range of the neighbour's brightness relative to its own example.
    background_fraction
        The neighbour's signal is its example minus that example's
        ``background_fraction`` quantile (the network's own background level),
        positive part only, so the added background stays that of the target.

    Returns
    -------
    torch.Tensor
        A new tensor; examples without a neighbour are unchanged.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1]; got {p}")
    lo_d, hi_d = (float(v) for v in distance_px)
    if not 0.0 <= lo_d <= hi_d:
        raise ValueError(f"distance_px must be 0 <= min <= max; got {distance_px}")
    b, _, s, s2 = images.shape
    if s != s2:
        raise ValueError(f"crops must be square; got {tuple(images.shape)}")
    x = images.detach().cpu().float()
    if b < 2 or p == 0.0:
        return x.to(images.device)
    bg = kth_smallest(x.flatten(1), background_fraction)
    sig = torch.relu(x - bg.reshape(b, 1, 1, 1))
    # another example for each (never itself)
    other = (torch.arange(b) + torch.randint(1, b, (b,), generator=gen)) % b
    lo_b, hi_b = (float(v) for v in brightness)
    scale = lo_b + (hi_b - lo_b) * torch.rand(b, generator=gen)
    use = torch.rand(b, generator=gen) < p
    r = lo_d + (hi_d - lo_d) * torch.rand(b, generator=gen)
    a = 2.0 * math.pi * torch.rand(b, generator=gen)
    dx = torch.round(r * torch.cos(a)).long()
    dy = torch.round(r * torch.sin(a)).long()
    out = x.clone()
    for i in torch.nonzero(use).flatten().tolist():
        ox, oy = int(dx[i]), int(dy[i])
        if abs(ox) >= s or abs(oy) >= s:
            continue
        src = sig[int(other[i])] * scale[i]
        ys, yd = (
            (slice(0, s - oy), slice(oy, s))
            if oy >= 0
            else (
                slice(-oy, s),
                slice(0, s + oy),
            )
        )
        xs, xd = (
            (slice(0, s - ox), slice(ox, s))
            if ox >= 0
            else (
                slice(-ox, s),
                slice(0, s + ox),
            )
        )
        out[i, :, yd, xd] += src[:, ys, xs]
    return out.to(images.device)

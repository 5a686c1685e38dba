"""The bead fit's likelihood machinery: data, parameters, model counts, deviance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._pupil import PupilPSF

if TYPE_CHECKING:
    from .fit import FitConfig

#: Beads the fit needs at least (fewer cannot separate the pupil from the beads).
MIN_BEADS = 5
#: Median photons per bead (plane 0, photoelectrons) the fit needs at least.
MIN_PHOTONS = 500.0
#: Per-bead reduced deviance above ``median + OUTLIER_MAD * 1.4826 MAD`` and above
#: ``OUTLIER_RATIO x median`` marks the bead an outlier (doublet, dirt, a bead
#: that moved).
OUTLIER_MAD = 5.0
OUTLIER_RATIO = 1.3


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

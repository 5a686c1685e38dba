"""A cubic-spline PSF measured directly from the calibration beads.

The alternative to the pupil fit (:func:`axialtrack.optics.fit_beads`) for PSFs
that no pupil describes (a ghost reflection, a scattering sample, a splitter
that cuts the pupil), as SMAP's ``fit3Dcspline`` does it (Li et al., Nature
Methods 2018): each accepted bead's crops are converted to photoelectrons,
background-subtracted, normalized by the bead's photons, shifted so that the
bead sits on the central pixel (cubic interpolation, by its sub-pixel position
in each plane), and resampled onto a common ``dz`` grid
(``dz = ref_z - stage_z``, the training labels' convention); the beads are
averaged node by node, smoothed along ``dz`` and sampled with
:class:`~axialtrack.optics.SampledPSF` (cubic B-splines) for refinement and the
CRLB.

Beads whose deviance under the average stands out (doublets, dirt) are flagged
as for the pupil fit and left out of a second average.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from ._fitcore import MIN_BEADS, _outliers, _prepare
from ._fitresult import PSFFit, _jsonable
from .fit import FitConfig, PSFFitError
from .sampled import SampledPSF

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch
    from numpy.typing import ArrayLike

__all__ = ["SplineConfig", "SplinePSFFit", "fit_spline", "load_psf_fit"]

#: Photons near focus a bead needs to enter the average (fewer: its normalization
#: is noise).
MIN_BEAD_PHOTONS = 200.0
#: Pixels of zeros around the measured crop in the stored stack: room for the
#: refinement's crops to move (``SampledPSF`` evaluates crops up to its patch
#: minus 2 px, shifted by up to ``(patch - crop) / 2 - 0.5`` px).
PAD_PX = 3


class SplineConfig(BaseModel):
    """Settings of :func:`fit_spline`.

    Parameters
    ----------
    dz_range_um
        Frames within this distance of a bead's reference Z are averaged.
    dz_step_um
        Node spacing of the ``dz`` grid (default: the stacks' median Z step).
    smooth_nodes
        Gaussian smoothing along ``dz``, standard deviation in nodes (0: none).
    min_beads
        A ``dz`` node needs at least this many beads; the grid is cut to the
        central run of such nodes.
    focus_um
        Frames with ``|dz|`` below this give a bead's photons (its plane-0 crop
        sum) and the plane-1 transmission.
    exclude_outliers
        Average again without the beads flagged as outliers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dz_range_um: float = Field(1.2, gt=0.0)
    dz_step_um: float | None = Field(None, gt=0.0)
    smooth_nodes: float = Field(1.0, ge=0.0)
    min_beads: int = Field(3, ge=1)
    focus_um: float = Field(0.25, gt=0.0)
    exclude_outliers: bool = True


@dataclass
class SplinePSFFit:
    """A PSF measured from the beads: the averaged stack and per-bead results.

    Attributes
    ----------
    stack
        ``(2, Z, P, P)`` expected fraction of plane 0's photons per pixel of a
        centred emitter at each ``dz`` node (plane 1 included: its
        transmission is in its stack), ``P`` the crop size plus ``2 PAD_PX``
        (the outer rings, never measured, are 0).
    z0_um, dz_um
        First node and node spacing of ``dz`` (``ref_z - stage_z``, stage frame).
    pixel_size_um
        Camera pixel size in the sample.
    plane_offset_um
        The rig's plane offset (recorded; the stacks hold it).
    transmission
        Plane 1's largest crop sum over plane 0's, each at its own focus
        (recorded; the stacks hold it, so the sampled PSF's transmission is 1).
    crop_size
        Side of the measured crops.
    beads
        One row per bead: ``bead``, ``x_um``, ``y_um``, ``photons``,
        ``background0``, ``background1``, ``nll``, ``deviance``,
        ``reduced_deviance``, ``outlier``, ``used``, ``n_frames``, ``dx1_um``,
        ``dy1_um``, ``ref_z_um``.
    camera
        ``{"offset_adu", "e_per_adu", "read_noise_e"}`` used.
    time_s
        Wall time of the fit.
    selection
        How the calibration chose this model over the pupil fit (held-out
        negative log-likelihoods), when it compared them.
    """

    stack: np.ndarray
    z0_um: float
    dz_um: float
    pixel_size_um: float
    plane_offset_um: float
    transmission: float
    crop_size: int
    beads: pd.DataFrame
    camera: dict[str, float] = field(default_factory=dict)
    time_s: float = 0.0
    message: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    _psf: SampledPSF | None = field(default=None, repr=False, compare=False)

    # the pupil fit's attributes that a spline does not have, for shared QC code
    converged: bool = True
    n_iter: int = 0
    depth_um: float = float("nan")
    zernike: dict[int, float] = field(default_factory=dict)
    plane1_zernike: dict[int, float] = field(default_factory=dict)

    model_name = "spline"

    @property
    def z_nodes_um(self) -> np.ndarray:
        """The ``dz`` nodes."""
        return self.z0_um + self.dz_um * np.arange(self.stack.shape[1])

    @property
    def outliers(self) -> np.ndarray:
        """Bead ids flagged as likelihood outliers."""
        b = self.beads
        return b["bead"].to_numpy()[b["outlier"].to_numpy(bool)]

    # ------------------------------------------------------------ rendering
    def _image(self, x_um: float, y_um: float, dz: float, size: int) -> np.ndarray:
        """``(2, size, size)``: the stack at ``dz`` (linear between nodes), shifted."""
        f = (dz - self.z0_um) / self.dz_um
        nz = self.stack.shape[1]
        f = min(max(f, 0.0), nz - 1.0)
        i = min(int(np.floor(f)), nz - 2)
        w = f - i
        img = (1 - w) * self.stack[:, i] + w * self.stack[:, i + 1]
        p = img.shape[-1]
        if size > p:
            pad = (size - p) // 2
            img = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        elif size < p:
            c = (p - size) // 2
            img = img[:, c : c + size, c : c + size]
        sh = (y_um / self.pixel_size_um, x_um / self.pixel_size_um)
        return np.stack(
            [
                ndimage.shift(img[k], sh, order=3, mode="constant", cval=0.0)
                for k in range(img.shape[0])
            ]
        )

    def renderer(self, size: int | None = None) -> Callable[[Any], np.ndarray]:
        """``(N, 2, size, size)`` images of emitters at ``xyz_um`` (``x, y, dz``)."""
        s = int(size or self.stack.shape[-1])

        def f(xyz_um: Any) -> np.ndarray:
            xyz = np.atleast_2d(np.asarray(xyz_um, dtype=float))
            return np.stack([self._image(x, y, z, s) for x, y, z in xyz])

        return f

    def render(
        self, xyz_um: ArrayLike | torch.Tensor, size: int | None = None
    ) -> np.ndarray:
        """Both planes' images ``(N, 2, size, size)`` (not differentiable)."""
        if hasattr(xyz_um, "detach"):
            xyz_um = xyz_um.detach().cpu().numpy()
        return self.renderer(size)(xyz_um)

    def sampled(self, dz_um: ArrayLike, size: int | None = None) -> np.ndarray:
        """``(2, Z, size, size)`` PSF stack of a centred emitter on a ``dz`` grid."""
        dz = np.asarray(dz_um, dtype=float).ravel()
        xyz = np.stack([np.zeros_like(dz), np.zeros_like(dz), dz], axis=1)
        return np.moveaxis(self.renderer(size)(xyz), 1, 0)

    def sampled_psf(self) -> SampledPSF:
        """The stack as a :class:`SampledPSF` (2 sub-pixel offsets per pixel)."""
        if self._psf is None:
            self._psf = SampledPSF.from_render(
                self.renderer(),
                self.z_nodes_um,
                int(self.stack.shape[-1]),
                2,
                pixel_size_um=self.pixel_size_um,
                transmission=(1.0, 1.0),
                plane_offsets_um=(0.0, self.plane_offset_um),
                info={"source": "spline PSF from the calibration beads"},
            )
        return self._psf

    def bead_model(self, bead: int, stage_z_um: ArrayLike) -> np.ndarray:
        """Expected photoelectrons ``(F, 2, S, S)`` of a bead at stage Z."""
        row = self.beads[self.beads["bead"] == bead].iloc[0]
        z = np.atleast_1d(np.asarray(stage_z_um, float))
        dz = np.clip(float(row["ref_z_um"]) - z, *self._z_limits())
        psf = self.sampled_psf()
        n = dz.size
        xyz = np.zeros((n, 2, 3))
        xyz[:, 0, :2] = (float(row["x_um"]), float(row["y_um"]))
        xyz[:, 1, :2] = (
            float(row["x_um"]) + float(row["dx1_um"]),
            float(row["y_um"]) + float(row["dy1_um"]),
        )
        xyz[:, :, 2] = dz[:, None]
        bg = [float(row["background0"]), float(row["background1"])]
        return psf.expected(xyz, self.crop_size, float(row["photons"]), bg)

    def _z_limits(self) -> tuple[float, float]:
        """The sampled PSF's ``dz`` range (the end nodes only anchor the spline)."""
        lo, hi = self.sampled_psf().z_range_um
        return lo + 1e-6, hi - 1e-6

    def crlb(
        self,
        dz_um: ArrayLike,
        *,
        photons: float,
        background: float | Sequence[float],
        read_noise_e: float | None = None,
    ) -> dict[str, np.ndarray]:
        """CRLB of x, y and dz (stage frame) per ``dz`` at the given conditions."""
        dz = np.atleast_1d(np.asarray(dz_um, float))
        res = self.sampled_psf().crlb(
            np.clip(dz, *self._z_limits()),
            photons=photons,
            background=background,
            size=self.crop_size,
            read_noise=read_noise_e,
        )
        out = {
            "sigma_x_um": np.asarray(res.sigma_x_um, float),
            "sigma_y_um": np.asarray(res.sigma_y_um, float),
            "sigma_z_um": np.asarray(res.sigma_z_um, float),
        }
        lo, hi = self._z_limits()
        off = (dz < lo) | (dz > hi)
        for v in out.values():
            v[off] = np.nan
        return out

    # ------------------------------------------------------------- storage
    def to_json(self) -> dict[str, Any]:
        """JSON-able stack (float32 precision) and per-bead results."""
        b = self.beads
        return {
            "format": 1,
            "model": "spline",
            "stack": np.asarray(self.stack, np.float32).tolist(),
            "z0_um": self.z0_um,
            "dz_um": self.dz_um,
            "pixel_size_um": self.pixel_size_um,
            "plane_offset_um": self.plane_offset_um,
            "transmission": self.transmission,
            "crop_size": self.crop_size,
            "camera": dict(self.camera),
            "time_s": self.time_s,
            "message": self.message,
            "selection": dict(self.selection),
            "beads": {c: [_jsonable(v) for v in b[c].tolist()] for c in b.columns},
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> SplinePSFFit:
        """Inverse of :meth:`to_json`."""
        if int(meta.get("format", 0)) != 1 or meta.get("model") != "spline":
            raise ValueError(
                f"unknown spline PSF format {meta.get('format')!r} / "
                f"{meta.get('model')!r}; this version reads format 1, model 'spline'"
            )
        stack = np.asarray(meta["stack"], dtype=np.float64)
        if stack.ndim != 4 or stack.shape[0] != 2:
            raise ValueError(f"the spline PSF's stack has shape {stack.shape}")
        return cls(
            stack=stack,
            z0_um=float(meta["z0_um"]),
            dz_um=float(meta["dz_um"]),
            pixel_size_um=float(meta["pixel_size_um"]),
            plane_offset_um=float(meta["plane_offset_um"]),
            transmission=float(meta["transmission"]),
            crop_size=int(meta["crop_size"]),
            beads=pd.DataFrame(meta.get("beads", {})),
            camera={k: float(v) for k, v in dict(meta.get("camera", {})).items()},
            time_s=float(meta.get("time_s", 0.0)),
            message=str(meta.get("message", "")),
            selection=dict(meta.get("selection") or {}),
        )

    def dumps(self) -> str:
        """:meth:`to_json` as a string."""
        return json.dumps(self.to_json())


# ------------------------------------------------------------------ fitting
def _registered(
    e: np.ndarray, bead_idx: np.ndarray, off0: np.ndarray, d01: np.ndarray, pix: float
) -> np.ndarray:
    """Each crop shifted so that its bead sits on the central pixel."""
    out = np.empty_like(e)
    for r in range(e.shape[0]):
        b = bead_idx[r]
        for p, o in ((0, off0[b]), (1, off0[b] + d01[b])):
            out[r, p] = ndimage.shift(
                e[r, p], (-o[1] / pix, -o[0] / pix), order=3, mode="nearest"
            )
    return out


def _average(
    norm: np.ndarray,
    dz: np.ndarray,
    bead_idx: np.ndarray,
    use: np.ndarray,
    nodes: np.ndarray,
    cfg: SplineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the used beads at each node (linear in ``dz`` per bead), counts."""
    total = np.zeros((nodes.size, *norm.shape[1:]))
    count = np.zeros(nodes.size)
    for b in np.nonzero(use)[0]:
        rows = np.nonzero(bead_idx == b)[0]
        rows = rows[np.argsort(dz[rows])]
        d = dz[rows]
        if d.size < 2:
            continue
        inside = (nodes >= d[0]) & (nodes <= d[-1])
        j = np.clip(np.searchsorted(d, nodes[inside]) - 1, 0, d.size - 2)
        step = np.maximum(d[j + 1] - d[j], 1e-12)
        w = ((nodes[inside] - d[j]) / step)[:, None, None, None]
        total[inside] += (1 - w) * norm[rows[j]] + w * norm[rows[j + 1]]
        count[inside] += 1
    keep = count >= cfg.min_beads
    return total / np.maximum(count, 1)[:, None, None, None], keep


def _transmission(stack: np.ndarray) -> float:
    """Plane 1's largest crop sum over plane 0's (each at its own focus)."""
    sums = stack.sum(axis=(-1, -2))
    return float(sums[1].max() / max(float(sums[0].max()), 1e-12))


def _z_step(stage_z: np.ndarray, bead_idx: np.ndarray) -> float:
    """Median Z step between a bead's successive frames."""
    steps = []
    for b in np.unique(bead_idx):
        z = np.unique(np.round(stage_z[bead_idx == b], 6))
        steps.append(np.diff(z))
    d = np.concatenate(steps) if steps else np.zeros(0)
    d = d[d > 1e-6]
    if d.size == 0:
        raise PSFFitError("the spline PSF needs beads recorded at several Z")
    return float(np.round(np.median(d), 6))


def _central_run(keep: np.ndarray, nodes: np.ndarray) -> slice:
    """The run of kept nodes around ``dz = 0``."""
    c = int(np.argmin(np.abs(nodes)))
    if not keep[c]:
        return slice(0, 0)
    lo = c
    while lo > 0 and keep[lo - 1]:
        lo -= 1
    hi = c
    while hi < keep.size - 1 and keep[hi + 1]:
        hi += 1
    return slice(lo, hi + 1)


def fit_spline(
    crops_adu: np.ndarray,
    stage_z_um: np.ndarray,
    bead: np.ndarray,
    ref_z_um: np.ndarray,
    positions_px: dict[int, tuple[float, float, float, float]],
    *,
    pixel_size_um: float,
    plane_offset_um: float,
    camera: dict[str, float],
    config: SplineConfig | None = None,
    read_noise_map: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> SplinePSFFit:
    """Measure a cubic-spline PSF from bead crops (inputs as for ``fit_beads``).

    Raises
    ------
    PSFFitError
        Fewer than ``MIN_BEADS`` usable beads, or fewer than 4 ``dz`` nodes
        covered by ``config.min_beads`` beads.
    """
    cfg = config or SplineConfig()
    t0 = time.perf_counter()
    size = int(crops_adu.shape[-1])
    pix = float(pixel_size_um)
    prep = FitConfig(
        dz_range_um=cfg.dz_range_um, max_frames=1_000_000, max_beads=1_000_000
    )
    import torch

    data = _prepare(
        np.asarray(crops_adu),
        np.asarray(stage_z_um, float),
        np.asarray(bead),
        np.asarray(ref_z_um, float),
        positions_px,
        camera,
        pix,
        prep,
        read_noise_map,
        torch.float64,
    )
    var = data.var.numpy()
    e = data.counts.numpy() - var
    bi = data.bead_idx.numpy()
    nb = data.bead_ids.size
    dz = data.ref_z[bi] - data.stage_z.numpy()
    edge = np.concatenate(
        [e[..., 0, :], e[..., -1, :], e[..., 1:-1, 0], e[..., 1:-1, -1]], axis=-1
    )
    bg = np.zeros((nb, 2))
    photons = np.zeros(nb)
    for b in range(nb):
        sel = bi == b
        near = np.abs(dz[sel]) <= cfg.focus_um
        # the crop's border in the frames where it is lowest: out of focus the
        # halo reaches it (each plane has its own focus)
        bg[b] = np.percentile(np.median(edge[sel], axis=2), 25, axis=0)
        sums = (e[sel] - bg[b][None, :, None, None]).sum(axis=(-1, -2))
        s = sums[near] if near.any() else sums[[int(np.argmax(sums[:, 0]))]]
        photons[b] = float(s[:, 0].mean())
    usable = photons >= MIN_BEAD_PHOTONS
    if int(usable.sum()) < MIN_BEADS:
        raise PSFFitError(
            f"the spline PSF needs at least {MIN_BEADS} beads with "
            f">= {MIN_BEAD_PHOTONS:.0f} photons within {cfg.focus_um} um of focus; "
            f"got {int(usable.sum())} (use more fields, or calibrate --psf-model pupil)"
        )
    sub = e - bg[bi][:, :, None, None]
    reg = _registered(sub, bi, data.off0_um, data.d01_um, pix)
    norm = reg / np.maximum(photons[bi], 1.0)[:, None, None, None]
    step = cfg.dz_step_um or _z_step(data.stage_z.numpy(), bi)
    half = np.floor(cfg.dz_range_um / step + 1e-9)
    nodes = np.round(np.arange(-half, half + 1) * step, 9)

    def build(use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        avg, keep = _average(norm, dz, bi, use, nodes, cfg)
        run = _central_run(keep, nodes)
        if run.stop - run.start < 4:
            raise PSFFitError(
                f"the spline PSF needs >= 4 dz nodes ({step:g} um apart) "
                f"with {cfg.min_beads} beads each; got {run.stop - run.start} "
                "(record the beads over a longer Z range, or calibrate "
                "--psf-model pupil)"
            )
        avg = avg[run]
        if cfg.smooth_nodes > 0:
            avg = ndimage.gaussian_filter1d(
                avg, cfg.smooth_nodes, axis=0, mode="nearest"
            )
        stack = np.pad(
            np.maximum(avg, 0.0).transpose(1, 0, 2, 3),
            ((0, 0), (0, 0), (PAD_PX, PAD_PX), (PAD_PX, PAD_PX)),
        )
        return stack, nodes[run]

    use = usable.copy()
    stack, zn = build(use)
    fit = SplinePSFFit(
        stack=stack,
        z0_um=float(zn[0]),
        dz_um=float(step),
        pixel_size_um=pix,
        plane_offset_um=float(plane_offset_um),
        transmission=_transmission(stack),
        crop_size=size,
        beads=pd.DataFrame(),
        camera={
            "offset_adu": float(camera["offset_adu"]),
            "e_per_adu": float(camera["e_per_adu"]),
            "read_noise_e": float(camera.get("read_noise_e", 0.0)),
        },
    )
    per = _per_bead(fit, e, var, dz, bi, data.off0_um, data.d01_um, photons, bg)
    outlier = _outliers(per["reduced_deviance"]) & usable
    msg = f"averaged {int(use.sum())} beads over {zn.size} dz nodes"
    if cfg.exclude_outliers and outlier.any() and (use & ~outlier).sum() >= MIN_BEADS:
        use = usable & ~outlier
        fit.stack, zn = build(use)
        fit.z0_um = float(zn[0])
        fit.transmission = _transmission(fit.stack)
        fit._psf = None
        per = _per_bead(fit, e, var, dz, bi, data.off0_um, data.d01_um, photons, bg)
        msg += f"; again without {int(outlier.sum())} outlier bead(s)"
    if progress:
        progress(f"spline PSF: {msg}")
    fit.beads = pd.DataFrame(
        {
            "bead": data.bead_ids,
            "x_um": data.off0_um[:, 0],
            "y_um": data.off0_um[:, 1],
            "photons": photons,
            "background0": bg[:, 0],
            "background1": bg[:, 1],
            "nll": per["nll"],
            "deviance": per["deviance"],
            "reduced_deviance": per["reduced_deviance"],
            "outlier": outlier,
            "used": use,
            "n_frames": np.bincount(bi, minlength=nb).astype(np.int64),
            "dx1_um": data.d01_um[:, 0],
            "dy1_um": data.d01_um[:, 1],
            "ref_z_um": data.ref_z,
        }
    )
    fit.message = msg
    fit.time_s = time.perf_counter() - t0
    return fit


def _per_bead(
    fit: SplinePSFFit,
    e: np.ndarray,
    var: np.ndarray,
    dz: np.ndarray,
    bi: np.ndarray,
    off0: np.ndarray,
    d01: np.ndarray,
    photons: np.ndarray,
    bg: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-bead NLL and deviance of the frames on the grid, beads as measured."""
    from scipy.special import gammaln

    psf = fit.sampled_psf()
    lo, hi = fit._z_limits()
    nb = photons.size
    nll = np.zeros(nb)
    dev = np.zeros(nb)
    npx = np.zeros(nb)
    on = (dz >= lo) & (dz <= hi)
    rows = np.nonzero(on)[0]
    if rows.size:
        b = bi[rows]
        xyz = np.zeros((rows.size, 2, 3))
        xyz[:, 0, :2] = off0[b]
        xyz[:, 1, :2] = off0[b] + d01[b]
        xyz[:, :, 2] = dz[rows][:, None]
        mu = psf.expected(xyz, fit.crop_size, np.maximum(photons[b], 1.0), bg[b])
        mup = np.maximum(mu + var[rows], 1e-9)
        x = np.maximum(e[rows] + var[rows], 0.0)
        xlogx = np.where(x > 0, x * np.log(np.maximum(x, 1e-12) / mup), 0.0)
        d = 2.0 * (mup - x + xlogx)
        n = mup - x * np.log(mup) + gammaln(x + 1.0)
        np.add.at(dev, b, d.sum(axis=(1, 2, 3)))
        np.add.at(nll, b, n.sum(axis=(1, 2, 3)))
        np.add.at(npx, b, float(np.prod(e.shape[1:])))
    return {
        "nll": nll,
        "deviance": dev,
        "reduced_deviance": dev / np.maximum(npx, 1.0),
    }


def load_psf_fit(meta: dict[str, Any]) -> PSFFit | SplinePSFFit:
    """A stored fitted PSF (``to_json`` of either model), by its ``"model"``."""
    if meta.get("model") == "spline":
        return SplinePSFFit.from_json(meta)
    return PSFFit.from_json(meta)

"""Training crop pairs rendered from a calibrated PSF and camera.

Bead calibrations give a few thousand crop pairs of a few dozen bright, isolated
beads. Live samples are dimmer, sit on other backgrounds and have neighbours.
:class:`SyntheticRenderer` draws as many crop pairs as wanted from the PSF the
calibration fitted (:class:`~axialtrack.optics.sampled.SampledPSF`) and the
camera it recorded, with known truth:

- the centre emitter at a sub-pixel offset (uniform in the central pixel) and an
  axial offset ``dz`` uniform over the calibrated range;
- photons (plane 0; plane 1 gets the PSF's transmission) and a background per
  plane drawn from stated distributions (:class:`Distribution`), by default
  covering dim live emitters as well as beads, or resampled from a live run's
  own localizations (:func:`match_run`);
- neighbours: a Poisson number within ``neighbour_radius_px``, uniform in area
  (so overlapping ones occur in proportion), each with its own ``dz`` and photons;
- optional motion blur: each emitter diffuses (``diffusion_um2_s``) during the
  exposure, rendered in sub-steps; the label is the exposure-mean position;
- the camera: Poisson photoelectrons (QE), Gaussian read noise, gain, offset,
  rounding and saturation, so the crops are ADU as the live crops are.

Each example also says whether another emitter puts at least
``contamination_fraction`` of the centre emitter's photons into the crop
(:attr:`SyntheticExamples.contaminated`), the target of the crowding flag.

Coordinates are those of :class:`SampledPSF`: ``x`` along columns, ``y`` along
rows, offsets from the centre of the crop's central pixel; ``dz`` is the
network's label (``ref_z - stage_z``, stage frame). A neighbour appears at the
same offset in both planes: the live crops of plane 1 are cut at the registered
position of the centre emitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from axialtrack.optics.sampled import SampledPSF

__all__ = [
    "Distribution",
    "SyntheticConfig",
    "SyntheticExamples",
    "SyntheticRenderer",
    "match_run",
    "psf_for_calibration",
]


class Distribution(BaseModel):
    """A positive random quantity: uniform, log-uniform, or resampled values.

    Attributes
    ----------
    kind
        ``"uniform"`` or ``"loguniform"`` on ``[low, high]``; ``"empirical"``:
        ``values`` drawn with replacement, each multiplied by a log-normal
        jitter of ``jitter`` (relative spread), so a finite sample does not
        repeat exactly.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["uniform", "loguniform", "empirical"] = "loguniform"
    low: float = Field(1.0, ge=0.0)
    high: float = Field(1.0, ge=0.0)
    values: list[float] | None = None
    jitter: float = Field(0.05, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.kind == "empirical":
            if not self.values:
                raise ValueError("an empirical distribution needs values")
            v = np.asarray(self.values, float)
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError("empirical values must be finite and >= 0")
        else:
            if self.high < self.low:
                raise ValueError(f"high {self.high} < low {self.low}")
            if self.kind == "loguniform" and self.low <= 0:
                raise ValueError("a log-uniform distribution needs low > 0")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws (float64)."""
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, n)
        if self.kind == "loguniform":
            return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))
        v = np.asarray(self.values, float)
        out = v[rng.integers(0, v.size, n)]
        if self.jitter > 0:
            out = out * np.exp(self.jitter * rng.standard_normal(n))
        return out

    def describe(self) -> str:
        """One line for reports."""
        if self.kind == "empirical":
            v = np.asarray(self.values, float)
            q = np.percentile(v, [5, 50, 95])
            return (
                f"resampled from {v.size} values (5/50/95 %: "
                f"{q[0]:.3g}/{q[1]:.3g}/{q[2]:.3g})"
            )
        return f"{self.kind} [{self.low:g}, {self.high:g}]"


class SyntheticConfig(BaseModel):
    """What :class:`SyntheticRenderer` draws.

    Attributes
    ----------
    crop_size
        Side of the crop pair (px, odd).
    dz_range_um
        ``dz`` of the centre emitter, uniform in this range (um); ``None``: the
        range of the PSF (trimmed by 0.3 um each side) or what the caller sets.
    photons
        Plane-0 photons of each emitter (the localization table's ``photons``).
        Default log-uniform 300-20000: dim live emitters to calibration beads.
    background
        Plane-0 background, photons per pixel. Default uniform 1-40.
    plane1_background_ratio
        Plane-1 background over plane-0's, uniform in this range.
    neighbours_mean
        Mean number of neighbours within ``neighbour_radius_px`` (Poisson):
        a density of ``neighbours_mean / (pi r^2)`` per px^2.
    neighbour_radius_px
        Neighbours lie uniformly (in area) within this distance of the centre,
        overlapping ones included.
    neighbour_dz_margin_um
        Neighbours' ``dz`` range extends the centre's by this much each side.
    diffusion_um2_s, exposure_s, blur_substeps
        Motion blur: every emitter diffuses in 3D with this coefficient during
        the exposure, rendered at ``blur_substeps`` instants; the labels are the
        exposure-mean positions. ``diffusion_um2_s = 0``: no blur.
    contamination_fraction
        An example is ``contaminated`` when the other emitters put at least this
        fraction of the centre emitter's photons into the crop (both planes).
    field_xy
        Normalized field positions: uniform in ``[-1, 1]^2``.
    """

    model_config = ConfigDict(extra="forbid")

    crop_size: int = Field(15, ge=5)
    dz_range_um: tuple[float, float] | None = None
    photons: Distribution = Distribution(kind="loguniform", low=300.0, high=20000.0)
    background: Distribution = Distribution(kind="uniform", low=1.0, high=40.0)
    plane1_background_ratio: tuple[float, float] = (0.8, 1.25)
    neighbours_mean: float = Field(0.5, ge=0.0)
    neighbour_radius_px: float = Field(12.0, gt=0.0)
    neighbour_dz_margin_um: float = Field(0.3, ge=0.0)
    diffusion_um2_s: float = Field(0.0, ge=0.0)
    exposure_s: float = Field(0.01, gt=0.0)
    blur_substeps: int = Field(8, ge=1)
    contamination_fraction: float = Field(0.1, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.crop_size % 2 == 0:
            raise ValueError(f"crop_size must be odd; got {self.crop_size}")
        if self.dz_range_um is not None and not (
            self.dz_range_um[0] < self.dz_range_um[1]
        ):
            raise ValueError(f"dz_range_um must be increasing; got {self.dz_range_um}")
        lo, hi = self.plane1_background_ratio
        if not 0 < lo <= hi:
            raise ValueError("plane1_background_ratio must be 0 < low <= high")
        return self


@dataclass
class SyntheticExamples:
    """Rendered crop pairs and their truth.

    Attributes
    ----------
    crops
        ``(N, 2, S, S)`` float32 ADU.
    dz_um
        ``(N,)`` centre emitter's label.
    dxy_px
        ``(N, 2)`` its sub-pixel offset ``(dx, dy)`` from the crop centre.
    xy_norm
        ``(N, 2)`` normalized field position.
    photons
        ``(N,)`` its plane-0 photons.
    background
        ``(N, 2)`` photons per pixel in each plane.
    n_neighbours
        ``(N,)`` other emitters rendered.
    nearest_px
        ``(N,)`` distance of the nearest other emitter (inf: none).
    neighbour_fraction
        ``(N,)`` photons the other emitters put into the crop over the centre
        emitter's own (both planes).
    contaminated
        ``(N,)`` ``neighbour_fraction >= config.contamination_fraction``.
    """

    crops: np.ndarray
    dz_um: np.ndarray
    dxy_px: np.ndarray
    xy_norm: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    n_neighbours: np.ndarray
    nearest_px: np.ndarray
    neighbour_fraction: np.ndarray
    contaminated: np.ndarray

    def __len__(self) -> int:
        return int(self.dz_um.shape[0])

    @classmethod
    def concatenate(cls, parts: list[SyntheticExamples]) -> SyntheticExamples:
        """One set from several."""
        return cls(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(cls)
            }
        )

    def subset(self, sel: np.ndarray) -> SyntheticExamples:
        """The examples selected by a mask or index array."""
        return SyntheticExamples(
            **{f.name: getattr(self, f.name)[sel] for f in fields(self)}
        )


class SyntheticRenderer:
    """Render training crop pairs from a sampled PSF and a camera.

    Parameters
    ----------
    psf
        Two-plane :class:`SampledPSF` whose ``z`` is ``dz_um`` (what
        :func:`axialtrack.optics.psf_for_bundle` and
        :func:`psf_for_calibration` give).
    camera
        The camera: an object or mapping with ``offset_adu``, ``e_per_adu``,
        ``qe``, ``read_noise_e`` and ``bit_depth`` (a
        :class:`~axialtrack.pipeline.config.CameraCalibration`).
    config
        What to draw.
    """

    def __init__(
        self, psf: SampledPSF, camera: Any, config: SyntheticConfig | None = None
    ) -> None:
        self.psf = psf
        self.config = config if config is not None else SyntheticConfig()
        cam = dict(camera) if isinstance(camera, dict) else None

        def get(name: str, default: float) -> float:
            if cam is not None:
                return float(cam.get(name, default))
            return float(getattr(camera, name, default))

        self.offset_adu = get("offset_adu", 100.0)
        self.e_per_adu = get("e_per_adu", 0.5)
        self.qe = get("qe", 0.8)
        self.read_noise_e = get("read_noise_e", 1.5)
        self.max_adu = float(2 ** int(get("bit_depth", 16)) - 1)
        if psf.n_planes != 2:
            raise ValueError(f"the PSF must have 2 planes; got {psf.n_planes}")
        s = self.config.crop_size
        # patch rendered per emitter: the largest the sampled PSF allows
        self.patch = psf.size - 2 if (psf.size - 2) % 2 else psf.size - 3
        if self.patch < 3:
            raise ValueError(f"the sampled PSF ({psf.size} px) is too small")
        lo, hi = psf.z_range_um
        if self.config.dz_range_um is None:
            self.dz_range_um = (lo + 0.3, hi - 0.3) if hi - lo > 0.8 else (lo, hi)
        else:
            self.dz_range_um = self.config.dz_range_um
        if not (lo <= self.dz_range_um[0] < self.dz_range_um[1] <= hi):
            raise ValueError(
                f"dz range {self.dz_range_um} um lies outside the PSF's "
                f"[{lo:.3f}, {hi:.3f}] um"
            )
        self.crop_size = s

    # ---------------------------------------------------------------- helpers
    def _images(self, xyz_um: np.ndarray) -> np.ndarray:
        """``(M, 2, P, P)`` PSF patches at sub-pixel offsets (um) and ``dz``."""
        h, _, ok = self.psf.evaluate(xyz_um, self.patch)
        if not ok.all():
            lo, hi = self.psf.z_range_um
            bad = xyz_um[~ok][0]
            raise ValueError(
                f"an emitter at {bad.tolist()} um lies outside the sampled PSF "
                f"(z in [{lo:.3f}, {hi:.3f}])"
            )
        return h

    def _paths(
        self, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zero-mean Brownian displacements ``(n, K)`` in x, y (px) and z (um)."""
        cfg = self.config
        k = cfg.blur_substeps
        if cfg.diffusion_um2_s <= 0 or k == 1:
            z = np.zeros((n, 1))
            return z, z, z
        sd = math.sqrt(2 * cfg.diffusion_um2_s * cfg.exposure_s / k)
        steps = rng.standard_normal((3, n, k)) * sd
        walk = np.cumsum(steps, axis=2)
        walk -= walk.mean(axis=2, keepdims=True)
        px = self.psf.pixel_size_um
        return walk[0] / px, walk[1] / px, walk[2]

    def _emitters(
        self,
        x_px: np.ndarray,
        y_px: np.ndarray,
        dz_um: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blur-averaged patches ``(M, 2, P, P)`` and their integer offsets."""
        m = x_px.size
        bx, by, bz = self._paths(rng, m)
        k = bx.shape[1]
        xs = (x_px[:, None] + bx).ravel()
        ys = (y_px[:, None] + by).ravel()
        zs = (dz_um[:, None] + bz).ravel()
        lo, hi = self.psf.z_range_um
        zs = np.clip(zs, lo, hi)
        ix, iy = np.rint(xs), np.rint(ys)
        px = self.psf.pixel_size_um
        xyz = np.stack([(xs - ix) * px, (ys - iy) * px, zs], axis=1)
        h = self._images(xyz) if m else np.zeros((0, 2, self.patch, self.patch))
        return h, ix.reshape(m, k).astype(int), iy.reshape(m, k).astype(int)

    # ----------------------------------------------------------------- render
    def render(
        self,
        n: int,
        rng: np.random.Generator | int | None = None,
        *,
        chunk: int = 2048,
    ) -> SyntheticExamples:
        """``n`` crop pairs with their truth (:class:`SyntheticExamples`),
        rendered ``chunk`` at a time (bounded memory)."""
        if n < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        gen = np.random.default_rng(rng)
        parts = [
            self._render(min(chunk, n - i), gen) for i in range(0, max(n, 1), chunk)
        ]
        return SyntheticExamples.concatenate(parts)

    def _render(self, n: int, rng: np.random.Generator) -> SyntheticExamples:
        cfg = self.config
        s, p = self.crop_size, self.patch
        half_p = p // 2
        pad = half_p + 1
        size = s + 2 * pad
        c0 = size // 2
        # centre emitters
        dx = rng.uniform(-0.5, 0.5, n)
        dy = rng.uniform(-0.5, 0.5, n)
        dz = rng.uniform(*self.dz_range_um, n)
        ph = cfg.photons.sample(rng, n)
        bg0 = cfg.background.sample(rng, n)
        bg1 = bg0 * rng.uniform(*cfg.plane1_background_ratio, n)
        # neighbours
        nn = rng.poisson(cfg.neighbours_mean, n) if cfg.neighbours_mean > 0 else None
        counts = nn if nn is not None else np.zeros(n, int)
        total = int(counts.sum())
        owner = np.repeat(np.arange(n), counts)
        r = cfg.neighbour_radius_px * np.sqrt(rng.uniform(0, 1, total))
        a = rng.uniform(0, 2 * math.pi, total)
        nx = dx[owner] + r * np.cos(a)
        ny = dy[owner] + r * np.sin(a)
        zlo = max(
            self.dz_range_um[0] - cfg.neighbour_dz_margin_um, self.psf.z_range_um[0]
        )
        zhi = min(
            self.dz_range_um[1] + cfg.neighbour_dz_margin_um, self.psf.z_range_um[1]
        )
        nz = rng.uniform(zlo, zhi, total)
        nph = cfg.photons.sample(rng, total)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, owner, r)

        hc, ixc, iyc = self._emitters(dx, dy, dz, rng)
        hn, ixn, iyn = self._emitters(nx, ny, nz, rng)
        k = ixc.shape[1]
        t = np.asarray(self.psf.transmission, float)[None, :, None, None]
        canvas = np.zeros((n, 2, size, size))
        own = np.zeros((n, 2, size, size))

        def paste(
            target: np.ndarray,
            i: int,
            patches: np.ndarray,
            ix: np.ndarray,
            iy: np.ndarray,
            w: float,
        ) -> None:
            for j in range(ix.size):
                ox, oy = int(ix[j]), int(iy[j])
                if abs(ox) > c0 - half_p or abs(oy) > c0 - half_p:
                    # partly outside the canvas: clip
                    y0, x0 = c0 + oy - half_p, c0 + ox - half_p
                    ys0, xs0 = max(0, -y0), max(0, -x0)
                    ye, xe = min(p, size - y0), min(p, size - x0)
                    if ys0 >= ye or xs0 >= xe:
                        continue
                    target[i, :, y0 + ys0 : y0 + ye, x0 + xs0 : x0 + xe] += (
                        w * patches[j, :, ys0:ye, xs0:xe]
                    )
                    continue
                target[
                    i,
                    :,
                    c0 + oy - half_p : c0 + oy + half_p + 1,
                    c0 + ox - half_p : c0 + ox + half_p + 1,
                ] += w * patches[j]

        hc = hc.reshape(n, k, 2, p, p)
        for i in range(n):
            paste(own, i, hc[i], ixc[i], iyc[i], ph[i] / k)
        if total:
            hn = hn.reshape(total, k, 2, p, p)
            for j in range(total):
                paste(canvas, int(owner[j]), hn[j], ixn[j], iyn[j], nph[j] / k)
        sl = slice(pad, pad + s)
        own_c = own[:, :, sl, sl] * t
        other_c = canvas[:, :, sl, sl] * t
        frac = other_c.sum(axis=(1, 2, 3)) / np.maximum(
            own_c.sum(axis=(1, 2, 3)), 1e-12
        )
        bg = np.stack([bg0, bg1], axis=1)
        mu = own_c + other_c + bg[:, :, None, None]
        crops = self._camera(mu, rng)
        return SyntheticExamples(
            crops=crops,
            dz_um=dz,
            dxy_px=np.stack([dx, dy], axis=1),
            xy_norm=rng.uniform(-1, 1, (n, 2)),
            photons=ph,
            background=bg,
            n_neighbours=counts.astype(np.int64),
            nearest_px=nearest,
            neighbour_fraction=frac,
            contaminated=frac >= cfg.contamination_fraction,
        )

    def _camera(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """ADU (float32) of expected photons per pixel: shot noise, read noise,
        gain, offset, rounding, saturation."""
        e = rng.poisson(np.maximum(photons, 0) * self.qe).astype(np.float64)
        if self.read_noise_e > 0:
            e += rng.standard_normal(e.shape) * self.read_noise_e
        adu = np.rint(e / self.e_per_adu + self.offset_adu)
        return np.clip(adu, 0, self.max_adu).astype(np.float32)

    def expected_adu(self, photons: np.ndarray) -> np.ndarray:
        """Mean ADU of expected photons per pixel (no noise, no rounding)."""
        return photons * self.qe / self.e_per_adu + self.offset_adu


def psf_for_calibration(
    *,
    psf_fit: dict[str, Any] | None,
    optics: dict[str, Any] | None,
    plane_offset_um: float | None,
    dz_range_um: tuple[float, float],
    margin_um: float = 0.3,
    step_um: float = 0.02,
    size: int = 17,
) -> SampledPSF:
    """The PSF a calibration supports, sampled for rendering training examples.

    The fitted pupil (``psf_fit``: :meth:`axialtrack.optics.fit.PSFFit.to_json`)
    when the calibration carries one, else the nominal optics a simulated
    calibration records (``optics``: ``{"optics": Optics fields, "depth_um",
    "transmission"}``), sampled as :func:`axialtrack.optics.psf_for_bundle`
    samples them: ``dz_range_um`` plus ``margin_um`` each side in ``step_um``
    steps, 2 sub-pixel offsets per pixel, ``size`` px.

    Raises
    ------
    ValueError
        Neither a fitted PSF nor nominal optics.
    """
    from axialtrack.optics import Optics, PSFModel
    from axialtrack.optics.sampled import SampledPSF

    lo = math.floor((dz_range_um[0] - margin_um) / step_um) * step_um
    hi = math.ceil((dz_range_um[1] + margin_um) / step_um) * step_um
    z = np.round(np.arange(lo, hi + 1e-9, step_um), 10)
    if psf_fit is not None:
        from axialtrack.optics.fit import PSFFit

        fit = PSFFit.from_json(dict(psf_fit))
        return SampledPSF.from_render(
            fit.renderer(size),
            z,
            size,
            2,
            pixel_size_um=fit.optics.pixel_size_um,
            transmission=(1.0, fit.transmission),
            plane_offsets_um=(0.0, fit.plane_offset_um),
            info={"source": "fitted PSF", "depth_um": fit.depth_um},
        )
    if optics is not None and "optics" in optics and plane_offset_um is not None:
        return SampledPSF.from_model(
            PSFModel(Optics.model_validate(optics["optics"])),
            (0.0, float(plane_offset_um)),
            depth_um=float(optics.get("depth_um", 0.05)),
            z_um=z,
            size=size,
            transmission=float(optics.get("transmission", 1.0)),
        )
    raise ValueError(
        "the calibration carries no fitted PSF and no nominal optics: synthetic "
        "training examples need one (calibrate without --no-psf-fit)"
    )


def match_run(
    path: str | Path, *, min_rows: int = 50
) -> tuple[Distribution, Distribution]:
    """Photon and background distributions measured on a run's localizations.

    Parameters
    ----------
    path
        A run store with localizations: a live run, or a movie localized by
        ``axialtrack localize``.
    min_rows
        Fewest usable rows (finite, positive photons and background).

    Returns
    -------
    photons, background
        Empirical :class:`Distribution` of the rows' ``photons`` (plane-0 crop
        photons above background) and ``background`` (photons per pixel).
    """
    from axialtrack.store import open_run

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no run store at {p}")
    locs = open_run(p).localizations
    for col in ("photons", "background"):
        if col not in locs.columns:
            raise ValueError(f"{p}: the localizations have no {col!r} column")
    ph = locs["photons"].to_numpy(float)
    bg = locs["background"].to_numpy(float)
    ok = np.isfinite(ph) & np.isfinite(bg) & (ph > 0) & (bg >= 0)
    if "saturated" in locs.columns:
        ok &= ~locs["saturated"].to_numpy(bool)
    if int(ok.sum()) < min_rows:
        raise ValueError(
            f"{p}: {int(ok.sum())} localizations with photons and background; "
            f"--match needs at least {min_rows}"
        )
    return (
        Distribution(kind="empirical", values=ph[ok].tolist()),
        Distribution(kind="empirical", values=bg[ok].tolist()),
    )

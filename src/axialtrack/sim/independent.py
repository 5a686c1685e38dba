"""Bead stacks and movies rendered by an independent PSF implementation.

The project's own simulator (:mod:`axialtrack.sim.render`) uses the project's
PSF model, so a pipeline trained and scored on it cannot find errors the two
share. This module renders with `psfmodels <https://github.com/tlambert03/PSFmodels>`_
(Aguet's vectorial Gibson-Lanni model), a test dependency
(``pip install axialtrack[test]``), for optics and a camera of the caller's
choosing, as a lab would record them: raw sensor frames of a two-plane splitter
with plane 1 shifted and, if asked, mirrored, in camera ADU.

Conventions
-----------
- ``dz = ref_z - stage_z`` (um) as everywhere in the project; the reference Z of
  an emitter is the stage Z at which it is in focus in plane 0, *in focus*
  meaning the maximum of the on-axis intensity (the project's convention,
  :mod:`axialtrack.calibrate.refz`).
- psfmodels' axial coordinate ``zv`` is the focus position with the paraxial
  focal shift removed; its on-axis maximum is at ``zv = PSFTable.zv_focus``, not
  at 0, when the sample and immersion indices differ (and a few nm off 0 even
  when they match). A frame at stage ``S`` shows an emitter of reference
  ``R`` in plane 0 at ``zv = zv_focus - (R - S)`` and in plane 1 at that plus the
  plane offset (plane 1 is in focus ``plane_offset_um`` lower on the stage).
- Positions are whole multiples of ``1 / oversample`` pixel: the PSF is computed
  on a grid ``oversample`` times finer than the camera pixels, shifted by whole
  fine pixels and summed into camera pixels, so the truth is exact.
- Pixel ``(row, col)`` has its centre at ``(y, x) = (row, col)`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "IndependentCamera",
    "IndependentOptics",
    "PSFTable",
    "Scene",
    "compose_frames",
    "place_groups",
    "psfmodels_available",
]


def psfmodels_available() -> bool:
    """Whether psfmodels can be imported."""
    try:
        import psfmodels  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class IndependentOptics:
    """Optics and splitter geometry of a rendered microscope.

    Attributes
    ----------
    name
        Label used in reports.
    na, wavelength_um, n_immersion, n_sample
        Objective NA, emission wavelength, immersion and sample indices.
    depth_um
        Depth of the beads and emitters above the coverslip (psfmodels' ``pz``).
    pixel_um
        Camera pixel in the sample.
    plane_offset_um
        Plane 1 is in focus this much lower on the stage than plane 0.
    shift_px
        Plane 1's offset ``(dx, dy)`` from plane 0 in pixels, before mirroring.
    mirror
        ``none``, ``horizontal``, ``vertical`` or ``both``: how plane 1 lies on the
        sensor.
    layout
        ``side-by-side`` (plane 1 right of plane 0) or ``top-bottom``.
    """

    name: str
    na: float
    wavelength_um: float
    n_immersion: float
    n_sample: float
    depth_um: float
    pixel_um: float
    plane_offset_um: float
    shift_px: tuple[int, int] = (3, -2)
    mirror: str = "horizontal"
    layout: str = "side-by-side"

    def params(self) -> dict[str, float]:
        """psfmodels' parameter dict (coverslip as designed)."""
        return {
            "NA": self.na,
            "ni": self.n_immersion,
            "ni0": self.n_immersion,
            "ns": self.n_sample,
            "ng": 1.515,
            "ng0": 1.515,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {
            "name": self.name,
            "na": self.na,
            "wavelength_um": self.wavelength_um,
            "n_immersion": self.n_immersion,
            "n_sample": self.n_sample,
            "depth_um": self.depth_um,
            "pixel_um": self.pixel_um,
            "plane_offset_um": self.plane_offset_um,
            "shift_px": list(self.shift_px),
            "mirror": self.mirror,
            "layout": self.layout,
        }


@dataclass(frozen=True)
class IndependentCamera:
    """An sCMOS-like camera: ``ADU = offset + e / e_per_adu + read noise``.

    ``qe`` converts photons reaching the sensor into photoelectrons; the
    renderer's ``photons`` are photons *detected* (photoelectrons).
    """

    offset_adu: float = 300.0
    e_per_adu: float = 1.8
    read_noise_e: float = 1.4
    qe: float = 0.85
    bit_depth: int = 16

    def as_dict(self) -> dict[str, Any]:
        """The camera file's fields."""
        return {
            "offset_adu": self.offset_adu,
            "e_per_adu": self.e_per_adu,
            "read_noise_e": self.read_noise_e,
            "qe": self.qe,
            "bit_depth": self.bit_depth,
        }

    def digitize(self, electrons_mean: np.ndarray, rng: np.random.Generator) -> Any:
        """Poisson shot noise, Gaussian read noise, gain, offset, ``uint16``."""
        e = rng.poisson(np.maximum(electrons_mean, 0.0)).astype(float)
        e += rng.normal(0.0, self.read_noise_e, e.shape)
        adu = np.round(self.offset_adu + e / self.e_per_adu)
        return np.clip(adu, 0, 2**self.bit_depth - 1).astype(np.uint16)


class PSFTable:
    """psfmodels' vectorial PSF on a fine grid over a range of ``zv``.

    Parameters
    ----------
    optics
        The optics to render.
    zv_lo_um, zv_hi_um
        Range of psfmodels' ``zv`` *relative to the in-focus* ``zv_focus``.
    step_um
        ``zv`` step; rendered defocus is rounded to it.
    size_px
        Odd patch size in camera pixels.
    oversample
        Odd number of fine pixels per camera pixel.

    Attributes
    ----------
    zv_focus
        psfmodels' ``zv`` of the on-axis intensity maximum (parabola-refined)
        for ``optics.depth_um``: the offset between psfmodels' axial coordinate
        and the project's "in focus".
    """

    def __init__(
        self,
        optics: IndependentOptics,
        zv_lo_um: float,
        zv_hi_um: float,
        *,
        step_um: float = 0.005,
        size_px: int = 31,
        oversample: int = 5,
    ) -> None:
        if size_px % 2 == 0 or oversample % 2 == 0:
            raise ValueError("size_px and oversample must be odd")
        try:
            import psfmodels
        except ImportError:  # pragma: no cover - test dependency
            raise ImportError(
                "rendering with an independent PSF needs psfmodels: "
                "pip install 'axialtrack[test]'"
            ) from None
        self.optics = optics
        self.step_um = float(step_um)
        self.size_px = int(size_px)
        self.oversample = int(oversample)
        nx = self.size_px * self.oversample
        dxy = optics.pixel_um / self.oversample
        kw = {
            "dxy": dxy,
            "pz": optics.depth_um,
            "wvl": optics.wavelength_um,
            "params": optics.params(),
            "normalize": False,
        }
        # where psfmodels puts the on-axis maximum: coarse scan, then fine
        zc = np.arange(-3.0, 3.0 + 1e-9, 0.02) + optics.depth_um
        c = nx // 2
        axial = psfmodels.vectorial_psf(zv=zc, nx=nx, **kw)[:, c, c]
        k = int(np.argmax(axial))
        zf = zc[k] + np.arange(-0.04, 0.04 + 1e-9, 0.002)
        axial = psfmodels.vectorial_psf(zv=zf, nx=nx, **kw)[:, c, c]
        k = int(np.clip(np.argmax(axial), 1, zf.size - 2))
        y0, y1, y2 = axial[k - 1 : k + 2]
        den = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / den if den != 0 else 0.0
        self.zv_focus = float(zf[k] + frac * (zf[1] - zf[0]))
        n_lo = int(np.floor(zv_lo_um / step_um))
        n_hi = int(np.ceil(zv_hi_um / step_um))
        self.rel_um = np.arange(n_lo, n_hi + 1) * step_um
        fine = psfmodels.vectorial_psf(zv=self.zv_focus + self.rel_um, nx=nx, **kw)
        focus = psfmodels.vectorial_psf(zv=np.array([self.zv_focus]), nx=nx, **kw)
        # photons = what the in-focus PSF puts in the patch: defocused light that
        # spreads beyond it is lost, as it is on a camera
        self.fine = (fine / float(focus.sum())).astype(np.float32)
        self._n_lo = n_lo

    def index(self, rel_um: np.ndarray | float) -> np.ndarray:
        """Table rows of defocus ``rel_um`` (``zv - zv_focus``), rounded to the step."""
        k = np.rint(np.asarray(rel_um, float) / self.step_um).astype(int) - self._n_lo
        if np.any(k < 0) or np.any(k >= self.rel_um.size):
            raise ValueError(
                f"defocus outside the table ({float(np.min(rel_um)):.3f} .. "
                f"{float(np.max(rel_um)):.3f} um; table "
                f"{self.rel_um[0]:.3f} .. {self.rel_um[-1]:.3f})"
            )
        return k

    def image(self, rel_um: float, fx: int, fy: int) -> np.ndarray:
        """``(size, size)`` camera-pixel PSF at defocus ``rel_um`` with the emitter
        ``(fx, fy)`` fine pixels from the centre of the central pixel
        (``|fx|, |fy| <= oversample // 2``)."""
        os = self.oversample
        h = os // 2
        if abs(fx) > h or abs(fy) > h:
            raise ValueError(f"fine offset ({fx}, {fy}) beyond +-{h}")
        img = self.fine[int(self.index(rel_um))]
        pad = np.pad(img, h)
        n = img.shape[0]
        # content moves by (+fx, +fy): the window starts (h - f) into the padding
        win = pad[h - fy : h - fy + n, h - fx : h - fx + n]
        s = self.size_px
        return np.asarray(win.reshape(s, os, s, os).sum(axis=(1, 3)), dtype=float)


@dataclass
class Scene:
    """Emitters of one frame or one bead field.

    ``x_px, y_px``: plane-0 positions (pixels); ``ref_z_um``: reference Z in the
    stage frame (project convention); ``photons``: detected photons per plane.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    ref_z_um: np.ndarray
    photons: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _quantize(v: np.ndarray, oversample: int) -> np.ndarray:
    return np.rint(np.asarray(v, float) * oversample) / oversample


def place_groups(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    singles: int,
    pairs: int,
    margin_px: float,
    group_gap_px: float = 20.0,
    pair_px: tuple[float, float] = (8.0, 15.0),
    oversample: int = 5,
    tries: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``singles`` lone emitters and ``pairs`` close pairs.

    Members of different groups are at least ``group_gap_px`` apart; the two of a
    pair ``pair_px`` apart. Positions lie on the ``1 / oversample`` pixel grid, at
    least ``margin_px`` from the edges. Returns ``(x, y)`` in pixels; fewer groups
    if they do not fit.
    """
    h, w = shape
    xs: list[float] = []
    ys: list[float] = []
    kinds = [2] * pairs + [1] * singles
    for kind in kinds:
        for _ in range(tries):
            x0 = rng.uniform(margin_px, w - 1 - margin_px)
            y0 = rng.uniform(margin_px, h - 1 - margin_px)
            px = [x0]
            py = [y0]
            if kind == 2:
                d = rng.uniform(*pair_px)
                a = rng.uniform(0, 2 * np.pi)
                x1, y1 = x0 + d * np.cos(a), y0 + d * np.sin(a)
                if not (
                    margin_px <= x1 <= w - 1 - margin_px
                    and margin_px <= y1 <= h - 1 - margin_px
                ):
                    continue
                px.append(x1)
                py.append(y1)
            qx = _quantize(np.array(px), oversample)
            qy = _quantize(np.array(py), oversample)
            if kind == 2:
                d = float(np.hypot(qx[1] - qx[0], qy[1] - qy[0]))
                if not pair_px[0] <= d <= pair_px[1]:
                    continue
            if xs:
                ax, ay = np.array(xs), np.array(ys)
                dist = np.hypot(qx[:, None] - ax[None], qy[:, None] - ay[None])
                if dist.min() < group_gap_px:
                    continue
            xs.extend(qx.tolist())
            ys.extend(qy.tolist())
            break
    return np.array(xs), np.array(ys)


def compose_frames(
    table: PSFTable,
    scenes: Sequence[Scene],
    stage_z_um: Sequence[float] | np.ndarray,
    plane_shape: tuple[int, int],
    camera: IndependentCamera,
    background_e: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Raw sensor frames ``(len(scenes), H', W')`` (``uint16`` ADU).

    Frame ``k`` shows ``scenes[k]`` at stage ``stage_z_um[k]``; plane 1 holds
    the same emitters ``optics.shift_px`` away, in focus
    ``optics.plane_offset_um`` lower on the stage, then mirrored and laid out as
    ``optics``' splitter puts it.
    """
    o = table.optics
    h, w = plane_shape
    s = table.size_px
    half = s // 2
    os = table.oversample
    out = []
    for scene, stage in zip(scenes, np.asarray(stage_z_um, float), strict=True):
        planes = np.full((2, h + 2 * s, w + 2 * s), float(background_e))
        for x, y, ref, n in zip(
            scene.x_px, scene.y_px, scene.ref_z_um, scene.photons, strict=True
        ):
            rel0 = -(ref - stage)
            for p, (dx, dy), rel in (
                (0, (0, 0), rel0),
                (1, o.shift_px, rel0 + o.plane_offset_um),
            ):
                xp, yp = x + dx, y + dy
                ix, iy = int(np.rint(xp)), int(np.rint(yp))
                fx = int(np.rint((xp - ix) * os))
                fy = int(np.rint((yp - iy) * os))
                r0, c0 = iy - half + s, ix - half + s
                planes[p, r0 : r0 + s, c0 : c0 + s] += n * table.image(rel, fx, fy)
        planes = planes[:, s : s + h, s : s + w]
        adu = camera.digitize(planes, rng)
        p1 = adu[1]
        if o.mirror in ("horizontal", "both"):
            p1 = p1[:, ::-1]
        if o.mirror in ("vertical", "both"):
            p1 = p1[::-1]
        axis = 1 if o.layout == "side-by-side" else 0
        out.append(np.concatenate([adu[0], p1], axis=axis))
    return np.stack(out)

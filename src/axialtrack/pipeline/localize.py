"""Per-frame 3D localization: detect, refine XY, crop pairs, infer Z, photometry.

:class:`Localizer` turns dual-plane frames into rows of the localization table
(``frame, t_s, x_um, y_um, z_um, dz_um, sigma_z_um, photons, background,
track_id`` plus ``x_px, y_px, saturated, neighbour_px, in_range``).

Coordinates
-----------
``x_px, y_px`` are plane-0 pixel coordinates (column, row; the first pixel's centre
at ``(0, 0)``). ``x_um, y_um`` are sample (stage-frame) coordinates:

    x_um = stage_x_um + (x_px - (W - 1) / 2) * pixel_size_um
    y_um = stage_y_um + (y_px - (H - 1) / 2) * pixel_size_um

i.e. the centre of plane 0 images the stage position, with the camera axes along
the stage axes. Where the stage position is not given (or not finite) it counts as
0, so ``x_um, y_um`` are relative to the centre of the field. This is the convention
of the simulator (:meth:`axialtrack.sim.Renderer.world_to_pixels`), so simulated
localizations compare directly with the ground truth. See
:func:`pixels_to_sample_um` and :func:`sample_um_to_pixels`.

``z_um = stage_z_um + dz_um``: the focus-stage position at which the particle is in
focus in plane 0.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from axialtrack.geometry import apply_affine
from axialtrack.store.layout import LOCALIZATION_COLUMNS

from ._camera_maps import CameraMaps, load_camera_maps
from ._detect import Detections, detect
from ._uncertainty import uncertainty
from ._xy import (
    _combine_planes,
    _fit_windows,
    _inverse,
    _window_method,
    refine_xy,
)
from .config import CameraCalibration, LocalizerConfig
from .crops import crop_centers, crop_pairs

if TYPE_CHECKING:
    from axialtrack.optics.sampled import SampledPSF

__all__ = [
    "TABLE_COLUMNS",
    "Localizer",
    "LocalizerConfig",
    "PreparedBatch",
    "empty_columns",
    "empty_table",
    "field_position",
    "pixels_to_sample_um",
    "refine_xy",
    "sample_um_to_pixels",
]

logger = logging.getLogger(__name__)

#: Columns of :meth:`Localizer.localize` and their dtypes.
TABLE_COLUMNS: dict[str, np.dtype] = {
    **LOCALIZATION_COLUMNS,
    "x_px": np.dtype("float64"),
    "y_px": np.dtype("float64"),
    "saturated": np.dtype("bool"),
    "neighbour_px": np.dtype("float64"),
    "in_range": np.dtype("bool"),
    "sigma_xy_um": np.dtype("float64"),
    "llr": np.dtype("float64"),
    "refined": np.dtype("bool"),
    "misfit": np.dtype("bool"),
    "psf_check": np.dtype("int8"),
}


class EngineLike(Protocol):
    """What the localizer needs of an inference engine."""

    @property
    def crop_size(self) -> int: ...

    @property
    def needs_xy(self) -> bool: ...

    @property
    def bundle(self) -> Any: ...

    def infer(self, pairs: np.ndarray, field_xy: np.ndarray | None) -> Any: ...


# ---------------------------------------------------------------- coordinates
# the fewest localizations per thread of the XY fit (see Localizer._chunks)
_MIN_RUN = 256


def _stage_xy(stage_xy_um: Any, n: int) -> np.ndarray:
    if stage_xy_um is None:
        return np.zeros((n, 2))
    s = np.asarray(stage_xy_um, dtype=float)
    s = np.broadcast_to(s.reshape(-1, 2) if s.size != 2 else s.reshape(1, 2), (n, 2))
    return np.where(np.isfinite(s), s, 0.0)


def pixels_to_sample_um(
    xy_px: np.ndarray,
    plane_shape: tuple[int, int],
    pixel_size_um: float,
    stage_xy_um: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Sample coordinates ``(N, 2)`` (um) of plane-0 pixel positions ``(N, 2)``.

    ``x_um = stage_x + (x_px - (W - 1) / 2) * pixel_size_um`` and likewise for y.
    ``stage_xy_um`` is ``(2,)`` or ``(N, 2)``; ``None`` or non-finite values count
    as 0 (coordinates relative to the field centre).
    """
    xy = np.asarray(xy_px, dtype=float).reshape(-1, 2)
    h, w = plane_shape
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return _stage_xy(stage_xy_um, len(xy)) + (xy - centre) * float(pixel_size_um)


def sample_um_to_pixels(
    xy_um: np.ndarray,
    plane_shape: tuple[int, int],
    pixel_size_um: float,
    stage_xy_um: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Inverse of :func:`pixels_to_sample_um`: plane-0 pixels ``(N, 2)``."""
    xy = np.asarray(xy_um, dtype=float).reshape(-1, 2)
    h, w = plane_shape
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return (xy - _stage_xy(stage_xy_um, len(xy))) / float(pixel_size_um) + centre


def field_position(xy_px: np.ndarray, plane_shape: tuple[int, int]) -> np.ndarray:
    """Normalized field position ``(N, 2)`` float32: ``2 x / (W - 1) - 1``, same y."""
    xy = np.asarray(xy_px, dtype=float).reshape(-1, 2)
    h, w = plane_shape
    out = np.empty_like(xy)
    out[:, 0] = 2.0 * xy[:, 0] / max(w - 1, 1) - 1.0
    out[:, 1] = 2.0 * xy[:, 1] / max(h - 1, 1) - 1.0
    return out.astype(np.float32)


def _nearest_other(xy: np.ndarray) -> np.ndarray:
    """Distance (px) from each detection to the nearest other one (inf if alone)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if len(xy) < 2:
        return np.full(len(xy), np.inf)
    return cKDTree(xy).query(xy, k=2)[0][:, 1]


def empty_columns() -> dict[str, np.ndarray]:
    """The columns of a localization table with no rows (the right dtypes)."""
    return {k: np.zeros(0, dtype=dt) for k, dt in TABLE_COLUMNS.items()}


def empty_table() -> pd.DataFrame:
    """A localization table with no rows and the right dtypes."""
    return pd.DataFrame(empty_columns())


@dataclass
class PreparedBatch:
    """A batch of frames detected, refined and cropped, waiting for inference.

    Made by :meth:`Localizer.prepare`, consumed by :meth:`Localizer.finish`.
    Per-frame arrays have ``F`` rows; per-localization arrays ``N``.
    """

    frames: np.ndarray
    t_s: np.ndarray
    stage_z_um: np.ndarray
    stage_xy_um: np.ndarray
    frame_of: np.ndarray
    xy_px: np.ndarray
    pairs: np.ndarray
    background_photons: np.ndarray
    background_adu: np.ndarray
    neighbour_px: np.ndarray
    background1_adu: np.ndarray | None = None

    @classmethod
    def empty(
        cls, frames: np.ndarray, t_s: np.ndarray, stage_z_um: np.ndarray
    ) -> PreparedBatch:
        """A batch with no localization."""
        z = np.zeros(0)
        return cls(
            frames=frames,
            t_s=t_s,
            stage_z_um=stage_z_um,
            stage_xy_um=np.zeros((len(frames), 2)),
            frame_of=np.zeros(0, np.int64),
            xy_px=np.zeros((0, 2)),
            pairs=np.zeros((0, 2, 1, 1), np.uint16),
            background_photons=z,
            background_adu=z,
            neighbour_px=z,
        )

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


# -------------------------------------------------------------------- localizer
class Localizer:
    """Localize particles in 3D in dual-plane frames through an inference engine.

    Parameters
    ----------
    engine
        The inference engine (:func:`axialtrack.engine.select_engine`, or anything
        with ``crop_size``, ``needs_xy``, ``bundle`` and ``infer``).
    plane_shape
        ``(H, W)`` of one plane (px).
    pixel_size_um
        Pixel size in the sample (um).
    affine
        Plane-0 -> plane-1 affine ``(2, 3)`` (px). ``None`` takes the bundle's
        registration, or the identity (with a warning) when it has none.
    config
        Settings (default :class:`LocalizerConfig` with the camera of the
        engine's bundle).

    Attributes
    ----------
    timings
        Cumulative seconds per stage: ``detect``, ``xy``, ``crop``, ``infer``,
        ``photometry``, and ``frames``/``localizations`` counts.
    xy_method
        The resolved XY method (``"fit"``, ``"network"`` or ``"centroid"``).
    """

    def __init__(
        self,
        engine: EngineLike,
        *,
        plane_shape: tuple[int, int],
        pixel_size_um: float,
        affine: np.ndarray | None = None,
        config: LocalizerConfig | None = None,
        psf: SampledPSF | None = None,
    ) -> None:
        self.engine = engine
        if config is None:
            # counts become photons with the camera the model was calibrated
            # with, where the engine's bundle records it
            try:
                cam = getattr(getattr(engine, "bundle", None), "camera", None)
            except (KeyError, ValueError):  # a bundle built without one
                cam = None
            config = (
                LocalizerConfig(camera=cam)
                if isinstance(cam, CameraCalibration)
                else LocalizerConfig()
            )
        self.config = config
        self.plane_shape = (int(plane_shape[0]), int(plane_shape[1]))
        self.pixel_size_um = float(pixel_size_um)
        if not self.pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be > 0; got {pixel_size_um}")
        self.crop_size = int(engine.crop_size)
        bundle = getattr(engine, "bundle", None)
        affine_of_bundle = affine is None and bundle is not None
        if affine_of_bundle:
            affine = getattr(bundle, "registration_affine", None)
        if affine is None:
            warnings.warn(
                "no plane registration given and the model bundle has none: "
                "cropping plane 1 at the plane-0 positions (identity affine)",
                RuntimeWarning,
                stacklevel=2,
            )
            affine = np.eye(2, 3)
        self.affine = np.asarray(affine, dtype=float).reshape(2, 3)
        outputs = list(getattr(bundle, "output_names", []) or [])
        has_dxdy = "dx_px" in outputs and "dy_px" in outputs
        method = self.config.xy_method
        if method == "auto":
            method = "network" if has_dxdy else "fit"
        elif method == "network" and not has_dxdy:
            raise ValueError(
                "xy_method='network' needs a model with the sub-pixel (dx_px, dy_px) "
                "outputs; this one has "
                f"{outputs or 'unknown outputs'}. Use 'fit' or 'centroid'"
            )
        self.xy_method: str = method
        self._check_rig(bundle, affine_of_bundle)
        po = getattr(bundle, "plane_offset_um", None)
        self.plane_offset_um: float | None = None if po is None else float(po)
        zr = getattr(bundle, "z_range_um", None)
        self.z_range_um: tuple[float, float] | None = (
            None if zr is None else (float(zr[0]), float(zr[1]))
        )
        self._warned_saturation = False
        self._pool: ThreadPoolExecutor | None = None
        self.timings: dict[str, float] = dict.fromkeys(
            (
                "detect",
                "xy",
                "crop",
                "infer",
                "photometry",
                "refine",
                "frames",
                "localizations",
                "refined",
            ),
            0.0,
        )
        self.psf: SampledPSF | None = self._resolve_psf(psf, bundle)
        self.refine_size_px = 0
        self.refine_far_size_px = 0
        if self.psf is not None:
            self.refine_size_px = self._refine_size(self.psf)
            # far from focus: a larger window where the model's crop has one
            fit = min(self.crop_size, self.psf.size - 4)
            fit -= 1 - fit % 2
            self.refine_far_size_px = max(
                self.refine_size_px, min(self.config.refine_far_size_px, fit)
            )
            self._warm_up(self.psf)
        # seconds per refined localization (updated as batches are refined)
        self._s_per_refine = 1e-4
        self.camera_maps: CameraMaps | None = None
        self._maps_stacked: np.ndarray | None = None
        if self.config.camera_map is not None:
            self.camera_maps = load_camera_maps(self.config.camera_map, plane_shape)
            self._maps_stacked = self.camera_maps.stacked()

    def _resolve_psf(self, psf: SampledPSF | None, bundle: Any) -> SampledPSF | None:
        """The PSF of the uncertainty and the refinement, or ``None``."""
        from axialtrack.optics import SampledPSFError, psf_for_bundle

        cfg = self.config
        if psf is None and (cfg.refine or cfg.uncertainty) and bundle is not None:
            try:
                psf = psf_for_bundle(bundle)
            except SampledPSFError:
                if cfg.refine:
                    raise
                logger.info(
                    "the model bundle records no PSF model: sigma_z_um and "
                    "sigma_xy_um stay NaN"
                )
        if cfg.refine and psf is None:
            raise ValueError(
                "refinement needs a PSF model: pass psf= or use a bundle that "
                "records one"
            )
        if psf is not None and psf.n_planes != 2:
            raise ValueError(f"the PSF has {psf.n_planes} plane(s); 2 are needed")
        return psf

    def _warm_up(self, psf: SampledPSF) -> None:
        """Compile (or load from numba's cache) the kernels now, not in the
        first batch of a live run."""
        from .refine import crlb_at, mle_refine

        size = self.refine_size_px
        xyz = np.zeros((1, 3))
        xyz[0, 2] = float(np.mean(psf.z_range_um))
        crlb_at(psf, xyz, 1000.0, 10.0, size=size)
        if self.config.refine or self.config.psf_check.per_batch:
            mle_refine(psf, np.full((1, 2, size, size), 10.0), xyz, max_iter=1)
            from scipy.special import chdtrc  # the check's p-values

            chdtrc(3.0, 1.0)

    def _refine_size(self, psf: SampledPSF) -> int:
        """Crop side of the refinement: the configured one where it fits."""
        cfg = self.config
        fit = min(self.crop_size, psf.size - 4)
        fit -= 1 - fit % 2
        if cfg.refine and cfg.refine_size_px > fit:
            raise ValueError(
                f"refine_size_px={cfg.refine_size_px} does not fit: the model's "
                f"crops are {self.crop_size} px and the PSF is sampled on "
                f"{psf.size} px (at most {fit}); use refine_size_px <= {fit}"
            )
        return min(cfg.refine_size_px, fit)

    def _check_rig(self, bundle: Any, affine_of_bundle: bool = False) -> None:
        if bundle is None:
            return
        shape = getattr(bundle, "plane_shape", None)
        turn = float(np.abs(self.affine[:, :2] - np.eye(2)).max())
        if (
            affine_of_bundle
            and shape is not None
            and tuple(shape) != self.plane_shape
            and turn > 1e-3
        ):
            # a rotation or scale maps plane-0 pixels of the calibration's
            # planes; another camera ROI moves the pixel origin, and with it
            # where plane 1 is cropped
            warnings.warn(
                f"the model's plane registration (rotation or scale "
                f"{turn:.2g}) was calibrated on planes of {tuple(shape)} px and "
                f"these are {self.plane_shape} px: if the camera ROI changed "
                f"since, plane-1 crops are off by about {turn:.2g} px per px "
                "the ROI moved, and Z with them. Calibrate with this ROI, or "
                "pass its registration as affine=",
                RuntimeWarning,
                stacklevel=3,
            )
        px = getattr(bundle, "pixel_size_um", None)
        if px is not None and abs(px - self.pixel_size_um) > 0.01 * px:
            warnings.warn(
                f"the model was trained at pixel size {px:g} um but frames have "
                f"{self.pixel_size_um:g} um: Z will be wrong; recalibrate",
                RuntimeWarning,
                stacklevel=3,
            )
        if (
            shape is not None
            and tuple(shape) != self.plane_shape
            and bool(getattr(self.engine, "needs_xy", False))
        ):
            logger.info(
                "model calibrated on planes of %s px, frames are %s px: field "
                "positions are normalized to the frames' plane",
                tuple(shape),
                self.plane_shape,
            )

    # ------------------------------------------------------------------ public
    def detect(self, planes: np.ndarray) -> Detections:
        """Detections of one ``(2, H, W)`` frame (crop margin applied)."""
        return self._detect(planes)[0]

    def _detect(self, planes: np.ndarray) -> tuple[Detections, np.ndarray]:
        """:meth:`detect` and each detection's distance to its nearest other
        one (px), measured before ``max_per_frame`` keeps the brightest: a
        crowded particle is not reported isolated because its neighbours were
        cut."""
        d = detect(
            planes,
            self.config.detection,
            self.config.camera,
            self.affine,
            margin_px=self.crop_size // 2,
        )
        nn = _nearest_other(d.xy_px)
        m = self.config.max_per_frame
        if m is not None and len(d) > m:
            d = d.take(slice(0, m))
            nn = nn[:m]
        return d, nn

    def localize(
        self,
        planes: np.ndarray,
        frames: Sequence[int] | np.ndarray,
        t_s: Sequence[float] | np.ndarray,
        stage_z_um: float | Sequence[float] | np.ndarray,
        stage_xy_um: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Localization rows of ``F`` frames.

        All crop pairs of all frames go through one ``engine.infer`` call; this
        is :meth:`finish` of :meth:`prepare`.

        Parameters
        ----------
        planes
            ``(F, 2, H, W)`` (or ``(2, H, W)`` for one frame) raw counts.
        frames
            ``(F,)`` frame indices.
        t_s
            ``(F,)`` frame times (s).
        stage_z_um
            Focus-stage position per frame, ``(F,)`` or a scalar.
        stage_xy_um
            Stage position per frame, ``(F, 2)`` or ``(2,)`` (um); ``None`` or NaN:
            coordinates relative to the field centre.

        Returns
        -------
        pandas.DataFrame
            One row per localization, ordered by frame (brightest first within a
            frame); columns :data:`TABLE_COLUMNS`, ``track_id`` -1.
        """
        return self.finish(self.prepare(planes, frames, t_s, stage_z_um, stage_xy_um))

    def prepare(
        self,
        planes: np.ndarray,
        frames: Sequence[int] | np.ndarray,
        t_s: Sequence[float] | np.ndarray,
        stage_z_um: float | Sequence[float] | np.ndarray,
        stage_xy_um: np.ndarray | None = None,
    ) -> PreparedBatch:
        """The part of :meth:`localize` before inference: detect, refine XY, crop.

        Pure CPU work that never touches the engine, so a pipeline can run it
        for the next batch while the engine infers the current one;
        :meth:`finish` completes it. The parameters are those of :meth:`localize`.

        Returns
        -------
        PreparedBatch
            The crop pairs and what the table needs besides Z.
        """
        cfg = self.config
        cam = cfg.camera
        arr = np.asarray(planes)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != 2:
            raise ValueError(
                f"planes must have shape (F, 2, H, W) or (2, H, W); got {arr.shape}"
            )
        n_f = arr.shape[0]
        h, w = arr.shape[-2:]
        if (h, w) != self.plane_shape:
            raise ValueError(
                f"frames have planes of {(h, w)} px; the localizer was set up for "
                f"{self.plane_shape}"
            )
        fr = np.asarray(frames, dtype=np.int64).reshape(-1)
        ts = np.asarray(t_s, dtype=float).reshape(-1)
        sz = np.broadcast_to(np.asarray(stage_z_um, dtype=float).reshape(-1), (n_f,))
        if fr.shape[0] != n_f or ts.shape[0] != n_f:
            raise ValueError(
                f"{n_f} frame(s) but {fr.shape[0]} frame indices and {ts.shape[0]} "
                "times"
            )
        sxy = _stage_xy(stage_xy_um, n_f)
        tm = self.timings
        tm["frames"] += n_f

        # 1. detection, frame by frame (or side by side in threads)
        t0 = time.perf_counter()
        if cfg.detect_threads > 1 and n_f > 1:
            found = list(self._detect_pool().map(self._detect, arr))
        else:
            found = [self._detect(arr[f]) for f in range(n_f)]
        dets = [d for d, _ in found]
        counts = np.array([len(d) for d in dets], dtype=np.int64)
        t1 = time.perf_counter()
        tm["detect"] += t1 - t0
        if counts.sum() == 0:
            return PreparedBatch.empty(fr, ts, sz)
        fi = np.repeat(np.arange(n_f, dtype=np.int64), counts)
        peaks = np.concatenate([d.xy_px for d in dets])
        bg_ph = np.concatenate([d.background_photons for d in dets])
        bg_adu = bg_ph / cam.photons_per_adu + cam.offset_adu
        bg1_ph = np.concatenate([d.background1_photons for d in dets])
        nn_px = np.concatenate([nn for _, nn in found])
        both = cfg.xy_planes == "both" and bool(np.all(np.isfinite(bg1_ph)))

        # 2. sub-pixel XY before cropping (crops centre on the rounded position)
        bg1_adu = bg1_ph / cam.photons_per_adu + cam.offset_adu if both else None
        chunks = self._chunks(peaks.shape[0])

        def refine(sl: slice) -> np.ndarray:
            return refine_xy(
                arr,
                fi[sl],
                peaks[sl],
                bg_adu[sl],
                method=self.xy_method,
                size=cfg.fit_size_px,
                sigma_px=cfg.fit_sigma_px,
                n_iter=cfg.fit_iterations,
                affine=self.affine if both else None,
                background1_adu=None if bg1_adu is None else bg1_adu[sl],
                offset_adu=cam.offset_adu,
            )

        if self.xy_method not in ("fit", "centroid"):
            xy0 = peaks
        elif len(chunks) == 1:
            xy0 = refine(chunks[0])
        else:
            xy0 = np.concatenate(list(self._detect_pool().map(refine, chunks)))
        t2 = time.perf_counter()
        tm["xy"] += t2 - t1

        # 3. crop pairs (a copy bound by memory: threads do not help)
        pairs, inside = crop_pairs(
            arr, xy0, self.affine, self.crop_size, frame_index=fi
        )
        if not inside.all():
            pairs, xy0, fi = pairs[inside], xy0[inside], fi[inside]
            bg_ph, bg_adu = bg_ph[inside], bg_adu[inside]
            nn_px = nn_px[inside]
            if bg1_adu is not None:
                bg1_adu = bg1_adu[inside]
        t3 = time.perf_counter()
        tm["crop"] += t3 - t2
        return PreparedBatch(
            frames=fr,
            t_s=ts,
            stage_z_um=sz,
            stage_xy_um=sxy,
            frame_of=fi,
            xy_px=xy0,
            pairs=pairs,
            background_photons=bg_ph,
            background_adu=bg_adu,
            neighbour_px=nn_px,
            background1_adu=bg1_adu,
        )

    def _chunks(self, n: int) -> list[slice]:
        """The localizations ``0:n`` of a batch in up to ``detect_threads``
        runs for the XY fit, of at least 256 each: on smaller runs handing the
        work to a thread costs more than it saves."""
        parts = max(1, min(self.config.detect_threads, n // _MIN_RUN))
        edges = [round(i * n / parts) for i in range(parts + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(edges)]

    def _detect_pool(self) -> ThreadPoolExecutor:
        """The threads of :attr:`LocalizerConfig.detect_threads` (made once)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.config.detect_threads, thread_name_prefix="detect"
            )
        return self._pool

    def _refit_defocused(
        self, batch: PreparedBatch, xy0: np.ndarray, dz: np.ndarray
    ) -> np.ndarray:
        """Refit XY on the whole crop for particles out of focus in both planes.

        The first XY fit uses a small window (``fit_size_px``) that clips a
        defocused PSF; with Z known, particles farther than ``defocus_refit_um``
        from the focus of both planes are refitted on ``defocus_fit_size_px``
        windows of their crop pairs (where the Gaussian weight can widen to the
        spot's width), both planes combined as in :func:`refine_xy`.
        """
        cfg = self.config
        off = self.plane_offset_um
        t = float(cfg.defocus_refit_um or 0.0)
        far = np.abs(dz) > t
        if off is not None:
            far &= np.abs(dz - off) > t
        far &= np.isfinite(dz)
        idx = np.flatnonzero(far)
        if idx.size == 0:
            return xy0
        size = min(int(cfg.defocus_fit_size_px), self.crop_size)
        lo = self.crop_size // 2 - size // 2
        win = batch.pairs[idx, :, lo : lo + size, lo : lo + size].astype(np.float32)
        c0, c1 = crop_centers(xy0[idx], self.affine)
        bg0 = batch.background_adu[idx].astype(np.float32)[:, None, None]
        n = idx.size
        if batch.background1_adu is None:
            d0, _, _ = _fit_windows(
                win[:, 0] - bg0, _window_method(self.xy_method), cfg.fit_sigma_px, 5
            )
            new = c0 + d0
        else:
            bg1 = batch.background1_adu[idx].astype(np.float32)[:, None, None]
            img = np.concatenate([win[:, 0] - bg0, win[:, 1] - bg1])
            d, amp, ok = _fit_windows(
                img, _window_method(self.xy_method), cfg.fit_sigma_px, 5
            )
            b0 = np.maximum(batch.background_adu[idx] - cfg.camera.offset_adu, 0.0)
            b1 = np.maximum(batch.background1_adu[idx] - cfg.camera.offset_adu, 0.0)
            new = _combine_planes(
                c0 + d[:n],
                apply_affine(_inverse(self.affine), c1 + d[n:]),
                amp[:n],
                amp[n:],
                ok[:n],
                ok[n:],
                b0,
                b1,
            )
        out = xy0.astype(float).copy()
        out[idx] = new
        return out

    def _uncertainty(
        self,
        batch: PreparedBatch,
        xy0: np.ndarray,
        dz: np.ndarray,
        photons: np.ndarray,
        background: np.ndarray,
        sigma_z: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """:func:`._uncertainty.uncertainty` of a batch's rows."""
        return uncertainty(self, batch, xy0, dz, photons, background, sigma_z)

    def finish(self, batch: PreparedBatch) -> pd.DataFrame:
        """Infer Z for a :meth:`prepare`-d batch and build its table rows."""
        return pd.DataFrame(self.finish_columns(batch))

    def finish_columns(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        """:meth:`finish` as a dict of column arrays (:data:`TABLE_COLUMNS`).

        The live path passes columns on to the linker and the run writer
        without building a DataFrame (about 1 ms a batch).
        """
        cfg = self.config
        cam = cfg.camera
        tm = self.timings
        pairs, xy0, fi = batch.pairs, batch.xy_px, batch.frame_of
        fr, ts, sz, sxy = batch.frames, batch.t_s, batch.stage_z_um, batch.stage_xy_um
        bg_ph, bg_adu, nn_px = (
            batch.background_photons,
            batch.background_adu,
            batch.neighbour_px,
        )
        n = pairs.shape[0]
        if n == 0:
            return empty_columns()
        t3 = time.perf_counter()

        # 4. Z (and network XY)
        field = field_position(xy0, self.plane_shape) if self.engine.needs_xy else None
        res = self.engine.infer(pairs, field)
        dz = np.asarray(res.dz_um, dtype=float).reshape(-1)
        sig = np.asarray(res.sigma_z_um, dtype=float).reshape(-1)
        if self.xy_method == "network":
            c0, _ = crop_centers(xy0, self.affine)
            d_xy = np.stack(
                [np.asarray(res.dx_px, float), np.asarray(res.dy_px, float)], axis=1
            )
            xy0 = np.where(np.isfinite(d_xy), c0 + d_xy, xy0)
        t4 = time.perf_counter()
        tm["infer"] += t4 - t3
        if self.xy_method in ("fit", "centroid") and cfg.defocus_refit_um is not None:
            xy0 = self._refit_defocused(batch, xy0, dz)
        t4b = time.perf_counter()
        tm["xy"] += t4b - t4
        t4 = t4b

        # 5. photometry on the plane-0 crop
        s2 = self.crop_size**2
        crop0 = pairs[:, 0].reshape(n, -1)
        photons = (crop0.sum(axis=1, dtype=np.float64) - s2 * bg_adu) * (
            cam.photons_per_adu
        )
        saturated = pairs.reshape(n, -1).max(axis=1) >= cfg.saturation_adu
        if saturated.any() and not self._warned_saturation:
            self._warned_saturation = True
            msg = (
                f"{int(saturated.sum())} localization(s) in frame(s) "
                f"{sorted(set(fr[fi[saturated]].tolist()))[:5]} have saturated "
                f"pixels (>= {cfg.saturation_adu} ADU); they are flagged "
                "'saturated' and their Z and photons are unreliable. Lower the "
                "exposure or the light (warned once)"
            )
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        t5 = time.perf_counter()
        tm["photometry"] += t5 - t4
        extra = self._uncertainty(batch, xy0, dz, photons, bg_ph, sig)
        xy0, dz, photons, bg_ph, sig = (
            extra.pop("xy0"),
            extra.pop("dz"),
            extra.pop("photons"),
            extra.pop("background"),
            extra.pop("sigma_z_um"),
        )
        t4 = time.perf_counter()
        tm["refine"] += t4 - t5
        if self.z_range_um is None:
            in_range = np.isfinite(dz)
        else:
            m = cfg.range_margin_um
            in_range = (dz >= self.z_range_um[0] + m) & (dz <= self.z_range_um[1] - m)
        xy_um = pixels_to_sample_um(xy0, self.plane_shape, self.pixel_size_um, sxy[fi])
        t5 = time.perf_counter()
        tm["photometry"] += t5 - t4
        tm["localizations"] += n
        return {
            "frame": fr[fi],
            "t_s": ts[fi],
            "x_um": xy_um[:, 0],
            "y_um": xy_um[:, 1],
            "z_um": sz[fi] + dz,
            "dz_um": dz,
            "sigma_z_um": sig,
            "photons": photons,
            "background": bg_ph,
            "track_id": np.full(n, -1, dtype=np.int64),
            "x_px": xy0[:, 0].astype(float),
            "y_px": xy0[:, 1].astype(float),
            "saturated": saturated,
            "neighbour_px": nn_px,
            "in_range": in_range,
            **extra,
        }

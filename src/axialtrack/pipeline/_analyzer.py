"""The live analyzer: localize every frame, link into 3D tracks, summarize at the end.

:class:`TrackingAnalyzer` is what the live runner, the MDA handler and
``axialtrack localize`` call: frames in, localization rows with track ids out.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from axialtrack._deprecate import renamed_keyword

from . import _kernels
from ._tracks import summarize_tracks
from .link import LinkConfig, PositionLinker
from .localize import Localizer, LocalizerConfig, PreparedBatch

if TYPE_CHECKING:
    from axialtrack.engine import Engine
    from axialtrack.geometry import SplitterGeometry
    from axialtrack.store import FrameMeta

__all__ = ["TrackingAnalyzer", "make_analyzer"]

logger = logging.getLogger(__name__)

_SUMMARY_COLUMNS = ("frame", "t_s", "x_um", "y_um", "z_um", "track_id")


class TrackingAnalyzer:
    """Localize crop pairs through an engine and link them online.

    Parameters
    ----------
    engine
        The inference engine (:func:`axialtrack.engine.select_engine`).
    plane_shape
        ``(H, W)`` of one plane.
    pixel_size_um
        Pixel size in the sample (um).
    affine
        Plane-0 -> plane-1 affine ``(2, 3)`` (px); ``None`` takes the bundle's
        registration.
    localizer, link
        Localization and linking settings (``None``: the defaults, with the
        bundle's camera).
    frame_interval_s
        Frame period, for the diffusion estimates of the track summary (``None``:
        from the frames' times).
    axial_scale
        Sample depth per unit of ``z_um`` (the focal shift) for the diffusion
        estimates of the track summary (:func:`~axialtrack.pipeline.summarize_tracks`).
    link_in_range_only
        Localizations whose ``dz`` lies outside the model's calibrated range
        (``in_range`` false) keep ``track_id = -1``: their Z is unknown (the
        network extrapolates; on the live benchmark such predictions reached
        20 um), and in a track they would wreck the axial diffusion estimate.
        A track continues across them within the linker's ``memory``.
    keep_rows
        Keep the columns of every localization for :meth:`finish`'s track
        summary (the default). ``False``: keep none, so memory stays flat over
        a run of any length (kept, they took about 1.2 kB a batch, 3 MB a
        minute at 45 frames/s); the track summary is then made from the rows
        the run store holds, with :meth:`summarize` (what
        :class:`~axialtrack.live.runner.LiveRunner` does when
        ``keep_rows`` is false), and :meth:`finish` returns ``None``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        plane_shape: tuple[int, int],
        pixel_size_um: float,
        affine: np.ndarray | None = None,
        localizer: LocalizerConfig | None = None,
        link: LinkConfig | None = None,
        frame_interval_s: float | None = None,
        link_in_range_only: bool = True,
        axial_scale: float = 1.0,
        keep_rows: bool = True,
    ) -> None:
        self.engine = engine
        self.keep_rows = bool(keep_rows)
        self.axial_scale = float(axial_scale)
        self.link_in_range_only = bool(link_in_range_only)
        self.localizer = Localizer(
            engine,
            plane_shape=plane_shape,
            pixel_size_um=pixel_size_um,
            affine=affine,
            config=localizer,
        )
        # one linker per position (field) of a multi-position run
        self.linker = PositionLinker(link)
        self._positions: dict[int, int] = {}  # frame -> position, until linked
        self.frame_interval_s = frame_interval_s
        self._kept: list[dict[str, np.ndarray]] = []
        self.n_localizations = 0

    @property
    def n_tracks(self) -> int:
        """Track ids issued so far."""
        return int(self.linker.n_tracks)

    def end_tracks(self) -> None:
        """End every open track (see :meth:`OnlineLinker.end_tracks`): the
        frames analyzed next do not follow on from those before."""
        self.linker.end_tracks()

    def reset(self) -> None:
        """Start a new run: no open tracks, no localizations kept, counters and
        stage timings at zero (the engine and the compiled kernels stay).
        :class:`~axialtrack.live.runner.LiveRunner` calls it before each
        run, so one analyzer can serve several runs (e.g. the sequences of an
        MDA output handler), each starting again at frame 0."""
        self.linker.reset()
        self._positions = {}
        self._kept = []
        self.n_localizations = 0
        for k in self.localizer.timings:
            self.localizer.timings[k] = 0

    def analyze(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> pd.DataFrame:
        """Localization rows, with track ids, of frames ``indices``.

        The same as ``complete(prepare(planes, indices, meta))``.

        Parameters
        ----------
        planes
            ``(F, 2, H, W)`` split frames.
        indices
            Their frame indices in the run (increasing).
        meta
            Their :class:`~axialtrack.store.FrameMeta` (camera time, stage Z).
        """
        return self.complete(self.prepare(planes, indices, meta))

    def prepare(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> PreparedBatch:
        """First stage: detection, sub-pixel XY and crop pairs (no engine call).

        The live runner runs it in its own thread, one batch ahead of
        :meth:`complete`, so detection and inference overlap.
        """
        planes = np.asarray(planes)
        if planes.ndim == 3:
            planes = planes[None]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        t = np.array(
            [np.nan if m.t_s is None else float(m.t_s) for m in meta], dtype=float
        )
        z = np.array([float(m.stage_z_um) for m in meta], dtype=float)
        xy = np.array(
            [(float(m.stage_x_um), float(m.stage_y_um)) for m in meta], dtype=float
        ).reshape(-1, 2)
        for i, m in zip(idx.tolist(), meta, strict=True):
            self._positions[i] = int(getattr(m, "position_index", 0))
        return self.localizer.prepare(planes, idx, t, z, stage_xy_um=xy)

    def complete(self, batch: PreparedBatch) -> pd.DataFrame:
        """Second stage: Z inference, photometry and linking, in frame order."""
        return pd.DataFrame(self.complete_columns(batch))

    def complete_columns(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        """:meth:`complete` as a dict of column arrays (no DataFrame built).

        What the live runner and the analysis process use: the columns go to
        :meth:`~axialtrack.store.RunWriter.append_localizations` as they are.
        """
        locs = self.localizer.finish_columns(batch)
        xyz = np.stack([locs["x_um"], locs["y_um"], locs["z_um"]], axis=1)
        if self.link_in_range_only:
            # Z outside the model's calibrated range is unknown: not linked
            xyz[~locs["in_range"]] = np.nan
        # every analyzed frame is pushed, with rows or not: the frames between
        # them were skipped and do not count against the linker's memory
        positions = np.array(
            [self._positions.pop(int(f), 0) for f in batch.frames], dtype=np.int64
        )
        ids = self.linker.push_rows(
            locs["frame"], xyz, analyzed=batch.frames, positions=positions
        )
        n = len(ids)
        if n:
            locs["track_id"] = ids
            if self.keep_rows:
                self._kept.append({c: locs[c].copy() for c in _SUMMARY_COLUMNS})
            self.n_localizations += n
        return locs

    def analyze_columns(
        self,
        planes: np.ndarray,
        indices: np.ndarray | Sequence[int],
        meta: Sequence[FrameMeta],
    ) -> dict[str, np.ndarray]:
        """:meth:`analyze` as a dict of column arrays (see :meth:`complete_columns`)."""
        return self.complete_columns(self.prepare(planes, indices, meta))

    def warmup(self, max_pairs: int = 64) -> None:
        """Build what the first frames would otherwise build (detection graph,
        engine buffers and CUDA graphs for each of the engine's batch buckets,
        compiled kernels), so the first batches of a live run are not late.

        Touches no state: the linker and the counters are unchanged.
        """
        _kernels.available()
        h, w = self.localizer.plane_shape
        cam = self.localizer.config.camera
        blank = np.full((2, h, w), round(cam.offset_adu), dtype=np.uint16)
        self.localizer.detect(blank)
        s = int(self.engine.crop_size)
        # every batch size the engine compiles for (CUDA graphs, staging
        # buffers), not only the first ones a live batch meets
        sizes = {1, max(1, int(max_pairs))}
        sizes.update(int(b) for b in getattr(self.engine, "buckets", ()))
        for n in sorted(sizes):
            pairs = np.full((n, 2, s, s), round(cam.offset_adu) + 10, np.uint16)
            pairs[:, :, s // 2, s // 2] += 500
            self.engine.infer(pairs, np.zeros((n, 2), np.float32))

    def localizations(self) -> pd.DataFrame:
        """Everything localized so far (the columns the track summary needs)."""
        if not self._kept:
            return pd.DataFrame({c: pd.Series(dtype=float) for c in _SUMMARY_COLUMNS})
        return pd.DataFrame(
            {c: np.concatenate([k[c] for k in self._kept]) for c in _SUMMARY_COLUMNS}
        )

    def finish(self) -> pd.DataFrame | None:
        """The per-track summary of the run (``None`` when nothing was linked,
        or when no rows were kept: see ``keep_rows``)."""
        return self.summarize(self.localizations())

    def summarize(
        self, locs: pd.DataFrame, frame_positions: np.ndarray | None = None
    ) -> pd.DataFrame | None:
        """The per-track summary of localizations ``locs`` (e.g. those a run
        store holds), with this analyzer's frame interval and axial scale;
        ``None`` when none is linked. ``frame_positions``: the field of every
        frame (see :func:`~axialtrack.pipeline.summarize_tracks`)."""
        return summarize_linked(
            locs,
            frame_interval_s=self.frame_interval_s,
            axial_scale=self.axial_scale,
            frame_positions=frame_positions,
        )


def summarize_linked(
    locs: pd.DataFrame,
    *,
    frame_interval_s: float | None,
    axial_scale: float,
    frame_positions: np.ndarray | None = None,
) -> pd.DataFrame | None:
    """:func:`~axialtrack.pipeline.summarize_tracks` of ``locs``, or ``None``
    when no row has a track (``track_id >= 0``)."""
    if not len(locs) or not (np.asarray(locs["track_id"]) >= 0).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return summarize_tracks(
            locs,
            frame_interval_s=frame_interval_s,
            axial_scale=axial_scale,
            frame_positions=frame_positions,
        )


def make_analyzer(
    bundle_path: str | Path,
    *,
    plane_shape: tuple[int, int],
    pixel_size_um: float,
    geometry: SplitterGeometry | None = None,
    frame_interval_s: float | None = None,
    engine: str = "auto",
    localizer: LocalizerConfig | None = None,
    link: LinkConfig | None = None,
    axial_scale: float = 1.0,
    keep_rows: bool = True,
    **engine_kwargs: Any,
) -> TrackingAnalyzer:
    """Load a bundle for the rig in use and build a :class:`TrackingAnalyzer`.

    The bundle is refused (:class:`~axialtrack.model.BundleError`) when it was
    trained for another pixel size or plane offset than the rig's. Plane 1 is
    cropped through the bundle's calibration registration; a bundle without one
    uses the splitter's nominal geometry.

    Parameters
    ----------
    bundle_path
        The ``.axialmodel`` directory.
    plane_shape
        ``(H, W)`` of one plane.
    pixel_size_um
        The rig's pixel size (um).
    geometry
        The rig's splitter geometry (plane offset, nominal plane-1 affine).
    frame_interval_s
        Frame period, for the track summary.
    engine
        Backend choice for :func:`axialtrack.engine.select_engine` (its
        former name here, ``engine_prefer``, is accepted with a
        ``DeprecationWarning``).
    localizer, link
        Localization and linking settings.
    axial_scale
        Sample depth per unit of ``z_um`` for the track summary's diffusion.
    keep_rows
        See :class:`TrackingAnalyzer` (``False`` for long live runs).
    **engine_kwargs
        More arguments of :func:`~axialtrack.engine.select_engine`.
    """
    from axialtrack.engine import select_engine
    from axialtrack.model import load_bundle

    if "engine_prefer" in engine_kwargs:
        old = str(engine_kwargs.pop("engine_prefer"))
        engine = renamed_keyword("engine_prefer", "engine", old, engine, "auto")

    bundle = load_bundle(
        bundle_path,
        expect_pixel_size_um=pixel_size_um,
        expect_plane_offset_um=None if geometry is None else geometry.plane_offset_um,
    )
    affine = bundle.registration_affine
    if affine is None and geometry is not None:
        affine = geometry.plane1_affine(plane_shape)
        logger.warning(
            "%s has no plane registration; cropping plane 1 through the splitter's "
            "nominal geometry",
            bundle.path,
        )
    if localizer is None:
        from .config import LocalizerConfig

        # counts become photons with the camera the model was calibrated with
        localizer = LocalizerConfig(camera=bundle.camera)
    chosen = select_engine(bundle, engine, **engine_kwargs)
    logger.info("inference engine: %s (%s)", chosen.name, chosen.reason)
    return TrackingAnalyzer(
        chosen,
        plane_shape=plane_shape,
        pixel_size_um=pixel_size_um,
        affine=affine,
        localizer=localizer,
        link=link,
        frame_interval_s=frame_interval_s,
        axial_scale=axial_scale,
        keep_rows=keep_rows,
    )

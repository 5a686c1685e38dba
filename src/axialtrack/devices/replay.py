"""Replay camera: streams a recorded movie at a set frame rate, as if live.

Sources
-------
- a run store (``RUN.zarr``): its ``(t, 2, H, W)`` planes are re-composed into
  sensor frames with the rig's splitter geometry
  (:func:`axialtrack.geometry.compose_frame`), so the pipeline splits them as it
  would live frames; the recorded stage positions and times come along;
- a TIFF / OME-TIFF movie or a zarr array (or an OME-Zarr image group, array
  ``0``): ``(t, y, x)`` sensor frames, or ``(t, 2, y, x)`` planes (property
  ``Layout``).

Per-frame metadata: ``ReplayTime_s`` (the replay clock: the start of the frame in
seconds since the camera was initialized, frames exactly one period apart),
``ReplayStageZ_um``, ``ReplayStageX_um``, ``ReplayStageY_um`` (the recorded stage
positions; NaN for movies without them), ``RecordedTime_s`` and
``RecordedFrame`` (the frame's time and index in the source), ``ReplayLoop``,
``ReplayDue_perf_s`` (paced sequences: when the frame was due, on
``time.perf_counter``; the live runner's latency starts there).

Replaying keeps the simulator's rendering cost out of live benchmarks: a frame
costs one read (or none, with ``Preload = 1``) and one copy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pymmcore_plus.core import Keyword
from pymmcore_plus.experimental.unicore import pymm_property

from axialtrack.geometry import SplitterGeometry, unmirror

from ._base import (
    Choices,
    PacedCamera,
    as_bool,
    as_choice,
    as_float,
    find_peer,
)
from .splitter import DualPlaneSplitter

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["MOVIE_LAYOUTS", "Movie", "ReplayCamera", "open_movie"]

logger = logging.getLogger(__name__)

#: A paced sequence more than this far behind its schedule (seconds, and
#: periods) stops trying to catch up: it warns once and delivers from then on
#: as fast as it can, so the frames' latency does not grow without limit.
BEHIND_LIMIT_S = 0.1
BEHIND_PERIODS = 5

#: How a movie's frames are laid out: decided from the shape, sensor frames
#: ``(t, y, x)``, or split planes ``(t, 2, y, x)``.
MOVIE_LAYOUTS: tuple[str, ...] = ("auto", "sensor", "planes")


class Movie:
    """Frames of a recorded run or movie, read one at a time.

    Attributes
    ----------
    frames
        Array-like ``(t, y, x)`` (sensor frames) or ``(t, 2, y, x)`` (planes).
    layout
        ``"sensor"`` or ``"planes"``.
    stage_z_um, stage_x_um, stage_y_um, t_s
        Per-frame recorded values (NaN where unknown).
    splitter
        The recorded splitter geometry (run stores), else None.
    """

    def __init__(
        self,
        frames: Any,
        layout: str,
        *,
        t_s: np.ndarray | None = None,
        stage_z_um: np.ndarray | None = None,
        stage_x_um: np.ndarray | None = None,
        stage_y_um: np.ndarray | None = None,
        splitter: SplitterGeometry | None = None,
        source: str = "",
    ) -> None:
        self.frames = frames
        self.layout = layout
        n = int(frames.shape[0])
        nan = np.full(n, np.nan)
        self.t_s = nan.copy() if t_s is None else np.asarray(t_s, dtype=float)
        self.stage_z_um = nan if stage_z_um is None else np.asarray(stage_z_um, float)
        self.stage_x_um = nan if stage_x_um is None else np.asarray(stage_x_um, float)
        self.stage_y_um = nan if stage_y_um is None else np.asarray(stage_y_um, float)
        self.splitter = splitter
        self.source = source

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame of the source (without t)."""
        return tuple(int(v) for v in self.frames.shape[1:])

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as stored (sensor frame or ``(2, H, W)`` planes)."""
        return np.asarray(self.frames[i])

    def preload(self) -> None:
        """Read every frame into memory."""
        self.frames = np.asarray(self.frames[:])


def _decide_layout(shape: tuple[int, ...], layout: str, path: Path) -> str:
    layout = as_choice(layout, MOVIE_LAYOUTS, "Layout")
    if len(shape) == 2:
        raise ValueError(f"{path} holds a single 2-D image; a movie needs a time axis")
    if layout == "auto":
        if len(shape) == 3:
            return "sensor"
        if len(shape) == 4 and shape[1] == 2:
            return "planes"
        raise ValueError(
            f"{path} has shape {shape}; a movie must be (t, y, x) sensor frames or "
            "(t, 2, y, x) planes (set Layout to say which)"
        )
    want = 3 if layout == "sensor" else 4
    if len(shape) != want or (layout == "planes" and shape[1] != 2):
        raise ValueError(
            f"{path} has shape {shape}, which is not {layout!r} "
            f"({'(t, y, x)' if layout == 'sensor' else '(t, 2, y, x)'})"
        )
    return layout


def open_movie(path: str | os.PathLike[str], layout: str = "auto") -> Movie:
    """Open a run store, TIFF/OME-TIFF movie or zarr array for replay.

    Parameters
    ----------
    path
        ``RUN.zarr`` (an axialtrack run store), ``*.tif``/``*.tiff``, or a zarr
        array / OME-Zarr image group (array ``0``).
    layout
        ``"auto"``, ``"sensor"`` or ``"planes"`` (ignored for run stores).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing path or unusable shape; the message says why.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"replay source {p} does not exist")
    if p.is_dir() and (p / "zarr.json").is_file():
        import zarr

        from axialtrack.store import open_run
        from axialtrack.store.errors import NotARunStoreError

        try:
            run = open_run(p)
        except NotARunStoreError:
            run = None
        if run is not None:
            meta = run.frame_meta
            geo = None
            try:
                geo = SplitterGeometry(**run.attrs.get("splitter", {}))
            except Exception:
                geo = None
            return Movie(
                run.frames,
                "planes",
                t_s=meta["t_s"].to_numpy(),
                stage_z_um=meta["stage_z_um"].to_numpy(),
                stage_x_um=meta["stage_x_um"].to_numpy(),
                stage_y_um=meta["stage_y_um"].to_numpy(),
                splitter=geo,
                source=str(p),
            )
        node = zarr.open(str(p), mode="r")
        if isinstance(node, zarr.Group):
            if "0" not in node:
                raise ValueError(
                    f"{p} is a zarr group without an array '0'; pass the array path"
                )
            node = node["0"]
        arr: Any = node
        shape = tuple(int(v) for v in arr.shape)
        return Movie(arr, _decide_layout(shape, layout, p), source=str(p))
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            data: Any = tifffile.memmap(str(p), mode="r")
        except Exception:  # compressed or not contiguous: read it all
            data = tifffile.imread(str(p))
        shape = tuple(int(v) for v in data.shape)
        return Movie(data, _decide_layout(shape, layout, p), source=str(p))
    raise ValueError(
        f"replay source {p}: not a run store, a zarr array or a TIFF movie "
        "(*.tif, *.tiff, *.zarr)"
    )


class ReplayCamera(PacedCamera):
    """A camera that replays a recorded run or movie in real time.

    Properties
    ----------
    Source
        Path of a run store (``RUN.zarr``), a TIFF/OME-TIFF movie or a zarr
        array ("" for none).
    Layout
        ``auto``, ``sensor`` (``(t, y, x)`` sensor frames) or ``planes``
        (``(t, 2, y, x)``, re-composed with the splitter geometry). Run stores
        are always planes.
    FrameRateHz
        Frames per second of sequences (0: as fast as they can be read).
        ``Interval-ms`` (set by ``startSequenceAcquisition``) can only slow it.
    Loop
        1: start over at the end of the movie; 0: a sequence ends with it.
    Preload
        1: read the whole movie into memory now (when set, or when the Source
        or Layout changes), so reading does not compete with a run.
    Splitter
        Label of the DualPlaneSplitter whose geometry composes planes into
        sensor frames ("" for the recorded or default geometry).
    Frames
        Frames in the source (read-only).
    """

    #: Properties naming another device, and the class it must be ("" names
    #: none); :func:`axialtrack.rig.check_config` checks them.
    PEER_PROPERTIES: ClassVar[dict[str, type]] = {"Splitter": DualPlaneSplitter}

    def __init__(self) -> None:
        super().__init__()
        self._source = ""
        self._layout = "auto"
        self._rate = 100.0
        self._loop = True
        self._preload = False
        self._splitter = "Splitter"
        self._movie: Movie | None = None
        self._cursor = 0
        self._lock_movie = threading.RLock()
        self._behind_count = 0

    def initialize(self) -> None:
        """Start the replay clock."""
        self._t0 = time.perf_counter()
        self._last_end_s = 0.0

    # ------------------------------------------------------ standard properties
    def get_exposure(self) -> float:
        """Exposure time in ms (nominal; frames are paced by FrameRateHz)."""
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the nominal exposure time in ms."""
        self._exposure_ms = as_float(exposure, "Exposure")

    def get_camera_name(self) -> str:
        """Camera model name."""
        return "axialtrack replay camera"

    # ---------------------------------------------------------- properties
    @pymm_property(name="Source", property_type=str)
    def source(self) -> str:
        """Path of the recorded run or movie."""
        return self._source

    @source.setter
    def _set_source(self, value: Any) -> None:
        path = str(value).strip()
        movie = open_movie(path, self._layout) if path else None
        if movie is not None and self._preload:
            movie.preload()
        with self._lock_movie:
            self._source = path
            self._movie = movie
            self._cursor = 0
        self._emit_property("Source", path)

    @pymm_property(name="Layout", allowed_values=Choices.strings(MOVIE_LAYOUTS))
    def layout(self) -> str:
        """Layout of the source's frames."""
        return self._layout

    @layout.setter
    def _set_layout(self, value: Any) -> None:
        self._layout = as_choice(value, MOVIE_LAYOUTS, "Layout")
        with self._lock_movie:
            if self._source:
                self._movie = open_movie(self._source, self._layout)
                if self._preload:
                    self._movie.preload()
                self._cursor = 0
        self._emit_property("Layout", self._layout)

    @pymm_property(name="FrameRateHz", limits=(0.0, 100_000.0))
    def frame_rate_hz(self) -> float:
        """Replay frame rate (0: unpaced)."""
        return self._rate

    @frame_rate_hz.setter
    def _set_frame_rate(self, value: Any) -> None:
        v = as_float(value, "FrameRateHz")
        if v < 0:
            raise ValueError(f"FrameRateHz must be >= 0; got {v}")
        self._rate = v
        self._emit_property("FrameRateHz", v)

    @pymm_property(name="Loop", allowed_values=Choices.boolean())
    def loop(self) -> int:
        """1: loop the movie."""
        return int(self._loop)

    @loop.setter
    def _set_loop(self, value: Any) -> None:
        self._loop = as_bool(value, "Loop")
        self._emit_property("Loop", int(self._loop))

    @pymm_property(name="Preload", allowed_values=Choices.boolean())
    def preload(self) -> int:
        """1: hold the whole movie in memory (read when set, not when a sequence
        starts, so the reading does not compete with the run)."""
        return int(self._preload)

    @preload.setter
    def _set_preload(self, value: Any) -> None:
        self._preload = as_bool(value, "Preload")
        with self._lock_movie:
            movie = self._movie
            loaded = movie is None or isinstance(movie.frames, np.ndarray)
            if self._preload and not loaded:
                assert movie is not None
                movie.preload()
        self._emit_property("Preload", int(self._preload))

    @pymm_property(name="Splitter", property_type=str)
    def splitter_label(self) -> str:
        """Label of the DualPlaneSplitter ('' for the recorded/default geometry)."""
        return self._splitter

    @splitter_label.setter
    def _set_splitter_label(self, value: Any) -> None:
        self._splitter = str(value).strip()
        self._emit_property("Splitter", self._splitter)

    @pymm_property(name="Frames", is_read_only=True)
    def n_frames(self) -> int:
        """Frames in the source."""
        return len(self._movie) if self._movie is not None else 0

    # ------------------------------------------------------------ geometry
    def geometry(self) -> SplitterGeometry:
        """The geometry that composes planes into sensor frames."""
        if self._splitter:
            try:
                return find_peer(self, self._splitter, DualPlaneSplitter).geometry()
            except LookupError:
                pass
        if self._movie is not None and self._movie.splitter is not None:
            return self._movie.splitter
        return SplitterGeometry()

    def _need_movie(self) -> Movie:
        if self._movie is None:
            raise RuntimeError(
                f"replay camera {self.get_label()!r} has no Source; set its Source "
                "property to a run store (.zarr) or a TIFF/zarr movie"
            )
        if len(self._movie) == 0:
            raise RuntimeError(f"replay source {self._source} holds no frames")
        return self._movie

    def set_roi(self, x: int, y: int, width: int, height: int) -> None:
        """Accept the full frame only (a recording cannot be cropped here).

        pymmcore-plus's MDA engine sets the ROI it found at the start again
        when a sequence ends; a camera that refuses even that leaves the
        sequence without its ``sequenceFinished`` (see
        :mod:`axialtrack._pymmcore_compat`).
        """
        h, w = self.shape()
        if (int(x), int(y), int(width), int(height)) != (0, 0, w, h):
            raise NotImplementedError(
                "ReplayCamera does not crop the recording; crop it before replaying"
            )

    def shape(self) -> tuple[int, int]:
        """Shape of the delivered frames."""
        movie = self._movie
        if movie is None:
            return (256, 512)
        if movie.layout == "sensor":
            return movie.frame_shape  # type: ignore[return-value]
        h, w = movie.frame_shape[1:]
        geo = self.geometry()
        if geo.layout == "two-cameras":
            raise RuntimeError(
                "the replay camera delivers one sensor frame; a two-cameras "
                "splitter layout cannot be replayed into one camera"
            )
        return geo.sensor_shape((h, w))  # type: ignore[return-value]

    def dtype(self) -> DTypeLike:
        """Pixel type: 16-bit unsigned."""
        return np.uint16

    def _next_frame(
        self, out_t: float
    ) -> tuple[np.ndarray, SplitterGeometry | None, dict[str, str]] | None:
        """The next source frame, the geometry to compose it with, its metadata."""
        with self._lock_movie:
            movie = self._need_movie()
            i = self._cursor
            loop_n = 0
            if i >= len(movie):
                if not self._loop:
                    return None
                loop_n, i = divmod(i, len(movie))
            self._cursor += 1
            geo = self.geometry() if movie.layout == "planes" else None
        data = movie.frame(i)
        meta = {
            "ReplayTime_s": f"{out_t:.6f}",
            "ReplayStageZ_um": f"{movie.stage_z_um[i]:.5f}",
            "ReplayStageX_um": f"{movie.stage_x_um[i]:.4f}",
            "ReplayStageY_um": f"{movie.stage_y_um[i]:.4f}",
            "RecordedTime_s": f"{movie.t_s[i]:.6f}",
            "RecordedFrame": str(i),
            "ReplayLoop": str(loop_n),
            Keyword.Metadata_Exposure.value: f"{self._exposure_ms:.4f}",
        }
        return data, geo, meta

    def rewind(self) -> None:
        """Start the next sequence (or snap) at the first frame."""
        with self._lock_movie:
            self._cursor = 0

    # ------------------------------------------------------------ sequence
    def start_sequence(
        self,
        n: int | None,
        get_buffer: Callable[[Sequence[int], DTypeLike], np.ndarray],
    ) -> Iterator[Mapping]:
        """Deliver ``n`` frames (or until stopped / the movie ends), paced."""
        movie = self._need_movie()
        if self._preload and not isinstance(movie.frames, np.ndarray):
            movie.preload()
        period = max(
            1.0 / self._rate if self._rate > 0 else 0.0, self._interval_ms / 1e3
        )
        t0 = max(self.now_s(), self._last_end_s)
        t_first = t0
        k = 0
        behind_warned = False
        while n is None or k < n:
            start = t0 + k * period
            late = self.now_s() - start
            if period > 0 and late > max(BEHIND_LIMIT_S, BEHIND_PERIODS * period):
                # reading and composing take longer than a period: deliver as
                # fast as it can from here (as a real camera at its limit
                # would) rather than against a schedule it can never meet,
                # on which every later frame would be later still
                if not behind_warned:
                    behind_warned = True
                    rate = k / max(self.now_s() - t_first, 1e-9)
                    logger.warning(
                        "replay camera %r cannot keep up with FrameRateHz=%g: it "
                        "delivers about %.0f frames/s (%.2f s behind after %d "
                        "frames); frames now come as fast as they can be read. "
                        "Lower FrameRateHz or set Preload = 1.",
                        self.get_label(),
                        1.0 / period,
                        rate,
                        late,
                        k,
                    )
                t0 += late
                start += late
                self._behind_count += 1
            _sleep_until(self._t0 + start)
            got = self._next_frame(start)
            if got is None:
                return
            data, geo, meta = got
            if period > 0:
                # when the frame was due, on this process's time.perf_counter:
                # the live runner counts latency from it, so a replay that
                # falls behind its schedule (a busy CPU) shows in the latency
                # (unpaced, every frame is due at once: no such time)
                meta["ReplayDue_perf_s"] = f"{self._t0 + start:.6f}"
            self._last_end_s = max(start, self.now_s())
            if geo is None:
                buf = get_buffer(data.shape, np.uint16)
                buf[...] = data
            else:  # lay the planes out directly in the core's buffer
                buf = get_buffer(geo.sensor_shape(data.shape[1:]), np.uint16)
                _compose_into(data, geo, buf)
            if k:
                self._actual_interval_ms = 1e3 * (self.now_s() - t0) / k
            k += 1
            yield meta


def _compose_into(planes: np.ndarray, geo: SplitterGeometry, out: np.ndarray) -> None:
    """:func:`~axialtrack.geometry.compose_frame` into ``out`` (no allocation)."""
    h, w = planes.shape[1:]
    p1 = unmirror(planes[1], geo.mirror)
    if geo.layout == "side-by-side":
        out[:, :w] = planes[0]
        out[:, w:] = p1
    elif geo.layout == "top-bottom":
        out[:h] = planes[0]
        out[h:] = p1
    else:  # pragma: no cover - refused by shape()
        out[0] = planes[0]
        out[1] = p1


def _sleep_until(t_wall: float) -> None:
    while (dt := t_wall - time.perf_counter()) > 0:
        time.sleep(min(dt, 0.05))


def replay_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Frames, layout and frame shape of a replay source (for messages)."""
    m = open_movie(path)
    return {
        "frames": len(m),
        "layout": m.layout,
        "frame_shape": m.frame_shape,
        "recorded_rate_hz": (
            (len(m) - 1) / float(m.t_s[-1] - m.t_s[0])
            if len(m) > 1
            and math.isfinite(float(m.t_s[-1] - m.t_s[0]))
            and m.t_s[-1] > m.t_s[0]
            else None
        ),
    }

"""Simulated sCMOS camera behind a dual-focal-plane splitter.

The camera renders the virtual sample of :mod:`axialtrack.sim` as the rig's
devices place it: the focus position of the Z piezo, the XY stage position, the
splitter geometry and the excitation light. It finds those devices by label
(properties ``ZStage``, ``XYStage``, ``Splitter``, ``LightSource``) among the
axialtrack devices loaded in the same core.

Timing
------
The camera runs in real time. In a sequence acquisition frame ``k`` starts
exposing at ``t0 + k * max(exposure, Interval-ms)`` and is delivered when its
exposure ends (later only if rendering takes longer than the frame period, which
``ActualInterval-ms`` then shows). ``snapImage`` takes the exposure time too.

The simulation clock is the wall clock: ``t_s`` of a frame is the start of its
exposure in seconds since the camera was initialized (unless ``SequenceStartS``
fixes the sample time at which sequences start). Within a sequence the frame
times are exact multiples of the frame period from the start of the sequence, so
particle motion between frames has exactly the statistics of that period
regardless of scheduling jitter.

Per-frame metadata (besides what the core adds: ``ImageNumber``,
``ElapsedTime-ms``, ...): ``SimTime_s``, ``SimStageX_um``, ``SimStageY_um``,
``SimStageZ_um`` (the true stage position during the exposure, jitter
included), ``SimIllumination`` (0-1), ``CameraFrameIndex`` (the camera's own frame
counter, which also seeds the frame's noise) and ``Exposure-ms``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pymmcore_plus.core import Keyword
from pymmcore_plus.experimental.unicore import pymm_property

from axialtrack.geometry import SplitterGeometry, compose_frame

from ._base import (
    Choices,
    PacedCamera,
    as_bool,
    as_choice,
    as_float,
    as_int,
    find_peer,
    stored_property,
)
from .light import SimLightSource
from .splitter import DualPlaneSplitter
from .stages import SimXYStage, SimZPiezo

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from axialtrack.sim import Renderer, Sample

__all__ = ["SCENES", "SimCamera"]

#: Scenes the camera can show.
SCENES: tuple[str, ...] = (
    "beads",
    "beads-volume",
    "diffusing",
    "beads+diffusing",
    "empty",
)
PLANES: tuple[str, ...] = ("both", "0", "1")

# the sample extends over this square (um) around the stage origin, so the stage
# can move to other fields of view
_FIELD_UM = 160.0
_BEAD_DENSITY_UM2 = 0.015  # beads per um^2 on the coverslip
_PARTICLE_DENSITY_UM3 = 0.004  # particles per um^3 in the first micrometres
_PARTICLE_DEPTH_UM = (0.0, 3.0)
_VOLUME_DEPTH_UM = (0.0, 3.0)


class SimCamera(PacedCamera):
    """Simulated camera showing a virtual sample through a dual-plane splitter.

    Properties
    ----------
    Exposure
        Exposure time, ms.
    Interval-ms
        Minimum frame period of sequence acquisitions, ms (``RigCore`` copies the
        interval of ``startSequenceAcquisition`` here; 0 runs at the exposure).
    ActualInterval-ms
        Measured mean frame period of the last sequence (read-only).
    Binning
        1 (no binning).
    Scene
        ``beads`` (on the coverslip), ``beads-volume`` (immobilized at depths
        0-3 um), ``diffusing`` (particles diffusing in the first 3 um),
        ``beads+diffusing`` or ``empty`` (background only).
    Seed
        Seed of the scene and of the camera noise.
    Photons
        Median emitter brightness: photons per second reaching plane 0
        (2e5 gives 2000 photons in a 10 ms frame).
    Background
        Background photons per pixel per second in plane 0.
    DiffusionUm2PerS
        Diffusion coefficient of the diffusing particles, um^2/s.
    ParticleDensity
        Diffusing particles per um^3.
    ParticleDepthUm
        The diffusing particles fill depths 0 to this above the coverslip (um).
    PlaneWidth, PlaneHeight
        Size of one plane in pixels (the sensor frame holds both planes).
    Plane
        ``both`` (one sensor with both planes) or, with the ``two-cameras``
        splitter layout, ``0`` or ``1``: the plane this camera images.
    ZStage, XYStage, Splitter, LightSource
        Labels of the simulated devices to follow ("" for none: stage at the
        coverslip / at the origin, default geometry, light always on).
    AutoShutter
        1: the light is on during every exposure, as Micro-Manager's autoshutter
        would make it (it does not operate Python shutters); ``load_rig`` keeps
        this equal to ``core.getAutoShutter()``. 0: the light source's own state
        decides, and frames are dark while it is closed.
    RecordTruth
        1: keep the ground truth of every frame (see :meth:`renderer`).
    SequenceStartS
        -1 (default): a sequence starts at the camera clock's present time. A time
        ``>= 0``: every sequence starts at that sample time (still paced in real
        time), so a run sees the same configuration of moving particles however
        late the machine starts it (reproducible tests and demonstrations).
    """

    #: Properties naming another device, and the class it must be ("" names
    #: none); :func:`axialtrack.rig.check_config` checks them.
    PEER_PROPERTIES: ClassVar[dict[str, type]] = {
        "ZStage": SimZPiezo,
        "XYStage": SimXYStage,
        "Splitter": DualPlaneSplitter,
        "LightSource": SimLightSource,
    }

    def __init__(self) -> None:
        super().__init__()
        self._scene = "beads"
        self._seed = 0
        self._photons = 2e5
        self._background = 1000.0
        self._diffusion = 0.5
        self._particle_density = _PARTICLE_DENSITY_UM3
        self._particle_depth = _PARTICLE_DEPTH_UM[1]
        self._plane_w = 256
        self._plane_h = 256
        self._plane = "both"
        self._labels = {
            "ZStage": "Z",
            "XYStage": "XY",
            "Splitter": "Splitter",
            "LightSource": "Light",
        }
        self._auto_shutter = True
        self._record_truth = False
        self._sequence_start_s = -1.0
        self._last_sample_s = 0.0  # the latest sample time a sequence rendered
        self._sample: Sample | None = None
        self._sample_key: tuple[Any, ...] | None = None
        self._renderer: Renderer | None = None
        self._renderer_key: tuple[Any, ...] | None = None
        self._render_lock = threading.RLock()
        self._frame_counter = 0

    def initialize(self) -> None:
        """Start the simulation clock."""
        self._t0 = time.perf_counter()
        self._last_end_s = 0.0

    # ------------------------------------------------------ standard properties
    def get_exposure(self) -> float:
        """Exposure time in ms."""
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure time in ms."""
        value = as_float(exposure, "Exposure")
        if not 0.001 <= value <= 100_000.0:
            raise ValueError(f"Exposure must be 0.001-100000 ms; got {value}")
        changed = value != self._exposure_ms
        self._exposure_ms = value
        if changed and (proxy := self._core_proxy_) is not None:
            proxy.events.exposureChanged.emit(self._label_, value)

    def get_camera_name(self) -> str:
        """Camera model name."""
        return "axialtrack simulated sCMOS"

    def get_camera_id(self) -> str:
        """Camera serial number (the scene seed)."""
        return f"SIM-{self._seed:06d}"

    # ------------------------------------------------------- scene properties
    scene = stored_property(
        "Scene",
        "_scene",
        lambda v, n: as_choice(v, SCENES, n),
        "What the sample holds.",
        allowed_values=Choices.strings(SCENES),
        property_type=str,
    )
    seed = stored_property(
        "Seed",
        "_seed",
        as_int,
        "Seed of the scene and the noise.",
        limits=(0, 2**31 - 1),
        property_type=int,
    )
    photons = stored_property(
        "Photons",
        "_photons",
        as_float,
        "Median emitter photons per second in plane 0.",
        limits=(0.0, 1e9),
        property_type=float,
    )
    background = stored_property(
        "Background",
        "_background",
        as_float,
        "Background photons per pixel per second in plane 0.",
        limits=(0.0, 1e9),
        property_type=float,
    )
    diffusion_um2_s = stored_property(
        "DiffusionUm2PerS",
        "_diffusion",
        as_float,
        "Diffusion coefficient of the diffusing particles, um^2/s.",
        limits=(0.0, 100.0),
        property_type=float,
    )
    particle_density = stored_property(
        "ParticleDensity",
        "_particle_density",
        as_float,
        "Diffusing particles per um^3.",
        limits=(0.0, 1.0),
        property_type=float,
    )
    particle_depth_um = stored_property(
        "ParticleDepthUm",
        "_particle_depth",
        as_float,
        "Depth range (from the coverslip) of the diffusing particles, um.",
        limits=(0.1, 50.0),
        property_type=float,
    )
    plane_width = stored_property(
        "PlaneWidth",
        "_plane_w",
        as_int,
        "Width of one plane, px.",
        limits=(16, 4096),
        property_type=int,
    )
    plane_height = stored_property(
        "PlaneHeight",
        "_plane_h",
        as_int,
        "Height of one plane, px.",
        limits=(16, 4096),
        property_type=int,
    )
    plane = stored_property(
        "Plane",
        "_plane",
        lambda v, n: as_choice(v, PLANES, n),
        "``both``, or the plane (0/1) this camera images (two-cameras layout).",
        allowed_values=Choices.strings(PLANES),
        property_type=str,
    )
    auto_shutter = stored_property(
        "AutoShutter",
        "_auto_shutter",
        as_bool,
        "1: light on during every exposure; 0: the light source decides.",
        shown=int,
        allowed_values=Choices.boolean(),
        property_type=int,
    )

    @pymm_property(name="RecordTruth", allowed_values=Choices.boolean())
    def record_truth(self) -> int:
        """1: keep the ground truth of every rendered frame."""
        return int(self._record_truth)

    @record_truth.setter
    def _set_record_truth(self, value: Any) -> None:
        self._record_truth = as_bool(value, "RecordTruth")
        with self._render_lock:
            if self._renderer is not None:
                self._renderer.record_truth = self._record_truth
        self._emit_property("RecordTruth", int(self._record_truth))

    @pymm_property(name="SequenceStartS", limits=(-1.0, 1e6))
    def sequence_start_s(self) -> float:
        """Sample time at which sequences start (s); -1 follows the camera clock."""
        return self._sequence_start_s

    @sequence_start_s.setter
    def _set_sequence_start_s(self, value: Any) -> None:
        v = as_float(value, "SequenceStartS")
        if v < 0 and v != -1.0:
            raise ValueError(f"SequenceStartS must be -1 or >= 0; got {v}")
        self._sequence_start_s = v
        self._emit_property("SequenceStartS", v)

    # device labels ------------------------------------------------------------
    def _set_label(self, prop: str, value: Any) -> None:
        self._labels[prop] = str(value).strip()
        self._emit_property(prop, self._labels[prop])

    @pymm_property(name="ZStage", property_type=str)
    def z_stage_label(self) -> str:
        """Label of the SimZPiezo giving the focus ('' for none)."""
        return self._labels["ZStage"]

    @z_stage_label.setter
    def _set_z_stage_label(self, value: Any) -> None:
        self._set_label("ZStage", value)

    @pymm_property(name="XYStage", property_type=str)
    def xy_stage_label(self) -> str:
        """Label of the SimXYStage giving the field of view ('' for none)."""
        return self._labels["XYStage"]

    @xy_stage_label.setter
    def _set_xy_stage_label(self, value: Any) -> None:
        self._set_label("XYStage", value)

    @pymm_property(name="Splitter", property_type=str)
    def splitter_label(self) -> str:
        """Label of the DualPlaneSplitter ('' for the default geometry)."""
        return self._labels["Splitter"]

    @splitter_label.setter
    def _set_splitter_label(self, value: Any) -> None:
        self._set_label("Splitter", value)

    @pymm_property(name="LightSource", property_type=str)
    def light_source_label(self) -> str:
        """Label of the SimLightSource ('' for light always on)."""
        return self._labels["LightSource"]

    @light_source_label.setter
    def _set_light_source_label(self, value: Any) -> None:
        self._set_label("LightSource", value)

    # ------------------------------------------------------------ the devices
    def _peer(self, prop: str, kind: type[Any]) -> Any:
        label = self._labels[prop]
        if not label:
            return None
        try:
            return find_peer(self, label, kind)
        except LookupError as e:
            raise RuntimeError(
                f"camera {self.get_label()!r} cannot follow {prop} {label!r}: {e}. "
                f"Set the camera's {prop} property to the label of a loaded "
                f"{kind.__name__}, or to '' for none"
            ) from None

    def geometry(self) -> SplitterGeometry:
        """The splitter geometry the camera renders with."""
        splitter = self._peer("Splitter", DualPlaneSplitter)
        return splitter.geometry() if splitter is not None else SplitterGeometry()

    def _plane_shape(self) -> tuple[int, int]:
        return (self._plane_h, self._plane_w)

    def shape(self) -> tuple[int, int]:
        """Shape of the frames this camera delivers."""
        geo = self.geometry()
        if geo.layout == "two-cameras":
            return self._plane_shape()
        return geo.sensor_shape(self._plane_shape())  # type: ignore[return-value]

    def dtype(self) -> DTypeLike:
        """Pixel type: 16-bit unsigned."""
        return np.uint16

    def set_roi(self, x: int, y: int, width: int, height: int) -> None:
        """Accept the full frame only; set PlaneWidth/PlaneHeight to resize.

        A crop of a dual-plane sensor must keep both planes aligned, so the
        simulated camera changes its size through the plane size instead.
        """
        h, w = self.shape()
        if (int(x), int(y), int(width), int(height)) != (0, 0, w, h):
            raise NotImplementedError(
                "SimCamera does not crop the sensor (a crop must keep both planes "
                "aligned); set the PlaneWidth and PlaneHeight properties instead"
            )

    # ------------------------------------------------------------- rendering
    def _build_sample(self) -> Sample:
        from axialtrack.sim import Background, Beads, DiffusingParticles, Sample

        field = (_FIELD_UM, _FIELD_UM)
        beads: list[Beads] = []
        particles: list[DiffusingParticles] = []
        n_beads = round(_BEAD_DENSITY_UM2 * field[0] * field[1])
        if self._scene in ("beads", "beads+diffusing"):
            beads.append(
                Beads.on_coverslip(
                    n_beads,
                    size_um=field,
                    photons_per_s=self._photons,
                    min_separation_um=1.5,
                )
            )
        if self._scene == "beads-volume":
            beads.append(
                Beads.in_volume(
                    n_beads,
                    depth_um=_VOLUME_DEPTH_UM,
                    size_um=field,
                    photons_per_s=self._photons,
                    min_separation_um=1.5,
                )
            )
        if self._scene in ("diffusing", "beads+diffusing"):
            depth = self._particle_depth
            particles.append(
                DiffusingParticles(
                    n=round(self._particle_density * field[0] * field[1] * depth),
                    diffusion_um2_s=self._diffusion,
                    size_um=field,
                    depth_um=(0.0, depth),
                    photons_per_s=self._photons,
                )
            )
        return Sample(
            beads=beads,
            particles=particles,
            background=Background(photons_per_px_s=self._background),
            seed=self._seed,
        )

    def renderer(self) -> Renderer:
        """The renderer for the current settings (built or rebuilt on demand).

        Its :meth:`~axialtrack.sim.Renderer.truth` and (with ``RecordTruth = 1``)
        :meth:`~axialtrack.sim.Renderer.trajectories` give the ground truth.
        """
        with self._render_lock:
            geo = self.geometry()
            sample_key = (
                self._scene,
                self._seed,
                self._photons,
                self._background,
                self._diffusion,
                self._particle_density,
                self._particle_depth,
            )
            if self._sample is None or sample_key != self._sample_key:
                self._sample = self._build_sample()
                self._sample_key = sample_key
                self._renderer = None
            key = (sample_key, self._plane_shape(), geo)
            if self._renderer is None or key != self._renderer_key:
                from axialtrack.sim import Renderer

                self._renderer = Renderer(
                    self._sample,
                    geometry=geo,
                    plane_shape=self._plane_shape(),
                    seed=self._seed,
                    record_truth=self._record_truth,
                )
                self._renderer_key = key
            return self._renderer

    def _frame(self, t_s: float, exposure_s: float) -> tuple[np.ndarray, dict]:
        """Render one frame whose exposure starts at ``t_s``."""
        piezo = self._peer("ZStage", SimZPiezo)
        xy_stage = self._peer("XYStage", SimXYStage)
        light = self._peer("LightSource", SimLightSource)
        renderer = self.renderer()
        z = (
            piezo.on_frame_start()
            if piezo is not None
            else renderer.sample.coverslip_z_um
        )
        x, y = xy_stage.physical_position_um() if xy_stage is not None else (0.0, 0.0)
        if light is None:
            illum = 1.0
        else:
            illum = light.illumination(force_open=self._auto_shutter)
        geo = renderer.geometry
        if geo.layout == "two-cameras" and self._plane == "both":
            raise RuntimeError(
                f"camera {self.get_label()!r}: the splitter layout is two-cameras; "
                "set the camera's Plane property to 0 or 1 (one camera per plane)"
            )
        index = self._frame_counter
        self._frame_counter += 1
        planes = renderer.expected((x, y, z), t_s, exposure_s, frame_index=index)
        if illum != 1.0:
            planes *= np.float32(illum)
        sensor = compose_frame(planes, geo)
        frame = renderer.camera.apply(
            sensor, np.random.default_rng([self._seed, index])
        )
        if geo.layout == "two-cameras":
            frame = frame[int(self._plane)]
        meta = {
            "SimTime_s": f"{t_s:.6f}",
            "SimStageX_um": f"{x:.4f}",
            "SimStageY_um": f"{y:.4f}",
            "SimStageZ_um": f"{z:.5f}",
            "SimIllumination": f"{illum:.4f}",
            "CameraFrameIndex": str(index),
            Keyword.Metadata_Exposure.value: f"{exposure_s * 1e3:.4f}",
        }
        return frame, meta

    # --------------------------------------------------------------- sequence
    def start_sequence(
        self,
        n: int | None,
        get_buffer: Callable[[Sequence[int], DTypeLike], np.ndarray],
    ) -> Iterator[Mapping]:
        """Acquire ``n`` frames (forever if ``None``), paced in real time.

        Frame ``k`` starts at ``t0 + k * max(exposure, Interval-ms)`` and is
        delivered at the end of its exposure.
        """
        exposure_s = self._exposure_ms / 1e3
        period_s = max(exposure_s, self._interval_ms / 1e3)
        # wall0: when frame 0 starts on the camera clock; t0: its sample time
        wall0 = max(self.now_s(), self._last_end_s)
        t0 = self._sequence_start_s if self._sequence_start_s >= 0 else wall0
        if t0 < self._last_sample_s:
            # back in sample time (a fixed start again, or the clock after one):
            # the sample keeps a short history only, so it starts afresh (the
            # particles are a function of seed and time: the same positions)
            with self._render_lock:
                self._sample = None
        self.renderer()  # build before the clock starts (first use, new settings)
        k = 0
        while n is None or k < n:
            start = t0 + k * period_s
            wall = wall0 + k * period_s
            _sleep_until(self._t0 + wall)
            with self._render_lock:
                frame, meta = self._frame(start, exposure_s)
            _sleep_until(self._t0 + wall + exposure_s)
            self._last_end_s = wall + exposure_s
            self._last_sample_s = start + exposure_s
            buf = get_buffer(frame.shape, frame.dtype)
            buf[...] = frame
            if k:
                self._actual_interval_ms = 1e3 * (self.now_s() - wall0 - exposure_s) / k
            k += 1
            yield meta


def _sleep_until(t_wall: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``t_wall``."""
    while (dt := t_wall - time.perf_counter()) > 0:
        time.sleep(min(dt, 0.05))

"""Calibration data for training: examples, rig values, synthetic examples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from axialtrack.calibrate.examples import Examples
    from axialtrack.optics.sampled import SampledPSF
    from axialtrack.sim.synthetic import SyntheticConfig, SyntheticExamples

__all__ = [
    "CalibrationData",
    "examples_hash",
    "load_calibration",
    "subpixel_targets",
    "synthetic_examples",
]


@dataclass
class CalibrationData:
    """Calibration examples with what a bundle needs to know about the rig.

    Attributes
    ----------
    examples
        The examples (all splits).
    pixel_size_um, plane_offset_um
        Rig values (``None`` when unknown).
    layout
        Splitter layout (``None`` when unknown).
    source
        Calibration run store path (``None`` for in-memory examples).
    beads
        Bead table (:func:`axialtrack.calibrate.read_beads`) when available.
    registration_affine
        Plane-0 -> plane-1 affine ``(2, 3)`` (px) from the calibration's bead
        registration, when available.
    plane_shape
        ``(H, W)`` of one plane (px), when known.
    mirror
        Flip of plane 1 on the sensor (``"none"``, ``"horizontal"``, ...), when
        known.
    camera
        The camera model (the fields of
        :class:`~axialtrack.pipeline.config.CameraCalibration`), when known.
    z_convention
        What ``dz_um`` and ``z_um`` mean, when recorded.
    psf_fit
        The calibration's fitted PSF (:meth:`axialtrack.optics.fit.PSFFit.to_json`)
        when the run carries one (``psf/`` group).
    optics
        The rig's nominal PSF model, when the calibration records one (a
        simulated rig does): ``{"optics": Optics fields, "depth_um": bead depth,
        "transmission": plane-1 transmission, "source": ...}``; the bundle keeps
        it for :func:`axialtrack.optics.psf_for_bundle`.
    """

    examples: Examples
    pixel_size_um: float | None = None
    plane_offset_um: float | None = None
    layout: str | None = None
    source: str | None = None
    beads: pd.DataFrame | None = None
    registration_affine: np.ndarray | None = None
    plane_shape: tuple[int, int] | None = None
    mirror: str | None = None
    camera: dict[str, Any] | None = None
    z_convention: str | None = None

    @classmethod
    def from_result(
        cls, result: Any, stack: Any, *, camera: Any = None
    ) -> CalibrationData:
        """The calibration data of an in-memory analysis: ``result`` of
        :func:`axialtrack.calibrate.analyze` on ``stack``, with ``camera`` (a
        :class:`~axialtrack.pipeline.config.CameraCalibration` or its fields;
        ``None``: the defaults) recorded for the bundle."""
        from axialtrack.geometry import Z_CONVENTION
        from axialtrack.pipeline.config import CameraCalibration

        analyzed = result.stack or stack
        cam = camera if camera is not None else CameraCalibration()
        return cls(
            examples=result.examples,
            pixel_size_um=float(analyzed.pixel_size_um),
            plane_offset_um=float(analyzed.geometry.plane_offset_um),
            layout=analyzed.geometry.layout,
            source=analyzed.source or None,
            beads=result.beads,
            registration_affine=np.asarray(result.registration.affine, float),
            plane_shape=tuple(int(v) for v in analyzed.plane_shape),  # type: ignore[arg-type]
            mirror=analyzed.geometry.mirror,
            camera=cam.model_dump() if hasattr(cam, "model_dump") else dict(cam),
            z_convention=Z_CONVENTION,
        )

    psf_fit: dict[str, Any] | None = None
    optics: dict[str, Any] | None = None


def load_calibration(store: str | Path) -> CalibrationData:
    """Read examples, bead table and rig values from a calibration run store.

    The rig values come from the store's ``axialtrack_rig`` record
    (:func:`axialtrack.calibrate.write_rig`, written by ``axialtrack
    calibrate``), else from the run's own attributes.
    """
    import zarr

    from axialtrack.calibrate import load_examples, read_beads

    path = Path(store).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no calibration run store at {path}")
    root = zarr.open_group(str(path), mode="r")
    examples = load_examples(root)
    attrs: dict[str, Any] = dict(root.attrs.asdict()).get("axialtrack", {}) or {}  # type: ignore[assignment]
    rig: dict[str, Any] = attrs.get("rig", {}) or {}
    splitter: dict[str, Any] = attrs.get("splitter", {}) or {}
    record: dict[str, Any] = dict(root.attrs.asdict()).get("axialtrack_rig") or {}  # type: ignore[assignment]
    if record.get("splitter"):
        splitter = dict(record["splitter"])
    pixel = record.get(
        "pixel_size_um", rig.get("pixel_size_um", attrs.get("pixel_size_um"))
    )
    try:
        beads = read_beads(root)
    except KeyError:
        beads = None
    affine: np.ndarray | None = None
    if "calibration/registration/affine" in root:
        affine = np.asarray(root["calibration/registration/affine"][...], float)  # type: ignore[index]
    plane_shape: tuple[int, int] | None = None
    if record.get("plane_shape"):
        plane_shape = (int(record["plane_shape"][0]), int(record["plane_shape"][1]))
    elif "frames/0" in root:
        shp = root["frames/0"].shape  # type: ignore[union-attr]
        plane_shape = (int(shp[-2]), int(shp[-1]))
    camera = record.get("camera") or attrs.get("camera")
    psf_fit: dict[str, Any] | None = None
    if "psf" in root:
        from axialtrack.calibrate.psf import PSF_ATTR

        meta = root["psf"].attrs.get(PSF_ATTR)
        psf_fit = None if meta is None else dict(meta)  # type: ignore[arg-type]
    return CalibrationData(
        examples=examples,
        pixel_size_um=None if pixel is None else float(pixel),
        plane_offset_um=(
            None
            if splitter.get("plane_offset_um") is None
            else float(splitter["plane_offset_um"])
        ),
        layout=splitter.get("layout"),
        source=str(path.resolve()),
        beads=beads,
        registration_affine=affine,
        plane_shape=plane_shape,
        mirror=splitter.get("mirror"),
        camera=dict(camera) if isinstance(camera, dict) else None,
        z_convention=record.get("z_convention"),
        psf_fit=psf_fit,
        optics=rig.get("optics") if isinstance(rig.get("optics"), dict) else None,
    )


def synthetic_examples(
    data: CalibrationData,
    n: int,
    *,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    psf: SampledPSF | None = None,
) -> SyntheticExamples:
    """``n`` crop pairs rendered from the calibration's PSF and camera.

    The PSF is the calibration's fitted pupil (or the nominal optics a simulated
    calibration records; :func:`axialtrack.sim.synthetic.psf_for_calibration`),
    the camera the one it records (defaults otherwise). Without a ``dz_range_um``
    in ``config``, ``dz`` covers the calibrated range: the span of the
    examples' labels.
    """
    from axialtrack.pipeline.config import CameraCalibration
    from axialtrack.sim.synthetic import (
        SyntheticConfig,
        SyntheticRenderer,
        psf_for_calibration,
    )

    ex = data.examples
    crop = int(ex.crops.shape[-1])
    cfg = config if config is not None else SyntheticConfig(crop_size=crop)
    if cfg.crop_size != crop:
        cfg = cfg.model_copy(update={"crop_size": crop})
    if cfg.dz_range_um is None and len(ex):
        lo, hi = float(np.min(ex.dz_um)), float(np.max(ex.dz_um))
        cfg = cfg.model_copy(update={"dz_range_um": (lo, hi)})
    if psf is None:
        psf = psf_for_calibration(
            psf_fit=data.psf_fit,
            optics=data.optics,
            plane_offset_um=data.plane_offset_um,
            dz_range_um=cfg.dz_range_um or (-1.0, 1.0),
        )
    camera = CameraCalibration.model_validate(data.camera or {})
    return SyntheticRenderer(psf, camera, cfg).render(n, seed)


def examples_hash(examples: Examples) -> str:
    """sha256 of the examples' crops, labels, positions, beads and splits."""
    h = hashlib.sha256()
    for name in ("crops", "dz_um", "xy_norm", "bead", "split"):
        arr = np.ascontiguousarray(getattr(examples, name))
        h.update(name.encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def subpixel_targets(
    examples: Examples, beads: pd.DataFrame | None
) -> np.ndarray | None:
    """Sub-pixel offsets ``(N, 2)`` (px) of each example's bead from its crop centre.

    Crops are centred on the rounded plane-0 bead position, so the offset is
    ``x_px0 - rint(x_px0)`` (and likewise for y), from the bead table's fitted
    positions. ``None`` when the bead table is missing or lacks a bead.
    """
    if beads is None or not {"bead", "x_px0", "y_px0"} <= set(beads.columns):
        return None
    table = beads.set_index("bead")
    ids = np.asarray(examples.bead)
    if not np.isin(ids, table.index.to_numpy()).all():
        return None
    x = table.loc[ids, "x_px0"].to_numpy(float)
    y = table.loc[ids, "y_px0"].to_numpy(float)
    return np.stack([x - np.rint(x), y - np.rint(y)], axis=1)

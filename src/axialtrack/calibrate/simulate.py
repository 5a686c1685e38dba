"""Simulated bead calibration stacks with known truth.

The calibration analysis, the model and their tests and benchmarks all start from
the same rendered stack: beads on (or above) the coverslip, stage Z through focus,
camera noise, and the beads' true positions and in-focus Z.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from axialtrack.calibrate.stack import CalibrationStack
from axialtrack.geometry import SplitterGeometry, split_frame
from axialtrack.optics import Optics
from axialtrack.sim import BEAD, Background, Beads, CameraModel, Renderer, Sample


def simulated_stack(
    *,
    n_fields: int = 2,
    plane_shape: tuple[int, int] = (192, 192),
    n_beads: int = 25,
    geometry: SplitterGeometry | None = None,
    z_half_range_um: float = 1.5,
    z_step_um: float = 0.05,
    photons_per_s: float = 2e5,
    background_photons_per_px_s: float = 1000.0,
    exposure_s: float = 0.01,
    extra_beads: Sequence[tuple[float, float, float, float]] = (),
    depth_um: tuple[float, float] = (0.05, 0.05),
    min_separation_um: float = 2.5,
    seed: int = 0,
    noise: bool = True,
    field_spacing_um: float = 100.0,
    fill: float = 0.92,
) -> CalibrationStack:
    """Render a dual-plane bead calibration stack with ground truth.

    Parameters
    ----------
    n_fields
        Number of fields of view; each has its own random beads.
    plane_shape
        ``(H, W)`` of one plane.
    n_beads
        Random beads per field (on the coverslip unless ``depth_um`` says else).
    geometry
        Splitter geometry (plane offset, plane-1 residual affine); default
        side-by-side with delta 0.5 um and no residual.
    z_half_range_um, z_step_um
        Stage Z runs over ``z_focus +- z_half_range_um`` of the shallowest bead
        (plus the extent of the depth range) in steps of ``z_step_um``.
    photons_per_s, background_photons_per_px_s, exposure_s
        Median bead brightness, background rate and exposure.
    extra_beads
        Explicit beads ``(x_px, y_px, depth_um, photons_per_s)`` added to every
        field, with plane-0 pixel positions.
    depth_um
        Depth range of the random beads above the coverslip.
    min_separation_um
        Minimum distance between random beads.
    seed
        Seed of the beads and the camera noise.
    noise
        ``False`` gives the expected image (rounded camera mean) instead of noise.
    field_spacing_um
        Stage X distance between fields.
    fill
        Side of the square the random beads occupy, as a fraction of the field.
    """
    geometry = geometry or SplitterGeometry(plane_offset_um=0.5)
    h, w = plane_shape
    camera = CameraModel()
    frames = []
    truths = []
    stage_xy = np.array([[field_spacing_um * p, 0.0] for p in range(n_fields)])
    px = Optics().pixel_size_um
    zs: np.ndarray | None = None
    for p in range(n_fields):
        sx, sy = stage_xy[p]
        groups = [
            Beads(
                n=n_beads,
                center_um=(sx, sy),
                size_um=(w * px * fill, h * px * fill),
                depth_um=depth_um,
                photons_per_s=photons_per_s,
                min_separation_um=min_separation_um,
                seed=seed * 1000 + p,
            )
        ]
        if extra_beads:
            pos = [
                (sx + (x - (w - 1) / 2) * px, sy + (y - (h - 1) / 2) * px, d)
                for x, y, d, _ in extra_beads
            ]
            groups.append(Beads.at(pos, [b for *_, b in extra_beads]))
        sample = Sample(
            beads=groups,
            background=Background(photons_per_px_s=background_photons_per_px_s),
            seed=seed * 1000 + p,
        )
        r = Renderer(
            sample,
            geometry=geometry,
            camera=camera,
            plane_shape=plane_shape,
            seed=seed * 1000 + p,
        )
        truth = r.truth(0.0, (sx, sy, sample.coverslip_z_um))
        truths.append(truth[truth["kind"] == BEAD])
        if zs is None:
            zf = r.z_focus_um(np.array(depth_um))
            zs = np.arange(
                zf[0] - z_half_range_um,
                zf[1] + z_half_range_um + z_step_um / 2,
                z_step_um,
            )
        frames.append(_render_field(r, camera, (sx, sy), zs, exposure_s, noise))
    assert zs is not None
    return CalibrationStack(
        frames=np.stack(frames),
        stage_z_um=np.broadcast_to(zs, (n_fields, len(zs))).copy(),
        pixel_size_um=float(r.pixel_size_um),
        geometry=geometry,
        stage_xy_um=stage_xy,
        source="simulation",
        truth=truths,
        meta={
            "offset_adu": camera.offset_adu,
            "gain_e_per_adu": camera.gain_e_per_adu,
            "qe": camera.qe,
            "read_noise_e": camera.read_noise_e,
            "saturation_adu": 2**camera.bit_depth - 1,
            "exposure_s": exposure_s,
        },
    )


def _render_field(
    r: Renderer,
    camera: CameraModel,
    xy_um: tuple[float, float],
    zs: np.ndarray,
    exposure_s: float,
    noise: bool,
) -> np.ndarray:
    """``(Z, 2, H, W)`` uint16 planes of one field at the stage Z positions:
    noisy frames, or the camera's rounded mean without noise."""
    h, w = r.plane_shape
    stack = np.empty((len(zs), 2, h, w), dtype=np.uint16)
    for k, z in enumerate(zs):
        stage = (xy_um[0], xy_um[1], float(z))
        if noise:
            raw = r.snap(stage, 0.0, exposure_s, frame_index=k)
            stack[k] = split_frame(raw, r.geometry)
        else:
            img = r.expected(stage, 0.0, exposure_s)
            mean = camera.qe * img / camera.gain_e_per_adu + camera.offset_adu
            stack[k] = np.clip(np.round(mean), 0, 65535).astype(np.uint16)
    return stack

"""Simulated bead calibration stacks with known truth, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from axialtrack.calibrate import CalibrationStack
from axialtrack.geometry import SplitterGeometry, split_frame
from axialtrack.sim import BEAD, Background, Beads, CameraModel, Renderer, Sample

#: Splitter geometry with an injected plane-1 shift and rotation.
SIM_GEOMETRY = SplitterGeometry(
    layout="side-by-side", plane_offset_um=0.5, shift_px=(3.3, -2.1), rotation_deg=0.7
)


def make_stack(
    *,
    n_fields: int = 2,
    plane_shape: tuple[int, int] = (192, 192),
    n_beads: int = 25,
    geometry: SplitterGeometry = SIM_GEOMETRY,
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
        Splitter geometry (plane offset, plane-1 residual affine).
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
    """
    h, w = plane_shape
    camera = CameraModel()
    frames = []
    truths = []
    stage_xy = np.array([[100.0 * p, 0.0] for p in range(n_fields)])
    zs: np.ndarray | None = None
    for p in range(n_fields):
        sx, sy = stage_xy[p]
        px = 0.108333
        groups = [
            Beads(
                n=n_beads,
                center_um=(sx, sy),
                size_um=(w * px * 0.92, h * px * 0.92),
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
        # exact pixel size of the optics for the explicit positions above
        if abs(r.pixel_size_um - px) > 1e-4:  # pragma: no cover - other optics
            raise ValueError("make_stack assumes the default optics pixel size")
        truth = r.truth(0.0, (sx, sy, sample.coverslip_z_um))
        truth = truth[truth["kind"] == BEAD]
        if zs is None:
            zf = r.z_focus_um(np.array(depth_um))
            zs = np.arange(
                zf[0] - z_half_range_um,
                zf[1] + z_half_range_um + z_step_um / 2,
                z_step_um,
            )
        stack = np.empty((len(zs), 2, h, w), dtype=np.uint16)
        for k, z in enumerate(zs):
            if noise:
                raw = r.snap((sx, sy, float(z)), 0.0, exposure_s, frame_index=k)
                stack[k] = split_frame(raw, geometry)
            else:
                img = r.expected((sx, sy, float(z)), 0.0, exposure_s)
                mean = camera.qe * img / camera.gain_e_per_adu + camera.offset_adu
                stack[k] = np.clip(np.round(mean), 0, 65535).astype(np.uint16)
        frames.append(stack)
        truths.append(truth)
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

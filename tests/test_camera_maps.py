"""sCMOS per-pixel camera maps in the refinement (``localize --camera-map``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from axialtrack.pipeline import CameraMapError, load_camera_maps


def _scmos(
    planes: np.ndarray, cam: object, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frames of a scalar camera re-recorded by an sCMOS camera with maps."""
    shape = planes.shape[1:]
    gain = cam.e_per_adu * rng.uniform(1.3, 1.7, shape)  # type: ignore[attr-defined]
    offset = cam.offset_adu + rng.normal(0.0, 8.0, shape)  # type: ignore[attr-defined]
    variance = rng.uniform(0.5, 3.0, shape)
    e = (planes.astype(float) - cam.offset_adu) * cam.e_per_adu  # type: ignore[attr-defined]
    adu = e / gain + offset + rng.normal(0.0, 1.0, planes.shape) * np.sqrt(variance)
    maps = {"offset": offset, "gain": gain, "variance": variance}
    return np.clip(np.round(adu), 0, 65535).astype(np.uint16), maps


def test_maps_remove_the_bias_of_an_scmos_camera(
    sim_bundle: Path, tmp_path: Path
) -> None:
    """Photons and Z of refined rows: with the maps as on a uniform camera;
    with the scalar camera instead, photons fall by the gain's 1.5x (measured
    on 20 beads x 4 frames: photon ratio 0.994 uniform, 0.994 with the maps,
    0.661 without; z RMSE 15.4, 16.3 and 32.9 nm)."""
    from test_pipeline_localize import PX, BundleEngine, _frame, _matched, _renderer

    from axialtrack.model import load_bundle
    from axialtrack.pipeline.config import LocalizerConfig
    from axialtrack.pipeline.localize import Localizer
    from axialtrack.sim import Beads

    w = 128
    beads = Beads.on_coverslip(
        14, size_um=(w * PX * 0.85,) * 2, min_separation_um=2.0, seed=31
    )
    r = _renderer(beads, (w, w), seed=32)
    zf = float(r.z_focus_um(0.05))
    dz = np.linspace(-0.3, 0.5, 3)
    frames, truths = [], []
    for i, d in enumerate(dz):
        stage = (0.0, 0.0, zf - d)
        frames.append(_frame(r, stage, i))
        truths.append(r.truth(0.01 * i, stage, exposure_s=0.01))
    planes = np.stack(frames)
    engine = BundleEngine(load_bundle(sim_bundle))
    cam = LocalizerConfig(camera=engine.bundle.camera).camera
    rng = np.random.default_rng(33)
    scmos, maps = _scmos(planes, cam, rng)
    path = tmp_path / "maps.npz"
    np.savez(path, **{k: np.broadcast_to(v, (2, w, w)) for k, v in maps.items()})

    def run(frames: np.ndarray, camera_map: str | None) -> tuple[float, float]:
        loc = Localizer(
            engine,
            plane_shape=r.plane_shape,
            pixel_size_um=r.pixel_size_um,
            config=LocalizerConfig(camera=cam, refine=True, camera_map=camera_map),
        )
        locs = loc.localize(frames, np.arange(3), 0.01 * np.arange(3), zf - dz)
        assert locs["refined"].all()
        ez, _, ph, n_truth, n_found = _matched(locs, truths)
        assert n_found >= 0.9 * n_truth
        return float(np.median(ph)), float(np.sqrt(np.mean(ez**2)))

    ph_ref, z_ref = run(planes, None)  # the uniform camera the frames came from
    ph_map, z_map = run(scmos, str(path))
    ph_off, z_off = run(scmos, None)
    print(
        f"photon ratio / z RMSE (nm): uniform {ph_ref:.3f} / {z_ref * 1e3:.1f}, "
        f"sCMOS with maps {ph_map:.3f} / {z_map * 1e3:.1f}, without "
        f"{ph_off:.3f} / {z_off * 1e3:.1f}"
    )
    assert abs(ph_map / ph_ref - 1.0) < 0.05
    assert z_map < 1.3 * z_ref + 0.005
    # the scalar gain is 1.5x too small: photons fall by about that
    assert ph_off / ph_ref < 0.8


def test_map_files_are_checked(tmp_path: Path) -> None:
    ok = {k: np.ones((2, 8, 9)) for k in ("offset", "gain", "variance")}
    np.savez(tmp_path / "ok.npz", **ok)
    maps = load_camera_maps(tmp_path / "ok.npz", (8, 9))
    assert maps.read_noise_e.shape == (2, 8, 9)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "ok.tif", np.stack(list(ok.values())))
    assert load_camera_maps(tmp_path / "ok.tif", (8, 9)).offset_adu.shape == (2, 8, 9)
    with pytest.raises(CameraMapError, match=r"map 'offset' has shape \(2, 8, 9\)"):
        load_camera_maps(tmp_path / "ok.npz", (8, 10))
    np.savez(tmp_path / "two.npz", offset=ok["offset"], gain=ok["gain"])
    with pytest.raises(CameraMapError, match="lacks 'variance'"):
        load_camera_maps(tmp_path / "two.npz", (8, 9))
    np.savez(tmp_path / "neg.npz", **{**ok, "gain": -ok["gain"]})
    with pytest.raises(CameraMapError, match="'gain' has values <= 0"):
        load_camera_maps(tmp_path / "neg.npz", (8, 9))
    with pytest.raises(CameraMapError, match="no such file"):
        load_camera_maps(tmp_path / "none.npz", (8, 9))


def test_cli_refuses_a_map_of_another_shape(
    sim_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_refine import PX_UM, _movie

    from axialtrack.cli import main

    movie, stage_z = _movie(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: np.ones((2, 10, 10)) for k in ("offset", "gain", "variance")})
    out = tmp_path / "out.zarr"
    common = [
        "localize",
        str(movie),
        "--model",
        str(sim_bundle),
        "--out",
        str(out),
        "--pixel-size",
        f"{PX_UM}",
        "--stage-z",
        f"{stage_z}",
        "--camera-map",
        str(bad),
    ]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "--camera-map is used by the refinement only" in err
    assert main([*common, "--refine", "--refine-far-size", "14"]) == 2
    err = capsys.readouterr().err
    assert "--refine-far-size 14: Value error, fit window sizes must be odd" in err
    assert main([*common, "--refine"]) == 2
    err = capsys.readouterr().err
    assert "bad.npz: map 'offset' has shape (2, 10, 10)" in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()

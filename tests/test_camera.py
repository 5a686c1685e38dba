"""The camera model: ``axialtrack camera`` (photon transfer curve), the camera
options of ``calibrate``/``localize``/``live``, and the camera and rig a model
bundle records, end to end through the CLI on bead stacks rendered by
psfmodels with a camera of offset 400 ADU and gain 2 e-/ADU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from axialtrack.calibrate.ptc import measure_ptc
from axialtrack.cli import main

# ------------------------------------------------------------------ the PTC


def _camera_frames(
    rng: np.random.Generator,
    electrons: float,
    *,
    offset: float,
    gain: float,
    read_noise: float,
    n: int = 4,
    shape: tuple[int, int] = (128, 128),
) -> np.ndarray:
    """``n`` frames of a camera with fixed pattern (per-pixel offset and
    response), uneven light and Poisson + Gaussian noise, rounded to uint16."""
    h, w = shape
    fixed = np.random.default_rng(99)
    prnu = 1 + 0.02 * fixed.standard_normal(shape)
    fpn = 2.0 * fixed.standard_normal(shape)
    yy, xx = np.mgrid[:h, :w]
    shade = 1 + 0.3 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (2 * 40**2))
    e = rng.poisson(np.broadcast_to(electrons * shade * prnu, (n, h, w)))
    e = e + rng.normal(0, read_noise, (n, h, w))
    return np.clip(np.round(offset + fpn + e / gain), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize(
    ("offset", "gain", "read_noise"),
    [(400.0, 2.0, 3.0), (100.0, 0.5, 1.5), (1000.0, 0.23, 1.1)],
)
def test_ptc_recovers_offset_gain_and_read_noise(
    offset: float, gain: float, read_noise: float
) -> None:
    rng = np.random.default_rng(int(offset))
    kw = {"offset": offset, "gain": gain, "read_noise": read_noise}
    dark = _camera_frames(rng, 0.0, **kw)
    # flats from a few e- to about a third of the full scale
    top = min(20000.0, 20000 * gain)
    levels = np.geomspace(top / 200, top, 5)
    flats = [_camera_frames(rng, float(v), **kw) for v in levels]
    res = measure_ptc(dark, flats)
    assert res.offset_adu == pytest.approx(offset, abs=0.5)
    assert res.e_per_adu == pytest.approx(gain, rel=0.03)
    assert res.read_noise_e == pytest.approx(read_noise, rel=0.05)
    lo, hi = res.e_per_adu_ci95
    assert lo < res.e_per_adu < hi
    assert hi - lo < 0.05 * gain  # the interval says how well it is known


def test_ptc_refuses_too_few_frames_or_levels() -> None:
    from axialtrack.calibrate.ptc import PTCError

    rng = np.random.default_rng(0)
    kw = {"offset": 100.0, "gain": 1.0, "read_noise": 2.0}
    dark = _camera_frames(rng, 0.0, **kw)
    flat = _camera_frames(rng, 500.0, **kw)
    with pytest.raises(PTCError, match="need flats at 2 or more light levels"):
        measure_ptc(dark, [flat])
    with pytest.raises(PTCError, match="need at least 2 frames of one level"):
        measure_ptc(dark[:1], [flat, flat])
    with pytest.raises(PTCError, match="no brighter than the dark frames"):
        measure_ptc(dark, [dark, dark])


# ---------------------------------------------------------- the CLI: files


def _line(capsys: pytest.CaptureFixture[str]) -> str:
    """The refusal: one line on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def ptc_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ptc")
    rng = np.random.default_rng(5)
    kw = {"offset": 400.0, "gain": 2.0, "read_noise": 2.5}
    dark = _camera_frames(rng, 0.0, **kw)
    tifffile.imwrite(d / "dark.tif", dark, photometric="minisblack")
    for i, v in enumerate((100.0, 1000.0, 5000.0, 20000.0)):
        np.save(d / f"flat{i}.npy", _camera_frames(rng, v, **kw))
    return d


def test_camera_cli_from_files_writes_the_camera_file_and_plot(
    ptc_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from axialtrack.camera import read_camera_file

    out, plot = tmp_path / "camera.json", tmp_path / "ptc.png"
    argv = ["camera", "--dark", str(ptc_files / "dark.tif")]
    argv += ["--flat", str(ptc_files / "flat*.npy"), "--out", str(out)]
    argv += ["--qe", "0.9", "--bit-depth", "16", "--plot", str(plot)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "gain       2.0" in text or "gain       1.9" in text
    cam = read_camera_file(out)
    assert cam["offset_adu"] == pytest.approx(400.0, abs=0.5)
    assert cam["e_per_adu"] == pytest.approx(2.0, rel=0.03)
    assert cam["read_noise_e"] == pytest.approx(2.5, rel=0.05)
    assert cam["qe"] == 0.9
    assert cam["bit_depth"] == 16
    measured = json.loads(out.read_text())["measured"]
    lo, hi = measured["e_per_adu"]["ci95"]
    assert lo < 2.0 < hi
    assert len(measured["levels"]) == 5  # the dark and four flats
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # refusals: one line, exit 2, nothing written
    assert main(argv) == 2
    assert "--out" in _line(capsys)
    assert out.exists()
    one = ["camera", "--dark", str(ptc_files / "dark.tif")]
    one += ["--flat", str(ptc_files / "flat0.npy"), "--out", str(tmp_path / "b.json")]
    assert main(one) == 2
    assert "need flats at 2 or more light levels" in _line(capsys)
    assert not (tmp_path / "b.json").exists()
    assert main(["camera", "--out", str(tmp_path / "c.json")]) == 2
    assert "give --dark FILE and --flat FILE" in _line(capsys)
    missing = ["camera", "--dark", str(tmp_path / "nope.tif")]
    missing += ["--flat", str(ptc_files / "flat*.npy"), "--out", str(tmp_path / "d")]
    assert main(missing) == 2
    assert "nope.tif" in _line(capsys)


def test_camera_cli_acquires_from_the_simulated_rig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from axialtrack.camera import read_camera_file
    from axialtrack.sim import CameraModel

    out = tmp_path / "sim-camera.json"
    argv = ["camera", "--config", "sim", "--out", str(out)]
    assert main([*argv, "--exposures", "10,50,200,500", "--frames", "4"]) == 0
    truth = CameraModel()  # the simulated camera's noise model
    cam = read_camera_file(out)
    assert cam["offset_adu"] == pytest.approx(truth.offset_adu, abs=0.5)
    assert cam["e_per_adu"] == pytest.approx(truth.gain_e_per_adu, rel=0.03)
    assert cam["read_noise_e"] == pytest.approx(truth.read_noise_e, rel=0.05)
    assert cam["bit_depth"] == 16


# ----------------------------------------------------- camera option refusals


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "no such file"),
        ("{not json", "is not a JSON file"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"offset_adu": 400, "gain": 2}', "unknown camera field 'gain'"),
        ('{"e_per_adu": -2}', "e_per_adu must be > 0"),
        ('{"qe": 80}', "qe must be <= 1"),
        ('{"bit_depth": 64}', "bit_depth must be <= 32"),
        ('{"offset_adu": "400"}', "offset_adu must be a number"),
    ],
)
def test_bad_camera_file_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    expect: str,
) -> None:
    f = tmp_path / "camera.json"
    if content is not None:
        f.write_text(content)
    out = tmp_path / "cal.zarr"
    assert main(["calibrate", "--out", str(out), "--camera", str(f)]) == 2
    line = _line(capsys)
    assert expect in line
    assert str(f) in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "expect"),
    [
        ("--camera-qe", "80", "a fraction, not a percentage"),
        ("--camera-gain", "0", "must be > 0"),
        ("--camera-offset", "-1", "must be >= 0"),
        ("--camera-read-noise", "nan", "finite"),
        ("--camera-bit-depth", "4", "from 8 to 32 bits"),
    ],
)
@pytest.mark.parametrize("command", ["calibrate", "localize", "live"])
def test_bad_camera_option_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    option: str,
    value: str,
    expect: str,
) -> None:
    out = str(tmp_path / "x.zarr")
    argv = {
        "calibrate": ["calibrate", "--out", out],
        "localize": ["localize", out, "--model", "m.axialmodel"],
        "live": ["live", "--out", out, "--frames", "2"],
    }[command]
    assert main([*argv, option, value]) == 2
    line = " ".join(capsys.readouterr().err.split())
    assert option in line
    assert expect in line
    assert not Path(out).exists()


# ------------------------------------------- self-describing bundles: refusals


def test_save_bundle_refuses_a_bundle_that_would_not_record_the_rig(
    tmp_path: Path,
) -> None:
    from sim_model import SIM_RIG

    from axialtrack.model import AxialNet, BundleError, ModelConfig, save_bundle

    rig = {k: v for k, v in SIM_RIG.items() if k != "camera"}
    with pytest.raises(BundleError, match=r"camera \(the camera model"):
        save_bundle(AxialNet(ModelConfig()), tmp_path / "b", **rig)
    assert not (tmp_path / "b.axialmodel").exists()


@pytest.fixture(scope="module")
def rig_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sim_model import SIM_RIG

    from axialtrack.model import AxialNet, ModelConfig, save_bundle

    return save_bundle(
        AxialNet(ModelConfig()), tmp_path_factory.mktemp("rb") / "rig", **SIM_RIG
    )


@pytest.mark.parametrize(
    "field",
    [
        "pixel_size_um",
        "plane_offset_um",
        "layout",
        "mirror",
        "registration",
        "camera",
        "plane_shape",
        "z_convention",
    ],
)
def test_load_bundle_refuses_a_bundle_without_a_rig_field(
    rig_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
) -> None:
    from axialtrack.model import BundleError, load_bundle

    b = tmp_path / "old.axialmodel"
    shutil.copytree(rig_bundle, b)
    meta = json.loads((b / "model.json").read_text())
    meta.pop(field)
    (b / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"does not record the rig.*: {field} "):
        load_bundle(b)
    # and through the CLI: one line naming the field and the fix
    movie = tmp_path / "movie.npy"
    np.save(movie, np.full((2, 32, 64), 100, np.uint16))
    argv = ["localize", str(movie), "--model", str(b), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = _line(capsys)
    assert f": {field} (" in line
    assert "Train the model again" in line
    assert not (tmp_path / "o").exists()


def test_load_bundle_refuses_an_invalid_camera(
    rig_bundle: Path, tmp_path: Path
) -> None:
    from axialtrack.model import BundleError, load_bundle

    b = tmp_path / "bad.axialmodel"
    shutil.copytree(rig_bundle, b)
    meta = json.loads((b / "model.json").read_text())
    meta["camera"]["e_per_adu"] = 0
    (b / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"camera .* is invalid"):
        load_bundle(b)


# ------------------------- import -> train -> localize through the CLI (psfmodels)

OFFSET = 400.0
GAIN = 2.0
N_FIELDS = 3


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Bead stacks of a camera of offset 400 ADU, gain 2 e-/ADU (read noise 1
    ADU = 2 e-; the renderer's photons are photo-electrons: QE 1), one TIFF per
    field, plane 1 mirrored; calibrated with --camera FILE, trained fast."""
    import psf_import

    d = tmp_path_factory.mktemp("imp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(psf_import, "OFFSET_ADU", OFFSET)
        mp.setattr(psf_import, "GAIN_E_PER_ADU", GAIN)
        rendered = psf_import.render(N_FIELDS, mirror="horizontal", seed=4)
    for f in range(N_FIELDS):
        tifffile.imwrite(d / f"beads_field{f}.tif", rendered.raw[f])
    cam_file = d / "camera.json"
    cam_file.write_text(
        json.dumps(
            {"offset_adu": OFFSET, "e_per_adu": GAIN, "read_noise_e": 2.0, "qe": 1.0}
        )
    )
    cal, bundle = d / "cal.zarr", d / "model.axialmodel"
    argv = ["calibrate", "--from", str(d / "beads_field*.tif"), "--out", str(cal)]
    argv += ["--layout", "side-by-side", "--z-step", str(psf_import.STEP_UM)]
    argv += ["--z-start", str(rendered.stage_z_um[0])]
    argv += ["--plane-offset", str(psf_import.DELTA_UM)]
    argv += ["--pixel-size", str(psf_import.PIXEL_UM)]
    argv += ["--camera", str(cam_file), "--camera-bit-depth", "14", "--no-psf-fit"]
    assert main(argv) == 0
    argv = ["train", str(cal), "--out", str(bundle), "--steps", "150"]
    assert main([*argv, "--no-progress", "--no-recalibrate"]) == 0
    return {"dir": d, "cal": cal, "bundle": bundle, "rendered": rendered}


def test_imported_calibration_records_the_rig_and_camera(
    imported: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import psf_import

    from axialtrack.model import load_bundle

    meta = json.loads((imported["bundle"] / "model.json").read_text())
    assert meta["pixel_size_um"] == pytest.approx(psf_import.PIXEL_UM)
    assert meta["plane_offset_um"] == pytest.approx(psf_import.DELTA_UM)
    assert meta["layout"] == "side-by-side"
    assert meta["mirror"] == "horizontal"  # found from the beads
    assert meta["plane_shape"] == [psf_import.H, psf_import.W]
    assert meta["crop_size"] % 2 == 1
    assert meta["z_convention"].startswith("stage frame: z_um is the focus-stage")
    # plane 1 at (x + 2, y - 1) once un-mirrored
    affine = np.asarray(meta["registration"]["affine"])
    np.testing.assert_allclose(affine[:, :2], np.eye(2), atol=0.01)
    np.testing.assert_allclose(affine[:, 2], psf_import.SHIFT_PX, atol=0.1)
    assert meta["camera"] == {
        "offset_adu": OFFSET,
        "e_per_adu": GAIN,
        "qe": 1.0,
        "read_noise_e": 2.0,
        "bit_depth": 14,
    }
    assert load_bundle(imported["bundle"]).camera.offset_adu == OFFSET
    capsys.readouterr()
    assert main(["info", str(imported["cal"])]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "Camera offset 400 ADU, gain 2 e-/ADU, read noise 2 e-, QE 1, 14 bits "
        "(offset_adu, e_per_adu, read_noise_e, qe from --camera"
    ) in text
    assert "bit_depth from the --camera-* options" in text


def _movie(tmp: Path, n_frames: int = 4, seed: int = 7) -> tuple[Path, list[Any]]:
    """A side-by-side movie (plane 1 mirrored) of emitters at known positions
    and depths, rendered like the beads; returns the TIFF and, per emitter,
    ``(frame, x_px, y_px, dz_um, plane-0 PSF (21 x 21, sum 1))``."""
    import psf_import
    from psf_import import BACKGROUND, DELTA_UM, PHOTONS, SHIFT_PX, H, W

    rng = np.random.default_rng(seed)
    half = 10
    raw = np.empty((n_frames, H, 2 * W), np.uint16)
    truth: list[Any] = []
    for k in range(n_frames):
        pos = psf_import._place(rng)[:5]
        dz = rng.uniform(-0.3, 0.3, len(pos))
        psf0 = psf_import._psf(-dz)
        psf1 = psf_import._psf(-dz + DELTA_UM)
        planes = np.full((2, H, W), BACKGROUND)
        for i, (x, y) in enumerate(pos):
            planes[0, y - half : y + half + 1, x - half : x + half + 1] += (
                PHOTONS * psf0[i]
            )
            x1, y1 = x + SHIFT_PX[0], y + SHIFT_PX[1]
            planes[1, y1 - half : y1 + half + 1, x1 - half : x1 + half + 1] += (
                PHOTONS * psf1[i]
            )
            truth.append((k, x, y, float(dz[i]), psf0[i]))
        adu = OFFSET + rng.poisson(planes) / GAIN + rng.normal(0, 1.0, planes.shape)
        raw[k] = np.clip(np.hstack([adu[0], adu[1][:, ::-1]]), 0, 65535)
    path = tmp / "movie.tif"
    tifffile.imwrite(path, raw, photometric="minisblack")
    return path, truth


def test_localize_uses_the_bundles_camera(
    imported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from psf_import import PHOTONS

    from axialtrack.model import load_bundle
    from axialtrack.store import open_run

    movie, truth = _movie(tmp_path)
    crop = load_bundle(imported["bundle"]).crop_size
    h = crop // 2
    # photons of each emitter inside its plane-0 crop (the PSF is 21 px wide)
    in_crop = [
        PHOTONS * p[10 - h : 10 + h + 1, 10 - h : 10 + h + 1].sum() for *_, p in truth
    ]
    out = tmp_path / "run.zarr"
    # no geometry, no camera options: all from the bundle
    argv = ["localize", str(movie), "--model", str(imported["bundle"])]
    assert main([*argv, "--out", str(out), "--stage-z", "10"]) == 0
    assert "differs" not in capsys.readouterr().out
    run = open_run(out)
    assert run.attrs["camera"]["offset_adu"] == OFFSET
    assert run.attrs["splitter"]["mirror"] == "horizontal"
    locs = run.localizations
    assert np.isfinite(locs["z_um"]).all()
    # match each true emitter to the nearest localization of its frame
    photons, found = [], 0
    for (k, x, y, _dz, _psf), n in zip(truth, in_crop, strict=True):
        f = locs[locs["frame"] == k]
        if not len(f):
            continue
        d = np.hypot(f["x_px"] - x, f["y_px"] - y)
        if d.min() < 1.5:
            found += 1
            photons.append(float(f["photons"].to_numpy()[int(np.argmin(d))]) / n)
    assert found >= 0.9 * len(truth)
    assert np.median(photons) == pytest.approx(1.0, abs=0.10)

    # a camera given that differs from the bundle's is said, in one line
    out2 = tmp_path / "run2.zarr"
    assert (
        main([*argv, "--out", str(out2), "--stage-z", "10", "--camera-gain", "0.5"])
        == 0
    )
    said = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "differs from the model bundle" in line
    ]
    assert len(said) == 1
    assert "e_per_adu 0.5 vs 2" in said[0]
    ratio = np.median(open_run(out2).localizations["photons"]) / np.median(
        locs["photons"]
    )
    assert ratio == pytest.approx(0.25, rel=0.05)  # 0.5 e-/ADU instead of 2


def test_train_refuses_a_calibration_without_its_camera(
    imported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zarr

    cal = tmp_path / "old.zarr"
    shutil.copytree(imported["cal"], cal)
    root = zarr.open_group(str(cal), mode="a")
    rig = dict(root.attrs["axialtrack_rig"])  # type: ignore[arg-type]
    rig.pop("camera")
    root.attrs["axialtrack_rig"] = rig
    run = dict(root.attrs["axialtrack"])  # type: ignore[arg-type]
    run.pop("camera")
    root.attrs["axialtrack"] = run
    out = tmp_path / "m.axialmodel"
    assert main(["train", str(cal), "--out", str(out), "--steps", "5"]) == 2
    line = " ".join(_line(capsys).split())
    assert "does not record the rig the model needs: camera (" in line
    assert f"axialtrack calibrate --from {cal}" in line
    assert not out.exists()


def test_python_localizer_and_analyzer_take_the_bundles_camera(
    tmp_path: Path,
) -> None:
    from sim_model import SIM_RIG

    from axialtrack.engine import select_engine
    from axialtrack.model import AxialNet, ModelConfig, load_bundle, save_bundle
    from axialtrack.pipeline import Localizer, make_analyzer
    from axialtrack.pipeline.config import CameraCalibration

    cam = CameraCalibration(offset_adu=400, e_per_adu=2.0, qe=0.9, bit_depth=12)
    path = save_bundle(
        AxialNet(ModelConfig()), tmp_path / "cam", **{**SIM_RIG, "camera": cam}
    )
    bundle = load_bundle(path)
    assert bundle.camera == cam
    with select_engine(bundle, "onnxruntime") as engine:
        loc = Localizer(engine, plane_shape=(256, 256), pixel_size_um=0.108333)
        assert loc.config.camera == cam
    analyzer = make_analyzer(path, plane_shape=(256, 256), pixel_size_um=0.108333)
    assert analyzer.localizer.config.camera == cam


def test_camera_from_a_micro_manager_core() -> None:
    from axialtrack.camera import camera_from_core, resolve_camera

    class Core:
        """A core whose camera reports DCAM's conversion factor and offset."""

        def __init__(self) -> None:
            self.props = {
                "CONVERSION FACTOR COEFF": "0.46",
                "CONVERSION FACTOR OFFSET": "99.5",
            }

        def getCameraDevice(self) -> str:
            return "Cam"

        def hasProperty(self, dev: str, prop: str) -> bool:
            return prop in self.props

        def getProperty(self, dev: str, prop: str) -> str:
            return self.props[prop]

        def getImageBitDepth(self) -> int:
            return 12

    core = Core()
    got = camera_from_core(core)
    assert got == {"e_per_adu": 0.46, "offset_adu": 99.5, "bit_depth": 12}
    # options over the core, the core over the bundle
    cam, origin = resolve_camera(
        [("options", {"offset_adu": 400.0}), ("core", got), ("bundle", {"qe": 0.7})]
    )
    assert (cam.offset_adu, cam.e_per_adu, cam.bit_depth, cam.qe) == (
        400.0,
        0.46,
        12,
        0.7,
    )
    assert origin == {
        "offset_adu": "options",
        "e_per_adu": "core",
        "read_noise_e": "default",
        "qe": "bundle",
        "bit_depth": "core",
    }
    core.props["CONVERSION FACTOR COEFF"] = "-1"  # out of range: left out
    assert "e_per_adu" not in camera_from_core(core)


def test_simulated_calibration_to_bundle_records_the_rig_and_camera(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other calibration source: acquired on the simulated rig through the
    CLI; the core's camera with an option over one field, into the bundle."""
    cal, bundle = tmp_path / "sim.zarr", tmp_path / "sim.axialmodel"
    argv = ["calibrate", "--out", str(cal), "--fields", "2", "--z-range", "0.6"]
    argv += ["--z-step", "0.05", "--exposure", "5", "--no-progress", "--no-psf-fit"]
    assert main([*argv, "--camera-read-noise", "1.6"]) == 0
    said = capsys.readouterr().out
    assert "read_noise_e from the --camera-* options" in " ".join(said.split())
    argv = ["train", str(cal), "--out", str(bundle), "--steps", "3"]
    assert main([*argv, "--no-progress", "--no-recalibrate"]) == 0
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["pixel_size_um"] == pytest.approx(0.108333)
    assert meta["plane_offset_um"] == pytest.approx(0.5)
    assert meta["layout"] == "side-by-side"
    assert meta["mirror"] == "none"
    assert meta["plane_shape"] == [256, 256]
    assert np.asarray(meta["registration"]["affine"]).shape == (2, 3)
    assert meta["camera"] == {
        "offset_adu": 100.0,  # the simulated camera's
        "e_per_adu": 0.5,
        "qe": 0.8,
        "read_noise_e": 1.6,  # the option's
        "bit_depth": 16,
    }

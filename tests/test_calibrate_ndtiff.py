"""``calibrate --from`` an NDTiff dataset (Micro-Manager 2 / Pycro-Manager),
written with ndstorage's own writer: fields from positions, stage Z and pixel
size from the image metadata."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psf_import import BEADS_PER_FIELD, DELTA_UM, N_Z, PIXEL_UM, Rendered, render

from axialtrack.cli import main
from axialtrack.store import open_run

ndstorage = pytest.importorskip("ndstorage")

N_FIELDS = 3
Z0 = 25.0  # the stage Z the metadata records, unlike the render's 9-11 um


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(N_FIELDS, mirror="horizontal", seed=1)


def _write(
    root: Path, rendered: Rendered, z: np.ndarray, summary: dict[str, Any]
) -> Path:
    ds = ndstorage.NDTiffDataset(str(root), name="beads", writable=True)
    ds.initialize(summary)
    for p in range(N_FIELDS):
        for k in range(N_Z):
            md = {"ZPosition_um_Intended": float(z[p, k]), "Core-Focus": "Z"}
            ds.put_image({"position": p, "z": k}, rendered.raw[p, k], md)
    ds.finish()
    return Path(ds.path)


def _stage_z() -> np.ndarray:
    return np.tile(np.round(Z0 + 0.1 * np.arange(N_Z), 4), (N_FIELDS, 1))


def test_ndtiff_positions_and_metadata(rendered: Rendered, tmp_path: Path) -> None:
    path = _write(tmp_path, rendered, _stage_z(), {"PixelSize_um": PIXEL_UM})
    assert (path / "NDTiff.index").is_file()
    out = tmp_path / "cal.zarr"
    # no --z-step, --z-start or --pixel-size: all from the metadata
    args = ["calibrate", "--from", str(path), "--out", str(out), "--no-psf-fit"]
    assert main([*args, "--plane-offset", str(DELTA_UM)]) == 0
    run = open_run(out)
    assert run.frame_meta["position_index"].tolist() == [
        f for f in range(N_FIELDS) for _ in range(N_Z)
    ]
    np.testing.assert_allclose(
        run.frame_meta["stage_z_um"].to_numpy(), _stage_z().ravel()
    )
    np.testing.assert_array_equal(run.frames[N_Z + 4, 0], rendered.raw[1, 4, :, :64])
    from axialtrack.model import load_calibration

    data = load_calibration(out)
    assert data.pixel_size_um == pytest.approx(PIXEL_UM)
    assert data.layout == "side-by-side"
    beads = data.beads
    assert beads is not None
    acc = beads[beads["status"] == "accepted"]
    assert len(acc) == N_FIELDS * BEADS_PER_FIELD
    # in focus 15.0 + 0.03 f um above the first frame (render: 10 + 0.03 f, from 9)
    shift = Z0 - rendered.stage_z_um[0]
    for f in range(N_FIELDS):
        ref = acc[acc["field"] == f]["ref_z_um"].to_numpy()
        np.testing.assert_allclose(ref, rendered.focus_um[f] + shift, atol=0.01)

    # a file of the dataset names it too
    out2 = tmp_path / "cal2.zarr"
    tif = next(path.glob("*NDTiffStack.tif"))
    args = ["calibrate", "--from", str(tif), "--out", str(out2), "--no-psf-fit"]
    assert main([*args, "--plane-offset", str(DELTA_UM)]) == 0
    assert open_run(out2).n_frames == N_FIELDS * N_Z


def _refusal(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines
    assert lines[-1].startswith("Cannot "), lines
    return lines[-1]


def test_ndtiff_refusals(
    rendered: Rendered,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    z = _stage_z()
    z[1, 5], z[1, 6] = z[1, 6], z[1, 5]
    path = _write(tmp_path, rendered, z, {"PixelSize_um": PIXEL_UM})
    out = tmp_path / "cal.zarr"
    args = ["calibrate", "--from", str(path), "--out", str(out)]
    capsys.readouterr()
    assert main([*args, "--plane-offset", str(DELTA_UM)]) == 2
    line = _refusal(capsys)
    assert "field 1: 21 frames" in line
    assert "is not monotonic" in line
    assert not out.exists()
    # the Z step given disagrees with the metadata's 0.1 um
    path = _write(tmp_path / "ok", rendered, _stage_z(), {"PixelSize_um": PIXEL_UM})
    args = ["calibrate", "--from", str(path), "--out", str(out)]
    assert main([*args, "--plane-offset", str(DELTA_UM), "--z-step", "0.2"]) == 2
    assert "move 0.1000 um per frame, not the given 0.2 um" in _refusal(capsys)
    # without ndstorage: one line naming the package
    monkeypatch.setitem(sys.modules, "ndstorage", None)
    assert main([*args, "--plane-offset", str(DELTA_UM)]) == 2
    line = _refusal(capsys)
    assert "an NDTiff dataset needs the ndstorage package" in line
    assert line.endswith("Fix: pip install ndstorage (axialtrack's ndtiff extra)")
    assert not out.exists()

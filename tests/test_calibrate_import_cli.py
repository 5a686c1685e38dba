"""``axialtrack calibrate --from``, end to end through the CLI, on bead stacks
rendered by psfmodels (an independent vectorial PSF) with plane 1 mirrored on a
side-by-side sensor and a camera of its own offset and gain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from psf_import import (
    BEADS_PER_FIELD,
    DELTA_UM,
    N_Z,
    PIXEL_UM,
    STEP_UM,
    Rendered,
    W,
    render,
)

from axialtrack.calibrate.io import StackImportError, load_stacks
from axialtrack.cli import main
from axialtrack.store import open_run

N_FIELDS = 3


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(N_FIELDS, mirror="horizontal", seed=1)


@pytest.fixture(scope="module")
def field_files(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fields")
    for f in range(N_FIELDS):
        tifffile.imwrite(d / f"beads_field{f}.tif", rendered.raw[f])
    return d


def _args(rendered: Rendered, out: Path, *extra: str) -> list[str]:
    return [
        "calibrate",
        "--out",
        str(out),
        "--layout",
        "side-by-side",
        "--z-step",
        str(STEP_UM),
        "--z-start",
        str(rendered.stage_z_um[0]),
        "--plane-offset",
        str(DELTA_UM),
        "--pixel-size",
        str(PIXEL_UM),
        "--no-psf-fit",
        *extra,
    ]


def _qc(out: Path) -> dict[str, Any]:
    return dict(zarr.open_group(str(out), mode="r").attrs["axialtrack_calibration"])  # type: ignore[arg-type]


def _refusal(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line printed for a refusal (the last line of the output)."""
    lines = capsys.readouterr().out.strip().splitlines()
    refusals = [i for i, line in enumerate(lines) if line.startswith("Cannot ")]
    assert refusals == [len(lines) - 1], lines
    return lines[-1]


def test_fields_as_files_mirror_found(
    rendered: Rendered, field_files: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cal.zarr"
    glob = str(field_files / "beads_field*.tif")
    assert main(_args(rendered, out, "--from", glob)) == 0
    qc = _qc(out)
    assert qc["n_fields"] == N_FIELDS
    assert qc["n_z"] == N_Z
    assert qc["n_detected"] == N_FIELDS * BEADS_PER_FIELD
    assert qc["n_accepted"] == N_FIELDS * BEADS_PER_FIELD
    reg = qc["registration"]
    assert reg["mirror"] == "horizontal"
    assert reg["mirror_requested"] == "auto"
    assert reg["residual_nm"] < 10.0
    assert reg["n_matched"] == N_FIELDS * BEADS_PER_FIELD
    # plane 1 lies (2, -1) px from plane 0 once un-mirrored
    np.testing.assert_allclose(np.asarray(reg["affine"])[:, 2], [2, -1], atol=0.1)
    # the other flips were tried and fit clearly worse
    trials = reg["mirror_trials"]
    assert set(trials) == {"none", "horizontal", "vertical", "both"}
    for flip in ("none", "vertical", "both"):
        res = trials[flip]["residual_nm"]
        assert res is None or res > 5 * reg["residual_nm"]


def test_one_file_of_several_fields(
    rendered: Rendered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "all_fields.tif"
    tifffile.imwrite(
        path, rendered.raw.reshape(N_FIELDS * N_Z, *rendered.raw.shape[2:])
    )
    out = tmp_path / "cal.zarr"
    capsys.readouterr()
    # read as one stack it spans 6.2 um and focuses three times: refused
    assert main(_args(rendered, out, "--from", str(path))) == 2
    line = _refusal(capsys)
    assert "all_fields.tif: 63 frames per field" in line
    assert "span 6.20 um" in line
    assert "come into focus 3 times" in line
    assert line.endswith(
        "Fix: pass --fields 3 (the file holds 3 fields), or one file per field"
    )
    assert not out.exists()
    # --fields that does not divide the frames
    assert main(_args(rendered, out, "--from", str(path), "--fields", "4")) == 2
    assert "63 frames" in _refusal(capsys)
    # the layout is found from the beads when not given
    args = _args(rendered, out, "--from", str(path), "--fields", "3")
    i = args.index("--layout")
    assert main(args[:i] + args[i + 2 :]) == 0
    assert open_run(out).attrs["splitter"]["layout"] == "side-by-side"
    qc = _qc(out)
    assert qc["n_fields"] == N_FIELDS
    assert qc["n_accepted"] == N_FIELDS * BEADS_PER_FIELD
    assert qc["registration"]["mirror"] == "horizontal"
    assert qc["registration"]["residual_nm"] < 10.0


def test_wrong_mirror_refused(
    rendered: Rendered,
    field_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    glob = str(field_files / "beads_field*.tif")
    out = tmp_path / "cal.zarr"
    capsys.readouterr()
    assert main(_args(rendered, out, "--from", glob, "--mirror", "none")) == 2
    line = _refusal(capsys)
    assert (
        "plane-1 mirror 'none' fits the beads clearly worse than 'horizontal'" in line
    )
    assert "horizontal: 1." in line  # the residuals of each flip tried
    assert "none: " in line
    assert line.endswith("pass --mirror horizontal, or --mirror auto")
    assert not out.exists()
    assert main(_args(rendered, out, "--from", glob, "--mirror", "x")) == 0
    assert _qc(out)["registration"]["mirror"] == "horizontal"


def test_registration_refusals(
    rendered: Rendered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # plane 1 of field 2 moved down by one pixel: no single affine fits
    moved = rendered.raw.copy()
    moved[2, :, :, W:] = np.roll(moved[2, :, :, W:], 1, axis=-2)
    for f in range(N_FIELDS):
        tifffile.imwrite(tmp_path / f"moved{f}.tif", moved[f])
    out = tmp_path / "cal.zarr"
    capsys.readouterr()
    assert main(_args(rendered, out, "--from", str(tmp_path / "moved*.tif"))) == 2
    line = _refusal(capsys)
    assert "plane registration residual" in line
    assert "is above 30 nm" in line
    assert "likely cause" in line
    res = float(line.split("plane registration residual ")[1].split(" nm")[0])
    assert 35.0 < res < 60.0  # 1/3 px spread over 24 beads: about 47 nm
    assert not out.exists()

    # plane 1 without beads (a blocked splitter half): too few matched beads
    blank = rendered.raw[:1].copy()
    blank[..., W:] = np.random.default_rng(0).poisson(100, blank[..., W:].shape)
    tifffile.imwrite(tmp_path / "blank.tif", blank[0])
    assert main(_args(rendered, out, "--from", str(tmp_path / "blank.tif"))) == 2
    line = _refusal(capsys)
    assert "matched at most" in line
    assert "need 5" in line
    assert not out.exists()


def test_info_and_reuse_of_an_imported_calibration(
    rendered: Rendered,
    field_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from axialtrack.model import load_calibration

    out = tmp_path / "cal.zarr"
    glob = str(field_files / "beads_field*.tif")
    assert main(_args(rendered, out, "--from", glob)) == 0
    # a calibration run store of its own: frames (plane 1 un-mirrored), stage Z,
    # fields and the rig the import was told or found
    run = open_run(out)
    assert run.kind == "calibration"
    assert run.n_frames == N_FIELDS * N_Z
    assert run.frame_meta["position_index"].tolist() == [
        f for f in range(N_FIELDS) for _ in range(N_Z)
    ]
    np.testing.assert_allclose(
        run.frame_meta["stage_z_um"].to_numpy()[:N_Z], rendered.stage_z_um
    )
    np.testing.assert_array_equal(run.frames[N_Z, 0], rendered.raw[1, 0, :, :W])
    np.testing.assert_array_equal(
        run.frames[N_Z, 1], rendered.raw[1, 0, :, W:][:, ::-1]
    )
    assert run.attrs["splitter"]["mirror"] == "horizontal"
    assert run.attrs["acquisition"]["source"] == "import"
    data = load_calibration(out)
    assert data.pixel_size_um == pytest.approx(PIXEL_UM)
    assert data.plane_offset_um == pytest.approx(DELTA_UM)
    assert data.layout == "side-by-side"
    assert data.plane_shape == (64, 64)

    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps at 80 columns
    n = N_FIELDS * BEADS_PER_FIELD
    assert "Kind calibration" in text
    assert f"Beads {n} accepted of {n} found; rejected: none rejected" in text
    reg = text.split("Registration ")[1].split(" Reference Z")[0]
    assert "(bound 30 nm)" in reg
    assert f"over {n} beads" in reg
    assert reg.endswith("plane-1 mirror horizontal (asked: auto)")
    res = float(reg.split("residual ")[1].split(" nm")[0])
    assert res < 10.0
    assert "Reference Z msd (asked: auto)" in text

    # analyzed again from the store: its recorded mirror is checked and kept
    capsys.readouterr()
    assert main(["calibrate", "--from", str(out), "--no-psf-fit"]) == 0
    qc = _qc(out)
    assert qc["registration"]["mirror"] == "horizontal"
    assert qc["registration"]["mirror_requested"] == "horizontal"
    assert qc["n_accepted"] == n

    # two run stores: joined, so the result needs an --out of its own
    import shutil

    shutil.copytree(out, tmp_path / "cal2.zarr")
    capsys.readouterr()
    assert (
        main(
            [
                "calibrate",
                "--from",
                str(out),
                "--from",
                str(tmp_path / "cal2.zarr"),
                "--no-psf-fit",
            ]
        )
        == 2
    )
    assert "--out is required with --from an image file or several sources" in (
        capsys.readouterr().out
    )


def test_info_on_a_qc_only_store(
    rendered: Rendered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fractional pixel values (a background-subtracted stack) cannot be run
    # store frames: the QC and examples are written, and info shows them
    path = tmp_path / "float.npy"
    np.save(path, rendered.raw[0].astype(np.float32) + 0.25)
    out = tmp_path / "cal.zarr"
    assert main(_args(rendered, out, "--from", str(path))) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "quality control only: no frames stored" in text
    assert f"{BEADS_PER_FIELD} accepted of {BEADS_PER_FIELD} found" in text
    assert "plane-1 mirror horizontal" in text


def test_layout_found_from_the_beads(
    rendered: Rendered, field_files: Path, tmp_path: Path
) -> None:
    kw: dict[str, Any] = {
        "z_step_um": STEP_UM,
        "plane_offset_um": DELTA_UM,
        "pixel_size_um": PIXEL_UM,
    }
    st = load_stacks(str(field_files / "beads_field*.tif"), **kw)
    assert st.meta["layout"] == "side-by-side"
    scores = st.meta["layout_scores"]
    assert scores["side-by-side"] > 1.3 * scores["top-bottom"]
    # the same planes one above the other
    tb = np.concatenate([rendered.raw[..., :W], rendered.raw[..., W:]], axis=-2)
    tifffile.imwrite(tmp_path / "tb.tif", tb)
    st = load_stacks(tmp_path / "tb.tif", **kw)
    assert st.meta["layout"] == "top-bottom"
    np.testing.assert_array_equal(st.frames[:, :, 0], rendered.raw[..., :W])
    # halves that show different beads: no layout, refused with the scores
    other = render(N_FIELDS, mirror="none", seed=5).raw
    mixed = np.concatenate([rendered.raw[..., :W], other[..., :W]], axis=-1)
    tifffile.imwrite(tmp_path / "mixed.tif", mixed)
    with pytest.raises(
        StackImportError,
        match=r"mixed.tif: the layout of .* is unknown: .*cross-correlation peaks "
        r"side-by-side 0\.\d+, "
        r"top-bottom 0\.\d+.*Fix: pass layout=",
    ):
        load_stacks(tmp_path / "mixed.tif", **kw)


def test_overwrite_with_a_stack_that_cannot_be_stored_keeps_the_old_run(
    rendered: Rendered,
    field_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--overwrite of a calibration store by a stack whose frames cannot be
    stored (fractional values): refused, the old run left whole, not its old
    frames under the new stack's quality control."""
    out = tmp_path / "cal.zarr"
    assert (
        main(_args(rendered, out, "--from", str(field_files / "beads_field0.tif"))) == 0
    )
    before = _qc(out)
    n_before = open_run(out).n_frames
    path = tmp_path / "float.npy"
    np.save(path, rendered.raw[1].astype(np.float32) + 0.25)
    capsys.readouterr()
    assert main(_args(rendered, out, "--from", str(path), "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "left as it was" in err
    assert open_run(out).n_frames == n_before
    assert _qc(out) == before


def test_evaluate_an_imported_calibration_without_truth(
    rendered: Rendered,
    field_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``evaluate`` on a ``calibrate --from`` store: bias, precision and RMSE per
    bin against the stage labels of the held-out beads, plots, and the reason
    why no CRLB is shown."""
    import json

    from axialtrack.model._evaluate import NO_CRLB_IMPORTED

    cal = tmp_path / "cal.zarr"
    assert main(_args(rendered, cal, "--from", str(field_files / "*.tif"))) == 0
    model = tmp_path / "m.axialmodel"
    train = ["train", str(cal), "--out", str(model), "--steps", "150"]
    assert main([*train, "--no-progress"]) == 0
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["evaluate", str(model), str(cal), "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(true dz from labels)" in text
    assert "No CRLB column: this calibration has no simulated truth" in text
    assert "CRLB (nm)" not in text
    res = json.loads((out / "eval.json").read_text())
    s = res["summary"]
    assert s["reference"] == "labels"
    assert s["crlb_note"] == NO_CRLB_IMPORTED
    assert "crlb" not in s
    assert "median_ratio" not in s
    # 3 test beads, each with an example at 20 of its 21 steps (0.1 um apart)
    assert s["n_beads"] == 3
    assert s["n"] == 3 * (N_Z - 1)
    assert 5.0 < s["rmse_nm"] < 100.0
    assert abs(s["bias_nm"]) < 50.0
    bins = res["bins"]
    assert len(bins) == 20  # 0.1 um bins over +-1.0 um
    assert sum(b["n"] for b in bins) == 3 * (N_Z - 1)
    for b in bins:
        assert set(b) == {
            "dz_lo_um",
            "dz_hi_um",
            "dz_center_um",
            "n",
            "bias_nm",
            "precision_nm",
            "rmse_nm",
        }
        if b["n"] > 1:
            # RMSE^2 = bias^2 + the (population) variance of the errors
            var = b["precision_nm"] ** 2 * (b["n"] - 1) / b["n"]
            assert b["rmse_nm"] ** 2 == pytest.approx(b["bias_nm"] ** 2 + var)
    for name in ("pred_vs_true.png", "error_hist.png", "precision.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(png) > 5000
    # --no-crlb says so instead
    capsys.readouterr()
    assert main(["evaluate", str(model), str(cal), "--no-crlb"]) == 0
    assert "No CRLB column: not asked for (--no-crlb)" in capsys.readouterr().out

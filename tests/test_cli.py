from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from axialtrack.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_a_dual_plane_z_scan(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--zscan", "--out", str(out), "--dz", "-0.6", "-0.3", "0", "0.3"])
        == 0
    )
    data = tifffile.imread(out / "dualplane_zscan.ome.tif")
    assert data.shape == (4, 2, 256, 256)
    assert data.dtype == np.uint16
    # the simulated beads lie on the coverslip, in focus near stage Z 50 um: as the
    # stage rises from 49.4 um, plane 1 (focused deeper) loses to plane 0
    peak = data.reshape(4, 2, -1).max(axis=2).astype(float)
    ratio = peak[:, 1] / peak[:, 0]
    assert ratio[0] > 1.5
    # past the crossing both planes are defocused and the ratio plateaus, so only
    # the approach to the crossing is strictly monotonic
    assert np.all(np.diff(ratio[:3]) < 0)
    assert np.all(ratio[2:] < 1.0)


def test_console_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "axialtrack", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "demo" in proc.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    i = readme.index("<!-- test-command -->")
    assert readme[i + 1].startswith("```")
    assert "pytest" in readme[i + 2]
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    from axialtrack.cli import main

    assert main(["calibrate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "scan +-Z range around focus (um) (default: 1.5)" in text
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.001)" in text  # --lr
    assert "(default: 64)" in text  # --batch-size
    assert "(default: None)" not in text

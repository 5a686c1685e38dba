"""Loading hardware configs: the simulated rig, errors, real-rig templates."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pymmcore_plus import DeviceType
from pymmcore_plus.experimental.unicore import UniMMCore

from axialtrack.geometry import SplitterGeometry
from axialtrack.rig import (
    DEFAULT_CONFIG,
    RigConfigError,
    RigCore,
    config_dir,
    list_configs,
    load_rig,
    new_core,
    parse_config,
    resolve_config,
    splitter_geometry,
)

SIM = config_dir() / DEFAULT_CONFIG
TEMPLATES = ["pi-asi-hamamatsu-dualplane.cfg", "pi-asi-hamamatsu-twocam.cfg"]


def _write_sim_variant(tmp_path: Path, replace: dict[str, str]) -> Path:
    """The simulated-rig config with some lines replaced; returns its path."""
    text = SIM.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "rig.cfg"
    path.write_text(text)
    return path


def _line_of(path: Path, text: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip() == text:
            return i
    raise AssertionError(f"{text!r} not in {path}")


def _assert_names(err: RigConfigError, path: Path, line: int | None) -> None:
    msg = str(err)
    assert str(path) in msg
    if line is not None:
        assert err.line == line
        assert f"line {line}:" in msg
    assert "\nFix: " in msg
    assert err.fix


# ------------------------------------------------------------------- default
def test_default_rig_loads(core: UniMMCore) -> None:
    assert isinstance(core, RigCore)
    assert core.getCameraDevice() == "Camera"
    assert core.getFocusDevice() == "Z"
    assert core.getXYStageDevice() == "XY"
    assert core.getShutterDevice() == "Light"
    assert core.getAutoShutter()
    assert core.getPixelSizeUm() == pytest.approx(6.5 / 60, abs=1e-6)
    assert core.getPixelSizeUm(True) == pytest.approx(6.5 / 60, abs=1e-6)
    assert core.getCurrentPixelSizeConfig() == "Res60x"
    assert splitter_geometry(core) == SplitterGeometry(plane_offset_um=0.5)
    assert core.getPosition() == pytest.approx(50.0, abs=0.02)
    for label in ("Camera", "Z", "XY", "Light", "Splitter"):
        assert core.isPyDevice(label)


def test_shipped_configs_are_found() -> None:
    names = {p.name for p in list_configs()}
    assert {DEFAULT_CONFIG, *TEMPLATES} <= names
    assert resolve_config(None) == SIM
    assert resolve_config("sim-dualplane") == SIM
    assert resolve_config(DEFAULT_CONFIG) == SIM


def test_reload_into_the_same_core(tmp_path: Path) -> None:
    core = load_rig()
    core.setProperty("Splitter", "PlaneOffsetUm", 0.25)
    path = _write_sim_variant(
        tmp_path,
        {"Splitter,PlaneOffsetUm,0.5": "Splitter,PlaneOffsetUm,0.75"},
    )
    assert load_rig(path, core=core) is core
    assert splitter_geometry(core).plane_offset_um == 0.75
    core.snapImage()
    core.unloadAllDevices()


def test_roles_filled_when_the_config_has_none(tmp_path: Path) -> None:
    text = "\n".join(
        line
        for line in SIM.read_text().splitlines()
        if not line.startswith("#py Property,Core,")
    )
    path = tmp_path / "noroles.cfg"
    path.write_text(text)
    core = load_rig(path)
    assert core.getCameraDevice() == "Camera"
    assert core.getFocusDevice() == "Z"
    assert core.getXYStageDevice() == "XY"
    assert core.getShutterDevice() == "Light"
    core.unloadAllDevices()


def test_no_micromanager_installation_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        new_core()
    assert "compatible Micro-Manager installation" not in caplog.text


# -------------------------------------------------------------------- errors
def test_missing_file() -> None:
    path = Path("/nonexistent/rig.cfg")
    with pytest.raises(RigConfigError, match="not found") as exc:
        load_rig(path)
    _assert_names(exc.value, path, None)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match="folder") as exc:
        load_rig(tmp_path)
    _assert_names(exc.value, tmp_path, None)
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(RigConfigError, match="not a text file") as exc:
        load_rig(binary)
    _assert_names(exc.value, binary, None)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (  # Python module that does not exist
            "#py pyDevice,XY,axialtrack.devices,SimXYStage",
            "#py pyDevice,XY,axialtrack.nosuchmodule,SimXYStage",
            "cannot be imported",
        ),
        (  # class that does not exist (the message lists the available ones)
            "#py pyDevice,XY,axialtrack.devices,SimXYStage",
            "#py pyDevice,XY,axialtrack.devices,SimXYStag",
            "(?s)has no class 'SimXYStag'.*SimXYStage",
        ),
        (  # property that does not exist
            "#py Property,Z,SettleTimeMs,5",
            "#py Property,Z,SettleTime,5",
            "(?s)no property 'SettleTime'.*SettleTimeMs",
        ),
        (  # value out of range
            "#py Property,Z,SettleTimeMs,5",
            "#py Property,Z,SettleTimeMs,-5",
            "not valid for Z.SettleTimeMs",
        ),
        (  # value the device refuses
            "#py Property,Splitter,Layout,side-by-side",
            "#py Property,Splitter,Layout,diagonal",
            "(?s)not valid for Splitter.Layout.*side-by-side",
        ),
        (  # label never loaded
            "#py Property,Camera,Seed,0",
            "#py Property,Camra,Seed,0",
            "'Camra' is not loaded",
        ),
        (  # role naming a device of the wrong type
            "#py Property,Core,Focus,Z",
            "#py Property,Core,Focus,XY",
            "Focus role needs a StageDevice",
        ),
        (  # unknown command
            "Property,Core,AutoShutter,1",
            "Propery,Core,AutoShutter,1",
            "unknown command 'Propery'",
        ),
        (  # wrong number of fields
            "#py Property,Z,SettleTimeMs,5",
            "#py Property,Z,SettleTimeMs,5,6",
            "Property takes 2 or 3 fields",
        ),
        (  # the prefix must be exactly '#py '
            "#py pyDevice,Z,axialtrack.devices,SimZPiezo",
            "# py pyDevice,Z,axialtrack.devices,SimZPiezo",
            "without the exact '#py ' prefix",
        ),
        (  # pixel-size preset keyed on a Python-device property never resolves
            "ConfigPixelSize,Res60x,Core,ImageProcessor,",
            "#py ConfigPixelSize,Res60x,Splitter,Layout,side-by-side",
            "Python device 'Splitter'",
        ),
        (
            "#py Property,Z,SettleTimeMs,5",
            "#py Property, Z,SettleTimeMs,5",
            "spaces",
        ),
    ],
)
def test_bad_config_names_file_line_and_fix(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = _write_sim_variant(tmp_path, {old: new})
    with pytest.raises(RigConfigError, match=message) as exc:
        load_rig(path)
    _assert_names(exc.value, path, _line_of(path, new))


def test_error_raised_by_the_core_names_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a third-party device is only validated statically; its setter refuses the
    # value when the core runs the line
    (tmp_path / "picky_devices.py").write_text(
        "from pymmcore_plus.experimental.unicore import GenericDevice, pymm_property\n"
        "class Picky(GenericDevice):\n"
        "    @pymm_property\n"
        "    def mode(self) -> str:\n"
        "        return 'a'\n"
        "    @mode.setter\n"
        "    def mode(self, value: str) -> None:\n"
        "        raise ValueError(f'mode {value!r} needs firmware 2')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = "#py Property,Picky,mode,b"
    path = _write_sim_variant(
        tmp_path,
        {
            "Property,Core,AutoShutter,1": (
                "Property,Core,AutoShutter,1\n"
                "#py pyDevice,Picky,picky_devices,Picky\n"
                "Property,Core,Initialize,1\n"
                f"{bad}"
            )
        },
    )
    with pytest.raises(RigConfigError, match="firmware 2") as exc:
        load_rig(path)
    _assert_names(exc.value, path, _line_of(path, bad))


def test_device_that_fails_to_initialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flaky_devices.py").write_text(
        "from pymmcore_plus.experimental.unicore import GenericDevice\n"
        "class Flaky(GenericDevice):\n"
        "    def initialize(self):\n"
        "        raise OSError('no answer on COM7')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    line = "#py pyDevice,Flaky,flaky_devices,Flaky"
    path = _write_sim_variant(
        tmp_path,
        {
            "#py pyDevice,Splitter,axialtrack.devices,DualPlaneSplitter": (
                f"#py pyDevice,Splitter,axialtrack.devices,DualPlaneSplitter\n{line}"
            )
        },
    )
    with pytest.raises(RigConfigError, match="COM7") as exc:
        load_rig(path)
    _assert_names(exc.value, path, _line_of(path, line))


# ---------------------------------------------------------------- templates
@pytest.mark.parametrize("name", TEMPLATES)
def test_real_rig_templates(name: str) -> None:
    path = config_dir() / name
    lines = parse_config(path)
    devices = {ln.args[0]: ln.args[1:] for ln in lines if ln.command == "Device"}
    assert devices["ZPiezo"] == ("PI_GCS_2", "PIZStage")
    assert devices["PI_E709"] == ("PI_GCS_2", "E-709")
    assert devices["XY"] == ("ASITiger", "XYStage:XY:31")
    assert ("HamamatsuHam", "HamamatsuHam_DCAM") in devices.values()
    py = {ln.args[0]: ln.args[1:] for ln in lines if ln.command == "pyDevice"}
    assert py == {"Splitter": ("axialtrack.devices", "DualPlaneSplitter")}
    if "twocam" in name:
        assert devices["Multi Camera"] == ("Utilities", "Multi Camera")
    # no Micro-Manager adapters here: the first C++ device line fails clearly
    first = next(ln for ln in lines if ln.command == "Device")
    with pytest.raises(RigConfigError, match="adapter 'SerialManager' is not") as exc:
        load_rig(path)
    _assert_names(exc.value, path, first.lineno)
    assert "mm_path" in exc.value.fix


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_splitter_section_loads(name: str, tmp_path: Path) -> None:
    """The Python part of a template (the splitter) loads on its own."""
    lines = [
        line
        for line in (config_dir() / name).read_text().splitlines()
        if line.startswith("#py ")
    ]
    path = tmp_path / "splitter.cfg"
    path.write_text("\n".join(["Property,Core,Initialize,1", *lines]))
    core = load_rig(path)
    geo = splitter_geometry(core)
    assert geo.layout == ("two-cameras" if "twocam" in name else "side-by-side")
    assert core.getLoadedDevicesOfType(DeviceType.Camera) == ()
    core.unloadAllDevices()


def test_splitter_geometry_needs_a_splitter(tmp_path: Path) -> None:
    path = tmp_path / "z.cfg"
    path.write_text(
        "#py pyDevice,Z,axialtrack.devices,SimZPiezo\nProperty,Core,Initialize,1\n"
    )
    core = load_rig(path)
    with pytest.raises(LookupError, match=re.escape("#py pyDevice,Splitter")):
        splitter_geometry(core)
    core.unloadAllDevices()

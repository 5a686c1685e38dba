"""The model bundle: ``<name>.axialmodel/`` with model.json, weights.pt, model.onnx."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import pickle
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from axialtrack._json import jsonable
from axialtrack.errors import AxialtrackError
from axialtrack.geometry import Z_CONVENTION

from .config import ModelConfig

# torch is imported where the network is needed, not here: reading a bundle for
# onnxruntime (the live path on a CPU) then never imports it (about 0.8 s)
if TYPE_CHECKING:
    from axialtrack.optics import SplinePSFFit
    from axialtrack.optics.fit import PSFFit
    from axialtrack.pipeline.config import CameraCalibration

    from ._data import CalibrationData
    from .network import Network

__all__ = [
    "BUNDLE_SUFFIX",
    "FORMAT_VERSION",
    "RIG_FIELDS",
    "Bundle",
    "BundleError",
    "check_onnx_input",
    "export_onnx",
    "load_bundle",
    "missing_rig_fields",
    "save_bundle",
    "verify_onnx",
]

#: Version of the bundle format this code writes and reads.
FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".axialmodel"
ONNX_OPSET = 17
#: Maximum |onnx - torch| accepted at save time.
PARITY_TOL = 1e-4
#: Relative tolerance of the rig checks in :func:`load_bundle`.
RIG_RTOL = 0.01


class BundleError(AxialtrackError, ValueError):
    """A model bundle is missing, corrupted, of another format, or for another rig."""


#: What a bundle records of the rig it was calibrated on, each a ``model.json``
#: entry, with what it is: :func:`load_bundle` refuses a bundle without one.
RIG_FIELDS: dict[str, str] = {
    "pixel_size_um": "the pixel size in the sample (um)",
    "plane_offset_um": "the plane offset delta (um)",
    "layout": "the splitter layout",
    "mirror": "the flip of plane 1 on the sensor",
    "registration": "the plane-0 -> plane-1 registration (affine, px)",
    "camera": "the camera model (offset, gain, read noise, QE, bit depth)",
    "crop_size": "the crop size (px)",
    "plane_shape": "the plane size (px) of the calibration",
    "z_convention": "what z_um and dz_um mean",
}


def _rig_value_problem(name: str, value: Any) -> str | None:
    """Why a ``model.json`` rig entry is unusable (``None`` if it is fine)."""
    if value is None:
        return "is missing"
    try:
        if name in ("pixel_size_um", "plane_offset_um"):
            v = float(value)
            if not np.isfinite(v) or (name == "pixel_size_um" and v <= 0):
                return f"is {value!r}, not a usable number"
        elif name in ("crop_size",):
            int(value)
        elif name == "plane_shape":
            if len(value) != 2 or min(int(v) for v in value) < 1:
                return f"is {value!r}, not [height, width]"
        elif name == "registration":
            a = np.asarray(value.get("affine"), dtype=float)
            if a.size != 6 or not np.all(np.isfinite(a)):
                return "has no finite 2 x 3 affine"
        elif name == "camera":
            from axialtrack.pipeline.config import CameraCalibration

            CameraCalibration.model_validate(value)
        elif not isinstance(value, str) or not value:
            return f"is {value!r}, not a name"
    except (TypeError, ValueError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:200]
        return f"is invalid ({first})"
    return None


def missing_rig_fields(meta: Mapping[str, Any]) -> list[str]:
    """The :data:`RIG_FIELDS` that ``meta`` (a ``model.json``) lacks or has
    unusable, each as ``name (what it is) problem``."""
    out = []
    for name, what in RIG_FIELDS.items():
        why = _rig_value_problem(name, meta.get(name))
        if why is not None:
            out.append(f"{name} ({what}) {why}")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _example_inputs(cfg: ModelConfig, n: int, seed: int = 0) -> tuple[Any, ...]:
    """Plausible inputs: a blob on a background, varied per example."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s = cfg.crop_size
    yy, xx = torch.meshgrid(
        torch.arange(s) - s // 2, torch.arange(s) - s // 2, indexing="ij"
    )
    w = 1.0 + 2.0 * torch.rand(n, 2, 1, 1, generator=g)
    blob = (
        torch.exp(-(xx**2 + yy**2) / (2 * w**2))
        * 300
        * torch.rand(n, 2, 1, 1, generator=g)
    )
    img = 100 + blob + 5 * torch.randn(n, 2, s, s, generator=g)
    xy = 2 * torch.rand(n, 2, generator=g) - 1
    return (img.float(), xy.float()) if cfg.field_branch else (img.float(),)


def export_onnx(model: Network, path: str | Path) -> Path:
    """Export ``model`` to a single ONNX file (opset 17, dynamic batch).

    Inputs ``image`` ``(batch, 2, S, S)`` (and ``xy`` ``(batch, 2)`` with the
    field branch); output ``output`` ``(batch, K)``.
    """
    path = Path(path)
    cfg = model.config
    model = model.cpu().eval()
    args = _example_inputs(cfg, 4)
    names = cfg.input_names
    dyn = {n: {0: "batch"} for n in [*names, "output"]}
    import torch

    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=names,
        output_names=["output"],
        dynamic_axes=dyn,
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    return path


def verify_onnx(
    model: Network, onnx_path: str | Path, *, n: int = 37, tol: float = PARITY_TOL
) -> float:
    """Max |onnxruntime - torch| on random inputs; raises :class:`BundleError` > tol."""
    import onnxruntime as ort
    import torch

    cfg = model.config
    args = _example_inputs(cfg, n, seed=1)
    model = model.cpu().eval()
    with torch.no_grad():
        ref = model(*args).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    feeds = {k: a.numpy() for k, a in zip(cfg.input_names, args, strict=True)}
    got = sess.run(None, feeds)[0]
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= tol:
        raise BundleError(
            f"ONNX export does not match torch: max abs difference {diff:.3g} > {tol}"
        )
    return diff


@dataclass(eq=False)
class Bundle:
    """A loaded model bundle.

    Attributes
    ----------
    path
        The bundle directory.
    meta
        Contents of ``model.json``.
    model
        The network with its weights, CPU, eval mode: built (and torch
        imported) on first use, so a bundle read only for its ONNX model (the
        onnxruntime and TensorRT engines) never builds it. ``weights.pt`` was
        checked against ``model.json``'s sha256 when the bundle was loaded.
    """

    path: Path
    meta: dict[str, Any]
    _model: Network | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> Network:
        """The network with its weights (CPU, eval mode)."""
        with self._lock:
            if self._model is None:
                self._model = _build_model(self.path, self.meta, self.config)
            return self._model

    @cached_property
    def config(self) -> ModelConfig:
        """The architecture."""
        return ModelConfig.model_validate(self.meta["config"])

    @property
    def crop_size(self) -> int:
        """Crop size (px)."""
        return int(self.meta["crop_size"])

    @property
    def pixel_size_um(self) -> float | None:
        """Pixel size of the calibration rig (um)."""
        v = self.meta.get("pixel_size_um")
        return None if v is None else float(v)

    @property
    def plane_offset_um(self) -> float | None:
        """Plane offset (delta) of the calibration rig (um)."""
        v = self.meta.get("plane_offset_um")
        return None if v is None else float(v)

    @property
    def layout(self) -> str | None:
        """Splitter layout of the calibration rig."""
        v = self.meta.get("layout")
        return None if v is None else str(v)

    @property
    def mirror(self) -> str | None:
        """Flip of plane 1 on the sensor of the calibration rig."""
        v = self.meta.get("mirror")
        return None if v is None else str(v)

    @cached_property
    def camera(self) -> CameraCalibration:
        """The camera model of the calibration (``model.json`` ``"camera"``)."""
        from axialtrack.pipeline.config import CameraCalibration

        return CameraCalibration.model_validate(self.meta["camera"])

    @property
    def registration_affine(self) -> np.ndarray | None:
        """Plane-0 -> plane-1 affine ``(2, 3)`` (px) of the calibration, if known."""
        reg = self.meta.get("registration") or {}
        a = reg.get("affine")
        return None if a is None else np.asarray(a, dtype=float).reshape(2, 3)

    @property
    def plane_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of one plane of the calibration rig (px), if known."""
        v = self.meta.get("plane_shape")
        return None if v is None else (int(v[0]), int(v[1]))

    @property
    def z_range_um(self) -> tuple[float, float] | None:
        """``(min, max)`` of the training labels ``dz_um``: the calibrated range."""
        v = self.meta.get("z_range_um")
        return None if v is None else (float(v[0]), float(v[1]))

    @property
    def psf_fit(self) -> PSFFit | SplinePSFFit | None:
        """The fitted PSF of the calibration the bundle was trained on, if any."""
        meta = self.meta.get("psf_fit")
        if meta is None:
            return None
        from axialtrack.optics import load_psf_fit

        return load_psf_fit(meta)

    @property
    def onnx_path(self) -> Path:
        """Path of ``model.onnx``."""
        return self.path / "model.onnx"

    @property
    def output_names(self) -> list[str]:
        """Output columns."""
        return list(self.meta["outputs"])

    def predict(
        self,
        images: np.ndarray,
        xy: np.ndarray | None = None,
        *,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Outputs ``(N, K)`` for raw crop pairs ``(N, 2, S, S)`` (torch, CPU)."""
        from .network import predict

        return predict(self.model, images, xy, batch_size=batch_size)


class Trained(Protocol):
    """What :func:`save_bundle` reads of a :class:`~axialtrack.model.TrainResult`
    (a protocol, so that this module does not import the training)."""

    model: Network
    data: CalibrationData
    loss: str
    seed: int
    batch_size: int
    lr: float
    settings: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    train_config: Any


def save_bundle(
    result: Trained | Network,
    path: str | Path,
    *,
    overwrite: bool = False,
    pixel_size_um: float | None = None,
    plane_offset_um: float | None = None,
    layout: str | None = None,
    mirror: str | None = None,
    camera: Any = None,
    registration_affine: Any = None,
    plane_shape: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model bundle directory and verify its ONNX export.

    The bundle records the rig it was calibrated on (:data:`RIG_FIELDS`):
    pixel size, plane offset, layout, mirror, registration, camera, crop size,
    plane shape and the Z convention, each from the keyword arguments, else
    from ``result``'s calibration. A bundle that would lack one is not
    written (:class:`BundleError` naming it), since :func:`load_bundle`
    would refuse it.

    Parameters
    ----------
    result
        A :class:`~axialtrack.model.TrainResult` (rig values, metrics and
        provenance, its :class:`~axialtrack.model.TrainConfig` included, are
        taken from it) or a bare :class:`AxialNet` or
        :class:`AxialEnsemble` (recorded as ``ensemble_members`` in
        ``model.json``; ``weights.pt`` holds every member).
    path
        Bundle directory; ``.axialmodel`` is appended when missing.
    overwrite
        Replace an existing bundle.
    pixel_size_um, plane_offset_um, layout, mirror, camera
        Rig values; override those of ``result``. ``camera``: a
        :class:`~axialtrack.pipeline.config.CameraCalibration` or its fields.
    registration_affine, plane_shape
        The plane-0 -> plane-1 affine ``(2, 3)`` (px) and ``(H, W)`` of a plane;
        override those of ``result``.
    extra
        More JSON-serializable entries for ``model.json``.

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    import torch

    path = Path(path).expanduser()
    if path.suffix != BUNDLE_SUFFIX:
        path = path.with_name(path.name + BUNDLE_SUFFIX)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        shutil.rmtree(path)
    trained = None if isinstance(result, torch.nn.Module) else result
    model = (trained.model if trained is not None else result).cpu().eval()  # type: ignore[union-attr]
    meta = _base_meta(model)
    if trained is not None:
        _record_training(meta, trained)
    rig = {
        "pixel_size_um": pixel_size_um,
        "plane_offset_um": plane_offset_um,
        "layout": layout,
        "mirror": mirror,
    }
    meta.update({k: v for k, v in rig.items() if v is not None})
    if camera is not None:
        meta["camera"] = (
            camera.model_dump() if hasattr(camera, "model_dump") else dict(camera)
        )
    if registration_affine is not None:
        meta["registration"] = {
            "affine": np.asarray(registration_affine, float).reshape(2, 3).tolist(),
            "direction": "plane0_to_plane1",
        }
    if plane_shape is not None:
        meta["plane_shape"] = [int(v) for v in plane_shape]
    if extra:
        meta.update(extra)
    missing = missing_rig_fields(meta)
    if missing:
        raise BundleError(
            f"cannot write the bundle {path}: it would not record the rig: "
            f"{'; '.join(missing)}. Train from a calibration run that records it "
            "(`axialtrack calibrate` writes it), or give it to save_bundle"
        )
    _write_bundle(path, model, meta)
    return path


def _base_meta(model: Network) -> dict[str, Any]:
    """``model.json`` of a bare network: no rig, no training."""
    import torch

    from axialtrack import __version__

    from .network import AxialEnsemble

    cfg = model.config
    pixel_size_um = plane_offset_um = layout = mirror = None
    meta: dict[str, Any] = {
        "format": "axialtrack-model",
        "format_version": FORMAT_VERSION,
        "crop_size": cfg.crop_size,
        "pixel_size_um": pixel_size_um,
        "plane_offset_um": plane_offset_um,
        "layout": layout,
        "z_range_um": None,
        "ensemble_members": (
            len(model.members) if isinstance(model, AxialEnsemble) else None
        ),
        "inputs": {
            "image": ["batch", 2, cfg.crop_size, cfg.crop_size],
            **({"xy": ["batch", 2]} if cfg.field_branch else {}),
        },
        "outputs": cfg.output_names,
        "normalization": {
            "kind": "joint-pair",
            "inside_network": True,
            "background": f"{cfg.background_percentile:g}th percentile of the "
            "pooled pixels of both planes, per example",
            "scale": "divided by the joint background-subtracted sum (positive "
            "part), times the number of pixels",
            "input": "raw counts, plane 0 then plane 1, crops centred on the "
            "rounded plane-0 position (plane 1 at the registered position)",
            "xy": "plane-0 position normalized to [-1, 1]: 2 x / (W - 1) - 1",
        },
        "dz_convention": "dz_um = ref_z_um - stage_z_um; z_um = stage_z_um + dz_um",
        "z_convention": Z_CONVENTION,
        "mirror": mirror,
        "camera": None,
        "registration": None,
        "plane_shape": None,
        "config": cfg.model_dump(mode="json"),
        "training": {},
        "provenance": {
            "created": _dt.datetime.now(_dt.UTC).isoformat(),
            "software": f"axialtrack {__version__}",
            "torch": torch.__version__,
        },
    }
    return meta


def _record_training(meta: dict[str, Any], result: Trained) -> None:
    """Rig values, training settings, metrics and provenance of ``result``."""
    from ._data import examples_hash

    d = result.data
    ex = d.examples
    meta["pixel_size_um"] = d.pixel_size_um
    meta["plane_offset_um"] = d.plane_offset_um
    meta["layout"] = d.layout
    meta["mirror"] = d.mirror
    if d.camera is not None:
        meta["camera"] = dict(d.camera)
    if d.z_convention:
        meta["z_convention"] = d.z_convention
    if len(ex):
        meta["z_range_um"] = [float(ex.dz_um.min()), float(ex.dz_um.max())]
    if d.registration_affine is not None:
        meta["registration"] = {
            "affine": np.asarray(d.registration_affine, float).tolist(),
            "direction": "plane0_to_plane1",
        }
    if d.plane_shape is not None:
        meta["plane_shape"] = [int(v) for v in d.plane_shape]
    if d.optics is not None:
        meta["optics"] = d.optics
    config: Any = getattr(result, "train_config", None)
    meta["training"] = {
        "loss": result.loss,
        "seed": result.seed,
        "batch_size": result.batch_size,
        "lr": result.lr,
        **result.settings,
        **(
            {"config": config.model_dump(mode="json")}
            if hasattr(config, "model_dump")
            else {}
        ),
        "metrics": result.metrics,
        "history": result.history,
    }
    meta["provenance"].update(
        {"calibration_run": d.source, "examples_sha256": examples_hash(ex)}
    )
    if d.psf_fit is not None:
        meta["psf_fit"] = d.psf_fit


def _write_bundle(path: Path, model: Network, meta: dict[str, Any]) -> None:
    """Weights, verified ONNX and ``model.json``; nothing left on failure."""
    import torch

    path.mkdir(parents=True)
    try:
        torch.save(model.state_dict(), path / "weights.pt")
        export_onnx(model, path / "model.onnx")
        meta["onnx_parity_max_abs"] = verify_onnx(model, path / "model.onnx")
        meta["onnx_opset"] = ONNX_OPSET
        meta["sha256"] = {
            "weights.pt": _sha256(path / "weights.pt"),
            "model.onnx": _sha256(path / "model.onnx"),
        }
        (path / "model.json").write_text(json.dumps(jsonable(meta), indent=2))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _check_rig(
    name: str, label: str, bundle_value: Any, expected: float | None
) -> None:
    if expected is None:
        return
    if bundle_value is None:
        raise BundleError(
            f"the bundle does not record its {label}; cannot check it against the "
            f"rig's {expected:g}"
        )
    b = float(bundle_value)
    if abs(b - float(expected)) > RIG_RTOL * max(abs(float(expected)), 1e-12):
        raise BundleError(
            f"{label} mismatch: the model was trained for {name}={b:g} but the rig "
            f"in use has {name}={float(expected):g}; recalibrate and train a model "
            "for this rig"
        )


def load_bundle(
    path: str | Path,
    *,
    expect_pixel_size_um: float | None = None,
    expect_plane_offset_um: float | None = None,
    expect_crop_size: int | None = None,
) -> Bundle:
    """Load and check a model bundle.

    Parameters
    ----------
    path
        The ``.axialmodel`` directory.
    expect_pixel_size_um, expect_plane_offset_um, expect_crop_size
        Values of the rig in use; a bundle for another pixel size or plane offset
        (beyond 1 %) or another crop size is refused.

    Raises
    ------
    BundleError
        Missing files, unknown format version, a sha256 that does not match
        ``model.json`` (corrupted or replaced weights or ONNX), a ``model.json``
        that does not record one of :data:`RIG_FIELDS` (the first named), or a
        rig mismatch.
    """
    path = Path(path).expanduser()
    mj = path / "model.json"
    if not path.exists():
        raise BundleError(
            f"the model bundle {path} does not exist (check the path; a bundle is "
            f"the {BUNDLE_SUFFIX} folder `axialtrack train` writes)"
        )
    if not mj.is_file():
        raise BundleError(
            f"{path} is not a model bundle (no model.json; a bundle is the "
            f"{BUNDLE_SUFFIX} folder `axialtrack train` writes)"
        )
    try:
        meta = json.loads(mj.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mj} is not valid JSON: {e}") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: unsupported bundle format version {version!r} (this axialtrack "
            f"reads version {FORMAT_VERSION})"
        )
    hashes = meta.get("sha256", {})
    for name in ("weights.pt", "model.onnx"):
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing")
        want = hashes.get(name)
        got = _sha256(f)
        if want != got:
            raise BundleError(
                f"{path}: {name} is corrupted or was modified (sha256 {got[:12]}... "
                f"does not match the {str(want)[:12]}... recorded in model.json)"
            )
    missing = missing_rig_fields(meta)
    if missing:
        raise BundleError(
            f"{mj} does not record the rig it was calibrated on: {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ". Train the model again with this axialtrack from its calibration "
            "run (`axialtrack train CALIB.zarr`), which records it"
        )
    _check_rig(
        "pixel_size_um", "pixel size", meta.get("pixel_size_um"), expect_pixel_size_um
    )
    _check_rig(
        "plane_offset_um",
        "plane offset",
        meta.get("plane_offset_um"),
        expect_plane_offset_um,
    )
    if expect_crop_size is not None and int(meta["crop_size"]) != int(expect_crop_size):
        raise BundleError(
            f"crop size mismatch: the model was trained for crop_size="
            f"{meta['crop_size']} but the pipeline uses crop_size={expect_crop_size}"
        )
    try:
        cfg = ModelConfig.model_validate(meta["config"])
    except (KeyError, ValueError) as e:
        first = " ".join(str(e).split())
        raise BundleError(f"{mj}: the model configuration is invalid: {first}") from e
    _check_crop_sizes(mj, meta, cfg)
    return Bundle(path=path, meta=meta)


def _check_crop_sizes(mj: Path, meta: dict[str, Any], cfg: ModelConfig) -> None:
    """Refuse a ``model.json`` whose crop sizes disagree with one another
    (``crop_size``, ``config.crop_size``, ``inputs.image``); the ONNX model's
    own input shape is checked where it is loaded (:func:`check_onnx_input`)."""
    sizes: dict[str, Any] = {
        "crop_size": meta.get("crop_size"),
        "config.crop_size": cfg.crop_size,
    }
    image = (meta.get("inputs") or {}).get("image")
    if isinstance(image, list) and len(image) == 4:
        sizes["inputs.image"] = image[2]
        sizes["inputs.image (width)"] = image[3]
    try:
        values = {k: int(v) for k, v in sizes.items()}
    except (TypeError, ValueError):
        raise BundleError(
            f"{mj}: the crop sizes are not integers ({sizes}); the bundle is "
            "damaged: train or copy it again"
        ) from None
    if len(set(values.values())) > 1:
        said = ", ".join(f"{k} {v}" for k, v in values.items())
        raise BundleError(
            f"{mj}: the crop sizes disagree ({said}); the bundle is damaged: train "
            "or copy it again"
        )


def check_onnx_input(bundle: Bundle, shape: Any) -> None:
    """Refuse a bundle whose ONNX ``image`` input is not ``(batch, 2, S, S)``
    with ``S`` the crop size of its ``model.json`` (:class:`BundleError`).

    ``shape``: the input shape the ONNX runtime reports (symbolic dimensions
    as strings or ``None``).
    """
    dims = list(shape)
    want = bundle.crop_size
    got = [d for d in dims[2:] if isinstance(d, int)]
    if len(dims) != 4 or any(d != want for d in got):
        raise BundleError(
            f"{bundle.path}: model.json says crop size {want} but model.onnx takes "
            f"images of shape {dims}; the bundle is damaged: train or copy it again"
        )


def _build_model(path: Path, meta: dict[str, Any], cfg: ModelConfig) -> Network:
    """The network of a bundle with its weights (CPU, eval mode)."""
    import torch

    from .network import AxialEnsemble, AxialNet

    k = meta.get("ensemble_members")
    model: Network = (
        AxialNet(cfg) if not k else AxialEnsemble([AxialNet(cfg) for _ in range(k)])
    )
    not_state = BundleError(
        f"weights.pt of {path} is not a state dict of this network (it holds "
        "something else, e.g. a whole pickled model); the bundle is damaged: "
        "save it again with save_bundle"
    )
    try:
        # weights_only: never run code from the file, whatever it holds
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise not_state from e
    except (RuntimeError, OSError, ValueError, EOFError) as e:
        first = " ".join(str(e).split("\n", 1)[0].split())
        raise BundleError(f"weights.pt of {path} cannot be read: {first}") from e
    if not isinstance(state, Mapping):
        raise not_state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError) as e:
        first = " ".join(str(e).split())
        if len(first) > 300:
            first = first[:300] + "..."
        raise BundleError(
            f"weights.pt of {path} does not load into the network described in "
            f"model.json: {first}"
        ) from e
    model.eval()
    return model

"""A fitted pupil PSF (:class:`PSFFit`): parameters, rendering, storage, CRLB."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ._pupil import PupilPSF
from .params import Optics
from .psf import PSFModel

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike

    from ._splinefit import SplinePSFFit

__all__ = ["PSFFit", "fit_crlb"]


@dataclass
class PSFFit:
    """A fitted PSF: parameters, per-bead results, convergence, rendering.

    Attributes
    ----------
    optics
        Nominal optics the fit started from (pixel size, NA, wavelength, media).
    phase_noll, plane1_noll, amplitude_noll
        Noll indices of the fitted terms.
    zernike
        Plane-0 phase, Noll index -> waves RMS.
    plane1_zernike
        Plane 1's phase relative to plane 0, Noll index -> waves RMS.
    amplitude
        Pupil amplitude terms, Noll index -> coefficient of ``exp(sum c_j Z_j)``.
    depth_um
        Bead depth above the coverslip (fitted or fixed).
    plane_offset_um
        Plane 1's focus offset.
    transmission
        Photons in plane 1 per photon in plane 0.
    plane1_shift_um
        ``(dx, dy)`` shift of plane 1 beyond the registration.
    focus_dz0_um
        Nominal focus (relative to the coverslip) at which the beads' reference Z
        puts them: ``dz = 0`` of the training labels. :meth:`render` uses it.
    crop_size
        Size of the fitted crops.
    beads
        One row per fitted bead: ``bead``, ``x_um``, ``y_um``, ``coverslip_um``,
        ``photons``, ``background0``, ``background1``, ``nll`` (negative
        log-likelihood, shifted Poisson, photoelectrons), ``deviance``,
        ``reduced_deviance`` (per pixel), ``outlier`` (bool), ``used`` (in the
        final fit), ``n_frames``.
    converged
        The optimizer stopped on the tolerance, not the iteration limit.
    n_iter
        L-BFGS iterations.
    time_s
        Wall time of the fit.
    history
        Reduced deviance after each iteration.
    camera
        ``{"offset_adu", "e_per_adu", "read_noise_e"}`` used.
    message
        Why the optimizer stopped.
    selection
        How the calibration chose this model over a spline PSF (held-out
        negative log-likelihoods), when it compared them.
    """

    optics: Optics
    phase_noll: tuple[int, ...]
    plane1_noll: tuple[int, ...]
    amplitude_noll: tuple[int, ...]
    zernike: dict[int, float]
    plane1_zernike: dict[int, float]
    amplitude: dict[int, float]
    depth_um: float
    plane_offset_um: float
    transmission: float
    plane1_shift_um: tuple[float, float]
    focus_dz0_um: float
    crop_size: int
    beads: pd.DataFrame
    converged: bool
    n_iter: int
    time_s: float
    history: list[float] = field(default_factory=list)
    camera: dict[str, float] = field(default_factory=dict)
    message: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    _model: PupilPSF | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ rendering
    def model(self, dtype: torch.dtype = torch.float32) -> PupilPSF:
        """The pupil model (built once per dtype)."""
        if self._model is None or self._model.dtype != dtype:
            self._model = PupilPSF(
                self.optics,
                sorted(set(self.phase_noll) | set(self.plane1_noll)),
                self.amplitude_noll,
                dtype=dtype,
            )
        return self._model

    def _phase_vectors(self, mdl: PupilPSF) -> torch.Tensor:
        """``(2, J)`` phase coefficients of plane 0 and 1 on the model's basis."""
        p0 = [self.zernike.get(j, 0.0) for j in mdl.phase_noll]
        p1 = [
            self.zernike.get(j, 0.0) + self.plane1_zernike.get(j, 0.0)
            for j in mdl.phase_noll
        ]
        return torch.tensor([p0, p1], dtype=mdl.dtype, device=mdl.device)

    def render(
        self,
        xyz_um: ArrayLike | torch.Tensor,
        size: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Both planes' PSFs ``(N, 2, size, size)`` of emitters at ``(x, y, dz)``.

        ``x, y``: offset from the centre of the central pixel (um, plane-0 frame;
        plane 1 adds the fitted shift); ``dz``: ``ref_z - stage_z`` in the
        training labels' convention (um, stage frame): plane 0's focus is
        ``focus_dz0_um - dz``, plane 1's ``delta`` further. Each image is the
        fraction of the plane's own photons per pixel (plane 1's photons are
        ``transmission`` times plane 0's), as :meth:`PSFModel.psf` normalizes.
        Differentiable with respect to ``xyz_um`` when it is a tensor.
        """
        mdl = self.model(dtype)
        s = int(size or self.crop_size)
        xyz = torch.as_tensor(xyz_um, dtype=mdl.dtype, device=mdl.device)
        if xyz.ndim == 1:
            xyz = xyz[None]
        n = xyz.shape[0]
        ph = self._phase_vectors(mdl)
        amp = torch.tensor(
            [self.amplitude.get(j, 0.0) for j in mdl.amplitude_noll],
            dtype=mdl.dtype,
            device=mdl.device,
        )
        depth = torch.tensor(self.depth_um, dtype=mdl.dtype, device=mdl.device)
        sx, sy = self.plane1_shift_um
        out = []
        for p in (0, 1):
            f = self.focus_dz0_um - xyz[:, 2] + p * self.plane_offset_um
            out.append(
                mdl.images(
                    xyz[:, 0] + (sx if p else 0.0),
                    xyz[:, 1] + (sy if p else 0.0),
                    depth,
                    f,
                    ph[p],
                    amp,
                    s,
                )
            )
        return torch.stack(out, dim=1).reshape(n, 2, s, s)

    def bead_model(self, bead: int, stage_z_um: ArrayLike) -> np.ndarray:
        """Expected photoelectrons ``(F, 2, S, S)`` of a fitted bead at stage Z.

        Uses the bead's fitted position, coverslip, photons and backgrounds.
        """
        row = self.beads[self.beads["bead"] == bead].iloc[0]
        z = np.atleast_1d(np.asarray(stage_z_um, float))
        dz = self.focus_dz0_um - (z - float(row["coverslip_um"]))
        sx, sy = self.plane1_shift_um
        mdl = self.model()
        ph = self._phase_vectors(mdl)
        amp = torch.tensor(
            [self.amplitude.get(j, 0.0) for j in mdl.amplitude_noll], dtype=mdl.dtype
        )
        depth = torch.tensor(self.depth_um, dtype=mdl.dtype)
        out = []
        with torch.no_grad():
            for p in (0, 1):
                x = float(row["x_um"]) + (float(row["dx1_um"]) + sx if p else 0.0)
                y = float(row["y_um"]) + (float(row["dy1_um"]) + sy if p else 0.0)
                f = torch.as_tensor(
                    self.focus_dz0_um - dz + p * self.plane_offset_um, dtype=mdl.dtype
                )
                h = mdl.images(
                    torch.full_like(f, x),
                    torch.full_like(f, y),
                    depth,
                    f,
                    ph[p],
                    amp,
                    self.crop_size,
                ).numpy()
                n = float(row["photons"]) * (self.transmission if p else 1.0)
                out.append(n * h + float(row[f"background{p}"]))
        return np.stack(out, axis=1)

    def renderer(self, size: int | None = None) -> Callable[[Any], np.ndarray]:
        """``render`` as a function of ``xyz_um`` only, returning numpy (float64)."""

        def f(xyz_um: Any) -> np.ndarray:
            with torch.no_grad():
                return self.render(xyz_um, size).cpu().numpy().astype(np.float64)

        return f

    def sampled(self, dz_um: ArrayLike, size: int | None = None) -> np.ndarray:
        """``(2, Z, size, size)`` PSF stack of a centred emitter on a ``dz`` grid."""
        dz = np.asarray(dz_um, dtype=float).ravel()
        xyz = np.stack([np.zeros_like(dz), np.zeros_like(dz), dz], axis=1)
        return np.moveaxis(self.renderer(size)(xyz), 1, 0)

    # ------------------------------------------------------------- storage
    def to_json(self) -> dict[str, Any]:
        """JSON-able parameters and per-bead results (without the optics' cache)."""
        b = self.beads
        return {
            "format": 1,
            "model": "pupil",
            "optics": self.optics.model_dump(mode="json"),
            "phase_noll": list(self.phase_noll),
            "plane1_noll": list(self.plane1_noll),
            "amplitude_noll": list(self.amplitude_noll),
            "zernike": {str(k): v for k, v in self.zernike.items()},
            "plane1_zernike": {str(k): v for k, v in self.plane1_zernike.items()},
            "amplitude": {str(k): v for k, v in self.amplitude.items()},
            "depth_um": self.depth_um,
            "plane_offset_um": self.plane_offset_um,
            "transmission": self.transmission,
            "plane1_shift_um": list(self.plane1_shift_um),
            "focus_dz0_um": self.focus_dz0_um,
            "crop_size": self.crop_size,
            "converged": self.converged,
            "n_iter": self.n_iter,
            "time_s": self.time_s,
            "history": list(self.history),
            "camera": dict(self.camera),
            "message": self.message,
            "selection": dict(self.selection),
            "beads": {c: [_jsonable(v) for v in b[c].tolist()] for c in b.columns},
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> PSFFit:
        """Inverse of :meth:`to_json`."""
        if int(meta.get("format", 0)) != 1 or meta.get("model") != "pupil":
            raise ValueError(
                f"unknown fitted PSF format {meta.get('format')!r} / "
                f"{meta.get('model')!r}; this version reads format 1, model 'pupil'"
            )

        def d(key: str) -> dict[int, float]:
            return {int(k): float(v) for k, v in dict(meta[key]).items()}

        return cls(
            optics=Optics.model_validate(meta["optics"]),
            phase_noll=tuple(int(j) for j in meta["phase_noll"]),
            plane1_noll=tuple(int(j) for j in meta["plane1_noll"]),
            amplitude_noll=tuple(int(j) for j in meta["amplitude_noll"]),
            zernike=d("zernike"),
            plane1_zernike=d("plane1_zernike"),
            amplitude=d("amplitude"),
            depth_um=float(meta["depth_um"]),
            plane_offset_um=float(meta["plane_offset_um"]),
            transmission=float(meta["transmission"]),
            plane1_shift_um=(
                float(meta["plane1_shift_um"][0]),
                float(meta["plane1_shift_um"][1]),
            ),
            focus_dz0_um=float(meta["focus_dz0_um"]),
            crop_size=int(meta["crop_size"]),
            beads=pd.DataFrame(meta.get("beads", {})),
            converged=bool(meta["converged"]),
            n_iter=int(meta["n_iter"]),
            time_s=float(meta["time_s"]),
            history=[float(v) for v in meta.get("history", [])],
            camera={k: float(v) for k, v in dict(meta.get("camera", {})).items()},
            message=str(meta.get("message", "")),
            selection=dict(meta.get("selection") or {}),
        )

    def dumps(self) -> str:
        """:meth:`to_json` as a string."""
        return json.dumps(self.to_json())

    @property
    def outliers(self) -> np.ndarray:
        """Bead ids flagged as likelihood outliers."""
        b = self.beads
        return b["bead"].to_numpy()[b["outlier"].to_numpy(bool)]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


# --------------------------------------------------------------------- CRLB
def fit_crlb(
    fit: PSFFit | SplinePSFFit,
    dz_um: ArrayLike,
    *,
    photons: float,
    background: float | Sequence[float],
    read_noise_e: float | None = None,
    roi_size: int | None = None,
) -> dict[str, np.ndarray]:
    """CRLB of x, y and dz from the fitted PSF, per ``dz`` (stage frame).

    As :func:`axialtrack.model.evaluate.crlb_stage_um` does for the nominal
    model: the emitter sits at the fitted depth, plane 0's focus is
    ``focus_dz0_um - dz``, plane 1's ``plane_offset_um`` further with the fitted
    transmission; the derivative is taken with respect to the emitter's depth
    and converted to the stage frame with the slope of the nominal optics'
    ``in_focus_offset`` at that depth.

    Parameters
    ----------
    fit
        The fitted PSF (a spline PSF: :meth:`SplinePSFFit.crlb`, NaN outside
        its ``dz`` range).
    dz_um
        ``(M,)`` ``ref_z - stage_z`` values, um.
    photons
        Photons in plane 0 (photoelectrons).
    background
        Background photoelectrons per pixel, one or one per plane.
    read_noise_e
        Read noise, e- RMS (``None``: Poisson only).
    roi_size
        ROI size (default: the fitted crop size).

    Returns
    -------
    dict
        ``sigma_x_um``, ``sigma_y_um``, ``sigma_z_um`` (stage frame), each
        ``(M,)``.
    """
    import torch.autograd.forward_ad as fwad

    from ._crlb import PSFDerivatives, crlb_from_derivatives

    if not isinstance(fit, PSFFit):  # a spline PSF: its own z axis is dz
        return fit.crlb(
            dz_um, photons=photons, background=background, read_noise_e=read_noise_e
        )

    mdl = fit.model(torch.float64)
    dz = np.atleast_1d(np.asarray(dz_um, float))
    m = dz.size
    s = int(roi_size or fit.crop_size)
    ph = fit._phase_vectors(mdl)
    amp = torch.tensor(
        [fit.amplitude.get(j, 0.0) for j in mdl.amplitude_noll], dtype=torch.float64
    )
    sx, sy = fit.plane1_shift_um
    base = torch.zeros((m, 3), dtype=torch.float64)
    base[:, 2] = fit.depth_um
    hs, ds = [], []
    for p in (0, 1):
        foc = torch.as_tensor(
            fit.focus_dz0_um - dz + p * fit.plane_offset_um, dtype=torch.float64
        )

        def f(v: torch.Tensor, p: int = p, foc: torch.Tensor = foc) -> torch.Tensor:
            return mdl.images(
                v[:, 0] + (sx if p else 0.0),
                v[:, 1] + (sy if p else 0.0),
                v[:, 2],
                foc,
                ph[p],
                amp,
                s,
            )

        der = []
        h = None
        for i in range(3):
            tan = torch.zeros_like(base)
            tan[:, i] = 1.0
            with fwad.dual_level(), warnings.catch_warnings():
                # torch's forward-AD decompositions warn about torch.jit.script
                warnings.filterwarnings(
                    "ignore",
                    message=".*torch.jit.script.* is deprecated",
                    category=DeprecationWarning,
                )
                out = fwad.unpack_dual(f(fwad.make_dual(base, tan)))
            h = out.primal
            assert out.tangent is not None
            der.append(out.tangent.detach().numpy().reshape(m, -1))
        assert h is not None
        hs.append(h.detach().numpy().reshape(m, -1))
        ds.append(np.stack(der, axis=-1))
    derivs = PSFDerivatives(
        depth_um=np.full(m, fit.depth_um),
        focus_um=fit.focus_dz0_um - dz,
        plane_offsets_um=(0.0, fit.plane_offset_um),
        h=np.stack(hs, axis=1),
        dh=np.stack(ds, axis=1),
    )
    res = crlb_from_derivatives(
        derivs,
        photons=photons,
        background=background,
        transmission=fit.transmission,
        read_noise=read_noise_e,
    )
    nominal = PSFModel(fit.optics)
    d = fit.depth_um
    hstep = 0.02
    lo = max(d - hstep, 0.0)
    slope = float(
        (nominal.in_focus_offset(d + hstep) - nominal.in_focus_offset(lo))
        / (d + hstep - lo)
    )
    return {
        "sigma_x_um": np.asarray(res.sigma_x_um),
        "sigma_y_um": np.asarray(res.sigma_y_um),
        "sigma_z_um": np.asarray(res.sigma_z_um) * slope,
    }

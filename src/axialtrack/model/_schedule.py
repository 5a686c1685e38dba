"""The training schedule, the affine recalibration and the training warnings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .network import predict

if TYPE_CHECKING:
    from axialtrack.calibrate.examples import Examples

    from .network import AxialNet, Network


def rmse_nm(model: Network, ex: Examples) -> float:
    if len(ex) == 0:
        return float("nan")
    pred = predict(model, ex.crops, ex.xy_norm)[:, 0]
    return float(np.sqrt(np.mean((pred - ex.dz_um) ** 2)) * 1000)


def fold_affine_recalibration(
    model: AxialNet, va: Examples, dz_max_um: float | None = None
) -> dict[str, Any]:
    """Fit ``label ~ a * pred + c`` on ``va``; fold it into the head's dz row.

    With ``dz_max_um`` only examples with ``|label| <= dz_max_um`` enter the fit.
    Applied only when ``0.5 <= a <= 2`` (a model that tracks dz at all) and at
    least 2 examples are fitted; otherwise the model is left as is and
    ``applied`` is ``False``.
    """
    label = np.asarray(va.dz_um, float)
    keep = np.ones(label.size, bool)
    if dz_max_um is not None:
        keep = np.abs(label) <= dz_max_um + 1e-9
    if keep.sum() < 2:
        return {"scale": 1.0, "offset_um": 0.0, "applied": False, "n": int(keep.sum())}
    pred = predict(model, va.crops[keep], va.xy_norm[keep])[:, 0].astype(float)
    a, c = (float(v) for v in np.polyfit(pred, label[keep], 1))
    applied = bool(np.isfinite(a) and np.isfinite(c) and 0.5 <= a <= 2.0)
    if applied:
        with torch.no_grad():
            model.head.weight[0] *= a
            model.head.bias[0] = a * model.head.bias[0] + c
    return {"scale": a, "offset_um": c, "applied": applied, "n": int(keep.sum())}


#: A held-out slope of predicted vs true dz outside ``1 +- SLOPE_TOLERANCE``
#: is reported as a warning (compressed or stretched predictions).
SLOPE_TOLERANCE = 0.05
#: Validation RMSE still falling by more than this fraction over the last
#: tenth of the epochs is reported as a warning (more steps would help).
STILL_IMPROVING = 0.03


def schedule(
    steps_per_epoch: int,
    *,
    epochs: int | None,
    steps: int,
    patience: int | None,
    lr_patience: int | None,
    ema_decay: float | str | None,
) -> dict[str, Any]:
    """Epochs, patiences and weight-average decay of a run of ``steps`` optimizer
    steps (or of ``epochs``), from the steps one epoch takes."""
    if epochs is None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        epochs = max(1, math.ceil(steps / steps_per_epoch))
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if patience is None:
        patience = max(10, math.ceil(epochs / 4))
    if lr_patience is None:
        lr_patience = max(3, math.ceil(200 / steps_per_epoch))
    if ema_decay == "auto":
        ema_decay = min(0.998, max(0.9, 1.0 - 1.0 / steps_per_epoch))
    elif isinstance(ema_decay, str):
        raise ValueError(
            f"ema_decay must be a number, 'auto' or None; got {ema_decay!r}"
        )
    return {
        "epochs": int(epochs),
        "patience": int(patience),
        "lr_patience": int(lr_patience),
        "ema_decay": ema_decay,
    }


def slope(model: Network, ex: Examples) -> float:
    """Slope of predicted vs true dz on ``ex`` (NaN with fewer than 2 examples)."""
    if len(ex) < 2:
        return float("nan")
    pred = predict(model, ex.crops, ex.xy_norm)[:, 0].astype(float)
    return float(np.polyfit(np.asarray(ex.dz_um, float), pred, 1)[0])


def cross_fitted_recalibration(
    model: Network, va: Examples, dz_max_um: float | None
) -> dict[str, Any]:
    """Whether an affine recalibration helps beads it was not fitted on.

    The validation beads are split in two halves (by bead, alternately in bead
    order); each half's affine fit is scored on the other half. ``helps`` when
    the pooled squared error falls by more than 2 %.
    """
    label = np.asarray(va.dz_um, float)
    keep = np.ones(label.size, bool)
    if dz_max_um is not None:
        keep = np.abs(label) <= dz_max_um + 1e-9
    beads = np.unique(va.bead[keep])
    out: dict[str, Any] = {"helps": False, "cv_rmse_nm": None, "cv_rmse_raw_nm": None}
    if beads.size < 4:
        return out
    pred = predict(model, va.crops, va.xy_norm)[:, 0].astype(float)
    half = np.isin(va.bead, beads[::2])
    raw = fitted = 0.0
    for fit_on in (half, ~half):
        f, s = keep & fit_on, keep & ~fit_on
        if f.sum() < 2 or s.sum() < 1:
            return out
        a, c = np.polyfit(pred[f], label[f], 1)
        if not (np.isfinite(a) and 0.5 <= a <= 2.0):
            return out
        raw += float(np.sum((pred[s] - label[s]) ** 2))
        fitted += float(np.sum((a * pred[s] + c - label[s]) ** 2))
    n = int(keep.sum())
    out["cv_rmse_raw_nm"] = 1000 * math.sqrt(raw / n)
    out["cv_rmse_nm"] = 1000 * math.sqrt(fitted / n)
    out["helps"] = fitted < 0.98 * raw
    return out


def training_warnings(
    history: list[dict[str, float]], best_epoch: int, metrics: dict[str, Any]
) -> list[str]:
    """What a user should know about a finished training."""
    warnings: list[str] = []
    n = len(history)
    if n >= 10 and best_epoch == n and metrics["stopped_by"] != "early stop":
        k = max(1, n // 10)
        before = min(h["val_rmse_nm"] for h in history[: n - k])
        last = history[-1]["val_rmse_nm"]
        if last < (1 - STILL_IMPROVING) * before:
            warnings.append(
                f"the validation RMSE was still falling at the end "
                f"({before:.1f} -> {last:.1f} nm over the last {k} epochs, "
                f"stopped by the {metrics['stopped_by']}): more --steps (or time) "
                "would likely help"
            )
    slope = metrics.get("test_slope", float("nan"))
    if math.isfinite(slope) and abs(slope - 1) > SLOPE_TOLERANCE:
        kind = "compressed" if slope < 1 else "stretched"
        warnings.append(
            f"held-out predictions are {kind}: slope {slope:.2f} of predicted vs "
            f"true dz (ideal 1, tolerated {1 - SLOPE_TOLERANCE:.2f}-"
            f"{1 + SLOPE_TOLERANCE:.2f}); train longer or pass --recalibrate"
        )
    return warnings

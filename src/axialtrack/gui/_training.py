"""Train a model bundle from a calibration run, as ``axialtrack train`` does
(its defaults); what the Model panel runs in its training process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["bundle_output", "train_bundle"]


def bundle_output(out: Path, overwrite: bool) -> Path:
    """The bundle path (``.axialmodel`` added), or :class:`InputError` when it
    may not be written (it exists unconfirmed, or is not a bundle of ours)."""
    from axialtrack.model import BUNDLE_SUFFIX
    from axialtrack.store.replace import refusal

    from ._errors import InputError

    out = Path(out).expanduser()
    if out.suffix != BUNDLE_SUFFIX:
        out = out.with_name(out.name + BUNDLE_SUFFIX)
    why = refusal(out, overwrite, "bundle")
    if why is not None:
        raise InputError(why.replace("Pass --overwrite to replace it", "Confirm"))
    return out


def train_bundle(
    calibration: Path,
    out: Path,
    *,
    steps: int,
    max_time_s: float | None,
    overwrite: bool,
    events: Any,
    stop: Any,
) -> tuple[dict[str, Any], Path | None]:
    """Train on ``calibration`` as ``axialtrack train`` does (its defaults)
    and save the bundle to ``out``; the metrics and the bundle path
    (``None``: cancelled with ``stop``, an event with ``is_set()``, nothing
    written)."""
    from axialtrack.model import TrainConfig, load_calibration, train_from_config

    from ._errors import InputError

    out = bundle_output(out, overwrite)
    if not Path(calibration).expanduser().exists():
        raise InputError(f"Calibration: {calibration} does not exist.")
    data = load_calibration(calibration)
    result = train_from_config(
        data,
        TrainConfig(steps=steps, max_time_s=max_time_s),
        progress=False,
        events=events,
        stop=stop,
    )
    if stop.is_set():
        return result.metrics, None
    return result.metrics, result.save(out, overwrite=overwrite)

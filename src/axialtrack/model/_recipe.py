"""The training recipe of ``axialtrack train``, the demo and the control panel:
synthetic examples by default, an ensemble or a fine-tuning on the beads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axialtrack.errors import AxialtrackError

from ._data import CalibrationData, load_calibration, synthetic_examples
from ._train import TrainResult, train, train_ensemble
from .config import DEFAULT_SYNTHETIC, ModelConfig, TrainConfig

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path

    from axialtrack.events import TrainSignals
    from axialtrack.sim.synthetic import SyntheticConfig, SyntheticExamples

__all__ = ["RecipeError", "render_synthetic", "train_from_config"]


class RecipeError(AxialtrackError, ValueError):
    """The settings cannot be trained as given (one line, naming the option)."""


def _synthetic_config(data: CalibrationData, s: TrainConfig) -> SyntheticConfig:
    from axialtrack.sim.synthetic import Distribution, SyntheticConfig, match_run

    if s.match is not None:
        photons, background = match_run(s.match)
    else:
        photons = Distribution(kind="loguniform", low=s.photons[0], high=s.photons[1])
        background = Distribution(
            kind="uniform", low=s.background[0], high=s.background[1]
        )
    return SyntheticConfig(
        crop_size=int(data.examples.crops.shape[-1]),
        photons=photons,
        background=background,
        neighbours_mean=s.synthetic_neighbours,
        neighbour_radius_px=s.neighbour_radius_px,
        diffusion_um2_s=s.diffusion_um2_s,
        exposure_s=s.exposure_s,
    )


def render_synthetic(
    data: CalibrationData,
    s: TrainConfig,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[SyntheticExamples | None, SyntheticConfig | None]:
    """The synthetic examples ``s`` asks for (``None``: none).

    ``s.synthetic is None`` (the default) renders :data:`DEFAULT_SYNTHETIC`
    when the calibration carries a fitted PSF or nominal optics, and falls back
    to the beads alone (saying why through ``log``) when they cannot be
    rendered. An explicit count that cannot be rendered raises
    :class:`RecipeError`; an unreadable ``match`` run raises
    :class:`FileNotFoundError`.
    """
    auto = s.synthetic is None
    n = s.synthetic
    if n is None:
        has_psf = data.psf_fit is not None or data.optics is not None
        n = DEFAULT_SYNTHETIC if has_psf else 0
        if not has_psf:
            log(
                "Training on the bead examples only: the calibration carries no "
                "fitted PSF to render synthetic examples from"
            )
    if n == 0:
        return None, None
    try:
        syn_cfg = _synthetic_config(data, s)
        syn = synthetic_examples(data, n, config=syn_cfg, seed=s.seed)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if auto and s.match is None:
            log(f"Training on the bead examples only: no synthetic examples ({msg})")
            return None, None
        raise RecipeError(
            f"cannot render synthetic examples from {data.source or 'the calibration'}"
            f": {msg}. Check --match, --photons and --background, or pass "
            "--synthetic 0."
        ) from exc
    log(
        f"Rendered {len(syn)} synthetic examples: photons "
        f"{syn_cfg.photons.describe()}, background {syn_cfg.background.describe()}"
    )
    return syn, syn_cfg


def _check(s: TrainConfig, cfg: ModelConfig | None) -> None:
    if s.finetune_steps and s.ensemble > 1:
        raise RecipeError(
            "--finetune works on one network; drop --ensemble or --finetune"
        )
    if s.finetune_steps and cfg is not None and cfg.contamination:
        raise RecipeError(
            "--finetune ends on the beads alone, which cannot train --contamination; "
            "drop one of them"
        )


def train_from_config(
    data: CalibrationData | str | Path,
    settings: TrainConfig | None = None,
    config: ModelConfig | None = None,
    *,
    progress: bool = True,
    events: TrainSignals | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train as ``axialtrack train`` does: what the CLI, the demo and the
    control panel run.

    Renders the synthetic examples of ``settings`` (by default
    :data:`DEFAULT_SYNTHETIC` when the calibration carries a PSF), trains one
    network or an ensemble (:func:`train`, :func:`train_ensemble`), then
    fine-tunes on the beads for ``settings.finetune_steps`` at a tenth of the
    learning rate. The result's ``train_config`` is ``settings`` and
    ``settings["synthetic"]`` describes the synthetic examples (the bundle's
    provenance).

    Parameters
    ----------
    data
        :class:`CalibrationData` or the path of a calibration run store.
    settings
        :class:`TrainConfig`; default ``TrainConfig()``.
    config
        Architecture; default :class:`ModelConfig` with the examples' crop size.
    progress, events, stop
        As for :func:`train`.
    log
        Called with one line per decision a user should see (synthetic
        examples rendered, or why none).
    """
    s = settings if settings is not None else TrainConfig()
    if not isinstance(data, CalibrationData):
        data = load_calibration(data)
    _check(s, config)
    cfg = config or ModelConfig(crop_size=int(data.examples.crops.shape[-1]))
    synthetic, syn_cfg = render_synthetic(data, s, log)
    common: dict[str, Any] = {"config": cfg, "progress": progress}
    if s.ensemble > 1:
        result = train_ensemble(
            data, members=s.ensemble, settings=s, synthetic=synthetic, **common
        )
    else:
        result = train(
            data, settings=s, synthetic=synthetic, events=events, stop=stop, **common
        )
    if s.finetune_steps and not (stop is not None and stop.is_set()):
        result = _finetune(data, s, result, **common)
    result.train_config = s
    if synthetic is not None and syn_cfg is not None:
        result.settings["synthetic"] = {
            "n": len(synthetic),
            "photons": syn_cfg.photons.describe(),
            "background": syn_cfg.background.describe(),
            "match": s.match,
            "neighbours_mean": syn_cfg.neighbours_mean,
            "neighbour_radius_px": syn_cfg.neighbour_radius_px,
            "diffusion_um2_s": syn_cfg.diffusion_um2_s,
            "exposure_s": syn_cfg.exposure_s,
            "finetune_steps": s.finetune_steps,
        }
    return result


def _finetune(
    data: CalibrationData, s: TrainConfig, first: TrainResult, **common: Any
) -> TrainResult:
    """``s.finetune_steps`` more steps on the beads alone at a tenth of ``lr``."""
    tuned = s.model_copy(
        update={
            "steps": s.finetune_steps,
            "epochs": None,
            "lr": s.lr / 10,
            "patience": None,
            "max_time_s": None,
            "ema_decay": "auto",
            "physics_weight": 0.0,
        }
    )
    result = train(data, settings=tuned, init=first.model, **common)
    result.metrics["pretraining"] = {
        k: first.metrics.get(k)
        for k in ("val_rmse_nm", "test_rmse_nm", "epochs_run", "train_time_s")
    }
    result.settings["synthetic_examples"] = first.settings["synthetic_examples"]
    result.settings["synthetic_fraction"] = first.settings["synthetic_fraction"]
    return result

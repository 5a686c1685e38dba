"""Configuration of the axial localization network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_STEPS", "DEFAULT_SYNTHETIC", "ModelConfig", "TrainConfig"]

#: Optimizer steps of the default training schedule: 4000 mini-batches of 64
#: took a 44-bead simulated calibration from 180 nm (100 epochs, weight average
#: 0.998) to 40 nm held-out RMSE in about a minute on a 2-core CPU.
DEFAULT_STEPS = 4000
#: Synthetic crop pairs rendered by default when the calibration carries a PSF
#: (fitted or nominal), mixed half and half with the bead examples.
DEFAULT_SYNTHETIC = 20000


class ModelConfig(BaseModel):
    """Architecture of :class:`~axialtrack.model.AxialNet`.

    Attributes
    ----------
    crop_size
        Side of the square crop pair (px), odd.
    channels
        Planes the network sees: 2 (both planes, the dual-plane model) or 1 (plane
        0 only; plane 1 of the input is ignored, for single-plane comparisons).
    conv_channels
        Output channels of the three 3x3 'same' convolutions.
    dense_width
        Width of the dense layer after the convolutions.
    field_branch
        Feed the normalized field position ``(x, y)`` through a small dense branch
        concatenated with the image features (field-dependent aberrations).
    field_width
        Width of the field-position branch.
    uncertainty
        Add a ``sigma_z_um`` output (train with ``loss="nll"``).
    subpixel
        Add ``dx_px, dy_px`` outputs: the particle's sub-pixel offset from the crop
        centre in plane 0.
    contamination
        Add a ``contamination`` output: the probability that another emitter
        puts a noticeable part of its light into the crop (trained on synthetic
        examples, :mod:`axialtrack.sim.synthetic`); ``dz_um`` still reads the
        centre emitter.
    dropout
        Dropout probability before the output layer.
    background_percentile
        Percentile of the pooled pixels of both planes used as the per-example
        background in the input normalization.
    """

    model_config = ConfigDict(extra="forbid")

    crop_size: int = Field(15, ge=5)
    channels: int = Field(2, ge=1, le=2)
    conv_channels: tuple[int, int, int] = (16, 32, 64)
    dense_width: int = Field(128, ge=1)
    field_branch: bool = True
    field_width: int = Field(16, ge=1)
    uncertainty: bool = False
    subpixel: bool = False
    contamination: bool = False
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    background_percentile: float = Field(10.0, ge=0.0, le=50.0)

    @model_validator(mode="after")
    def _odd_crop(self) -> ModelConfig:
        if self.crop_size % 2 == 0:
            raise ValueError(f"crop_size must be odd; got {self.crop_size}")
        return self

    @property
    def output_names(self) -> list[str]:
        """Names of the output columns, in order."""
        names = ["dz_um"]
        if self.uncertainty:
            names.append("sigma_z_um")
        if self.subpixel:
            names += ["dx_px", "dy_px"]
        if self.contamination:
            names.append("contamination")
        return names

    @property
    def input_names(self) -> list[str]:
        """Names of the network inputs, in order."""
        return ["image", "xy"] if self.field_branch else ["image"]


class TrainConfig(BaseModel):
    """How to train: the settings of :func:`~axialtrack.model.train`, of
    ``axialtrack train`` (its defaults are these), of the demo and the control
    panel, recorded in the bundle as the training provenance.

    Attributes
    ----------
    steps
        Optimizer steps of the schedule when ``epochs`` is ``None``
        (:data:`DEFAULT_STEPS`), so a calibration of 20 beads and one of 200
        get the same schedule.
    epochs
        Maximum number of epochs instead of ``steps``.
    batch_size, lr
        Adam mini-batch size and learning rate.
    loss
        ``"mse"`` or ``"nll"`` (Gaussian negative log-likelihood; needs the
        uncertainty head). ``None``: ``"nll"`` with the uncertainty head, else
        ``"mse"``.
    seed
        Seeds weights, shuffling, dropout, augmentation and synthetic examples.
    device
        Torch device; ``None``: CUDA when available, else CPU.
    patience
        Early stopping: epochs without a lower validation loss; ``None``: a
        quarter of the epochs (at least 10).
    lr_patience
        ReduceLROnPlateau patience (``lr_schedule="plateau"``); ``None``: about
        200 optimizer steps (at least 3 epochs).
    augmentation
        Brightness jitter, Poisson and Gaussian noise on the bead pairs.
    max_time_s
        Stop after the epoch that exceeds this wall time (s).
    ema_decay
        Decay per optimizer step of the moving average of the weights (and
        BatchNorm statistics) that is validated and returned; ``None``: the raw
        weights; ``"auto"``: one epoch's time constant, ``1 - 1 /
        steps_per_epoch`` within [0.9, 0.998].
    lr_schedule
        ``"cosine"``: decay from ``lr`` to ``lr / 100`` over the schedule;
        ``"plateau"``: halve on a validation plateau.
    recalibrate
        Fold an affine ``dz`` correction fitted on the validation beads into
        the output layer: ``True`` always, ``False`` never, ``"auto"`` when it
        lowers the error of held-out validation beads (two-fold cross-fitting).
    recalibrate_dz_max_um
        Fit the recalibration on validation examples with ``|dz|`` up to this.
    neighbours
        Probability that a bead pair gets a second particle 5-14 px from its
        centre (crowded live samples).
    synthetic
        Synthetic crop pairs rendered from the calibration's PSF and camera
        (:func:`~axialtrack.model.synthetic_examples`) by
        :func:`~axialtrack.model.train_from_config`; ``None``:
        :data:`DEFAULT_SYNTHETIC` when the calibration carries a fitted PSF or
        nominal optics, else none. (:func:`~axialtrack.model.train` takes
        rendered examples instead.)
    synthetic_fraction
        Share of each mini-batch drawn from the synthetic examples.
    photons, background
        Plane-0 photons per emitter (log-uniform) and background photons per
        pixel (uniform) of the synthetic examples.
    match
        A run store whose localizations give the photons and background
        instead (``train --match``).
    synthetic_neighbours, neighbour_radius_px
        Mean number of neighbours (Poisson) within this radius (px) of a
        synthetic example's centre, overlapping ones included.
    diffusion_um2_s, exposure_s
        Motion blur of the synthetic emitters.
    finetune_steps
        After training, this many more steps on the bead examples only, at a
        tenth of ``lr``.
    physics_weight
        Weight of the physics-informed loss (Poisson deviance per pixel of the
        crop under the calibration's PSF at the predicted ``dz``); 0: off.
    ensemble
        Networks trained (seeds ``seed, seed + 1, ...``) and averaged.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(DEFAULT_STEPS, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    loss: Literal["mse", "nll"] | None = None
    seed: int = 0
    device: str | None = None
    patience: int | None = Field(None, ge=1)
    lr_patience: int | None = Field(None, ge=1)
    augmentation: bool = True
    max_time_s: float | None = Field(None, gt=0)
    ema_decay: float | Literal["auto"] | None = "auto"
    lr_schedule: Literal["plateau", "cosine"] = "cosine"
    recalibrate: bool | Literal["auto"] = "auto"
    recalibrate_dz_max_um: float | None = Field(None, gt=0)
    neighbours: float = 0.0
    synthetic: int | None = Field(None, ge=0)
    synthetic_fraction: float = 0.5
    photons: tuple[float, float] = (300.0, 20000.0)
    background: tuple[float, float] = (1.0, 40.0)
    match: str | None = None
    synthetic_neighbours: float = Field(0.5, ge=0)
    neighbour_radius_px: float = Field(12.0, gt=0)
    diffusion_um2_s: float = Field(0.0, ge=0)
    exposure_s: float = Field(0.01, gt=0)
    finetune_steps: int | None = Field(None, ge=1)
    physics_weight: float = 0.0
    ensemble: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        if not 0.0 <= self.neighbours <= 1.0:
            raise ValueError(
                f"neighbours is a probability in [0, 1]; got {self.neighbours}"
            )
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(
                f"synthetic_fraction must be in [0, 1]; got {self.synthetic_fraction}"
            )
        if self.physics_weight < 0:
            raise ValueError(f"physics_weight must be >= 0; got {self.physics_weight}")
        return self

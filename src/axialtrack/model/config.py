"""Configuration of the axial localization network."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_STEPS", "ModelConfig"]

#: Optimizer steps of the default training schedule: 4000 mini-batches of 64
#: took a 44-bead simulated calibration from 180 nm (100 epochs, weight average
#: 0.998) to 40 nm held-out RMSE in about a minute on a 2-core CPU.
DEFAULT_STEPS = 4000


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

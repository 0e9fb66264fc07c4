"""Preprocessing parameters: data, parsed once, saved in the model directory's plans.json."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["IntensityConfig", "ForegroundCropConfig", "PreprocessConfig"]


class IntensityConfig(BaseModel):
    """Intensity normalisation of one input channel.

    - ``ct``: clip to ``window`` (HU), then ``(x - mean) / std`` with ``mean``/``std`` when given
      (nnU-Net computes them over training foreground), else map the window linearly to [0, 1].
    - ``zscore``: MR; mean and std over the foreground (voxels != 0 when ``nonzero_only``,
      else all voxels) of this image, background left at 0 when ``nonzero_only``.
    - ``none``: unchanged (float32).

    ``foreground_percentiles`` (CT, e.g. ``(0.5, 99.5)``): a *training-time* instruction: the
    trainer replaces ``window`` by these percentiles of the training cases' labelled foreground
    voxels and sets ``mean``/``std`` to the foreground statistics inside it (nnU-Net's CT
    scheme), so the saved plans hold fixed numbers that inference applies unchanged.
    :func:`medseg.preprocess.normalize_intensity` itself only reads ``window``/``mean``/``std``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ct", "zscore", "none"] = "zscore"
    window: tuple[float, float] = (-1000.0, 1000.0)
    mean: float | None = None
    std: float | None = None
    nonzero_only: bool = True
    foreground_percentiles: tuple[float, float] | None = None

    @field_validator("foreground_percentiles")
    @classmethod
    def _percentiles(cls, v):
        if v is not None and not (0.0 <= v[0] < v[1] <= 100.0):
            raise ValueError(f"foreground_percentiles must be (low, high) with 0 <= low < high <= 100, not {v}")
        return v

    @field_validator("window")
    @classmethod
    def _window_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"window must be (low, high) with low < high, not {v}")
        return v


class ForegroundCropConfig(BaseModel):
    """Crop the preprocessed grid to the bounding box of the foreground, plus a margin.

    Foreground: voxels where any input channel, before normalisation (after orientation and
    resampling), is above ``threshold`` (e.g. -500 HU keeps the body of a CT), or differs from 0
    when ``threshold`` is None (skull-stripped / z-scored MR). The box is recorded in
    :class:`~medseg.preprocess.InverseInfo` and undone by :func:`~medseg.preprocess.invert_spatial`.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = None
    margin_vox: int = Field(2, ge=0, description="voxels kept around the foreground box on every side")


class PreprocessConfig(BaseModel):
    """Spatial and intensity preprocessing of a case; see :mod:`medseg.preprocess`."""

    model_config = ConfigDict(extra="forbid")

    orientation: str = "RAS"
    target_spacing: tuple[float, float, float] | None = Field(
        default=None, description="voxel size in mm after resampling; None keeps the input's spacing")
    intensity: list[IntensityConfig] = Field(default_factory=lambda: [IntensityConfig()],
                                             description="one entry per input channel (one entry is used for all)")
    crop_foreground: ForegroundCropConfig | None = Field(
        default=None, description="crop to the foreground box (None: no crop)")

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in v]
        if len(v) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
            raise ValueError(f"orientation must be three axis codes like 'RAS' or 'LPS', not {v!r}")
        return v

    @field_validator("target_spacing")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"target_spacing must be positive mm values, not {v}")
        return v

    def channel(self, c: int) -> IntensityConfig:
        return self.intensity[c] if len(self.intensity) > 1 else self.intensity[0]

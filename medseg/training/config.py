"""The training config: one YAML file, validated once (pydantic, unknown keys refused).

Minimal example (``configs/phantom_unet3d.yaml`` has every section)::

    model: {name: unet, spatial_dims: 3, options: {channels: [8, 16, 32, 64], strides: [2, 2, 2]}}
    loss: {name: dice_ce}
    optimiser: {name: adamw, lr: 0.01}
    schedule: {name: poly}
    patch_size: [48, 48, 32]
    batch_size: 2
    steps: 300            # or epochs: N (an epoch is steps_per_epoch steps)
    max_minutes: 20       # optional: fit the run into 20 minutes (the schedule shortened to fit)
    data:
      manifest: ../data/manifest.csv      # relative to this YAML file
      labels: {1: liver, 2: spleen}
      preprocess: {target_spacing: [4, 4, 4], intensity: [{kind: ct, window: [-150, 250]}]}

Relative paths: ``data.manifest`` is relative to the YAML file's folder; ``data.root`` (the
folder every relative manifest path must stay inside) is relative to the manifest's folder.
Manifest paths starting with ``${MEDSEG_SHARED_DATA}/`` lie in the shared data folder instead
(see :mod:`medseg.manifest`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import InputError, read_text_input, validation_message
from medseg.losses import LossName
from medseg.plans import check_labels, check_patch_size
from medseg.preprocess.augment import AugmentConfig, SamplingConfig
from medseg.postprocess.crf import CRFConfig
from medseg.preprocess.config import PreprocessConfig

__all__ = ["ModelConfig", "LossConfig", "OptimiserConfig", "ScheduleConfig", "ValidationConfig", "DataConfig",
           "CrossValidationConfig", "TrainConfig", "load_train_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Architecture: a :func:`medseg.models.create_model` name, 2D or 3D, and its options."""

    name: str = "unet"
    spatial_dims: Literal[2, 3] = 3
    options: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Strict):
    """A :func:`medseg.losses.create_loss` name and its options."""

    name: LossName = "dice_ce"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self):
        from medseg.losses import create_loss

        create_loss(self.name, **self.options)  # raises ValueError naming a bad option
        return self


class OptimiserConfig(_Strict):
    """``adamw`` (``weight_decay``) or ``sgd`` (``momentum``, ``nesterov``, ``weight_decay``)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    momentum: float = Field(0.99, ge=0.0, lt=1.0)
    nesterov: bool = True
    grad_clip: float | None = Field(12.0, gt=0.0, description="max gradient norm; None: no clipping")


class ScheduleConfig(_Strict):
    """Learning rate per step: linear warm-up over ``warmup_steps``, then

    - ``poly``: ``lr · (1 - t)^power`` (nnU-Net, power 0.9), t the fraction of steps done;
    - ``cosine``: ``lr · (min_lr_fraction + (1 - min_lr_fraction)(1 + cos πt)/2)``;
    - ``none``: constant.
    """

    name: Literal["poly", "cosine", "none"] = "poly"
    power: float = Field(0.9, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_fraction: float = Field(0.0, ge=0.0, le=1.0)


class ValidationConfig(_Strict):
    """Validation on the ``val`` cases every ``every_epochs`` epochs (and at the end), through
    :class:`medseg.inference.Predictor` on each case's original volumes.

    ``overlap``: window overlap fraction (also the model directory's default,
    ``plans.inference.overlap``); ``sw_batch_size``: windows per forward pass.
    """

    every_epochs: int = Field(1, ge=1)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(2, ge=1)


class CrossValidationConfig(_Strict):
    """k-fold cross-validation by case (``medseg train --fold K`` / ``--folds all``).

    ``folds``: number of folds; ``seed``: the shuffle of the case ids before they are cut into
    folds (:func:`medseg.training.folds.make_splits`). Used when ``MODEL_DIR/splits.json`` is
    made; an existing ``splits.json`` is used as it is.
    """

    folds: int = Field(5, ge=2)
    seed: int = Field(0, ge=0, lt=2**32)


class DataConfig(_Strict):
    """Where the cases come from and how they are prepared.

    - ``manifest``: the manifest CSV (relative to the YAML file; ``--manifest`` overrides it);
    - ``root``: folder that manifest paths must stay inside (relative to the manifest; default:
      the manifest's folder); ``allow_outside: true`` lifts the restriction;
    - ``channels``: names of the input channels, in the order of the manifest's ``image`` paths;
    - ``labels``: class id → name, ids ``1..K`` (0 is background), each name once; the network
      has K+1 outputs;
    - ``regions``: extra validation Dice over unions of labels, e.g. ``whole_tumour: [1, 2, 3, 4]``;
    - ``slice_axis``: for 2D models, the axis of the oriented volume that slices are taken along;
    - ``train_split`` / ``val_split``: manifest splits used for training and validation.
    """

    manifest: Path | None = None
    root: Path | None = None
    allow_outside: bool = False
    channels: list[str] = Field(default_factory=lambda: ["image"], min_length=1)
    labels: dict[int, str]
    regions: dict[str, list[int]] = Field(default_factory=dict)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    slice_axis: int = Field(2, ge=0, le=2)
    train_split: str = "train"
    val_split: str = "val"

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[int, str]) -> dict[int, str]:
        ids = sorted(v)
        if not ids or ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"labels must map the ids 1..K (0 is background) to names, got ids {ids}")
        try:
            return check_labels({k: v[k] for k in ids})
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _consistent(self):
        n = len(self.preprocess.intensity)
        if n not in (1, len(self.channels)):
            raise ValueError(f"preprocess.intensity has {n} entries for {len(self.channels)} channels "
                             f"({', '.join(self.channels)}): give one entry, or one per channel")
        for name, ids in self.regions.items():
            bad = [i for i in ids if i not in self.labels]
            if not ids or bad:
                raise ValueError(f"region {name!r} must list label ids from {sorted(self.labels)}, got {ids}")
        return self


class TrainConfig(_Strict):
    """A training run. Length: ``steps`` or ``epochs`` (× ``steps_per_epoch``), exactly one.

    ``autocast``: ``auto`` is bf16 (fp16 with loss scaling where bf16 is unsupported) on CUDA and
    none on CPU; ``bf16`` on CPU about doubles U-Net speed. ``num_threads``: torch CPU threads
    during training and validation (restored afterwards); ``auto`` is
    :func:`medseg.runtime.default_threads`: 2 (at most the CPU count), or 1 when the machine is
    already busy (1-minute load average above the CPU count), where several spinning threads per
    process slow everyone down many times over. Results are bit-exact only for a fixed thread
    count: pin it when comparing runs.

    ``patch_size``: the training crop in voxels of the preprocessed grid (3 values for 3D, 2 for
    2D), each side at most 1024 voxels and 2**24 (256**3) voxels in all (see
    :func:`medseg.plans.check_patch_size`: wider than any CT/MR grid, or more than a network's
    activations fit in memory).

    ``max_minutes``: a time budget for one ``train`` call (``medseg train --max-minutes``
    overrides it). The trainer measures its steps and validations per second as it goes and
    shortens the run to the steps that fit (never lengthens it), with the learning-rate schedule
    spanning that shorter run, so the rate still reaches its end and the final validation runs
    within the budget (see :func:`medseg.training.train`). None: the configured length, exactly.
    """

    @field_validator("num_threads")
    @classmethod
    def _threads(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"num_threads must be >= 1 or 'auto', not {v}")
        return v

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimiser: OptimiserConfig = Field(default_factory=OptimiserConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    patch_size: list[int]
    batch_size: int = Field(2, ge=1)
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="time budget of one train call in minutes; "
                                      "the schedule is shortened to the steps that fit (None: no budget)")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    cross_validation: CrossValidationConfig = Field(default_factory=CrossValidationConfig)
    data: DataConfig
    seed: int = 0
    autocast: Literal["auto", "none", "bf16", "fp16"] = "auto"
    checkpoint_every_steps: int = Field(50, ge=1)
    num_threads: int | Literal["auto"] = "auto"
    crf_rnn: CRFConfig | None = Field(
        None, description="wrap the model with a trainable CRF-as-RNN layer (medseg.postprocess.CRFasRNN): "
        "kernel widths in mm of the preprocessed grid, intensity_sigma in the network input's units "
        "(null: estimated per patch). model.pt keeps the plain network; the learned CRF weights go to crf_rnn.json")

    @field_validator("patch_size")
    @classmethod
    def _patch_size(cls, v: list[int]) -> list[int]:
        return list(check_patch_size(v))

    @model_validator(mode="after")
    def _consistent(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'steps' or 'epochs' (an epoch is steps_per_epoch steps)")
        if len(self.patch_size) != self.model.spatial_dims:
            raise ValueError(f"patch_size must be {self.model.spatial_dims} positive voxel counts for "
                             f"spatial_dims={self.model.spatial_dims}, not {self.patch_size}")
        return self

    @property
    def total_steps(self) -> int:
        return int(self.steps if self.steps is not None else self.epochs * self.steps_per_epoch)

    @property
    def total_epochs(self) -> int:
        return int(math.ceil(self.total_steps / self.steps_per_epoch))

    @property
    def num_classes(self) -> int:
        return len(self.data.labels) + 1


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config; resolve ``data.manifest`` against its folder.

    Raises:
        InputError: a missing or unreadable file, bytes that are not UTF-8 text, invalid YAML, or
            invalid settings (the message names each bad key).
    """
    import yaml

    path = Path(path)
    text = read_text_input(path, "training config")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = problem or str(exc).splitlines()[0]
        raise InputError(path, f"not valid YAML{where} ({detail})") from None
    if not isinstance(raw, dict):
        raise InputError(path, "a training config is a YAML mapping (model:, loss:, data:, ...)")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(path, f"invalid training config: {validation_message(exc)}") from None
    except ValueError as exc:
        raise InputError(path, f"invalid training config: {exc}") from None
    if cfg.data.manifest is not None and not cfg.data.manifest.is_absolute():
        cfg.data.manifest = (path.resolve().parent / cfg.data.manifest).resolve()
    return cfg

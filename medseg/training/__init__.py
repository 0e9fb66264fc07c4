"""Training: a YAML-configured, resumable trainer that writes a self-contained model directory.

>>> from medseg.training import load_train_config, train
>>> cfg = load_train_config("configs/phantom_unet3d.yaml")
>>> model_dir = train(cfg, manifest="phantoms/manifest.csv", out_dir="runs/phantom_unet3d")

:func:`train_folds` trains k-fold cross-validation folds into one folder (:mod:`medseg.training.folds`),
evaluates their out-of-fold predictions and chooses the post-processing on them
(:mod:`medseg.training.crossval`).

:func:`quick_train_phantom_model` writes a small phantom archive and trains a small 3D (or 2D)
U-Net on it in well under a minute on a CPU: a ready model directory for other tests.
"""

from medseg.training.config import (
    CrossValidationConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimiserConfig,
    ScheduleConfig,
    TrainConfig,
    ValidationConfig,
    load_train_config,
)
from medseg.training.quick import quick_phantom_config, quick_train_phantom_model
from medseg.training.folds import train_folds
from medseg.training.trainer import train

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "LossConfig",
    "OptimiserConfig",
    "ScheduleConfig",
    "ValidationConfig",
    "DataConfig",
    "CrossValidationConfig",
    "load_train_config",
    "train",
    "train_folds",
    "quick_train_phantom_model",
    "quick_phantom_config",
]

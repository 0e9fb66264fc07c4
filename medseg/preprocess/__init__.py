"""Preprocessing shared by training and inference; every spatial step is invertible.

Pipeline for one case (several channel images on one grid, plus an optional label map):

1. **orientation**: voxel axes permuted/flipped to ``cfg.orientation`` (default RAS);
2. **spacing**: resampled to ``cfg.target_spacing`` mm (images linear, labels nearest);
3. **intensity**: per channel, CT windowing/clipping then scaling, or MR z-score in the
   foreground, or nothing;
4. **foreground crop** (optional): the box around the foreground, recorded in
   :class:`InverseInfo` so that it is undone.

Training adds patch sampling with a positive/negative ratio and augmentation
(:mod:`medseg.preprocess.augment`) and the CT foreground-percentile window
(:func:`medseg.preprocess.augment.fit_foreground_intensity`).

:func:`invert_spatial` maps an array on the preprocessed grid (labels or per-class scores)
back to the exact voxel grid of the input, so an output has the input's shape and affine.
"""

from __future__ import annotations

from medseg.preprocess.augment import (
    AugmentConfig,
    PatchSampler,
    SampleCase,
    SamplingConfig,
    fit_foreground_intensity,
    step_random_state,
)
from medseg.preprocess.config import ForegroundCropConfig, IntensityConfig, PreprocessConfig
from medseg.preprocess.pipeline import (
    InverseInfo,
    PreprocessedCase,
    foreground_box,
    invert_spatial,
    normalize_intensity,
    preprocess_case,
)

__all__ = [
    "PreprocessConfig",
    "IntensityConfig",
    "ForegroundCropConfig",
    "PreprocessedCase",
    "InverseInfo",
    "preprocess_case",
    "invert_spatial",
    "normalize_intensity",
    "foreground_box",
    "AugmentConfig",
    "SamplingConfig",
    "PatchSampler",
    "SampleCase",
    "fit_foreground_intensity",
    "step_random_state",
]

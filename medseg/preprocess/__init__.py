"""Preprocessing shared by training and inference; every spatial step is invertible.

Pipeline for one case (several channel images on one grid, plus an optional label map):

1. **orientation**: voxel axes permuted/flipped to ``cfg.orientation`` (default RAS);
2. **spacing**: resampled to ``cfg.target_spacing`` mm (images linear, labels nearest);
3. **intensity**: per channel, CT windowing/clipping then scaling, or MR z-score in the
   foreground, or nothing.

:func:`invert_spatial` maps an array on the preprocessed grid (labels or per-class scores)
back to the exact voxel grid of the input, so an output has the input's shape and affine.
"""

from __future__ import annotations

from medseg.preprocess.config import IntensityConfig, PreprocessConfig
from medseg.preprocess.pipeline import (
    InverseInfo,
    PreprocessedCase,
    invert_spatial,
    normalize_intensity,
    preprocess_case,
)

__all__ = [
    "PreprocessConfig",
    "IntensityConfig",
    "PreprocessedCase",
    "InverseInfo",
    "preprocess_case",
    "invert_spatial",
    "normalize_intensity",
]

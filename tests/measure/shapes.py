"""Synthetic shapes with known geometry for the metric tests."""

from __future__ import annotations

import numpy as np


def sphere(shape, centre_vox, radius_mm, spacing) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around ``centre_vox`` (voxel coordinates) on a grid of ``spacing`` mm."""
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((grid[a] - centre_vox[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius_mm ** 2

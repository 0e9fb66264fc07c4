"""Connected-component clean-up with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.postprocess import ComponentsConfig, clean_labels


def _scene():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1          # 512 voxels, with a hole below
    lab[5:7, 5:7, 5:7] = 0              # enclosed cavity of 8 voxels
    lab[15:17, 15:17, 15:17] = 1        # 8-voxel blob of class 1
    lab[12, 2, 2] = 1                   # single voxel of class 1
    lab[2:6, 14:18, 2:6] = 2            # 64 voxels of class 2
    lab[8, 16, 2] = 2                   # single voxel of class 2
    return lab


def test_nothing_by_default_and_copy():
    lab = _scene()
    out = clean_labels(lab, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, lab)
    assert out is not lab and out.dtype == lab.dtype


def test_largest_component_per_class():
    lab = _scene()
    out = clean_labels(lab, (1.0, 1.0, 1.0), ComponentsConfig(largest_component=True))
    assert (out == 1).sum() == 512 - 8
    assert (out == 2).sum() == 64
    only1 = clean_labels(lab, (1.0, 1.0, 1.0), ComponentsConfig(largest_component=[1]))
    assert (only1 == 2).sum() == 65 and (only1 == 1).sum() == 504


def test_min_size_in_mm3_uses_spacing():
    lab = _scene()
    # voxels of 2×2×2 mm = 8 mm³: the 8-voxel blob is 64 mm³, single voxels 8 mm³
    out = clean_labels(lab, (2.0, 2.0, 2.0), ComponentsConfig(min_size_mm3=10.0))
    assert (out == 1).sum() == 504 + 8 and (out == 2).sum() == 64
    out = clean_labels(lab, (2.0, 2.0, 2.0), ComponentsConfig(min_size_mm3=100.0))
    assert (out == 1).sum() == 504
    per_class = clean_labels(lab, (1.0, 1.0, 1.0), ComponentsConfig(min_size_mm3={2: 2.0}))
    assert (per_class == 2).sum() == 64 and (per_class == 1).sum() == (lab == 1).sum()


def test_connectivity_26_vs_6():
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[1, 1, 1] = 1
    lab[2, 2, 2] = 1  # corner-touching: one component in 26-connectivity, two in 6
    keep26 = clean_labels(lab, (1, 1, 1), ComponentsConfig(largest_component=True))
    keep6 = clean_labels(lab, (1, 1, 1), ComponentsConfig(largest_component=True, connectivity=6))
    assert (keep26 == 1).sum() == 2 and (keep6 == 1).sum() == 1


def test_fill_holes_only_background_and_selected_classes():
    lab = _scene()
    out = clean_labels(lab, (1.0, 1.0, 1.0), ComponentsConfig(fill_holes=True))
    assert (out[5:7, 5:7, 5:7] == 1).all()
    ring = np.zeros((9, 9, 9), np.uint8)
    ring[2:7, 2:7, 2:7] = 3
    ring[4, 4, 4] = 1  # another class inside the cavity is kept
    ring[3:6, 3:6, 3:6][ring[3:6, 3:6, 3:6] == 3] = 0
    ring[4, 4, 4] = 1
    filled = clean_labels(ring, (1, 1, 1), ComponentsConfig(fill_holes=[3]))
    assert filled[4, 4, 4] == 1 and (filled == 3).sum() == 125 - 1
    untouched = clean_labels(ring, (1, 1, 1), ComponentsConfig(fill_holes=[2]))
    np.testing.assert_array_equal(untouched, ring)


def test_errors():
    with pytest.raises(ValueError, match="min_size_mm3"):
        ComponentsConfig(min_size_mm3=-1)
    with pytest.raises(ValueError, match="extra|Extra"):
        ComponentsConfig(largest=True)
    with pytest.raises(TypeError, match="integers"):
        clean_labels(np.zeros((3, 3, 3), np.float32), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm"):
        clean_labels(np.zeros((3, 3, 3), np.uint8), (1, 1))

"""Split-and-merge and threshold segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.postprocess import otsu_segmentation, regions_to_labels, split_and_merge, threshold_segmentation


def _piecewise(shape=(40, 36, 28)):
    """Three non-dyadic boxes and a sphere on a background: 5 regions with distinct values."""
    truth = np.zeros(shape, np.int32)
    truth[3:17, 5:30, 2:13] = 1
    truth[20:37, 2:19, 9:25] = 2
    truth[20:37, 21:33, 3:11] = 3
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    truth[((g - np.array([10, 15, 20])[:, None, None, None]) ** 2).sum(0) < 36] = 4
    values = np.array([0.0, 100.0, 200.0, 300.0, 400.0])
    return truth, values[truth]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two region maps are equal up to renumbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_split_and_merge_recovers_piecewise_constant_exactly():
    truth, image = _piecewise()
    for rule in ("range", "std"):
        regions = split_and_merge(image, threshold=10.0, rule=rule)
        assert regions.shape == image.shape and regions.dtype == np.int32
        assert regions.max() == 5
        assert _same_partition(regions, truth)


def test_split_and_merge_noisy_dice_and_labels(dice):
    truth, image = _piecewise()
    rng = np.random.default_rng(0)
    noisy = image + rng.normal(0, 8.0, image.shape)
    regions = split_and_merge(noisy, threshold=70.0, rule="range", min_region_voxels=20)
    for k in range(5):
        overlap = np.bincount(regions[truth == k].ravel())
        best = int(np.argmax(overlap))
        d = 2 * overlap[best] / ((truth == k).sum() + (regions == best).sum())
        assert d >= 0.9, (k, d)
    labels = regions_to_labels(regions, noisy, 5)
    for k in range(5):
        assert dice(labels, truth, k) >= 0.9


def test_quadtree_on_a_slice():
    truth, image = _piecewise()
    sl = image[:, :, 10]
    regions = split_and_merge(sl, threshold=1.0)
    assert regions.ndim == 2 and _same_partition(regions, truth[:, :, 10])


def test_split_and_merge_128_cubed_runs(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.zeros((128, 128, 128), np.int32)
    truth[20:100, 30:90, 10:120] = 1
    truth[60:120, 60:125, 40:80] = 2
    image = truth * 100.0 + rng.normal(0, 5.0, truth.shape)
    regions = split_and_merge(image, threshold=60.0, min_region_voxels=10)
    for k in range(3):
        overlap = np.bincount(regions[truth == k].ravel())
        best = int(np.argmax(overlap))
        assert 2 * overlap[best] / ((truth == k).sum() + (regions == best).sum()) > 0.99


def test_thresholds_and_otsu():
    truth, image = _piecewise()
    lab = threshold_segmentation(image, [50, 150])
    np.testing.assert_array_equal(lab, np.where(truth == 0, 0, np.where(truth == 1, 1, 2)))
    rng = np.random.default_rng(0)
    two = (truth > 0) * 300.0 + rng.normal(0, 20, truth.shape)
    lab, th = otsu_segmentation(two)
    assert 60 < th[0] < 240
    assert ((lab == 1) == (truth > 0)).mean() > 0.999
    lab3, th3 = otsu_segmentation(image, classes=3)
    assert len(th3) == 2 and lab3.max() == 2
    with pytest.raises(ValueError, match="increasing"):
        threshold_segmentation(image, [5, 1])
    with pytest.raises(ValueError, match="constant"):
        otsu_segmentation(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        split_and_merge(image, threshold=-1)

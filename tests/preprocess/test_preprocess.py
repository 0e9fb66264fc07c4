"""Preprocessing shared by training and inference: foreground crop (invertible), patch sampling, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.phantoms import make_phantom
from medseg.preprocess import (
    AugmentConfig,
    ForegroundCropConfig,
    IntensityConfig,
    PatchSampler,
    PreprocessConfig,
    SampleCase,
    SamplingConfig,
    fit_foreground_intensity,
    invert_spatial,
    preprocess_case,
)


@pytest.mark.parametrize("grid", [dict(orientation="LPS", rotation_deg=(12.0, -8.0, 15.0)),
                                  dict(orientation="IPL", spacing=(3.0, 2.5, 4.0), shape=(40, 70, 50))])
def test_foreground_crop_is_recorded_and_inverted_exactly(grid):
    study = make_phantom(2, **grid)
    cfg = PreprocessConfig(intensity=[IntensityConfig(kind="ct")],
                           crop_foreground=ForegroundCropConfig(threshold=-500.0, margin_vox=1))
    case = preprocess_case([study.image], cfg, study.label)
    box = case.inverse.crop_box
    assert box is not None and case.image.shape[1:] == case.inverse.network_shape
    assert np.prod(case.inverse.network_shape) < np.prod(case.inverse.resampled_shape)  # air was cut away
    # the cropped grid's affine puts voxel (0, 0, 0) where the uncropped grid has voxel (x0, y0, z0)
    full = preprocess_case([study.image], PreprocessConfig(intensity=[IntensityConfig(kind="ct")]), study.label)
    corner = full.affine @ np.array([box[0][0], box[1][0], box[2][0], 1.0])
    np.testing.assert_allclose(case.affine[:, 3], corner, atol=1e-9)
    np.testing.assert_array_equal(case.image, full.image[(slice(None),) + tuple(slice(a, b) for a, b in box)])
    # no resampling: the label comes back bit for bit on the input's own (oblique, odd) grid
    back = invert_spatial(case.label, case.inverse, "nearest")
    np.testing.assert_array_equal(back, study.label.array)
    # per-class scores: what the crop removed is background
    onehot = np.eye(6, dtype=np.float32)[case.label].transpose(3, 0, 1, 2)
    probs = invert_spatial(onehot, case.inverse, "linear", pad_value=[1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(probs.argmax(0), study.label.array)
    with pytest.raises(ValueError, match="pad_value has 2 values"):
        invert_spatial(onehot, case.inverse, "linear", pad_value=[1, 0])


def test_mr_crop_keeps_the_nonzero_box_with_margin():
    img = np.zeros((20, 20, 20), np.float32)
    img[5:9, 6:15, 2:3] = 1.0
    from medseg.io import Volume

    vol = Volume(array=img, affine=np.diag([2.0, 2.0, 2.0, 1.0]), source=None, meta={})
    case = preprocess_case([vol], PreprocessConfig(intensity=[IntensityConfig(kind="none")],
                                                   crop_foreground=ForegroundCropConfig(margin_vox=2)))
    assert case.inverse.crop_box == ((3, 11), (4, 17), (0, 5))


def test_foreground_percentile_window_by_hand():
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 100.0, (30, 30, 30)).astype(np.float32)
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[10:20, 10:20, 10:20] = 1
    cfg = PreprocessConfig(intensity=[IntensityConfig(kind="ct", foreground_percentiles=(5.0, 95.0))])
    fitted = fit_foreground_intensity(cfg, [([img], lab)]).intensity[0]
    fg = img[lab > 0].astype(np.float64)
    lo, hi = np.percentile(fg, [5, 95])
    assert fitted.window == pytest.approx((lo, hi))
    assert fitted.mean == pytest.approx(np.clip(fg, lo, hi).mean())
    assert fitted.std == pytest.approx(np.clip(fg, lo, hi).std())


def _cases():
    out = []
    for seed in (0, 1):
        study = make_phantom(seed)
        pc = preprocess_case([study.image], PreprocessConfig(intensity=[IntensityConfig(kind="ct")]), study.label)
        out.append(SampleCase(f"p{seed}", pc.image, pc.label))
    return out


def test_batches_are_a_function_of_seed_and_step_only():
    cases = _cases()
    aug = AugmentConfig(flip_prob=0.5, rot90_prob=0.5, affine_prob=0.5, noise_prob=0.5, intensity_scale_prob=0.5)
    a = PatchSampler(cases, (32, 32, 24), augment=aug, batch_size=3, seed=7)
    b = PatchSampler(cases, (32, 32, 24), augment=aug, batch_size=3, seed=7)
    xa5, ya5 = a.batch(5)
    a.batch(6)
    xb5, yb5 = b.batch(5)  # b never drew steps 0..4 nor 6: same batch anyway
    assert torch.equal(xa5, xb5) and torch.equal(ya5, yb5)
    assert xa5.shape == (3, 1, 32, 32, 24) and ya5.shape == (3, 1, 32, 32, 24) and ya5.dtype == torch.int64
    assert not torch.equal(a.batch(4)[0], xa5)
    assert not torch.equal(PatchSampler(cases, (32, 32, 24), augment=aug, batch_size=3, seed=8).batch(5)[0], xa5)
    assert set(torch.unique(ya5).tolist()) <= set(range(6))  # labels stay class ids through the affine warp


def test_positive_negative_ratio():
    cases = _cases()
    off = AugmentConfig(enabled=False)
    pos_only = PatchSampler(cases, (8, 8, 8), sampling=SamplingConfig(pos=1.0, neg=0.0), augment=off, batch_size=4)
    neg_only = PatchSampler(cases, (8, 8, 8), sampling=SamplingConfig(pos=0.0, neg=1.0), augment=off, batch_size=4)
    # a patch centred on a labelled voxel holds labelled voxels at its centre
    centres_pos = [pos_only.batch(s)[1][:, 0, 4, 4, 4] for s in range(10)]
    assert all(bool((c > 0).all()) for c in centres_pos)
    centres_neg = [neg_only.batch(s)[1][:, 0, 4, 4, 4] for s in range(10)]
    assert all(bool((c == 0).all()) for c in centres_neg)
    with pytest.raises(ValueError, match="pos and neg cannot both be 0"):
        SamplingConfig(pos=0.0, neg=0.0)


def test_2d_sampling_takes_slices_along_the_chosen_axis():
    cases = _cases()
    s = PatchSampler(cases, (40, 24), spatial_dims=2, slice_axis=1, augment=AugmentConfig(flip_prob=0.5),
                     batch_size=5, seed=1)
    x, y = s.batch(0)
    assert x.shape == (5, 1, 40, 24) and y.shape == (5, 1, 40, 24)
    with pytest.raises(ValueError, match="patch_size .* must have 2 values"):
        PatchSampler(cases, (40, 24, 8), spatial_dims=2)


def test_small_volumes_are_padded_to_the_patch():
    img = np.random.default_rng(0).normal(size=(1, 10, 12, 6)).astype(np.float32)
    lab = np.zeros((10, 12, 6), np.uint8)
    lab[4:6, 4:6, 2:4] = 1
    x, y = PatchSampler([SampleCase("small", img, lab)], (16, 16, 8), batch_size=2).batch(0)
    assert x.shape == (2, 1, 16, 16, 8) and int(y.sum()) > 0

"""The streamed accumulator and the slab resampler against straightforward whole-volume references."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.resample import SlabResampler, linear_source_indices
from medseg.inference.sliding_window import (
    gaussian_importance,
    iter_probability_slabs,
    sliding_window_probabilities,
    window_starts,
)


def _window_fn_factory(weights: np.ndarray, n_classes: int):
    """A deterministic 'network': per-voxel softmax of a position-dependent linear map of the input,
    so that overlapping windows disagree (blending is visible)."""

    def fn(batch: np.ndarray) -> np.ndarray:
        b = batch.shape[0]
        logits = np.stack([batch[:, 0] * (c + 1) - c * 0.3 for c in range(n_classes)], axis=1)
        # position inside the window changes the logits: neighbouring windows give different answers
        logits = logits + np.linspace(-1, 1, batch.shape[2])[None, None, :, None, None]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return (p * weights[None, None]).astype(np.float32).reshape((b, n_classes) + batch.shape[2:])

    return fn


def _naive(image, fn, k, patch, overlap, weights):
    """Whole-volume buffers (what MONAI does): the reference for the streamed version."""
    pad_lo = [max(0, p - s) // 2 for p, s in zip(patch, image.shape[1:])]
    pad_hi = [max(0, p - s) - lo for p, s, lo in zip(patch, image.shape[1:], pad_lo)]
    img = np.pad(image, [(0, 0)] + list(zip(pad_lo, pad_hi)))
    acc = np.zeros((k,) + img.shape[1:])
    w = np.zeros(img.shape[1:])
    for x in window_starts(img.shape[1], patch[0], overlap):
        for y in window_starts(img.shape[2], patch[1], overlap):
            for z in window_starts(img.shape[3], patch[2], overlap):
                sl = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
                acc[(slice(None),) + sl] += fn(img[(slice(None),) + sl][None])[0]
                w[sl] += weights
    out = acc / w
    crop = tuple(slice(lo, lo + s) for lo, s in zip(pad_lo, image.shape[1:]))
    return out[(slice(None),) + crop]


@pytest.mark.parametrize("shape,patch,overlap,batch", [
    ((30, 25, 41), (16, 16, 16), 0.25, 2),
    ((30, 25, 41), (16, 16, 16), 0.5, 5),
    ((12, 40, 9), (16, 16, 16), 0.25, 3),     # smaller than the window along two axes: padding
    ((20, 18, 33), (20, 18, 1), 0.25, 7),     # a 2D model's windows (one slice deep)
])
def test_streamed_accumulator_equals_whole_volume_reference(shape, patch, overlap, batch):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1,) + shape).astype(np.float32)
    k = 3
    weights = gaussian_importance(patch)
    fn = _window_fn_factory(weights, k)
    ref = _naive(image, fn, k, patch, overlap, weights)
    slabs = list(iter_probability_slabs(image, fn, k, patch, overlap=overlap, window_batch=batch))
    # gap-free, in order, and never the whole depth at once when there are several windows along Z
    z = 0
    for z0, slab in slabs:
        assert z0 == z
        z += slab.shape[-1]
    assert z == shape[2]
    if shape[2] > 2 * patch[2]:
        assert max(s.shape[-1] for _, s in slabs) < shape[2]
    out = sliding_window_probabilities(image, fn, k, patch, overlap=overlap, window_batch=batch)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_one_window_is_the_plain_softmax():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 16, 16, 16)).astype(np.float32)
    weights = gaussian_importance((16, 16, 16))
    fn = _window_fn_factory(weights, 2)
    out = sliding_window_probabilities(image, fn, 2, (16, 16, 16))
    plain = fn(image[None])[0] / weights
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)


def test_gaussian_and_window_starts():
    g = gaussian_importance((9, 1, 8))
    assert g.shape == (9, 1, 8) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() >= 1e-3
    assert g[4, 0, 3] == g[4, 0, 4]  # symmetric about the centre
    assert window_starts(100, 48, 0.25) == [0, 36, 52]
    assert window_starts(48, 48, 0.5) == [0]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 48, 1.0)


@pytest.mark.parametrize("in_shape,out_shape,slab", [
    ((20, 17, 13), (37, 30, 41), 3),    # upsampling (coarse network grid back to a fine input)
    ((40, 30, 50), (21, 30, 17), 7),    # downsampling along Z
    ((16, 16, 12), (16, 16, 12), 5),    # identity
])
def test_slab_resampler_equals_torch_trilinear(in_shape, out_shape, slab):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    k = 4
    data = rng.random((k,) + in_shape).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(data)[None], size=out_shape, mode="trilinear", align_corners=False)[0].numpy()
    rs = SlabResampler(in_shape, out_shape, k, max_bytes=k * out_shape[0] * out_shape[1] * 4 * 3 * 2)  # 2-slice chunks
    out = np.full((k,) + out_shape, np.nan, dtype=np.float32)
    for z in range(0, in_shape[2], slab):
        for oz, chunk in rs.push(data[..., z:z + slab]):
            out[..., oz:oz + chunk.shape[-1]] = chunk
    assert rs.done
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_linear_source_indices_clamp_at_the_borders():
    i0, i1, w1 = linear_source_indices(4, 8)
    assert i0[0] == 0 and w1[0] == 0.0       # first output clamps to the first input
    assert i1[-1] == 3 and i0[-1] == 3       # last output clamps to the last input


def test_nnunet_window_starts_and_gaussian():
    """nnU-Net's placement (its own docstring's example: 110 voxels, window 64, step 0.5 → 0, 23,
    46) and Gaussian (peak 10, float16 values, no zeros)."""
    from medseg.inference.sliding_window import nnunet_gaussian, nnunet_window_starts

    assert nnunet_window_starts(110, 64, 0.5) == [0, 23, 46]
    assert nnunet_window_starts(64, 64, 0.5) == [0]
    assert nnunet_window_starts(65, 64, 0.5) == [0, 1]
    g = nnunet_gaussian((8, 12, 10))
    assert g.max() == 10.0 and g.min() > 0 and np.array_equal(g, g.astype(np.float16).astype(np.float32))
    assert g[4, 6, 5] == 10.0 and np.allclose(g, g[::-1, ::-1, ::-1][::-1, ::-1, ::-1])


@pytest.mark.parametrize("patch", [(8, 12, 10), (96, 160, 160), (1, 192, 160), (7, 9, 5), (192, 160)])
def test_nnunet_gaussian_is_bit_identical_to_nnunets_filtered_impulse(patch):
    """nnU-Net's ``compute_gaussian``: ``gaussian_filter`` of a centred impulse, σ = patch/8,
    scaled to a peak of 10, float16, zeros raised to the smallest weight."""
    from scipy.ndimage import gaussian_filter

    from medseg.inference.sliding_window import nnunet_gaussian

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    expected = gaussian_filter(impulse, [p / 8.0 for p in patch], 0, mode="constant", cval=0)
    expected = (expected / (np.max(expected) / 10.0)).astype(np.float16)
    expected[expected == 0] = np.min(expected[expected != 0])
    np.testing.assert_array_equal(nnunet_gaussian(patch), expected.astype(np.float32))

"""Slab-wise resampling equals the whole-volume interpolation it streams."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.resample import AxisMap, SlabResampler


def _stream(data: np.ndarray, out_shape, modes, step: int = 3) -> np.ndarray:
    k = data.shape[0]
    maps = [getattr(AxisMap, m)(n, o) for m, n, o in zip(modes, data.shape[1:], out_shape)]
    r = SlabResampler(data.shape[1:], out_shape, k, axis_maps=maps, max_bytes=4096)
    out = np.empty((k,) + tuple(out_shape), dtype=np.float32)
    for z in range(0, data.shape[-1], step):
        for oz, chunk in r.push(data[..., z:z + step]):
            out[..., oz:oz + chunk.shape[-1]] = chunk
    assert r.done
    return out


def _nnunet_separate_z(data: np.ndarray, out_shape, axis: int) -> np.ndarray:
    """nnU-Net's export resampling with a separate axis (resample_data_or_seg, order 1 in-plane,
    order_z 0), written the way nnU-Net writes it: skimage resize per slice, then
    map_coordinates(order=0) over the whole grid."""
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    out = np.zeros((data.shape[0],) + tuple(out_shape))
    plane = [out_shape[i] for i in range(3) if i != axis]
    for c in range(data.shape[0]):
        tmp = list(out_shape)
        tmp[axis] = data.shape[1 + axis]
        here = np.zeros(tmp)
        for s in range(data.shape[1 + axis]):
            idx = [slice(None)] * 3
            idx[axis] = s
            here[tuple(idx)] = resize(data[c][tuple(idx)].astype(float), plane, 1, mode="edge", anti_aliasing=False)
        grid = np.mgrid[tuple(slice(0, n) for n in out_shape)].astype(float)
        for a in range(3):
            grid[a] = here.shape[a] / out_shape[a] * (grid[a] + 0.5) - 0.5
        out[c] = map_coordinates(here, grid, order=0, mode="nearest")
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nearest_along_one_axis_equals_nnunets_separate_z_export(axis):
    rng = np.random.default_rng(axis)
    data = rng.normal(size=(3, 9, 11, 7)).astype(np.float32)
    out_shape = [19, 14, 16]
    modes = ["linear"] * 3
    modes[axis] = "nearest"
    ours = _stream(data, out_shape, tuple(modes))
    ref = _nnunet_separate_z(data, out_shape, axis)
    assert np.abs(ours - ref).max() < 1e-5


def test_all_linear_equals_trilinear_and_skimage_order_1():
    from skimage.transform import resize

    rng = np.random.default_rng(5)
    data = rng.normal(size=(2, 8, 6, 10)).astype(np.float32)
    out_shape = (13, 5, 23)
    ours = _stream(data, out_shape, ("linear",) * 3)
    ref = np.stack([resize(c.astype(float), out_shape, 1, mode="edge", anti_aliasing=False) for c in data])
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("k", [1, 2, 20, 300])
def test_class_argmax_equals_numpys_argmax_ties_and_nans_included(k):
    from medseg.inference.resample import class_argmax

    rng = np.random.default_rng(k)
    scores = np.round(rng.random((k, 9, 7, 5)) * 4).astype(np.float32) / 4  # many ties
    scores[rng.integers(k), 2, 3, 1] = np.nan
    scores[:, 4, 4, 4] = np.nan
    expected = scores.argmax(axis=0)
    got = class_argmax(scores)
    assert got.dtype == (np.uint8 if k <= 256 else np.uint16)
    np.testing.assert_array_equal(got, expected)
    out = np.full((9, 7, 5), 77, dtype=np.uint16)
    assert class_argmax(scores.astype(np.float16), out=out) is out
    np.testing.assert_array_equal(out, scores.astype(np.float16).argmax(axis=0))
    with pytest.raises(ValueError, match="out has shape"):
        class_argmax(scores, out=np.empty((9, 7), dtype=np.uint8))

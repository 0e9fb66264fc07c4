"""Dense and grid CRF: accuracy against the exact kernel, and Dice gains on a noisy phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.postprocess import CRFConfig, dense_crf, grid_crf
from medseg.postprocess.filters import BilateralGridFilter, GaussianFilter


def test_dense_crf_raises_smallest_structure_and_lowers_none(noisy_phantom, dice):
    case = noisy_phantom
    before = case.probs.argmax(0)
    refined = dense_crf(case.image, case.probs, case.spacing, CRFConfig.for_modality("CT"))
    assert refined.shape == case.probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    after = refined.argmax(0)
    sizes = np.bincount(case.label.ravel(), minlength=6)
    smallest = int(np.argmin(sizes[1:])) + 1
    assert smallest == 5  # the tumours
    gains = {c: dice(after, case.label, c) - dice(before, case.label, c) for c in range(1, 6)}
    assert gains[smallest] >= 0.2, gains
    assert min(gains.values()) >= -0.01, gains


def test_float16_probabilities_and_zero_iterations(noisy_phantom):
    case = noisy_phantom
    p16 = case.probs.astype(np.float16)
    out0 = dense_crf(case.image, p16, case.spacing, CRFConfig.for_modality("CT", iterations=0))
    np.testing.assert_array_equal(out0.argmax(0), p16.astype(np.float32).argmax(0))
    out = dense_crf(case.image, p16, case.spacing, CRFConfig.for_modality("CT", iterations=2))
    assert out.dtype == np.float32 and out.shape == case.probs.shape


def _exact(features, q, sigmas):
    """Brute-force symmetric-normalised Gaussian filter over feature vectors (N×N)."""
    f = features / sigmas
    k = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
    ns = torch.rsqrt(k.sum(1))
    return ns * (k @ (ns * q))


def test_grid_filters_close_to_exact_kernel():
    torch.manual_seed(0)
    shape = (20, 18, 14)
    img = torch.zeros(shape, dtype=torch.float64)
    img[4:14, 3:15, 2:10] = 60
    img += torch.randn(shape, dtype=torch.float64) * 4
    lab = (img > 30).double()
    q = torch.nn.functional.avg_pool3d((0.7 * lab + 0.3 * torch.rand(shape, dtype=torch.float64))[None, None],
                                       3, 1, 1)[0, 0]
    pos = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"), -1)
    pos = pos.reshape(-1, 3)
    sig = (4.0, 4.0, 3.0)
    exact_b = _exact(torch.cat([pos, img.reshape(-1, 1)], 1), q.reshape(-1), torch.tensor(sig + (10.0,), dtype=torch.float64))
    grid_b = BilateralGridFilter(img[None], sig, [10.0], dtype=torch.float64, cells_per_sigma=2.0)(q).reshape(-1)
    assert float((grid_b - exact_b).abs().mean()) < 0.015 * float(q.std()) * 10
    assert float(torch.corrcoef(torch.stack([grid_b, exact_b]))[0, 1]) > 0.98
    exact_s = _exact(pos, q.reshape(-1), torch.tensor(sig, dtype=torch.float64))
    gauss = GaussianFilter(shape, sig, dtype=torch.float64)(q).reshape(-1)
    assert float(torch.corrcoef(torch.stack([gauss, exact_s]))[0, 1]) > 0.995


def test_bilateral_grid_matches_naive_crf_labels(dice):
    rng = np.random.default_rng(1)
    shape = (22, 20, 16)
    img = np.zeros(shape, np.float32)
    img[5:16, 4:15, 3:12] = 100.0
    img += rng.normal(0, 8, shape).astype(np.float32)
    truth = (img > 50).astype(np.int64)
    p1 = np.clip(0.25 + 0.5 * truth + rng.normal(0, 0.3, shape), 0.02, 0.98).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    cfg = dict(intensity_sigma=[10.0], iterations=5)
    grid = dense_crf(img, probs, (1.0, 1.0, 1.5), CRFConfig(**cfg, grid_cells_per_sigma=2.0)).argmax(0)
    naive = dense_crf(img, probs, (1.0, 1.0, 1.5), CRFConfig(**cfg, method="naive")).argmax(0)
    assert (grid == naive).mean() > 0.995
    assert dice(naive, truth, 1) > dice(probs.argmax(0), truth, 1) + 0.1


def test_compatibility_matrix_equals_potts():
    rng = np.random.default_rng(2)
    img = rng.normal(0, 10, (12, 10, 8)).astype(np.float32)
    p = rng.dirichlet([1, 1, 1], size=(12, 10, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    potts = dense_crf(img, p, (2.0, 2.0, 2.0), CRFConfig(intensity_sigma=[10.0]))
    mu = (1 - np.eye(3)).tolist()
    matrix = dense_crf(img, p, (2.0, 2.0, 2.0), CRFConfig(intensity_sigma=[10.0], compatibility=mu))
    np.testing.assert_allclose(potts, matrix, atol=1e-4)


def test_multichannel_image_and_grid_crf(noisy_phantom, dice):
    case = noisy_phantom
    crop = (slice(20, 50), slice(16, 46), slice(10, 34))
    two = np.stack([case.image[crop], case.image[crop] // 2])
    probs = case.probs[(slice(None),) + crop]
    out = dense_crf(two, probs, case.spacing, CRFConfig(intensity_sigma=[30.0, 15.0], iterations=2))
    assert out.shape == probs.shape
    with pytest.raises(ValueError, match="at most 3 image channels"):
        dense_crf(np.stack([case.image[crop]] * 4), probs, case.spacing, CRFConfig(intensity_sigma=[9.0] * 4))
    before = case.probs.argmax(0)
    for conn in (6, 26):
        g = grid_crf(case.image, case.probs, case.spacing, connectivity=conn, intensity_sigma=[12.0])
        assert g.shape == case.probs.shape
        assert dice(g.argmax(0), case.label, 1) > dice(before, case.label, 1) + 0.1


def test_config_and_input_errors(noisy_phantom):
    case = noisy_phantom
    with pytest.raises(ValueError, match="extra|Extra"):
        CRFConfig(iteration=3)
    with pytest.raises(ValueError, match="intensity_sigma"):
        CRFConfig(intensity_sigma=[-1.0])
    with pytest.raises(ValueError, match="modality"):
        CRFConfig.for_modality("PET")
    with pytest.raises(ValueError, match="spacing_mm"):
        dense_crf(case.image, case.probs, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="probs must be"):
        dense_crf(case.image, case.probs[0], case.spacing)
    with pytest.raises(ValueError, match="spatial shape"):
        dense_crf(case.image[:-1], case.probs, case.spacing)
    with pytest.raises(ValueError, match="compatibility matrix"):
        dense_crf(case.image, case.probs, case.spacing, CRFConfig(compatibility=[[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="channel"):
        dense_crf(case.image, case.probs, case.spacing, CRFConfig(intensity_sigma=[1.0, 2.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(noisy_phantom):
    case = noisy_phantom
    cfg = CRFConfig.for_modality("CT")
    cpu = dense_crf(case.image, case.probs, case.spacing, cfg)
    gpu = dense_crf(case.image, case.probs, case.spacing, cfg, device="cuda")
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() > 0.999

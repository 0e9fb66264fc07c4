"""Fixtures for the post-processing tests: a CT-like phantom with noisy "network" probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class NoisyCase:
    image: np.ndarray  # (X, Y, Z) int16 HU
    label: np.ndarray  # (X, Y, Z) uint8 ground truth
    probs: np.ndarray  # (K, X, Y, Z) float32 softmax-like probabilities
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * float((x & y).sum()) / total


@pytest.fixture(scope="session")
def dice():
    """``dice(pred, ref, k)``: Dice of class ``k`` (1.0 when both are empty)."""
    return _dice


@pytest.fixture(scope="session")
def noisy_phantom() -> NoisyCase:
    """Phantom (72×64×48 at 3 mm, oblique-free RAS) whose probabilities are the truth blurred plus noise.

    One-hot ground truth, Gaussian blur σ = 1 voxel per class, additive Gaussian noise σ = 0.35,
    clipped at 1e-3 and renormalised: argmax Dice is poor everywhere (tumour ≈ 0.1).
    """
    from scipy.ndimage import gaussian_filter

    from medseg.phantoms import make_phantom

    study = make_phantom(0, shape=(72, 64, 48), tumour_radius_mm=(9.0, 12.0), n_tumours=2)
    label = study.label.array
    k = 6
    rng = np.random.default_rng(0)
    onehot = np.stack([(label == c).astype(np.float32) for c in range(k)])
    blurred = np.stack([gaussian_filter(o, 1.0) for o in onehot])
    probs = np.clip(blurred + rng.normal(0, 0.35, blurred.shape), 1e-3, None)
    probs = (probs / probs.sum(0)).astype(np.float32)
    return NoisyCase(study.image.array, label, probs, study.image.spacing, study.image.affine)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run this area's tests on one torch thread (restored afterwards).

    On a shared, oversubscribed CPU, two OpenMP threads that wait for each other run the CRF's
    many short element-wise passes up to 20x slower than one thread (measured here).
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

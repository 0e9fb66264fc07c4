"""Fixtures for the model tests: tiny widths per architecture, odd non-square inputs, a phantom patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP synchronisation costs on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def phantom_patch() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One phantom study as a training patch: ``{3: (image (1, 1, 19, 24, 29), target (1, 19, 24, 29)),
    2: (image (1, 1, 33, 47), target (1, 33, 47))}``; image windowed HU / 200, target 0 background,
    1 organ, 2 tumour."""
    from medseg.phantoms import make_phantom

    study = make_phantom(3, shape=(29, 24, 19), spacing=(7.0, 7.0, 9.0), n_tumours=2)
    image = np.clip(study.image.array.astype(np.float32), -200, 300) / 200.0
    label = study.label.array
    target = np.where(label == 5, 2, np.where(label > 0, 1, 0)).astype(np.int64)
    vol_x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))[None, None]
    vol_y = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 1, 0)))[None]
    slab = make_phantom(3, shape=(33, 47, 1), spacing=(5.0, 4.0, 5.0), n_tumours=2)
    s_img = np.clip(slab.image.array[..., 0].astype(np.float32), -200, 300) / 200.0
    s_lab = slab.label.array[..., 0]
    s_tgt = np.where(s_lab == 5, 2, np.where(s_lab > 0, 1, 0)).astype(np.int64)
    return {3: (vol_x, vol_y), 2: (torch.from_numpy(s_img)[None, None], torch.from_numpy(s_tgt)[None])}

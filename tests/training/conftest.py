"""Fixtures for the training tests: one phantom archive, one quickly trained model, tiny configs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

TINY_CONFIG: dict = {
    "model": {"name": "unet", "spatial_dims": 3,
              "options": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}},
    "loss": {"name": "dice_ce"},
    "optimiser": {"name": "adamw", "lr": 0.01},
    "schedule": {"name": "poly", "warmup_steps": 2},
    "patch_size": [32, 32, 24],
    "batch_size": 2,
    "steps": 12,
    "steps_per_epoch": 4,
    "validation": {"every_epochs": 1, "overlap": 0.25, "sw_batch_size": 2},
    "data": {
        "channels": ["CT"],
        "labels": {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"},
        "regions": {"kidneys": [3, 4]},
        "preprocess": {"target_spacing": [6.0, 6.0, 6.0], "intensity": [{"kind": "ct", "window": [-150, 250]}]},
        "sampling": {"pos": 1.0, "neg": 1.0},
        # every kind of augmentation, so that resumption is tested through all of their randomness
        "augment": {"flip_prob": 0.5, "rot90_prob": 0.5, "affine_prob": 0.5, "intensity_scale_prob": 0.5,
                    "noise_prob": 0.5},
    },
    "seed": 3,
    "autocast": "none",
    "checkpoint_every_steps": 3,
    "num_threads": 1,
}


def tiny_config(**updates) -> dict:
    """A copy of :data:`TINY_CONFIG` with top-level keys replaced (``data`` merged one level)."""
    cfg = copy.deepcopy(TINY_CONFIG)
    for key, value in updates.items():
        if key == "data":
            cfg["data"].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    """4 phantoms (3 train, 1 val) on the archive's varied grids (RAS, oblique LPS, anisotropic, oblique LAS)."""
    from medseg.phantoms import write_phantom_archive

    return write_phantom_archive(tmp_path_factory.mktemp("phantoms"), 4, seed=10, splits={"train": 3, "val": 1})


@pytest.fixture(scope="session")
def quick_model(quick_phantom_root) -> Path:
    """The ready-made model of :func:`medseg.training.quick_train_phantom_model` (trained once per session)."""
    return quick_phantom_root / "model"


def segment_volume(model_dir: Path, image) -> np.ndarray:
    """Label map on ``image``'s own grid, from nothing but the model directory (plans + weights)."""
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.models import create_model
    from medseg.plans import load_plans
    from medseg.preprocess import invert_spatial, preprocess_case

    plans = load_plans(model_dir)
    net = create_model(plans.model.name, plans.model.spatial_dims, plans.model.in_channels, plans.model.out_channels,
                       **plans.model.options)
    net.load_state_dict(torch.load(Path(model_dir) / "model.pt", weights_only=True))
    net.eval()
    case = preprocess_case([image], plans.preprocess)
    x = torch.from_numpy(case.image)
    with torch.no_grad():
        if plans.model.spatial_dims == 3:
            logits = sliding_window_inference(x[None], plans.inference.patch_size, 2, net, overlap=0.25)[0]
        else:
            axis = plans.inference.slice_axis
            slices = x.movedim(1 + axis, 0)
            logits = sliding_window_inference(slices, plans.inference.patch_size, 8, net, overlap=0.25)
            logits = logits.permute(1, 0, 2, 3).movedim(1, 1 + axis)  # (S, K, H, W) -> (K, X, Y, Z)
    pred = logits.argmax(0).numpy().astype(np.uint8)
    return invert_spatial(pred, case.inverse, "nearest")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())

"""Fixtures for the training tests: one phantom archive, one quickly trained model, tiny configs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
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


def segment_volume(model_dir: Path, image, **options) -> np.ndarray:
    """Label map on ``image``'s own grid, from nothing but the model directory (the user's predictor)."""
    from medseg.inference import Predictor

    return Predictor.from_model_dir(model_dir, device="cpu", **options).predict(image).labels.array


def predictor_val_dice(model_dir: Path, manifest: Path, labels: dict[int, str], num_threads: int,
                       autocast: str = "none") -> float:
    """Mean over ``labels`` (NaN-free) of the Dice of ``Predictor.from_model_dir(model_dir)`` on the
    manifest's ``val`` cases, on their own grid: what a user evaluating the model directory gets
    with the backend the trainer validates with (torch; ``--backend auto`` may pick OpenVINO,
    whose labels differ at near-ties)."""
    from medseg.io import read_label, read_volume
    from medseg.manifest import read_manifest

    per_label: dict[int, list[float]] = {lab: [] for lab in labels}
    for row in (r for r in read_manifest(manifest) if r.split == "val"):
        images = [read_volume(p) for p in row.images]
        ref = read_label(row.label, images[0]).array
        pred = segment_volume(model_dir, images, num_threads=num_threads, autocast=autocast, backend="torch")
        for lab in labels:
            p, r = pred == lab, ref == lab
            if p.any() or r.any():
                per_label[lab].append(2.0 * float((p & r).sum()) / float(p.sum() + r.sum()))
    means = [float(np.mean(v)) for v in per_label.values() if v]
    return float(np.mean(means))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())

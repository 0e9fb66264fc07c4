"""Fixtures for inference tests: a small 3D U-Net trained on phantoms once per session (~40 s),
written as a real model directory (model.pt state_dict + plans.json + labels.json)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.phantoms import PHANTOM_LABELS

UNET_OPTIONS = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 2}
CT_WINDOW = (-200.0, 300.0)
TRAIN_STEPS = 120  # about 30 s on this 2-core CPU; foreground Dice about 0.9 on an unseen phantom


def phantom_plans(spatial_dims: int = 3, patch_size=(48, 48, 48), slice_axis=None, out_channels: int = 6):
    from medseg.plans import InferenceDefaults, ModelPlans, ModelSpec
    from medseg.preprocess import IntensityConfig, PreprocessConfig

    labels = PHANTOM_LABELS if out_channels == 6 else {i: f"class_{i}" for i in range(1, out_channels)}
    return ModelPlans(
        model=ModelSpec(name="unet", spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels,
                        options=UNET_OPTIONS),
        preprocess=PreprocessConfig(orientation="RAS", target_spacing=(3.0, 3.0, 3.0),
                                    intensity=[IntensityConfig(kind="ct", window=CT_WINDOW)]),
        inference=InferenceDefaults(patch_size=tuple(patch_size), overlap=0.25, slice_axis=slice_axis),
        labels=labels, channel_names=["CT"])


def _soft_dice_ce(logits, target, n_classes):
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - ((2 * inter + 1e-5) / (denom + 1e-5))[:, 1:].mean()
    return ce + dice


def train_phantom_model(out_dir: Path, archive_dir: Path, *, steps: int = TRAIN_STEPS, seed: int = 0) -> Path:
    """Plain training loop (fixed step count, fixed seeds): 3 phantoms read from a real archive, random 48³ patches, Dice+CE, bf16."""
    import torch

    from medseg.io import read_label, read_volume
    from medseg.models import create_model
    from medseg.plans import save_plans
    from medseg.preprocess import preprocess_case

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    plans = phantom_plans()
    manifest = archive_dir / "manifest.csv"
    cases = []
    with open(manifest) as f:
        for row in csv.DictReader(f):
            if row["split"] != "train":
                continue
            img = read_volume(archive_dir / row["image"])
            lab = read_label(archive_dir / row["label"], img)
            pc = preprocess_case([img], plans.preprocess, lab)
            cases.append((pc.image, pc.label.astype(np.int64)))
    spec = plans.model
    net = create_model(spec.name, spec.spatial_dims, spec.in_channels, spec.out_channels, **spec.options)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-5)
    patch = plans.inference.patch_size
    net.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for _ in range(2):
            image, label = cases[rng.integers(len(cases))]
            pads = [(0, max(0, p - s)) for p, s in zip(patch, label.shape)]
            if any(p[1] for p in pads):
                image = np.pad(image, [(0, 0)] + pads)
                label = np.pad(label, pads)
            o = [int(rng.integers(0, s - p + 1)) for s, p in zip(label.shape, patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(o, patch))
            xs.append(image[(slice(None),) + sl])
            ys.append(label[sl])
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
        loss = _soft_dice_ce(logits.float(), y, spec.out_channels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out_dir / "model.pt")
    save_plans(plans, out_dir)
    seconds = time.perf_counter() - start
    (out_dir / "training_log.csv").write_text(f"steps,seconds,last_loss\n{steps},{seconds:.1f},{float(loss.detach()):.4f}\n")
    return out_dir


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> Path:
    from medseg.phantoms import write_phantom_archive

    out = tmp_path_factory.mktemp("phantom_archive")
    write_phantom_archive(out, 4, splits={"train": 3, "test": 1})
    return out


@pytest.fixture(scope="session")
def phantom_model(tmp_path_factory, phantom_archive) -> Path:
    """A real model directory trained on 3 phantoms (the 4th, a test case, is never seen)."""
    return train_phantom_model(tmp_path_factory.mktemp("model") / "phantom_unet", phantom_archive)


@pytest.fixture(scope="session")
def phantom_predictor(phantom_model):
    from medseg.inference import Predictor

    return Predictor.from_model_dir(phantom_model, device="cpu")

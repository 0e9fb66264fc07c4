"""Helpers of the batch-flow tests: tiny phantom archives and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

from medseg.io import write_volume
from medseg.phantoms import make_phantom

TINY_SHAPE = (32, 32, 20)
TINY_SPACING = (6.0, 6.0, 7.5)


def tiny_study(seed: int):
    """A small phantom study (32x32x20 voxels at 6x6x7.5 mm): organs and a tumour."""
    return make_phantom(seed, shape=TINY_SHAPE, spacing=TINY_SPACING, n_tumours=1)


def write_tiny_archive(root: Path, n: int, *, seed: int = 100, labels: bool = False) -> list[str]:
    """``n`` tiny phantom NIfTI studies ``root/study_XX.nii.gz`` (+ ``root/labels/``); returns ids."""
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        s = tiny_study(seed + i)
        sid = f"study_{i:02d}"
        write_volume(s.image, root / f"{sid}.nii.gz")
        if labels:
            write_volume(s.label, root / "labels" / f"{sid}.nii.gz")
        ids.append(sid)
    return ids


def _train_tiny_unet(out: Path, steps: int = 15) -> Path:
    """Train a tiny medseg U-Net a few seconds on phantoms and save it as a model directory."""
    import numpy as np
    import torch

    from medseg.models import create_model
    from medseg.phantoms import PHANTOM_LABELS
    from medseg.plans import WEIGHTS_FILE, InferenceDefaults, ModelPlans, ModelSpec, save_plans
    from medseg.preprocess import IntensityConfig, PreprocessConfig, preprocess_case

    torch.manual_seed(0)
    pre = PreprocessConfig(target_spacing=TINY_SPACING, intensity=[IntensityConfig(kind="ct", window=(-200, 250))])
    spec = ModelSpec(name="unet", in_channels=1, out_channels=6,
                     options={"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1})
    net = create_model(spec.name, 3, 1, 6, **spec.options)
    cases = [preprocess_case([s.image], pre, s.label) for s in (tiny_study(i) for i in range(2))]
    x = torch.from_numpy(np.stack([c.image for c in cases]))
    y = torch.from_numpy(np.stack([c.label for c in cases])).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    plans = ModelPlans(model=spec, preprocess=pre, inference=InferenceDefaults(patch_size=(32, 32, 20)),
                       labels=dict(PHANTOM_LABELS))
    save_plans(plans, out)
    torch.save(net.state_dict(), out / WEIGHTS_FILE)
    return out

"""A trained nnU-Net 3d_fullres model for the backends benchmark's ``nnunet`` case.

Label agreement between backends means little on random weights: every voxel is a near tie
between classes, so any rounding flips labels. This trains the ``small`` model of
``benchmarks/nnunet`` (nnU-Net 2.8.1's default 3d_fullres plans for a 0.78×0.78×1 mm CT,
PlainConvUNet 32→320 in 6 stages, 6 classes) on CT phantoms (liver, spleen, both kidneys,
tumours) for a fixed number of steps, and writes it as an nnU-Net model folder (the same
``plans.json`` and ``dataset.json``, ``fold_0/checkpoint_final.pth`` in nnU-Net's checkpoint
format), so that medseg and ``nnUNetv2_predict`` both run it.

Training: nnU-Net's preprocessing of each phantom (medseg's implementation), random crops of
32×64×64 voxels (nnU-Net's axis order; two in three centred on a foreground voxel), batch 2,
Dice + cross-entropy, AdamW 3e-3 decaying linearly to a tenth, gradients clipped at a norm of 12 (nnU-Net's), ``STEPS`` steps,
seeded. About 14 minutes on 2 CPU threads; the folder is written once and reused while its spec
is unchanged.

    python benchmarks/backends/nnunet_trained.py       # writes _work/nnunet_trained/ (run.py calls it too)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work"
STEPS = 280
CROP = (32, 64, 64)  # nnU-Net's axis order; divisible by the network's total strides (16, 32, 32)
SHAPE_XYZ = (200, 200, 120)
TRAIN_SEEDS = (21, 22, 23, 24)
SPEC = {"steps": STEPS, "crop": list(CROP), "seeds": list(TRAIN_SEEDS), "shape": list(SHAPE_XYZ), "lr": 3e-3,
        "loss": "dice_ce", "batch": 2, "clip": 12.0, "version": 2}


def _training_case(seed: int, cfg):
    """One phantom on the network's grid: ``(1, a, b, c)`` float32 input and ``(a, b, c)`` labels."""
    from benchmarks.nnunet.run import SPACING_XYZ
    from medseg.inference.nnunet.preprocess import preprocess
    from medseg.phantoms import make_phantom

    rotation = tuple(float(r) for r in np.random.default_rng(seed).uniform(-12, 12, size=3))
    study = make_phantom(seed, shape=SHAPE_XYZ, spacing=SPACING_XYZ, orientation="RAS", rotation_deg=rotation,
                         n_tumours=3)
    spacing_nn = [float(s) for s in SPACING_XYZ[::-1]]
    case = preprocess([np.asarray(study.image.array).transpose(2, 1, 0)], spacing_nn, cfg)
    labels = np.asarray(study.label.array).transpose(2, 1, 0)
    labels = labels[tuple(slice(lo, hi) for lo, hi in case.bbox)]
    if case.data.shape[1:] != labels.shape:
        raise RuntimeError(f"the phantom was resampled ({case.data.shape[1:]} vs {labels.shape}): "
                           "train on the plans' spacing")
    return case.data.astype(np.float32), labels.astype(np.int64)


def _crop(rng, image, labels):
    shape = labels.shape
    if rng.random() < 2 / 3 and labels.any():
        fg = np.argwhere(labels > 0)
        centre = fg[rng.integers(len(fg))]
        start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, CROP, shape)]
    else:
        start = [int(rng.integers(0, n - s + 1)) for s, n in zip(CROP, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, CROP))
    return image[(slice(None),) + sl], labels[sl]


def trained_model() -> Path:
    """The trained model folder (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``), trained now if absent."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.nnunet.run import SMALL_PLANS, write_model

    source = write_model("small", SMALL_PLANS)
    root = WORK / "nnunet_trained"
    folder = root / source.name
    stamp = root / "trained.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == SPEC:
        return folder

    import torch

    from medseg.inference.nnunet.config import build_network, load_checkpoint, read_config
    from medseg.losses import create_loss

    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source.parent, root)
    cfg = read_config(folder)
    cases = [_training_case(s, cfg) for s in TRAIN_SEEDS]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = build_network(cfg).train()
    loss_fn = create_loss("dice_ce")
    opt = torch.optim.AdamW(net.parameters(), lr=SPEC["lr"], weight_decay=1e-4)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    losses = []
    for step in range(STEPS):
        picks = [cases[int(rng.integers(len(cases)))] for _ in range(SPEC["batch"])]
        crops = [_crop(rng, img, lab) for img, lab in picks]
        x = torch.from_numpy(np.stack([c[0] for c in crops]))
        y = torch.from_numpy(np.stack([c[1] for c in crops]))
        for group in opt.param_groups:  # linear decay to a tenth
            group["lr"] = SPEC["lr"] * (1.0 - 0.9 * step / STEPS)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)  # nnU-Net's clip
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 9:
            print(f"[nnunet_trained] step {step + 1}/{STEPS}: loss {np.mean(losses[-10:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    ckpt_path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(ckpt_path)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if set(state) != set(ckpt["network_weights"]):
        raise RuntimeError("the trained network's weights do not match the folder's checkpoint keys")
    ckpt["network_weights"] = state
    tmp = ckpt_path.with_name(ckpt_path.name + ".partial")
    torch.save(ckpt, tmp)
    tmp.replace(ckpt_path)
    stamp.write_text(json.dumps({"spec": SPEC, "final_loss": float(np.mean(losses[-10:])),
                                 "train_seconds": time.perf_counter() - t0}, indent=1))
    return folder


if __name__ == "__main__":
    print(trained_model())

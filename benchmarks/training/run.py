"""Training benchmark on the real BraTS gliomas (../shared/data/brats_glioma): ours vs a plain MONAI loop.

1. **Throughput**, side by side in this run: training samples per second of ``medseg.training.train``
   and of a plain hand-written MONAI loop (``CacheDataset`` + ``DataLoader`` + the same transforms,
   model, loss, optimiser, patch and batch), in fp32 and under bf16 autocast. Same thread count,
   same number of steps; the first ``--warmup`` steps of each are not timed.
2. **Training run**: ``configs/brats_unet3d.yaml`` (bf16) for ``--steps`` steps on the 3 training
   cases, validated by sliding window on the 4th: wall time, peak memory, whole-tumour Dice.

Each measurement runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is
its own. Results go to ``results.json`` and the table of ``README.md`` next to this file.

    python benchmarks/training/run.py                      # ~10-15 min on 2 cores
    python benchmarks/training/run.py --steps 100 --throughput-steps 12   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "configs" / "brats_unet3d.yaml"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(steps: int, autocast: str, threads: int, validate: bool, steps_per_epoch: int):
    from medseg.training import load_train_config

    cfg = load_train_config(CONFIG)
    data = cfg.data.model_copy(update={"val_split": cfg.data.val_split if validate else "none"})
    return cfg.model_copy(update={"steps": steps, "epochs": None, "steps_per_epoch": steps_per_epoch,
                                  "autocast": autocast, "num_threads": threads, "data": data,
                                  "validation": cfg.validation.model_copy(update={"every_epochs": 10**6}),
                                  "checkpoint_every_steps": 10**6})


def child_ours(steps: int, warmup: int, autocast: str, threads: int, validate: bool) -> dict:
    from medseg.training import train

    t0 = time.perf_counter()
    # log rows every `warmup` steps: the first row is the warm-up, the rest are timed
    cfg = _config(steps, autocast, threads, validate, steps_per_epoch=warmup if not validate else steps)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = train(cfg, out_dir=Path(tmp) / "run", device="cpu", progress=False)
        log = json.loads((model_dir / "training_log.json").read_text())
    wall = time.perf_counter() - t0
    rows = log["epochs"]
    out = {"wall_s": wall, "steps": steps, "peak_rss_mb": _rss_mb(), "final_train_loss": rows[-1]["train_loss"]}
    if validate:
        last = rows[-1]
        out.update({"train_s": last["train_seconds"], "val_s": last.get("val_seconds"),
                    "samples_per_s": last["samples_per_s"],
                    "val_dice": {k[len("val_dice_"):]: v for k, v in last.items() if k.startswith("val_dice_")}})
    else:
        timed = rows[1:]
        secs = sum(r["train_seconds"] for r in timed)
        n = sum(r["step"] - p["step"] for p, r in zip(rows[:-1], rows[1:]))
        out.update({"timed_steps": n, "timed_s": secs, "samples_per_s": n * cfg.batch_size / secs})
    return out


def child_monai(steps: int, warmup: int, autocast: str, threads: int) -> dict:
    """A plain MONAI training loop, written the way the MONAI tutorials write it."""
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        Spacingd,
        SpatialPadd,
    )

    from medseg.manifest import read_manifest
    from medseg.models import create_model

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    cfg = _config(steps, autocast, threads, False, warmup)
    manifest = cfg.data.manifest
    rows = read_manifest(manifest)
    files = [{"image": [str(p) for p in r.images], "label": str(r.label)} for r in rows if r.split == "train"]
    keys = ["image", "label"]
    patch = tuple(cfg.patch_size)
    a = cfg.data.augment
    transforms = Compose([
        LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=cfg.data.preprocess.target_spacing, mode=("bilinear", "nearest")),
        CropForegroundd(keys, source_key="image", select_fn=lambda x: x > -2.5, margin=2),
        SpatialPadd(keys, spatial_size=patch),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=1),
        RandFlipd(keys, prob=a.flip_prob, spatial_axis=0), RandFlipd(keys, prob=a.flip_prob, spatial_axis=1),
        RandFlipd(keys, prob=a.flip_prob, spatial_axis=2),
        RandAffined(keys, prob=a.affine_prob, rotate_range=(np.radians(a.rotate_deg),) * 3,
                    scale_range=[(a.scale_range[0] - 1, a.scale_range[1] - 1)] * 3, mode=("bilinear", "nearest")),
        RandScaleIntensityd("image", factors=a.intensity_scale, prob=a.intensity_scale_prob),
        RandGaussianNoised("image", prob=a.noise_prob, std=a.noise_std),
    ])
    transforms.set_random_state(seed=0)
    ds = CacheDataset(files, transforms, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0, drop_last=True)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 3, len(cfg.data.channels), cfg.num_classes, **cfg.model.options)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimiser.lr, weight_decay=cfg.optimiser.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    setup = time.perf_counter() - t0
    dtype = torch.bfloat16 if autocast == "bf16" else None
    step, timed_start, loss = 0, None, None
    model.train()
    while step < steps:
        for batch in loader:
            if step == warmup:
                timed_start = time.perf_counter()
            x, y = batch["image"], batch["label"]
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        if len(ds) < cfg.batch_size:
            raise RuntimeError("fewer training cases than the batch size")
    timed = time.perf_counter() - timed_start
    n = steps - warmup
    return {"wall_s": time.perf_counter() - t0, "setup_s": setup, "steps": steps, "timed_steps": n, "timed_s": timed,
            "samples_per_s": n * cfg.batch_size / timed, "peak_rss_mb": _rss_mb(), "final_train_loss": float(loss)}


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    print(f"  {' '.join(args)}: {json.dumps({k: v for k, v in res.items() if k != 'val_dice'})}", flush=True)
    return res


def _table(results: dict) -> str:
    tp = results["throughput"]
    lines = ["| precision | medseg trainer (samples/s) | plain MONAI loop (samples/s) | ratio (ours / MONAI) "
             "| peak RSS ours / MONAI (MB) |", "|---|---|---|---|---|"]
    for prec in ("fp32", "bf16"):
        o, m = tp[prec]["ours"], tp[prec]["monai"]
        lines.append(f"| {prec} | {o['samples_per_s']:.2f} | {m['samples_per_s']:.2f} | "
                     f"{o['samples_per_s'] / m['samples_per_s']:.2f} | {o['peak_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} |")
    tr = results["training"]
    d = tr["val_dice"]
    lines += ["", "| training run (bf16) | value |", "|---|---|",
              f"| steps × batch | {tr['steps']} × {results['batch_size']} |",
              f"| wall time (load + train + validate) | {tr['wall_s']:.0f} s |",
              f"| of which training steps | {tr['train_s']:.0f} s ({tr['samples_per_s']:.2f} samples/s) |",
              f"| peak memory (RSS) | {tr['peak_rss_mb']:.0f} MB |",
              f"| whole-tumour Dice (val case) | {d.get('whole_tumour', float('nan')):.3f} |",
              f"| tumour core / enhancing Dice | {d.get('tumour_core', float('nan')):.3f} / "
              f"{d.get('enhancing_tumour', float('nan')):.3f} |",
              f"| per-class Dice necrosis / edema / non-enh. / enh. | {d.get('necrosis', float('nan')):.3f} / "
              f"{d.get('edema', float('nan')):.3f} / {d.get('non_enhancing', float('nan')):.3f} / "
              f"{d.get('enhancing', float('nan')):.3f} |"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="*")
    p.add_argument("--steps", type=int, default=240, help="steps of the training run")
    p.add_argument("--throughput-steps", type=int, default=20, help="steps per throughput measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps of each throughput measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 2, or 1 when the machine is busy)")
    args = p.parse_args()
    if args.child is not None:
        kind, autocast, steps, warmup, threads = args.child[0], args.child[1], *map(int, args.child[2:5])
        if kind == "ours":
            res = child_ours(steps, warmup, autocast, threads, validate=False)
        elif kind == "train":
            res = child_ours(steps, warmup, autocast, threads, validate=True)
        else:
            res = child_monai(steps, warmup, autocast, threads)
        print(json.dumps(res))
        return

    from medseg.runtime import default_threads

    threads = args.threads or default_threads()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"threads {threads}, load average {load_before[0]:.1f}", flush=True)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads,
                                 "load_average_before": load_before,
                                 "note": "shared 2-core machine (up to 8 engineers running tests at once): absolute "
                                         "timings are noisy; the side-by-side ratios are what counts"},
                     "config": str(CONFIG.relative_to(ROOT)), "throughput": {}}
    from medseg.training import load_train_config

    cfg = load_train_config(CONFIG)
    results["batch_size"] = cfg.batch_size
    results["patch_size"] = cfg.patch_size
    for prec, autocast in (("fp32", "none"), ("bf16", "bf16")):
        common = [autocast, str(args.throughput_steps), str(args.warmup), str(threads)]
        results["throughput"][prec] = {"ours": _run_child(["ours", *common]), "monai": _run_child(["monai", *common])}
    results["training"] = _run_child(["train", "bf16", str(args.steps), str(args.warmup), str(threads)])
    results["total_s"] = time.perf_counter() - t0
    results["machine"]["load_average_after"] = os.getloadavg()
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    table = _table(results)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- results -->", "<!-- /results -->"
    block = f"{start}\n{table}\n\nMachine: {results['machine']['platform']}, {threads} torch thread(s), load average " \
            f"{load_before[0]:.1f} before / {results['machine']['load_average_after'][0]:.1f} after; shared with other " \
            f"engineers' test runs, so absolute figures are noisy (ratios measured side by side in one run).\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + block + "\n"
    readme.write_text(text)
    print(table)


if __name__ == "__main__":
    main()

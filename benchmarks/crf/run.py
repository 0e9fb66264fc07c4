"""Benchmark: medseg's dense 3D CRF (bilateral grid, PyTorch) against SimpleCRF's densecrf3d.

Both run on the same CT-like phantom volumes (96×128×128 and 128×256×256, 3 classes) with the
same mean-field iterations and kernel parameters (σ in voxels, intensities on a 0–255 scale).
Each implementation runs in its own fresh interpreter (ours: this project's Python; SimpleCRF:
its own venv, see README.md), interleaved ours/theirs/ours/theirs so that load from other users
of the machine hits both alike. Records time, time ratio, peak RSS increase, Dice before and
after for both, and our time per iteration against a memory-bandwidth floor.

    python benchmarks/crf/run.py [--simplecrf-python /work/venv-simplecrf/bin/python] [--repeats 2]

Writes benchmarks/crf/results.json.
"""

from __future__ import annotations

import argparse
import os
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = dict(iterations=5, spatial_sigma=3.0, spatial_weight=3.0, bilateral_sigma=10.0, bilateral_weight=5.0,
              intensity_sigma=10.0)
# (name, shape, spacing of the phantom in mm): axis 0 points superior, 1 right, 2 anterior, so the
# body and organs fill the volume; the CRFs work in voxel units (σ in voxels) on both sides.
VOLUMES = [
    ("96x128x128", (96, 128, 128), (1.0, 1.6, 1.4)),
    ("128x256x256", (128, 256, 256), (0.8, 0.8, 0.7)),
]
N_CLASSES = 3


def make_case(shape, spacing, seed=0):
    """uint8 image (HU window −160..240 → 0..255), 3-class truth, and noisy probabilities."""
    from scipy.ndimage import gaussian_filter

    from medseg.phantoms import make_phantom

    study = make_phantom(seed, shape=shape, spacing=spacing, orientation="SRA", tumour_radius_mm=(8.0, 12.0))
    hu = study.image.array.astype(np.float32)
    image = np.clip((hu + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    lab = study.label.array
    truth = np.zeros(lab.shape, np.uint8)
    truth[(lab == 1) | (lab == 5)] = 1
    truth[(lab >= 2) & (lab <= 4)] = 2
    rng = np.random.default_rng(seed)
    probs = np.empty((N_CLASSES,) + lab.shape, np.float32)
    for k in range(N_CLASSES):
        probs[k] = gaussian_filter((truth == k).astype(np.float32), 1.5)
        probs[k] += rng.normal(0, 0.35, lab.shape).astype(np.float32)
    np.clip(probs, 1e-3, None, out=probs)
    probs /= probs.sum(0, keepdims=True)
    return image, truth, probs


def dice(a, b, k):
    x, y = a == k, b == k
    s = int(x.sum() + y.sum())
    return 1.0 if s == 0 else 2.0 * float((x & y).sum()) / s


def dices(pred, truth):
    return {str(k): dice(pred, truth, k) for k in range(1, N_CLASSES)}


def run_worker(cmd, case, tmp):
    out, res = tmp / "labels.npz", tmp / "result.json"
    for p in (out, res):
        p.unlink(missing_ok=True)
    proc = subprocess.run(cmd + [str(case), str(out), str(res)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(res.read_text())
    return np.load(out)["labels"], result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simplecrf-python", default="/work/venv-simplecrf/bin/python")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to run ours with (comma-separated)")
    ap.add_argument("--device", default="cpu", help="also time ours on this device (cuda) when not cpu")
    ap.add_argument("--only", default=None, help="run only the volume with this name")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()

    ours_cmd = [sys.executable, str(HERE / "ours_worker.py")]
    theirs_cmd = [args.simplecrf_python, str(HERE / "simplecrf_worker.py")]
    threads = [int(t) for t in args.threads.split(",")]
    contenders = [(f"ours_{t}t", ours_cmd + ["--threads", str(t), "--"]) for t in threads]
    contenders.append(("simplecrf", theirs_cmd))
    results = {"params": PARAMS, "classes": N_CLASSES, "ours_threads": threads, "simplecrf_threads": 1, "machine": platform.platform(),
               "python": sys.version.split()[0], "load_average_at_start": os.getloadavg()[0],
               "note": "ours and SimpleCRF are interleaved so that both see the same load from other jobs",
               "volumes": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, shape, spacing in VOLUMES:
            if args.only and name != args.only:
                continue
            image, truth, probs = make_case(shape, spacing)
            case = tmp / "case.npz"
            np.savez(case, image=image, probs=probs, params=json.dumps(PARAMS), axes=json.dumps([1, 0, 2]))
            base = dices(probs.argmax(0), truth)
            runs = {who: [] for who, _ in contenders}
            labels = {}
            for _ in range(args.repeats):
                for who, cmd in contenders:
                    lab, res = run_worker(cmd, case, tmp)
                    runs[who].append(res)
                    labels[who] = lab
                    print(name, who, f"{res['seconds']:.2f} s", flush=True)
            n_vox = int(np.prod(shape))
            best = {who: min(r["seconds"] for r in rs) for who, rs in runs.items()}
            median = {who: float(np.median([r["seconds"] for r in rs])) for who, rs in runs.items()}
            # one fused iteration reads the unaries and Q and writes Q (3 × K × N float32) plus the grid
            # indices/weights (8 bytes per voxel): the memory traffic no implementation can avoid
            floor_bytes = (3 * N_CLASSES * 4 + 8) * n_vox
            ours = [who for who in runs if who.startswith("ours")]
            entry = {
                "shape": list(shape), "voxels": n_vox,
                "dice_before": base,
                "dice_after": {who: dices(lab, truth) for who, lab in labels.items()},
                "label_agreement_with_simplecrf": {who: float((labels[who] == labels["simplecrf"]).mean())
                                                   for who in ours},
                "seconds": {who: [r["seconds"] for r in rs] for who, rs in runs.items()},
                "best_seconds": best,
                "median_seconds": median,
                "speedup_best": {who: best["simplecrf"] / best[who] for who in ours},
                "speedup_median": {who: median["simplecrf"] / median[who] for who in ours},
                "ours_setup_seconds": {who: min(r["setup_seconds"] for r in runs[who]) for who in ours},
                "ours_seconds_per_iteration": {
                    who: min((r["seconds"] - r["setup_seconds"]) / PARAMS["iterations"] for r in runs[who])
                    for who in ours},
                "simplecrf_seconds_per_iteration_upper_bound": best["simplecrf"] / PARAMS["iterations"],
                "floor_bytes_per_iteration": floor_bytes,
                "floor_ms_per_iteration_at_25GBps": floor_bytes / 25e9 * 1000,
                "peak_rss_increase_mb": {who: max(r["peak_rss_mb"] - r["rss_before_mb"] for r in rs)
                                         for who, rs in runs.items()},
                "input_mb": (image.nbytes + probs.nbytes) / 2**20,
            }
            if args.device != "cpu":
                lab, res = run_worker(ours_cmd + ["--device", args.device, "--"], case, tmp)
                entry["ours_" + args.device] = {"seconds": res["seconds"], "setup_seconds": res["setup_seconds"],
                                                "dice_after": dices(lab, truth)}
            results["volumes"][name] = entry
            print(json.dumps(entry, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Run medseg's dense CRF on one case in a fresh interpreter (peak memory measured like SimpleCRF's).

Usage: python ours_worker.py CASE.npz OUT.npz RESULT.json [--threads 2] [--device cpu]

Times the full call (grid construction + iterations) and, separately, a zero-iteration call
(set-up only) so that the time per mean-field iteration can be reported.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("out")
    ap.add_argument("result")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cells-per-sigma", type=float, default=1.0)
    args = ap.parse_args()
    import torch

    from medseg.postprocess import CRFConfig, dense_crf

    torch.set_num_threads(args.threads)
    data = np.load(args.case)
    params = json.loads(str(data["params"]))
    image = data["image"].astype(np.float32)
    probs = data["probs"]
    cfg = CRFConfig(iterations=int(params["iterations"]), spatial_sigma_mm=params["spatial_sigma"],
                    spatial_weight=params["spatial_weight"], bilateral_sigma_mm=params["bilateral_sigma"],
                    bilateral_weight=params["bilateral_weight"], intensity_sigma=[params["intensity_sigma"]],
                    grid_cells_per_sigma=args.cells_per_sigma, intensity_clip_percentiles=(0.0, 100.0))
    spacing = (1.0, 1.0, 1.0)  # σ in voxels, as SimpleCRF takes them
    before = rss_mb()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    refined = dense_crf(image, probs, spacing, cfg, device=args.device)
    sync()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    labels = refined.argmax(0).astype(np.uint8)
    del refined
    t0 = time.perf_counter()
    dense_crf(image, probs, spacing, cfg.model_copy(update={"iterations": 0}), device=args.device)
    sync()
    setup = time.perf_counter() - t0
    np.savez(args.out, labels=labels)
    with open(args.result, "w") as f:
        json.dump({"seconds": seconds, "setup_seconds": setup, "rss_before_mb": before, "peak_rss_mb": peak,
                   "threads": args.threads, "device": args.device}, f)


if __name__ == "__main__":
    main()

"""Inference benchmark: `medseg segment` against the script a MONAI user writes, side by side.

Each run is its own subprocess (peak RSS from ``getrusage(RUSAGE_CHILDREN)`` of a one-child
wrapper, ``_peak.py``), on the same model, input and window settings (fp32, 2 threads, same
overlap and window batch). Writes ``results.json`` beside this file.

    python benchmarks/inference/run.py                 # everything (large case when memory allows)
    python benchmarks/inference/run.py --skip-large    # without the 512x512x300 case

Cases:
- ``real_ct``: ../shared/data/ct_abdomen/example_ct.nii.gz with a U-Net trained on phantoms;
- ``phantom``: an unseen oblique phantom (foreground Dice against its truth for both);
- ``large``: a 512×512×300 synthetic CT (0.8×0.8×1.5 mm) through a 1-in 20-class U-Net (random
  weights, 1.5 mm network grid, 96³ windows): peak memory of both;
- ``startup``: ``medseg --help`` and ``medseg segment --help``;
- ``bf16``: our bf16 autocast against our fp32 (time and argmax agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work"
SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


def measure(cmd: list, *, cap_mb: float | None = None, floor_mb: float | None = None) -> dict:
    """Run ``cmd`` in its own process (through ``_peak.py``); wall/CPU seconds and peak RSS.

    With ``cap_mb``/``floor_mb`` the child is stopped before it can exhaust the shared machine;
    the result's ``stopped`` then says why (its peak is a lower bound).
    """
    opts = []
    if cap_mb is not None:
        opts += ["--cap-mb", str(cap_mb)]
    if floor_mb is not None:
        opts += ["--floor-mb", str(floor_mb)]
    r = subprocess.run([PY, str(HERE / "_peak.py"), *opts, "--", *map(str, cmd)], capture_output=True, text=True,
                       env=ENV)
    if r.returncode != 0:
        raise RuntimeError(f"wrapper failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["returncode"] != 0 and not out["stopped"]:
        raise RuntimeError(f"{cmd[:4]} failed: {out['stderr_tail']}")
    out.pop("stderr_tail", None)
    return out


def ours(inp, model, out, *extra) -> list:
    return [PY, "-m", "medseg", "segment", inp, "--model", model, "-o", out, "--device", "cpu", *extra]


def baseline(inp, model, out) -> list:
    return [PY, HERE / "baseline_monai.py", inp, model, out]


def compare(a_path: Path, b_path: Path, image_path: Path, truth: Path | None = None) -> dict:
    from medseg.io import read_volume

    img = read_volume(image_path)
    a, b = read_volume(a_path), read_volume(b_path)
    res = {"ours_on_input_grid": bool(a.shape == img.shape and np.allclose(a.affine, img.affine, atol=1e-4)),
           "baseline_on_input_grid": bool(b.shape == img.shape and np.allclose(b.affine, img.affine, atol=1e-4))}
    if a.shape == b.shape:
        res["label_agreement"] = float((a.array == b.array).mean())
    if truth is not None:
        t = read_volume(truth).array > 0
        for name, v in (("ours", a), ("baseline", b)):
            p = v.array > 0
            res[f"{name}_foreground_dice"] = float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))
    return res


def side_by_side(name: str, inp: Path, model: Path, repeats: int, truth: Path | None = None) -> dict:
    o_out, b_out = WORK / f"{name}_ours.nii.gz", WORK / f"{name}_baseline.nii.gz"
    runs_o, runs_b = [], []
    for _ in range(repeats):  # alternate so that load on the shared machine hits both alike
        runs_o.append(measure(ours(inp, model, o_out)))
        runs_b.append(measure(baseline(inp, model, b_out)))
    best_o = min(runs_o, key=lambda r: r["wall_s"])
    best_b = min(runs_b, key=lambda r: r["wall_s"])
    res = {"input": str(inp), "repeats": repeats,
           "ours": {k: best_o[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")},
           "baseline": {k: best_b[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")},
           "time_ratio_baseline_over_ours": best_b["wall_s"] / best_o["wall_s"],
           "cpu_ratio_baseline_over_ours": best_b["cpu_s"] / best_o["cpu_s"],
           "peak_ratio_baseline_over_ours": best_b["peak_rss_mb"] / best_o["peak_rss_mb"]}
    res.update(compare(o_out, b_out, inp, truth))
    print(f"[{name}] {json.dumps(res)}", flush=True)
    return res


def bf16_vs_fp32(inp: Path, model: Path) -> dict:
    from medseg.io import read_volume

    f_out, h_out = WORK / "bf16_fp32.nii.gz", WORK / "bf16_bf16.nii.gz"
    f = measure(ours(inp, model, f_out, "--backend", "torch"))
    h = measure(ours(inp, model, h_out, "--backend", "torch", "--autocast", "bf16"))
    a, b = read_volume(f_out).array, read_volume(h_out).array
    res = {"input": str(inp), "fp32_wall_s": f["wall_s"], "bf16_wall_s": h["wall_s"],
           "fp32_cpu_s": f["cpu_s"], "bf16_cpu_s": h["cpu_s"],
           "argmax_agreement": float((a == b).mean()),
           "foreground_agreement": float(((a > 0) == (b > 0)).mean())}
    print(f"[bf16] {json.dumps(res)}", flush=True)
    return res


def startup(n: int = 5) -> dict:
    res = {}
    for label, args in (("medseg --help", ["--help"]), ("medseg segment --help", ["segment", "--help"])):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([PY, "-m", "medseg", *args], capture_output=True, env=ENV, check=True)
            times.append(time.perf_counter() - t0)
        res[label] = {"median_s": statistics.median(times), "min_s": min(times)}
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", "import torch, monai"], env=ENV, check=True)
    res["import torch, monai (for reference)"] = {"s": time.perf_counter() - t0}
    print(f"[startup] {json.dumps(res)}", flush=True)
    return res


def phantom_model() -> tuple[Path, Path]:
    """The tests' phantom U-Net (``quick_train_phantom_model``, 300 steps), trained once into _work."""
    import shutil

    from medseg.training import quick_train_phantom_model

    from medseg.errors import InputError
    from medseg.inference import Predictor

    root = WORK / "quick_phantom"
    try:  # a cached model from an older architecture code no longer loads: train again
        Predictor.from_model_dir(root / "model", device="cpu")
        cached = True
    except InputError:
        cached = False
    if not cached:
        shutil.rmtree(root, ignore_errors=True)
        quick_train_phantom_model(root, steps=300, seed=0)
    return root / "model", root / "phantoms"


def large_case() -> tuple[Path, Path]:
    """A 512×512×300 CT (int16) and a 1-in 20-class U-Net with random weights."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    image = WORK / "large_ct_512x512x300.nii.gz"
    if not image.exists():
        study = make_phantom(11, shape=(512, 512, 300), spacing=(0.8, 0.8, 1.5), n_tumours=3)
        write_volume(study.image, image)
    model = WORK / "unet_20class"
    try:
        from medseg.errors import InputError
        from medseg.inference import Predictor

        Predictor.from_model_dir(model, device="cpu")
        cached = True
    except InputError:
        cached = False
    if not cached:
        write_random_unet(model, channels=[8, 16, 32, 64], strides=[2, 2, 2])
    return image, model


def write_random_unet(model: Path, *, channels: list[int], strides: list[int]) -> None:
    """A medseg model directory: a 1-in, 20-class 3D U-Net (2 residual units) with random weights
    (seed 0), CT window -200..300 HU, 1.5 mm network grid, 96³ windows, overlap 0.25."""
    import torch

    from medseg.models import create_model
    from medseg.plans import InferenceDefaults, ModelPlans, ModelSpec, save_plans
    from medseg.preprocess import IntensityConfig, PreprocessConfig

    options = {"channels": list(channels), "strides": list(strides), "num_res_units": 2}
    torch.manual_seed(0)
    net = create_model("unet", 3, 1, 20, **options)
    model.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), model / "model.pt")
    save_plans(ModelPlans(model=ModelSpec(name="unet", spatial_dims=3, in_channels=1, out_channels=20, options=options),
                          preprocess=PreprocessConfig(target_spacing=(1.5, 1.5, 1.5),
                                                      intensity=[IntensityConfig(kind="ct", window=(-200, 300))]),
                          inference=InferenceDefaults(patch_size=(96, 96, 96), overlap=0.25),
                          labels={i: f"class_{i}" for i in range(1, 20)}), model)


def save(results: dict, **extra) -> None:
    """Write what has been measured so far (a later failure keeps the earlier figures)."""
    (HERE / "results.json").write_text(json.dumps({**results, **extra}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--only-large", action="store_true",
                    help="run only the large case and update it in an existing results.json")
    ap.add_argument("--cap-mb", type=float, default=12000.0,
                    help="large case: stop a run whose RSS passes this (the machine is shared)")
    ap.add_argument("--floor-mb", type=float, default=2500.0,
                    help="large case: stop a run when the machine's available memory falls below this")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{os.cpu_count()} CPUs shared with other jobs; torch 2 threads; timings noisy",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    import monai
    import torch

    results["versions"] = {"torch": torch.__version__, "monai": monai.__version__}
    if args.only_large and (HERE / "results.json").exists():
        results = {**json.loads((HERE / "results.json").read_text()), **results}
    else:
        results["startup"] = startup()
        save(results)
    model, archive = (None, None) if args.only_large else phantom_model()
    if not args.only_large:
        small_cases(results, model, archive, args.repeats)
    if not args.skip_large:
        large(results, args)
    save(results)
    print(f"wrote {HERE / 'results.json'}")


def small_cases(results: dict, model: Path, archive: Path, repeats: int) -> None:
    results["real_ct"] = side_by_side("real_ct", SHARED / "ct_abdomen" / "example_ct.nii.gz", model, repeats)
    results["phantom"] = side_by_side("phantom", archive / "images" / "phantom_003.nii.gz", model, repeats,
                                      truth=archive / "labels" / "phantom_003.nii.gz")
    results["bf16"] = bf16_vs_fp32(SHARED / "ct_abdomen" / "example_ct.nii.gz", model)
    save(results)


def large(results: dict, args) -> None:
    """512×512×300 CT, 20 classes: peak memory of ours and of the baseline (watchdog-capped)."""
    image, big = large_case()
    o_out, b_out = WORK / "large_ours.nii.gz", WORK / "large_baseline.nii.gz"
    case = {"input": "512x512x300 int16, 0.8x0.8x1.5 mm; 20 classes; network grid 1.5 mm (273x273x300)",
            "ours": measure(ours(image, big, o_out), cap_mb=args.cap_mb, floor_mb=args.floor_mb)}
    print(f"[large ours] {json.dumps(case['ours'])}", flush=True)
    save(results, large=case)
    case["baseline"] = measure(baseline(image, big, b_out), cap_mb=args.cap_mb, floor_mb=args.floor_mb)
    case["peak_ratio_baseline_over_ours"] = case["baseline"]["peak_rss_mb"] / case["ours"]["peak_rss_mb"]
    if not case["baseline"]["stopped"]:
        case["time_ratio_baseline_over_ours"] = case["baseline"]["wall_s"] / case["ours"]["wall_s"]
        case.update(compare(o_out, b_out, image))
    else:
        from medseg.io import read_volume

        seg = read_volume(o_out)
        case["ours_on_input_grid"] = bool(seg.shape == (512, 512, 300) and seg.same_grid(read_volume(image)))
    print(f"[large] {json.dumps(case)}", flush=True)
    results["large"] = case


if __name__ == "__main__":
    main()

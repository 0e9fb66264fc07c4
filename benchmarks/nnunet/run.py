"""nnU-Net benchmark: `medseg segment` against nnU-Net's own `nnUNetv2_predict_from_modelfolder`,
side by side, on the same nnU-Net v2 model folder and the same input.

    python benchmarks/nnunet/run.py                  # the full benchmark (about 30 min on 2 cores)
    python benchmarks/nnunet/run.py --smoke          # tiny models and inputs (a few minutes)
    python benchmarks/nnunet/run.py --cases large --depths 100   # one case; the others stay in results.json

Each command is its own process, started through ``benchmarks/inference/_peak.py --tree``: wall
and CPU seconds, and the peak of the SUM of RSS over the command's whole process tree, sampled
every 0.2 s (nnU-Net preprocesses and exports in worker processes). A run whose tree passes
``--cap-mb`` (or that leaves the machine under ``--floor-mb`` available) is killed, tree and
all; its result says "stopped" and its peak is a lower bound. Both tools get the same model
folder, fold 0, the same TTA setting (off unless ``--tta``), step size 0.5 and 2 threads
(``OMP_NUM_THREADS=2``; nnU-Net: ``-device cpu -npp 1 -nps 1``, which sets torch to the
machine's 2 cores; medseg: ``--device cpu --threads 2 --window-batch 1``, one window per
forward pass as nnU-Net). Repeated runs alternate the two tools. Results go to
``results.json`` beside this file; models, inputs and outputs to ``_work/`` (git-ignored).

Models (random weights, written by ``tests/support_nnunet.py: write_nnunet_folder`` in nnU-Net's
checkpoint format; their plans are what nnU-Net 2.8.1's default planner gives, see
``default_plans.py``):

- ``small``: 6 labels; 3d_fullres at 1.0×0.78×0.78 mm (z y x), patch 96×160×160, PlainConvUNet
  with 6 stages of 32–320 features, 2 convolutions per stage (the default plans exactly);
- ``large``: 118 labels (TotalSegmentator's ``total`` task has 117 classes); 3d_fullres at
  3 mm (as TotalSegmentator's fast models), patch 128×112×112, 5 stages, 2 convolutions per
  stage, with half the default features (16–256 instead of 32–320) to keep the forward passes
  short: the memory at stake is classes × voxels of the export, not the network.

Inputs (CT-like phantoms from ``medseg.phantoms.make_phantom``, int16 NIfTI):

- ``small``: 200×200×120 at 0.78×0.78×1.0 mm, oblique (rotated 8°, −5°, 12°);
- ``large_512x512xD``: 512×512×D at 0.78×0.78×1.0 mm, LPS, one case per ``--depths``: 400
  (a whole-body-sized CT) and 100, where nnU-Net's export still fits under the cap (its export
  worker holds about 2 × classes × voxels float16: the resampled logits and the copy numpy's
  ``argmax(axis=0)`` makes of them; at 120 slices it passed 16 GB).

For every pair: wall and CPU time, peak tree RSS (``peak_mb``: the sampled peak of the tree's RSS
sum, or the largest single process's exact ``ru_maxrss`` when that is larger), the tree's
anonymous RSS and PSS (see ``_peak.py``), whether each output lies
on the input's grid (shape and affine within 1e-4 mm), and the fraction of voxels with equal
labels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work"
PEAK = ROOT / "benchmarks" / "inference" / "_peak.py"
PY = sys.executable
NNUNET_VENV = Path(os.environ.get("NNUNET_VENV", "/work/nnunet-venv"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
       # nnU-Net reads these at import and warns when they are unset; prediction from a model
       # folder uses none of them
       "nnUNet_raw": str(WORK / "nnunet_env" / "raw"), "nnUNet_preprocessed": str(WORK / "nnunet_env" / "preprocessed"),
       "nnUNet_results": str(WORK / "nnunet_env" / "results")}

# 3d_fullres plans of nnU-Net 2.8.1's default planner (default_plans.py), nnU-Net's axis order z y x
SMALL_PLANS = {"patch": (96, 160, 160), "spacing": (1.0, 0.78125, 0.78125), "features": (32, 64, 128, 256, 320, 320),
               "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), "labels": 6}
LARGE_PLANS = {"patch": (128, 112, 112), "spacing": (3.0, 3.0, 3.0), "features": (16, 32, 64, 128, 256),
               "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), "labels": 118}
# --smoke: the same pipeline on models and inputs that run in seconds
SMOKE_SMALL_PLANS = {"patch": (32, 48, 48), "spacing": (2.0, 1.5625, 1.5625), "features": (4, 8, 16),
                     "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2)), "labels": 6}
SMOKE_LARGE_PLANS = {"patch": (32, 32, 32), "spacing": (6.0, 6.0, 6.0), "features": (4, 8, 16),
                     "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2)), "labels": 40}

SPACING_XYZ = (0.78125, 0.78125, 1.0)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(cmd: list, *, cap_mb: float, floor_mb: float) -> dict:
    """Run ``cmd`` through ``_peak.py --tree``: wall/CPU seconds, peak tree RSS; stopped at the cap."""
    r = subprocess.run([PY, str(PEAK), "--tree", "--cap-mb", str(cap_mb), "--floor-mb", str(floor_mb), "--",
                        *map(str, cmd)], capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise RuntimeError(f"wrapper failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["returncode"] != 0 and not out["stopped"]:
        raise RuntimeError(f"{cmd[:4]} failed: {out['stderr_tail']}")
    out.pop("stderr_tail", None)
    return out


def medseg_cmd(image: Path, model: Path, out: Path, tta: bool) -> list:
    return [PY, "-m", "medseg", "segment", image, "--model", model, "-o", out, "--device", "cpu", "--threads", "2",
            "--window-batch", "1", "--folds", "0", "--step-size", "0.5", *(["--tta"] if tta else [])]


def nnunet_cmd(in_dir: Path, model: Path, out_dir: Path, tta: bool) -> list:
    return [NNUNET_VENV / "bin" / "nnUNetv2_predict_from_modelfolder", "-i", in_dir, "-o", out_dir, "-m", model,
            "-f", "0", "-step_size", "0.5", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
            *([] if tta else ["--disable_tta"])]


def write_model(name: str, plans: dict) -> Path:
    """An nnU-Net 3d_fullres model folder with random weights (once; reused when present)."""
    sys.path.insert(0, str(ROOT / "tests"))  # ("tests" alone may name another installed package)
    from support_nnunet import write_nnunet_folder

    root = WORK / "models" / name
    folder = root / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    stamp = root / "plans_used.json"
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(plans)):
        return folder
    shutil.rmtree(root, ignore_errors=True)
    labels = {"background": 0, **{f"class_{i}": i for i in range(1, plans["labels"])}}
    folder = write_nnunet_folder(root, labels=labels, patch=plans["patch"], spacing=plans["spacing"],
                                 features=plans["features"], strides=plans["strides"], n_conv_per_stage=2,
                                 folds=(0,), dataset_name=f"Dataset990_{name}", seed=0)
    stamp.write_text(json.dumps(plans))
    return folder


def write_input(name: str, shape: tuple, spacing: tuple, orientation: str, rotation: tuple) -> Path:
    """A CT-like phantom as nnU-Net's input folder wants it (``<name>/case_0000.nii.gz``); once."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    path = WORK / "inputs" / name / "case_0000.nii.gz"
    spec = WORK / "inputs" / name / "spec.json"
    want = {"shape": list(shape), "spacing": list(spacing), "orientation": orientation, "rotation": list(rotation)}
    if path.exists() and spec.exists() and json.loads(spec.read_text()) == want:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    study = make_phantom(5, shape=tuple(shape), spacing=tuple(spacing), orientation=orientation,
                         rotation_deg=tuple(rotation), n_tumours=3)
    write_volume(study.image, path)
    spec.write_text(json.dumps(want))
    return path


def compare(ours: Path, theirs: Path, image: Path) -> dict:
    """Grid checks (shape, affine within 1e-4 mm) and the fraction of voxels with equal labels."""
    from medseg.io import read_volume

    img, a, b = read_volume(image), read_volume(ours), read_volume(theirs)
    res = {"medseg_on_input_grid": bool(a.shape == img.shape and np.allclose(a.affine, img.affine, atol=1e-4)),
           "nnunet_on_input_grid": bool(b.shape == img.shape and np.allclose(b.affine, img.affine, atol=1e-4)),
           "same_shape": a.shape == b.shape}
    if a.shape == b.shape:
        equal = np.asarray(a.array) == np.asarray(b.array)
        res["label_agreement"] = float(equal.mean())
        res["voxels_differing"] = int(equal.size - np.count_nonzero(equal))
        res["max_affine_difference_mm"] = float(np.abs(a.affine - b.affine).max())
        # that the labels are not trivially one class: how many classes each output holds
        for tool, v in (("medseg", a), ("nnunet", b)):
            counts = np.bincount(np.asarray(v.array).ravel())
            res[f"{tool}_labels_present"] = int(np.count_nonzero(counts))
            res[f"{tool}_largest_label_fraction"] = float(counts.max() / counts.sum())
    return res


def run_pair(name: str, image: Path, model: Path, *, repeats: int, tta: bool, args) -> dict:
    """Both tools ``repeats`` times each, alternating (the first tool alternates too); best wall time."""
    out_ours = WORK / "out" / f"{name}_medseg.nii.gz"
    out_dir = WORK / "out" / f"{name}_nnunet"
    out_theirs = out_dir / "case.nii.gz"
    runs: dict[str, list] = {"medseg": [], "nnunet": []}
    for i in range(repeats):
        order = ("medseg", "nnunet") if i % 2 == 0 else ("nnunet", "medseg")
        for tool in order:
            load = load_average()
            if tool == "medseg":
                out_ours.unlink(missing_ok=True)
                out_ours.parent.mkdir(parents=True, exist_ok=True)
                r = measure(medseg_cmd(image, model, out_ours, tta), cap_mb=args.cap_mb, floor_mb=args.floor_mb)
            else:
                shutil.rmtree(out_dir, ignore_errors=True)
                r = measure(nnunet_cmd(image.parent, model, out_dir, tta), cap_mb=args.cap_mb, floor_mb=args.floor_mb)
            r["load_before"] = load
            # sampling can miss a short peak; the largest single process (getrusage) cannot
            r["peak_mb"] = max(r["peak_tree_rss_mb"], r["peak_rss_mb"])
            runs[tool].append(r)
            print(f"[{name} {tool}] {json.dumps(r)}", flush=True)
    res: dict = {"input": str(image.relative_to(WORK)), "tta": tta, "repeats": repeats, "runs": runs}
    for tool in runs:
        done = [r for r in runs[tool] if not r["stopped"]]
        if done:
            best = min(done, key=lambda r: r["wall_s"])
            res[tool] = {"wall_s": best["wall_s"], "cpu_s": best["cpu_s"],
                         "peak_mb": max(r["peak_mb"] for r in runs[tool]),
                         "peak_tree_anon_mb": max(r["peak_tree_anon_mb"] for r in runs[tool]),
                         "peak_tree_pss_mb": max(r["peak_tree_pss_mb"] for r in runs[tool]),
                         "processes": max(r["most_processes"] for r in runs[tool])}
        else:
            last = runs[tool][-1]
            res[tool] = {"stopped": last["stopped"], "wall_s_until_stopped": last["wall_s"],
                         "peak_mb_at_least": last["peak_mb"],
                         "peak_tree_anon_mb_at_least": last["peak_tree_anon_mb"],
                         "peak_tree_pss_mb_at_least": last["peak_tree_pss_mb"]}
    o, n = res["medseg"], res["nnunet"]
    if "wall_s" in o and "wall_s" in n:
        res["time_ratio_nnunet_over_medseg"] = n["wall_s"] / o["wall_s"]
        res["peak_ratio_nnunet_over_medseg"] = n["peak_mb"] / o["peak_mb"]
        res.update(compare(out_ours, out_theirs, image))
    elif "wall_s" in o:
        res["peak_ratio_nnunet_over_medseg_at_least"] = n["peak_mb_at_least"] / o["peak_mb"]
        from medseg.io import read_volume

        seg, img = read_volume(out_ours), read_volume(image)
        res["medseg_on_input_grid"] = bool(seg.shape == img.shape and np.allclose(seg.affine, img.affine, atol=1e-4))
    print(f"[{name}] {json.dumps({k: v for k, v in res.items() if k != 'runs'})}", flush=True)
    return res


def versions() -> dict:
    import torch

    nn = subprocess.run([NNUNET_VENV / "bin" / "python", "-c",
                         "import importlib.metadata as m, torch; print(m.version('nnunetv2'), torch.__version__)"],
                        capture_output=True, text=True, env=ENV, check=True).stdout.split()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return {"medseg_commit": commit.strip(), "torch (medseg)": torch.__version__, "nnunetv2": nn[0],
            "torch (nnU-Net venv)": nn[1]}


def results_path(smoke: bool) -> Path:
    return WORK / "results_smoke.json" if smoke else HERE / "results.json"


def save(results: dict) -> None:
    """Write what has been measured so far (a later failure keeps the earlier figures)."""
    results_path(results["smoke"]).write_text(json.dumps(results, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny models and inputs: check the pipeline in minutes")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each tool on the small case (alternating)")
    ap.add_argument("--tta", action="store_true", help="also the small case with mirroring (8x the windows)")
    ap.add_argument("--cases", default="small,large", help="small, large or both")
    ap.add_argument("--depths", default="100,400",
                    help="slices of the 512x512 inputs of the large model, one case each (default: 100, where "
                         "nnU-Net's export fits under the cap, and 400)")
    ap.add_argument("--fresh", action="store_true",
                    help="start a new results.json (default: update the cases measured, keep the others)")
    ap.add_argument("--prepare", action="store_true", help="only write the models and inputs into _work/")
    ap.add_argument("--cap-mb", type=float, default=16000.0,
                    help="stop a run whose process tree's RSS passes this (the machine has 24 GB, shared)")
    ap.add_argument("--floor-mb", type=float, default=2500.0,
                    help="stop a run when the machine's available memory falls below this")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    for d in ("raw", "preprocessed", "results"):
        (WORK / "nnunet_env" / d).mkdir(parents=True, exist_ok=True)
    small_plans, large_plans = (SMOKE_SMALL_PLANS, SMOKE_LARGE_PLANS) if args.smoke else (SMALL_PLANS, LARGE_PLANS)
    small_shape = (64, 64, 40) if args.smoke else (200, 200, 120)
    big_xy = 96 if args.smoke else 512
    prefix = "smoke_" if args.smoke else ""
    todo = []  # (case name, model folder, input file, input shape)
    for case in args.cases.split(","):
        if case == "small":
            todo.append(("small", write_model(prefix + "small", small_plans),
                         write_input(prefix + "small", small_shape, SPACING_XYZ, "RAS", (8.0, -5.0, 12.0)), small_shape))
        elif case == "large":
            for depth in (int(d) for d in args.depths.split(",")):
                shape = (big_xy, big_xy, depth // 4 if args.smoke else depth)
                name = "large_{}x{}x{}".format(*shape)
                todo.append((name, write_model(prefix + "large", large_plans),
                             write_input(prefix + name, shape, SPACING_XYZ, "LPS", (0.0, 0.0, 0.0)), shape))
        else:
            raise SystemExit(f"unknown case {case!r} (small, large)")
    if args.prepare:
        print("models and inputs written")
        return
    path = results_path(args.smoke)
    results: dict = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "load_average_at_start": load_average(), "cases": [t[0] for t in todo]}
    results.update({"smoke": args.smoke, "machine": f"{os.cpu_count()} CPUs, shared with other jobs; 2 threads per tool",
                    "versions": versions(),
                    "settings": {"fold": 0, "step_size": 0.5, "threads": 2, "tta": False, "cap_mb": args.cap_mb,
                                 "floor_mb": args.floor_mb, "sampling_interval_s": 0.2,
                                 "medseg": "segment --device cpu --threads 2 --window-batch 1 --folds 0",
                                 "nnunet": "nnUNetv2_predict_from_modelfolder -f 0 -device cpu -npp 1 -nps 1 "
                                           "--disable_tta"},
                    "models": {"small": small_plans, "large": large_plans}})
    results.setdefault("invocations", []).append(invocation)
    t_start = time.perf_counter()
    for name, model, image, shape in todo:
        repeats = args.repeats if name == "small" else 1
        results[name] = run_pair(name, image, model, repeats=repeats, tta=False, args=args)
        results[name]["input_shape"] = list(shape)
        save(results)
        if name == "small" and args.tta:
            results["small_tta"] = run_pair("small_tta", image, model, repeats=1, tta=True, args=args)
            save(results)
    invocation["load_average_at_end"] = load_average()
    invocation["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    invocation["total_minutes"] = (time.perf_counter() - t_start) / 60
    save(results)
    print(f"wrote {path} ({invocation['total_minutes']:.1f} min)")


if __name__ == "__main__":
    main()

"""Backends benchmark: whole `medseg segment` commands on torch fp32, OpenVINO f32/bf16/int8 and
ONNX Runtime f32, side by side and interleaved.

Each run is its own process (``benchmarks/inference/_peak.py``: wall and CPU seconds, peak RSS
of the one child), every backend on the same model, input and window settings, 2 threads
(``MEDSEG_THREADS=2``). Before the measured rounds, one untimed run per converted backend fills
the conversion cache (``MEDSEG_CACHE_DIR`` under ``_work``) and its time is reported as the
first-run cost; the measured runs then read the cache, as every later run of a user does. Labels
are compared with the torch fp32 run's, voxel by voxel: over the whole grid, inside the body and
where either run calls foreground (:func:`agreements`). The 1-minute load average is recorded
before and after each run (the machine is shared).

    python benchmarks/backends/run.py                  # full: demo model + wide U-Net on 512x512x300
    python benchmarks/backends/run.py --short          # the wide U-Net on 256x256x150, 1 round
    python benchmarks/backends/run.py --cases nnunet   # an nnU-Net 3d_fullres model, and nnUNetv2_predict

Cases:

- ``demo``: the demo's U-Net (8-16-32-64, trained 300 steps on phantoms, as the tests' model) on
  an unseen oblique phantom; int8 calibrated on two other phantoms;
- ``wide``: a wide 3D U-Net (16-32-64-128-256, 2 residual units, 20 classes, random weights,
  96³ windows, 1.5 mm network grid) over a 512×512×300 CT-sized phantom (0.8×0.8×1.5 mm; with
  ``--short`` 256×256×150); int8 calibrated on a second phantom of the same size;
- ``nnunet``: the nnU-Net benchmark's ``small`` model (``benchmarks/nnunet``: nnU-Net 2.8.1's
  default 3d_fullres plans, PlainConvUNet 32–320 in 6 stages, 96×160×160 windows, 6 classes,
  fold 0), trained on phantoms by ``nnunet_trained.py``, on its 200×200×120 oblique CT phantom:
  medseg on torch f32 and OpenVINO f32/bf16/int8 (int8 calibrated on a phantom of another seed) against nnU-Net's own
  ``nnUNetv2_predict_from_modelfolder`` (no TTA, step 0.5, 2 threads, ``-npp 1 -nps 1``), in the
  nnU-Net venv (``NNUNET_VENV``, default /work/nnunet-venv).

Writes ``results.json`` (or ``results_short.json``) beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work"
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MEDSEG_THREADS": "2", "MEDSEG_CACHE_DIR": str(WORK / "cache")}
PEAK = ROOT / "benchmarks" / "inference" / "_peak.py"

VARIANTS = {  # name -> extra `medseg segment` arguments
    "torch f32": ["--backend", "torch"],
    "openvino f32": ["--backend", "openvino"],
    "openvino bf16": ["--backend", "openvino", "--precision", "bf16"],
    "openvino int8": ["--backend", "openvino", "--precision", "int8"],
    "onnxruntime f32": ["--backend", "onnxruntime"],
}


def measure(cmd: list) -> dict:
    """``cmd`` in its own process: wall/CPU seconds, peak RSS, and the load average around it."""
    load_before = os.getloadavg()[0]
    r = subprocess.run([PY, str(PEAK), "--floor-mb", "1500", "--", *map(str, cmd)], capture_output=True, text=True,
                       env=ENV)
    if r.returncode != 0:
        raise RuntimeError(f"wrapper failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["returncode"] != 0 or out["stopped"]:
        raise RuntimeError(f"{cmd[:6]} failed: {out['stopped'] or out['stderr_tail']}")
    out.pop("stderr_tail", None)
    out["load_before"], out["load_after"] = load_before, os.getloadavg()[0]
    return out


NNUNET_SHAPE, NNUNET_ROTATION = (200, 200, 120), (8.0, -5.0, 12.0)  # the nnunet case's input phantom
NNUNET_VARIANTS = ("torch f32", "openvino f32", "openvino bf16", "openvino int8", NNUNET_PREDICT := "nnUNetv2_predict")


def segment(inp: Path, model: Path, out: Path, variant: str, calibrate: Path, extra_args: tuple = ()) -> list:
    if variant == NNUNET_PREDICT:  # nnU-Net's own predictor: input folder in, folder of <case>.nii.gz out
        from benchmarks.nnunet.run import nnunet_cmd

        return nnunet_cmd(inp.parent, model, out.parent / (out.name.split(".")[0] + "_dir"), tta=False)
    extra = list(VARIANTS[variant])
    if "int8" in variant:
        extra += ["--calibrate", str(calibrate)]
    return [PY, "-m", "medseg", "segment", inp, "--model", model, "-o", out, "--device", "cpu", *extra, *extra_args]


def run_output(case: str, variant: str) -> Path:
    """The output path ``case``'s ``variant`` run is given (``-o``)."""
    return WORK / f"{case}_{variant.replace(' ', '_')}.nii.gz"


def output_of(out: Path, variant: str) -> Path:
    """Where ``variant``'s labels land (nnU-Net writes ``<case>.nii.gz`` into its output folder)."""
    return out.parent / (out.name.split(".")[0] + "_dir") / "case.nii.gz" if variant == NNUNET_PREDICT else out


def run_case(name: str, inp: Path, model: Path, calibrate: Path, rounds: int, variants=tuple(VARIANTS),
             extra_args: tuple = ()) -> dict:
    from medseg.io import read_volume

    outs = {v: run_output(name, v) for v in variants}
    segment_ = (lambda v: segment(inp, model, outs[v], v, calibrate, extra_args))
    first = {}
    for v in variants:  # fill the conversion cache; the first run's cost, once
        if v not in ("torch f32", NNUNET_PREDICT):
            first[v] = measure(segment_(v))
            print(f"[{name}] first run (converts) {v}: {first[v]['wall_s']:.1f} s", flush=True)
    runs: dict[str, list] = {v: [] for v in variants}
    for r in range(rounds):  # interleaved: load on the shared machine hits every backend alike
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for v in order:
            runs[v].append(measure(segment_(v)))
            print(f"[{name}] round {r + 1} {v}: {runs[v][-1]['wall_s']:.1f} s, "
                  f"{runs[v][-1]['peak_rss_mb']:.0f} MB, load {runs[v][-1]['load_before']:.1f}", flush=True)
    ref = read_volume(outs["torch f32"])
    res: dict = {"input": str(inp), "shape": list(ref.shape), "rounds": rounds, "variants": {}}
    agreement = agreements(inp, {v: output_of(outs[v], v) for v in variants}, outs["torch f32"])
    torch_best = min(x["wall_s"] for x in runs["torch f32"])
    for v in variants:
        best = min(runs[v], key=lambda x: x["wall_s"])
        res["variants"][v] = {
            "best_wall_s": best["wall_s"], "median_wall_s": statistics.median(x["wall_s"] for x in runs[v]),
            "cpu_s": best["cpu_s"], "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[v]),
            "speedup_vs_torch_f32": torch_best / best["wall_s"],
            **agreement[v],
            "first_run_wall_s": first[v]["wall_s"] if v in first else None,
            "load_average_1min": [x["load_before"] for x in runs[v]] + [runs[v][-1]["load_after"]]}
    print(f"[{name}] {json.dumps(res['variants'], indent=1)}", flush=True)
    return res


def demo_case() -> tuple[Path, Path, Path]:
    """The tests' phantom U-Net (the demo's architecture), an unseen phantom, a calibration phantom."""
    from medseg.training import quick_train_phantom_model

    root = WORK / "quick_phantom"
    if not (root / "model" / "model.pt").is_file():
        quick_train_phantom_model(root, steps=300, seed=0)
    images = root / "phantoms" / "images"
    return images / "phantom_003.nii.gz", root / "model", images / "phantom_000.nii.gz"


def wide_case(shape: tuple[int, int, int]) -> tuple[Path, Path, Path]:
    """A CT-sized phantom, a second one for calibration, and the wide U-Net (random weights)."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    tag = "x".join(map(str, shape))
    image, calib = WORK / f"ct_{tag}.nii.gz", WORK / f"ct_{tag}_calibration.nii.gz"
    for seed, path in ((11, image), (12, calib)):
        if not path.exists():
            write_volume(make_phantom(seed, shape=shape, spacing=(0.8, 0.8, 1.5), n_tumours=3).image, path)
    model = WORK / "wide_unet"
    if not (model / "model.pt").is_file():
        from benchmarks.inference.run import write_random_unet

        write_random_unet(model, channels=[16, 32, 64, 128, 256], strides=[2, 2, 2, 2])
    return image, model, calib


def nnunet_case() -> tuple[Path, Path, Path]:
    """The nnU-Net benchmark's small model trained on phantoms (``nnunet_trained.py``), its input
    (written by the nnU-Net benchmark's own function, once), and a second phantom of that kind
    (another seed) to calibrate int8 on."""
    from benchmarks.backends.nnunet_trained import trained_model
    from benchmarks.nnunet.run import SPACING_XYZ, write_input
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    shape, rotation = NNUNET_SHAPE, NNUNET_ROTATION
    calib = WORK / "nnunet_calibration.nii.gz"
    if not calib.exists():
        write_volume(make_phantom(6, shape=shape, spacing=SPACING_XYZ, orientation="RAS", rotation_deg=rotation,
                                  n_tumours=3).image, calib)
    return write_input("small", shape, SPACING_XYZ, "RAS", rotation), trained_model(), calib


def agreements(inp: Path, outputs: dict, reference: Path) -> dict:
    """Each output's labels against ``reference``'s, voxel by voxel: over the whole grid
    (``label_agreement_vs_torch_f32``), inside the body (``body_…``: input above −900 HU, the CT
    phantoms' body; outside it a random-weight network sees near-constant air, and instance
    normalisation of a near-constant window turns rounding differences into arbitrary labels), and
    where either run calls foreground (``foreground_…``); and whether the grids are the same."""
    from medseg.io import read_volume

    ref = read_volume(reference)
    body = np.asarray(read_volume(inp).array) > -900
    out = {}
    for v, path in outputs.items():
        labels = read_volume(path)
        same = labels.array == ref.array
        either = (labels.array > 0) | (ref.array > 0)
        out[v] = {"label_agreement_vs_torch_f32": float(same.mean()),
                  "body_agreement_vs_torch_f32": float(same[body].mean()) if body.any() else 1.0,
                  "foreground_agreement_vs_torch_f32": float(same[either].mean()) if either.any() else 1.0,
                  "same_grid": bool(labels.shape == ref.shape and np.allclose(labels.affine, ref.affine, atol=1e-4))}
    return out


def nnunet_truth_dice(variants=NNUNET_VARIANTS) -> dict:
    """Per-class Dice of each ``nnunet`` run's labels against the phantom's own labels (how well
    the trained model segments: agreement between backends means more where it is right)."""
    from benchmarks.nnunet.run import SPACING_XYZ
    from medseg.io import read_volume
    from medseg.measure.metrics import confusion_counts, overlap_metrics
    from medseg.phantoms import PHANTOM_LABELS, make_phantom

    truth = make_phantom(5, shape=NNUNET_SHAPE, spacing=SPACING_XYZ, orientation="RAS",  # write_input's seed
                         rotation_deg=NNUNET_ROTATION, n_tumours=3).label.array
    out = {}
    for v in variants:
        labels = read_volume(output_of(run_output("nnunet", v), v)).array
        counts = confusion_counts(labels, truth, list(PHANTOM_LABELS))
        out[v] = {name: overlap_metrics(*(counts[c][k] for k in ("TP", "FP", "FN", "TN")))["Dice"]
                  for c, name in PHANTOM_LABELS.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the wide U-Net on 256x256x150, one round")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per case (default 2; --short 1)")
    parser.add_argument("--cases", nargs="+", default=None, choices=["demo", "wide", "nnunet"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    rounds = args.rounds or (1 if args.short else 2)
    cases = args.cases or (["wide"] if args.short else ["demo", "wide"])
    import openvino
    import torch

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "threads": 2, "torch": torch.__version__, "openvino": openvino.get_version(),
                                 "load_average_at_start": os.getloadavg()},
                     "short": args.short, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": {}}
    out = HERE / ("results_short.json" if args.short else
                  "results_nnunet.json" if cases == ["nnunet"] else "results.json")
    for case in cases:
        if case == "nnunet":
            inp, model, calib = nnunet_case()
            results["cases"][case] = run_case(case, inp, model, calib, rounds, variants=NNUNET_VARIANTS,
                                              extra_args=("--folds", "0", "--step-size", "0.5"))
            results["cases"][case]["dice_vs_phantom_truth"] = nnunet_truth_dice()
        else:
            inp, model, calib = demo_case() if case == "demo" else wide_case((256, 256, 150) if args.short else (512, 512, 300))
            results["cases"][case] = run_case(case, inp, model, calib, rounds)
        results["machine"]["load_average_at_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The CUDA paths of medseg, checked and timed on a GPU machine in one prepared run.

    python benchmarks/gpu/run.py --out RESULTS_DIR            # on a machine with a CUDA GPU
    python benchmarks/gpu/run.py --out RESULTS_DIR --smoke    # the same steps, small, on a CPU

Each section runs on its own; a section that fails records its error and the next one runs.
``RESULTS_DIR/gpu_results.json`` is rewritten after every section, so a run stopped at its time
limit still returns what it measured.

Sections:

- ``train``: the demo's phantom U-Net trained with CUDA autocast (bf16 by default, then fp16 with
  loss scaling), steps per second against the same config on the CPU, validation Dice;
- ``segment``: ``medseg segment`` (whole commands, Python start-up included) on an oblique LPS CT
  phantom with the model just trained: ``--device cuda`` in fp32, fp16 and bf16, with TTA and with
  the dense CRF, each against ``--device cpu`` (torch fp32): label agreement and exact grid;
- ``nnunet``: nnU-Net's own predictions of the committed fixtures (``tests/data/nnunet``, made by
  nnU-Net 2.8.1) against ``medseg segment --device cuda`` on the same inputs;
- ``crf``: ``medseg crf --device cuda`` against ``--device cpu`` on the same probabilities;
- ``windows``: windows per second of an nnU-Net 3d_fullres-sized PlainConvUNet (32→320, 6 stages,
  128³ windows, 2 convolutions per stage) in fp32, fp16 and bf16 autocast, and peak GPU memory;
- ``big``: a whole ``medseg segment --device cuda`` of a 512×512×300 CT (0.8×0.8×1.5 mm, oblique)
  through an nnU-Net 3d_fullres folder of that size (random weights, 40 classes, 1.5 mm grid).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
RESULTS: dict = {}


def save(out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def section(name: str, out: Path):
    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception as exc:  # one section's failure must not lose the others' figures
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            RESULTS[name + "_seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(RESULTS[name], default=str)[:1500], flush=True)
            save(out)
        return run
    return wrap


def medseg(*args, timeout: float = 900) -> dict:
    """One whole ``medseg`` command: wall seconds, return code, the end of stderr."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-m", "medseg", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    res = {"wall_s": round(time.perf_counter() - t0, 2), "rc": proc.returncode}
    if proc.returncode != 0:
        res["stderr"] = proc.stderr[-1500:]
    return res


def agreement(a_path: Path, b_path: Path, image: Path | None = None) -> dict:
    from medseg.io import read_volume

    a, b = read_volume(a_path), read_volume(b_path)
    res = {"same_grid": bool(a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-5))}
    if image is not None:
        img = read_volume(image)
        res["on_input_grid"] = bool(a.shape == img.shape and np.allclose(a.affine, img.affine, atol=1e-5))
    if a.shape == b.shape:
        x, y = np.asarray(a.array), np.asarray(b.array)
        res["label_agreement"] = float((x == y).mean())
        res["labels_present"] = int(np.count_nonzero(np.bincount(x.ravel().astype(np.int64))))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    ap.add_argument("--smoke", action="store_true", help="small sizes, device cpu for every 'cuda' run")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    ap.add_argument("--deadline", type=float, default=1e9,
                    help="seconds after the start past which no further section or optional run starts")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("MEDSEG_GPU_WORK", "/tmp/medseg_gpu"))
    work.mkdir(parents=True, exist_ok=True)
    gpu = "cpu" if args.smoke else "cuda"
    only = set(filter(None, args.only.split(",")))

    import torch

    RESULTS["environment"] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "smoke": args.smoke}
    save(out)
    start = time.perf_counter()

    def want(name: str) -> bool:
        if time.perf_counter() - start > args.deadline:
            RESULTS.setdefault("skipped_at_deadline", []).append(name)
            save(out)
            return False
        return not only or name in only

    # ------------------------------------------------------------------------------------ train
    @section("train", out)
    def train_section() -> dict:
        from medseg.cli.demo import demo_train_config
        from medseg.phantoms import write_phantom_archive
        from medseg.training import train

        manifest = write_phantom_archive(work / "phantoms", n_cases=8, seed=100, splits={"train": 7, "val": 1})
        res = {}
        steps = 20 if args.smoke else 400
        for name, device, autocast, n in (("cuda_auto", gpu, "auto", steps), ("cuda_fp16", gpu, "fp16", steps // 4),
                                          ("cpu_bf16", "cpu", "bf16", 20 if args.smoke else 40)):
            if args.smoke and autocast == "fp16":
                continue
            cfg = demo_train_config(n).model_dump(mode="json")
            cfg["autocast"] = autocast
            cfg["num_threads"] = min(16, os.cpu_count() or 2) if device == "cpu" else "auto"
            from medseg.training.config import TrainConfig

            t0 = time.perf_counter()
            model_dir = train(TrainConfig.model_validate(cfg), manifest=manifest, out_dir=work / f"model_{name}",
                              device=device, progress=False)
            wall = time.perf_counter() - t0
            log = json.loads((model_dir / "training_log.json").read_text())
            rows = log.get("epochs") or log.get("rows") or []
            res[name] = {"steps": n, "wall_s": round(wall, 1), "summary": log.get("summary"),
                         "last_row": rows[-1] if rows else None}
        return res

    if want("train"):
        train_section()
    model = work / "model_cuda_auto"

    # ---------------------------------------------------------------------------------- segment
    @section("segment", out)
    def segment_section() -> dict:
        from medseg.io import write_volume
        from medseg.phantoms import make_phantom

        study_path = work / "study_lps.nii.gz"
        shape = (96, 96, 64) if args.smoke else (320, 320, 200)
        study = make_phantom(7, shape=shape, spacing=(1.2, 1.2, 1.5), orientation="LPS", rotation_deg=(8.0, -5.0, 3.0))
        write_volume(study.image, study_path)
        res = {"shape": list(shape)}
        ref = work / "seg_cpu.nii.gz"
        res["cpu_fp32"] = medseg("segment", study_path, "--model", model, "-o", ref, "--device", "cpu",
                                 "--backend", "torch", "--threads", str(min(16, os.cpu_count() or 2)))
        runs = {"cuda_fp32": ["--autocast", "none"], "cuda_fp16": ["--autocast", "fp16"], "cuda_bf16": ["--autocast", "bf16"],
                "cuda_fp32_tta": ["--autocast", "none", "--tta"]}
        if args.smoke:
            runs = {"cuda_fp32": ["--autocast", "none"], "cuda_bf16": ["--autocast", "bf16"]}
        for name, extra in runs.items():
            dst = work / f"seg_{name}.nii.gz"
            res[name] = medseg("segment", study_path, "--model", model, "-o", dst, "--device", gpu, *extra)
            res[name].update(agreement(dst, ref, study_path))
        # the dense CRF inside segment, on each device
        crf_cpu, crf_gpu = work / "seg_crf_cpu.nii.gz", work / "seg_crf_cuda.nii.gz"
        res["cpu_crf"] = medseg("segment", study_path, "--model", model, "-o", crf_cpu, "--device", "cpu", "--backend", "torch",
                                "--crf", "--threads", str(min(16, os.cpu_count() or 2)), "--probabilities", work / "probs_cpu.nii.gz")
        res["cuda_crf"] = medseg("segment", study_path, "--model", model, "-o", crf_gpu, "--device", gpu, "--crf")
        res["cuda_crf"].update(agreement(crf_gpu, crf_cpu, study_path))
        return res

    if want("segment"):
        segment_section()

    # ----------------------------------------------------------------------------------- nnunet
    @section("nnunet", out)
    def nnunet_section() -> dict:
        res = {}
        data = ROOT / "tests" / "data" / "nnunet"
        cases = [("Dataset901_CTPhantom", "nnUNetTrainer_1epoch__nnUNetPlansTiny__3d_fullres", ["ct_oblique", "ct_lps"])]
        for dataset, folder, names in cases:
            for name in names:
                for tta, ref_dir in ((False, "pred_notta"), (True, "pred_tta")):
                    ref = data / dataset / ref_dir / f"{name}.nii.gz"
                    if not ref.exists():
                        continue
                    image = data / dataset / "inputs" / f"{name}_0000.nii.gz"
                    dst = work / f"nnunet_{name}_{ref_dir}.nii.gz"
                    r = medseg("segment", image, "--model", data / dataset / folder, "-o", dst, "--device", gpu,
                               *(["--tta"] if tta else []))
                    r.update(agreement(dst, ref, image))
                    res[f"{name}_{ref_dir}"] = r
        return res

    if want("nnunet"):
        nnunet_section()

    # -------------------------------------------------------------------------------------- crf
    @section("crf", out)
    def crf_section() -> dict:
        probs = work / "probs_cpu.nii.gz"
        image = work / "study_lps.nii.gz"
        if not probs.exists():
            return {"skipped": "no probabilities from the segment section"}
        res = {}
        for device in ("cpu", gpu):
            dst = work / f"crf_{device}.nii.gz"
            res[device] = medseg("crf", image, probs, "-o", dst, "--device", device)
        res["agreement"] = agreement(work / f"crf_{gpu}.nii.gz", work / "crf_cpu.nii.gz", image)
        return res

    if want("crf"):
        crf_section()

    # ---------------------------------------------------------------------------------- windows
    @section("windows", out)
    def windows_section() -> dict:
        sys.path.insert(0, str(ROOT / "tests"))
        from support_nnunet import plain_unet_architecture

        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        feats = (32, 64, 128, 256, 320, 320)
        arch = plain_unet_architecture(3, feats, n_conv_per_stage=2)["arch_kwargs"]
        net = PlainConvUNet(input_channels=1, n_stages=6, features_per_stage=list(feats), conv_op=torch.nn.Conv3d,
                            kernel_sizes=arch["kernel_sizes"], strides=arch["strides"], n_conv_per_stage=[2] * 6,
                            num_classes=105, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                            norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
        device = torch.device(gpu)
        net = net.to(device).eval()
        side = 64 if args.smoke else 128
        res = {"patch": [side] * 3, "classes": 105, "features": list(feats)}
        for batch in (1, 2):
            x = torch.randn(batch, 1, side, side, side, device=device)
            for prec, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
                if args.smoke and prec == "fp16":
                    continue
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
                reps = 2 if args.smoke else 10
                with torch.inference_mode(), ctx:
                    for _ in range(2 if args.smoke else 3):
                        net(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        net(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = (time.perf_counter() - t0) / reps
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                res[f"batch{batch}_{prec}"] = {"s_per_batch": round(dt, 4), "windows_per_s": round(batch / dt, 2),
                                               "peak_gpu_gib": round(peak, 2) if peak is not None else None}
        return res

    if want("windows"):
        windows_section()

    # -------------------------------------------------------------------------------------- big
    @section("big", out)
    def big_section() -> dict:
        sys.path.insert(0, str(ROOT / "tests"))
        from support_nnunet import write_nnunet_folder

        from medseg.io import write_volume
        from medseg.phantoms import make_phantom

        n_labels = 40
        labels = {"background": 0, **{f"class_{i}": i for i in range(1, n_labels)}}
        patch = [64, 64, 64] if args.smoke else [128, 128, 128]
        folder = write_nnunet_folder(work / "big_model", labels=labels, patch=patch, spacing=[1.5, 1.5, 1.5],
                                     features=[32, 64, 128, 256, 320, 320], strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                                     n_conv_per_stage=2, folds=(0,), dataset_name="Dataset990_big", seed=0)
        shape = (160, 160, 80) if args.smoke else (512, 512, 300)
        image = work / "big_ct.nii.gz"
        study = make_phantom(5, shape=shape, spacing=(0.8, 0.8, 1.5), orientation="LPS", rotation_deg=(4.0, 0.0, 6.0))
        write_volume(study.image, image)
        res = {"shape": list(shape), "classes": n_labels, "patch": patch}
        ref = None
        for name, extra in (("fp16", ["--autocast", "fp16"]), ("fp32", ["--autocast", "none"])):
            if args.smoke and name == "fp16":
                extra = ["--autocast", "bf16"]
            if name == "fp32" and not want("big_fp32"):
                break
            dst = work / f"big_{name}.nii.gz"
            res[name] = medseg("segment", image, "--model", folder, "-o", dst, "--device", gpu, "--folds", "0", *extra,
                               "--threads", str(min(8, os.cpu_count() or 2)), timeout=600)
            if ref is None:
                ref = dst
                res[name].update(agreement(dst, dst, image))
            else:
                res[name]["agreement_with_fp16"] = agreement(dst, ref)
        return res

    if want("big"):
        big_section()

    # ------------------------------------------------------------------------------------ tests
    @section("tests", out)
    def tests_section() -> dict:
        proc = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                               "tests/postprocess/test_crf.py", "tests/test_runtime.py", "tests/training/test_config.py"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        return {"rc": proc.returncode, "tail": proc.stdout[-1500:] + proc.stderr[-500:]}

    if want("tests"):
        tests_section()
    print("done", flush=True)


if __name__ == "__main__":
    main()

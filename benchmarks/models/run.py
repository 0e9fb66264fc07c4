"""CPU forward time, peak memory and parameter count of every registered architecture.

Every architecture at its default width (1 input channel, 2 classes), batch 1, eval mode, no grad,
2 threads, at 96³ (3D) and 256² (2D), in fp32 and under bf16 autocast. Side by side in the same
run, the baselines: MONAI's ``UNet`` and ``VNet`` called directly (medseg's ``unet``/``vnet`` are
those networks behind medseg's shared pad/crop forward; at 96³/256² nothing is padded, so the ratio
shows what the wrapper costs). Plus one training step of ``tiramisu`` at 64³ with and without
``memory_efficient`` (peak memory is what that option is for).

Each measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is
its own. Results: ``results.json`` and the table in ``README.md`` next to this file.

    python benchmarks/models/run.py            # everything (about 5-10 minutes on 2 idle cores)
    python benchmarks/models/run.py --only unet vnet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SIZES = {3: (96, 96, 96), 2: (256, 256)}
THREADS = 2
BUDGET_S = {3: 8.0, 2: 3.0}  # timed repeats per configuration stop after this much time (at least one)
MAX_REPEATS = 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(name: str, dims: int, options: dict):
    import torch

    torch.manual_seed(0)
    if name == "monai_unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                    strides=(2, 2, 2, 2), num_res_units=2, norm="instance")
    if name == "monai_vnet":
        from monai.networks.nets import VNet

        return VNet(spatial_dims=dims, in_channels=1, out_channels=2, act="prelu", dropout_prob_down=0.0,
                    dropout_prob_up=(0.0, 0.0))
    from medseg.models import create_model

    return create_model(name, dims, 1, 2, **options)


def worker(name: str, dims: int, precision: str, mode: str, options: dict) -> dict:
    """One measurement in this process: forward (eval, no grad) or one training step."""
    import torch

    torch.set_num_threads(THREADS)
    net = _build(name, dims, options)
    params = sum(p.numel() for p in net.parameters())
    size = SIZES[dims] if mode == "forward" else (64, 64, 64)
    x = torch.randn(1, 1, *size)
    rss_model = _rss_mb()

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if mode == "forward":
                with torch.no_grad():
                    net(x)
            else:
                net(x).float().square().mean().backward()

    net.train(mode == "train")
    start = time.perf_counter()
    once()  # warm-up (also the only run when it is very slow)
    first = time.perf_counter() - start
    times = []
    if mode == "forward" and first < BUDGET_S[dims]:
        spent = 0.0
        while len(times) < MAX_REPEATS and (not times or spent < BUDGET_S[dims]):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
            spent += times[-1]
    else:
        times = [first]
    times.sort()
    return {"name": name, "spatial_dims": dims, "input": list(size), "precision": precision, "mode": mode,
            "options": options, "parameters": params, "repeats": len(times), "median_s": times[len(times) // 2],
            "min_s": times[0], "warmup_s": first, "peak_rss_mb": _rss_mb(), "model_rss_mb": rss_model,
            "peak_increase_mb": _rss_mb() - rss_model}


def _run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(THREADS)}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def write_readme(results: dict) -> None:
    rows = results["runs"]
    by = {(r["name"], r["spatial_dims"], r["precision"], r["mode"]): r for r in rows}
    lines = [
        "# Model benchmark: CPU forward time and parameters",
        "",
        "`python benchmarks/models/run.py` (writes `results.json` and this table). Default width of every",
        "architecture (`create_model(name, dims, 1, 2)`), batch 1, eval mode, `torch.no_grad()`,",
        f"{THREADS} threads; best (minimum) of up to {MAX_REPEATS} timed repeats after one warm-up (the warm-up",
        "itself where it took longer than the per-configuration budget: one run). The minimum is the least",
        "disturbed by other jobs on a shared machine; medians are in `results.json`. Peak memory: the subprocess's peak resident set",
        "minus its resident set after building the model (so: activations and workspace of the forward).",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch "
        f"{results['machine']['torch']}, monai {results['machine']['monai']}. **The machine was shared with",
        "other engineers' jobs while this ran (load average "
        f"{results['machine']['load_before'][0]:.1f} before, {results['machine']['load_after'][0]:.1f} after on "
        f"{results['machine']['cores']} cores)**: absolute times are noisy; the ratios between rows of one run",
        "are what count.",
        "",
    ]
    for dims in (3, 2):
        size = "×".join(map(str, SIZES[dims]))
        lines += [f"## {dims}D, input {size}", "",
                  "| architecture | parameters | fp32 forward | bf16 forward | bf16 speed-up | fp32 peak memory | "
                  "repeats (fp32) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in results["architectures"] + ["monai_unet", "monai_vnet"]:
            f32, b16 = by.get((name, dims, "fp32", "forward")), by.get((name, dims, "bf16", "forward"))
            if f32 is None:
                continue
            label = f"`{name}`" if not name.startswith("monai") else f"baseline: MONAI `{name[6:].upper()}` direct"
            speedup = f"{f32['min_s'] / b16['min_s']:.2f}×" if b16 else "–"
            lines.append(f"| {label} | {f32['parameters']:,} | {_fmt_s(f32['min_s'])} | "
                         f"{_fmt_s(b16['min_s']) if b16 else '–'} | {speedup} | "
                         f"{f32['peak_increase_mb']:.0f} MB | {f32['repeats']} |")
        for ours, base in (("unet", "monai_unet"), ("vnet", "monai_vnet")):
            a, b = by.get((ours, dims, "fp32", "forward")), by.get((base, dims, "fp32", "forward"))
            if a and b:
                lines.append("")
                lines.append(f"medseg `{ours}` / MONAI direct, fp32 time ratio: **{a['min_s'] / b['min_s']:.2f}** "
                             f"(same parameters: {a['parameters'] == b['parameters']})")
        lines.append("")
    eff = next((r for r in rows if r["mode"] == "train" and r["options"].get("memory_efficient")), None)
    plain = next((r for r in rows if r["mode"] == "train" and not r["options"].get("memory_efficient")), None)
    if plain and eff:
        lines += ["## Tiramisu training step, 64³, batch 1, fp32", "",
                  "| variant | step time | peak memory (activations) |", "|---|---:|---:|",
                  f"| `memory_efficient=False` | {_fmt_s(plain['median_s'])} | {plain['peak_increase_mb']:.0f} MB |",
                  f"| `memory_efficient=True` | {_fmt_s(eff['median_s'])} | {eff['peak_increase_mb']:.0f} MB |",
                  "", f"Memory ratio (efficient / plain): **{eff['peak_increase_mb'] / plain['peak_increase_mb']:.2f}**; "
                  f"time ratio: **{eff['median_s'] / plain['median_s']:.2f}**.", ""]
    (HERE / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="architectures to measure (default: all registered)")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(**spec)))
        return

    sys.path.insert(0, str(ROOT))
    import monai
    import torch

    from medseg.models import available_models

    names = args.only or available_models()
    specs = []
    for dims in (2, 3):
        for name in names + [b for b, o in (("monai_unet", "unet"), ("monai_vnet", "vnet")) if o in names]:
            for precision in ("fp32", "bf16"):
                specs.append({"name": name, "dims": dims, "precision": precision, "mode": "forward", "options": {}})
    if "tiramisu" in names:
        for eff in (False, True):
            specs.append({"name": "tiramisu", "dims": 3, "precision": "fp32", "mode": "train",
                          "options": {"memory_efficient": eff, "dropout": 0.0}})
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    machine = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "monai": monai.__version__,
               "python": platform.python_version(), "threads": THREADS, "load_before": list(os.getloadavg())}
    started = time.perf_counter()
    runs = []
    for spec in specs:
        result = _run_worker(spec)
        runs.append(result)
        print(f"{spec['name']:>10} {spec['dims']}D {spec['precision']} {spec['mode']:<7} "
              f"{_fmt_s(result['min_s']):>9} x{result['repeats']}  {result['parameters']:>11,} params  "
              f"+{result['peak_increase_mb']:.0f} MB", flush=True)
    machine["load_after"] = list(os.getloadavg())
    results = {"machine": machine, "architectures": names, "sizes": {str(k): v for k, v in SIZES.items()},
               "wall_s": time.perf_counter() - started, "runs": runs,
               "note": "shared 2-core machine: absolute times are noisy; compare ratios within one run"}
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    write_readme(results)
    print(f"wrote {HERE / 'results.json'} and README.md in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

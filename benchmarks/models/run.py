"""CPU forward time, peak memory and parameter count of every registered architecture.

Every architecture at its default width (1 input channel, 2 classes), batch 1, eval mode, no grad,
2 threads, at 96³ (3D) and 256² (2D), in fp32 and under bf16 autocast. Side by side in the same
run, the baselines: MONAI's ``UNet`` and ``VNet`` called directly (medseg's ``unet``/``vnet`` are
those networks behind medseg's shared pad/crop forward; at 96³/256² nothing is padded, so their
ratio shows what medseg's wrapper costs). Plus one training step of ``tiramisu`` at 64³ with and
without ``memory_efficient`` (peak memory is what that option is for).

Method (made for a shared, noisy machine): one subprocess per (dims, precision) builds every model,
runs each once (warm-up), then times them round-robin, so that disturbances by other jobs hit all
models alike; the figure is the minimum of the timed rounds. Peak memory: during the first timed
round, the resident set is sampled every 2 ms by a background thread (glibc's mmap threshold is
fixed so that freed activations are returned to the OS); the figure is the peak minus the resident
set before the call. A model whose warm-up takes longer than ``SLOW_S`` is recorded (time and
memory) from that one run.

    python benchmarks/models/run.py            # everything (about 5-10 minutes on 2 cores)
    python benchmarks/models/run.py --only unet vnet

Writes ``results.json`` and ``README.md`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SIZES = {3: (96, 96, 96), 2: (256, 256)}
THREADS = 2
ROUND_BUDGET_S = {3: 90.0, 2: 20.0}  # timed rounds stop once this much time was spent (at least one round)
MAX_ROUNDS = 3
SLOW_S = 25.0
BASELINES = {"monai_unet": "unet", "monai_vnet": "vnet"}
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE_MB


class PeakRSS:
    """Samples this process's resident set every ``interval`` s; ``peak_mb`` - ``start_mb`` is the increase."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = _rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


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
                    dropout_prob_up=(0.0, 0.0), dropout_dim=dims)
    from medseg.models import create_model

    return create_model(name, dims, 1, 2, **options)


def forward_group(dims: int, precision: str, names: list[str]) -> list[dict]:
    """Warm-up (with peak memory) and round-robin timed forwards of ``names`` in this process."""
    import gc

    import torch

    torch.set_num_threads(THREADS)
    x = torch.randn(1, 1, *SIZES[dims])
    nets = {name: _build(name, dims, {}).eval() for name in names}

    def once(net) -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            net(x)
        return time.perf_counter() - start

    results = {}
    for name, net in nets.items():
        gc.collect()
        with PeakRSS() as mem:
            warm = once(net)
        results[name] = {"name": name, "spatial_dims": dims, "input": list(SIZES[dims]), "precision": precision,
                         "mode": "forward", "options": {}, "parameters": sum(p.numel() for p in net.parameters()),
                         "warmup_s": warm, "peak_increase_mb": mem.peak_mb - mem.start_mb, "times_s": []}
    timed = [n for n in names if results[n]["warmup_s"] < SLOW_S]
    spent = 0.0
    for round_ in range(MAX_ROUNDS):
        if not timed or (round_ and spent > ROUND_BUDGET_S[dims]):
            break
        for name in timed:
            gc.collect()
            with PeakRSS() as mem:  # the first timed round gives the memory figure (warm caches, like in use)
                t = once(nets[name])
            if round_ == 0:
                results[name]["peak_increase_mb"] = mem.peak_mb - mem.start_mb
            results[name]["times_s"].append(t)
            spent += t
    for r in results.values():
        times = sorted(r["times_s"]) or [r["warmup_s"]]
        r.update(repeats=len(times), min_s=times[0], median_s=times[len(times) // 2])
    return list(results.values())


def train_group() -> list[dict]:
    """One fp32 training step of tiramisu at 64³, plain then memory-efficient (peak memory of each)."""
    import gc

    import torch

    torch.set_num_threads(THREADS)
    x = torch.randn(1, 1, 64, 64, 64)
    out = []
    for efficient in (False, True):
        options = {"memory_efficient": efficient, "dropout": 0.0}
        net = _build("tiramisu", 3, options).train()
        gc.collect()
        with PeakRSS() as mem:
            start = time.perf_counter()
            net(x).square().mean().backward()
            step = time.perf_counter() - start
        out.append({"name": "tiramisu", "spatial_dims": 3, "input": [64, 64, 64], "precision": "fp32",
                    "mode": "train", "options": options, "parameters": sum(p.numel() for p in net.parameters()),
                    "repeats": 1, "min_s": step, "median_s": step, "warmup_s": step,
                    "peak_increase_mb": mem.peak_mb - mem.start_mb, "times_s": [step]})
        del net
    return out


def _run_worker(spec: dict) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(THREADS),
           # a fixed mmap threshold: freed activations go back to the OS, so the resident set tracks live memory
           "MALLOC_MMAP_THRESHOLD_": "131072"}
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
    m = results["machine"]
    lines = [
        "# Model benchmark: CPU forward time, memory and parameters",
        "",
        "`python benchmarks/models/run.py` writes `results.json` and this file. Every architecture at its",
        "default width (`create_model(name, dims, 1, 2)`), batch 1, eval mode, `torch.no_grad()`,",
        f"{THREADS} threads, fp32 and bf16 autocast. Baselines in the same run: MONAI's `UNet` and `VNet`",
        "called directly. Time: minimum over up to "
        f"{MAX_ROUNDS} round-robin rounds after a warm-up (the warm-up itself, one run, where",
        f"it took over {SLOW_S:.0f} s). Memory: peak increase of the resident set during one forward",
        "(activations and workspace), sampled every 2 ms.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, monai {m['monai']}; whole run "
        f"{results['wall_s']:.0f} s.",
        f"Load average {m['load_before'][0]:.1f} before and {m['load_after'][0]:.1f} after the run, on "
        f"{m['cores']} cores. Where the load exceeds the cores, small forwards (the 2D rows: tens of "
        "milliseconds of compute) are dominated by OpenMP threads waiting to be scheduled: compare rows "
        "of one run (ratios) and re-run on an idle machine for absolute figures.",
        "",
    ]
    for dims in (3, 2):
        size = "×".join(map(str, SIZES[dims]))
        lines += [f"## {dims}D, input {size}", "",
                  "| architecture | parameters | fp32 forward | bf16 forward | fp32/bf16 | peak memory fp32 | "
                  "peak memory bf16 | timed runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in results["architectures"] + list(BASELINES):
            f32, b16 = by.get((name, dims, "fp32", "forward")), by.get((name, dims, "bf16", "forward"))
            if f32 is None:
                continue
            label = f"`{name}`" if name not in BASELINES else f"baseline: MONAI `{name[6:].upper()}` direct"
            speedup = f"{f32['min_s'] / b16['min_s']:.2f}×" if b16 else "–"
            lines.append(f"| {label} | {f32['parameters']:,} | {_fmt_s(f32['min_s'])} | "
                         f"{_fmt_s(b16['min_s']) if b16 else '–'} | {speedup} | {f32['peak_increase_mb']:.0f} MB | "
                         f"{b16['peak_increase_mb']:.0f} MB | {f32['repeats']}/{b16['repeats'] if b16 else 0} |")
        lines.append("")
        for base, ours in BASELINES.items():
            for precision in ("fp32", "bf16"):
                a, b = by.get((ours, dims, precision, "forward")), by.get((base, dims, precision, "forward"))
                if a and b:
                    lines.append(f"- medseg `{ours}` / MONAI direct, {precision} time ratio: "
                                 f"**{a['min_s'] / b['min_s']:.2f}** (same parameter count: "
                                 f"{a['parameters'] == b['parameters']})")
        lines.append("")
    eff = next((r for r in rows if r["mode"] == "train" and r["options"].get("memory_efficient")), None)
    plain = next((r for r in rows if r["mode"] == "train" and not r["options"].get("memory_efficient")), None)
    if plain and eff:
        lines += ["## Tiramisu training step (forward + backward), 64³, batch 1, fp32", "",
                  "| variant | step time | peak memory increase |", "|---|---:|---:|",
                  f"| `memory_efficient=False` | {_fmt_s(plain['min_s'])} | {plain['peak_increase_mb']:.0f} MB |",
                  f"| `memory_efficient=True` | {_fmt_s(eff['min_s'])} | {eff['peak_increase_mb']:.0f} MB |",
                  "", f"Memory ratio (efficient / plain): **{eff['peak_increase_mb'] / plain['peak_increase_mb']:.2f}**; "
                  f"time ratio: **{eff['min_s'] / plain['min_s']:.2f}** (one run each).", ""]
    (HERE / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="architectures to measure (default: all registered)")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(train_group() if spec["mode"] == "train" else
                         forward_group(spec["dims"], spec["precision"], spec["names"])))
        return

    sys.path.insert(0, str(ROOT))
    import monai
    import torch

    from medseg.models import available_models

    names = args.only or available_models()
    group = names + [base for base, ours in BASELINES.items() if ours in names]
    specs = [{"mode": "forward", "dims": dims, "precision": precision, "names": group}
             for dims in (2, 3) for precision in ("fp32", "bf16")]
    if "tiramisu" in names:
        specs.append({"mode": "train"})
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    machine = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "monai": monai.__version__,
               "python": platform.python_version(), "threads": THREADS, "load_before": list(os.getloadavg())}
    started = time.perf_counter()
    runs = []
    for spec in specs:
        for r in _run_worker(spec):
            runs.append(r)
            print(f"{r['name']:>10} {r['spatial_dims']}D {r['precision']} {r['mode']:<7} {_fmt_s(r['min_s']):>9} "
                  f"x{r['repeats']}  {r['parameters']:>11,} params  +{r['peak_increase_mb']:.0f} MB", flush=True)
    machine["load_after"] = list(os.getloadavg())
    results = {"machine": machine, "architectures": names, "sizes": {str(k): v for k, v in SIZES.items()},
               "wall_s": time.perf_counter() - started, "runs": runs,
               "note": "shared 2-core machine: absolute times are noisy; compare ratios within one run"}
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    write_readme(results)
    print(f"wrote {HERE / 'results.json'} and README.md in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

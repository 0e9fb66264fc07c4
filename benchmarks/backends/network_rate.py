"""The network alone: one forward of the nnU-Net case's PlainConvUNet on each backend, in
convolution FLOPs per second.

Whole commands (``run.py``) show what a user waits for; this shows how close each backend's
forward is to what the CPU can do. The network is the ``nnunet`` case's (nnU-Net 2.8.1's default
3d_fullres plans, PlainConvUNet 32→320, one 96×160×160 window, batch 1, random weights), its
convolution and transposed-convolution FLOPs counted from the layer shapes (2 per multiply-add),
each backend built by medseg's own :func:`medseg.inference.backends.compile_network`, 2 threads,
best of ``--repeats`` calls after one untimed call.

    python benchmarks/backends/network_rate.py            # writes network_rate.json beside this file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VARIANTS = (("torch", "f32"), ("torch", "bf16"), ("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "bf16"),
            ("openvino", "int8"))


def conv_flops(net, shape) -> int:
    """Multiply-adds × 2 of every Conv3d and ConvTranspose3d of ``net`` on one input of ``shape``."""
    import torch

    total = [0]

    def hook(module, inputs, output):
        k = module.weight.shape  # conv: (out, in/groups, kd, kh, kw); transposed: (in, out/groups, ...)
        per_tap = int(k[2] * k[3] * k[4])
        if isinstance(module, torch.nn.ConvTranspose3d):
            total[0] += 2 * inputs[0][0].numel() * int(k[1]) * per_tap
        else:
            total[0] += 2 * output[0].numel() * int(k[1]) * per_tap

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        net(torch.zeros(shape))
    for h in handles:
        h.remove()
    return total[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MEDSEG_CACHE_DIR", str(HERE / "_work" / "cache"))
    import numpy as np
    import torch

    from benchmarks.backends.run import nnunet_case
    from medseg.inference.backends import compile_network
    from medseg.inference.nnunet.config import build_network, read_config
    from medseg.runtime import resolve_runtime

    _, model, calib = nnunet_case()
    cfg = read_config(model)
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    shape = (1, len(cfg.channels)) + tuple(int(p) for p in cfg.patch_size)
    flops = conv_flops(net, shape)
    runtime = resolve_runtime("cpu", "none", 2)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

    def calibration():  # int8: windows of the case's calibration phantom, nnU-Net-preprocessed
        from medseg.inference.backends import calibration_windows
        from medseg.inference.nnunet.preprocess import preprocess
        from medseg.io import read_volume
        from medseg.io.volume import stated_spacing

        vol = read_volume(calib)
        data = preprocess([np.asarray(vol.array).transpose(2, 1, 0)],
                          [float(s) for s in stated_spacing(vol)[::-1]], cfg).data
        return calibration_windows([data], cfg.patch_size, 8)

    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": 2,
                           "load_average_at_start": os.getloadavg()},
               "window": list(shape), "conv_gflop": flops / 1e9, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp, runtime.activate(), torch.inference_mode():
        for backend, precision in VARIANTS:
            extra = {"calibration": calibration, "calibration_id": "network_rate"} if precision == "int8" else {}
            forward = compile_network(net, input_shape=shape, runtime=runtime, backend=backend, precision=precision,
                                      cache=tmp if precision == "int8" else None, **extra)
            forward(x)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - t)
            best = min(times)
            name = f"{backend} {precision}"
            results["variants"][name] = {"best_s": best, "times_s": times, "gflops": flops / 1e9 / best,
                                         "runs_as": forward.describe()}
            print(f"{name}: {best:.2f} s, {flops / 1e9 / best:.0f} GFLOP/s", flush=True)
    ref = results["variants"]["torch f32"]["best_s"]
    for v in results["variants"].values():
        v["speedup_vs_torch_f32"] = ref / v["best_s"]
    results["machine"]["load_average_at_end"] = os.getloadavg()
    (HERE / "network_rate.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {HERE / 'network_rate.json'}")


if __name__ == "__main__":
    main()

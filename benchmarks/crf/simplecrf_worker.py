"""Run SimpleCRF's densecrf3d on one case (runs inside the SimpleCRF venv, never imports medseg).

Usage: python simplecrf_worker.py CASE.npz OUT.npz RESULT.json

CASE.npz holds ``image`` (X, Y, Z) uint8, ``probs`` (K, X, Y, Z) float32 and ``params`` (JSON).
SimpleCRF's wrapper builds its lattice as (shape[0], shape[1], shape[2]) while the C-ordered
data has shape[2] fastest, so a C-ordered (A0, A1, A2) array (A2 fastest, the "natural" (Z, Y, X)) is passed transposed to
(A1, A0, A2), i.e. (Y, Z, X) (issue 6), and the
labels transposed back.
"""

import json
import os
import resource
import sys
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    case, out, result = sys.argv[1:4]
    import denseCRF3D

    data = np.load(case)
    params = json.loads(str(data["params"]))
    order = tuple(json.loads(str(data["axes"]))) if "axes" in data else (1, 0, 2)
    image = np.ascontiguousarray(np.transpose(data["image"], order)[..., None])
    probs = np.ascontiguousarray(np.transpose(data["probs"], (1 + order[0], 1 + order[1], 1 + order[2], 0)))
    param = {
        "MaxIterations": float(params["iterations"]),
        "PosW": float(params["spatial_weight"]),
        "PosRStd": float(params["spatial_sigma"]), "PosCStd": float(params["spatial_sigma"]),
        "PosZStd": float(params["spatial_sigma"]),
        "BilateralW": float(params["bilateral_weight"]),
        "BilateralRStd": float(params["bilateral_sigma"]), "BilateralCStd": float(params["bilateral_sigma"]),
        "BilateralZStd": float(params["bilateral_sigma"]),
        "ModalityNum": 1, "BilateralModsStds": (float(params["intensity_sigma"]),),
    }
    before = rss_mb()
    # its C++ code prints its parameters on every call: send fd 1 to /dev/null during the call
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        t0 = time.perf_counter()
        labels = denseCRF3D.densecrf3d(image, probs, param)
        seconds = time.perf_counter() - t0
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    inverse = np.argsort(order)
    labels = np.transpose(np.asarray(labels), tuple(inverse))
    np.savez(out, labels=labels.astype(np.uint8))
    with open(result, "w") as f:
        json.dump({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak}, f)


if __name__ == "__main__":
    main()

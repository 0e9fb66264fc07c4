"""I/O benchmark: write and read a 512×512×300 int16 CT as .nii.gz, medseg against the baselines.

Cases (each run in a fresh subprocess; peak memory is that process's VmHWM, which includes the
imports and, for writes, the input array (150 MiB) loaded before the clock starts: see
``rss_before_mib``):

- write: medseg ``write_nifti_array`` (isal igzip level 1) vs nibabel ``nib.save`` (its default)
  vs SimpleITK ``sitk.WriteImage`` (its default for .nii.gz);
- read: medseg ``read_volume`` (isal decompression + validation) vs ``nib.load(...).dataobj`` vs
  ``sitk.ReadImage``.

The volume is the real DICOM series of ../shared/data/ct_abdomen/dicom (512×512×20, HU) stacked
15 times along z, so it compresses like a CT. Times are the median of ``--repeats`` runs; the
ratio is baseline time / medseg time (> 1: medseg is faster). Writes results.json beside this file.

    python benchmarks/io/run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work"
SHAPE = (512, 512, 300)

CASES = {
    "write": ["medseg", "nibabel", "simpleitk"],
    "read": ["medseg", "nibabel", "simpleitk"],
}


def _affine():
    import numpy as np

    return np.array([[-0.9765625, 0, 0, 249.51171875], [0, -0.9765625, 0, 437.51171875], [0, 0, 2.0, -804.5],
                     [0, 0, 0, 1]])


def prepare() -> Path:
    """The input array (.npy) and a reference .nii.gz for the read cases."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from medseg.io import read_volume, write_nifti_array

    WORK.mkdir(exist_ok=True)
    npy = WORK / "ct.npy"
    if not npy.exists():
        ct = read_volume(ROOT.parent / "shared" / "data" / "ct_abdomen" / "dicom").array
        np.save(npy, np.ascontiguousarray(np.concatenate([ct] * (SHAPE[2] // ct.shape[2]), axis=2)))
    ref = WORK / "ref.nii.gz"
    if not ref.exists():
        write_nifti_array(np.load(npy), _affine(), ref)
    return npy


def _hwm_mib() -> float:
    """Peak resident set size of this process in MiB (VmHWM: per address space, reset by exec,
    unlike getrusage's ru_maxrss which a child inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(op: str, lib: str) -> dict:
    """Run one case in this process; return its time and memory."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import nibabel as nib
    import SimpleITK as sitk

    from medseg.io import read_volume, volume_to_sitk, write_nifti_array
    from medseg.io.volume import Volume

    out = WORK / f"out_{lib}.nii.gz"
    arr = np.load(WORK / "ct.npy") if op == "write" else None
    rss_before = _hwm_mib()
    t0 = time.perf_counter()
    if op == "write":
        if lib == "medseg":
            write_nifti_array(arr, _affine(), out)
        elif lib == "nibabel":
            nib.save(nib.Nifti1Image(arr, _affine()), out)
        else:
            sitk.WriteImage(volume_to_sitk(Volume(arr, _affine())), str(out))
    else:
        ref = WORK / "ref.nii.gz"
        if lib == "medseg":
            arr = read_volume(ref).array
        elif lib == "nibabel":
            arr = np.asarray(nib.load(ref).dataobj)
        else:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(ref)))
    seconds = time.perf_counter() - t0
    peak = _hwm_mib()
    result = {"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": rss_before,
              "shape": list(arr.shape), "dtype": str(arr.dtype)}
    if op == "write":
        result["bytes"] = out.stat().st_size
        back = np.asarray(nib.load(out).dataobj)
        result["roundtrip_exact"] = bool(np.array_equal(back, np.load(WORK / "ct.npy")))
        out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("OP", "LIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import run; run.prepare()"],
                   check=True)  # in a child, so this process stays small
    results: dict = {"shape": list(SHAPE), "dtype": "int16", "repeats": args.repeats,
                     "python": platform.python_version(), "machine": platform.machine(),
                     "note": "shared 2-core machine (other jobs running): compare ratios within this run", "cases": {}}
    for op, libs in CASES.items():
        for lib in libs:
            runs = []
            for _ in range(args.repeats):
                proc = subprocess.run([sys.executable, __file__, "--child", op, lib], capture_output=True, text=True,
                                      check=True)
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            case = {"seconds_median": statistics.median(r["seconds"] for r in runs),
                    "seconds_all": [r["seconds"] for r in runs],
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "rss_before_mib": max(r["rss_before_mib"] for r in runs)}
            for key in ("bytes", "roundtrip_exact"):
                if key in runs[0]:
                    case[key] = runs[0][key]
            results["cases"][f"{op}/{lib}"] = case
            print(f"{op:5s} {lib:9s} {case['seconds_median']:.3f} s  peak {case['peak_rss_mib']:.0f} MiB", flush=True)
        ours = results["cases"][f"{op}/medseg"]["seconds_median"]
        for lib in libs[1:]:
            results["cases"][f"{op}/{lib}"]["time_ratio_vs_medseg"] = results["cases"][f"{op}/{lib}"]["seconds_median"] / ours
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

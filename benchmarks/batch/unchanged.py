"""Unchanged-archive benchmark: the second night's run over an archive where nothing changed.

A batch run decides which studies are new or changed from their content hash. Hashing every
study's bytes on every run (what ``--verify`` does, and what every run did before the stat fast
path) reads the whole archive each night; with the fast path a study whose files kept their size,
modification time and inode keeps the hash recorded in its state, so nothing but the states and
``stat`` results is read.

    python benchmarks/batch/unchanged.py [--studies 200] [--shape 160 160 96] [--repeats 3]

1. writes a phantom archive (``--studies`` NIfTI studies of ``--shape`` int16 voxels) and segments
   it once with the quick phantom U-Net (``medseg.batch.run_batch``, the plain loop: the Prefect
   flow runs the same planning code);
2. then, in fresh processes, alternating: a second run with the fast path and a second run with
   ``verify=True`` (full hashing), each timed (wall) with the bytes the process read
   (``rchar`` of ``/proc/self/io``: every read() call, page cache or disk). When the kernel's page
   cache can be dropped (root, ``/proc/sys/vm/drop_caches``) it is dropped before each run, so
   that the archive comes from the disk, as it would each night.

Writes ``benchmarks/batch/unchanged_results.json``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def _child(archive: str, model: str, out: str, verify: str) -> None:
    sys.path.insert(0, str(ROOT))
    from medseg.batch import run_batch

    r0, t0 = _rchar(), time.perf_counter()
    record = run_batch(archive, model, out, verify=verify == "verify", device="cpu")
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes_read": _rchar() - r0,
                      "processed": len(record["processed"]), "skipped": len(record["skipped"])}))


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 96])
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.0, 2.0, 2.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg_bench_unchanged"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    sys.path.insert(0, str(ROOT))
    from medseg.batch import run_batch
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom
    from medseg.training import quick_train_phantom_model

    work = args.work
    archive = work / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i in range(args.studies):
        path = archive / f"study_{i:03d}.nii.gz"
        if not path.is_file():
            write_volume(make_phantom(3000 + i, shape=tuple(args.shape), spacing=tuple(args.spacing),
                                      n_tumours=2).image, path)
    gen_s = time.perf_counter() - t
    model = work / "training" / "model"
    if not (model / "model.pt").is_file():
        quick_train_phantom_model(work / "training")
    out = work / "out"
    t = time.perf_counter()
    first = run_batch(archive, model, out, device="cpu")
    first_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in archive.iterdir())
    runs: dict[str, list[dict]] = {"fast": [], "verify": []}
    dropped = False
    env = dict(os.environ, PYTHONPATH=str(ROOT), MEDSEG_THREADS="2")
    for rep in range(args.repeats):
        for mode in (("fast", "verify") if rep % 2 == 0 else ("verify", "fast")):
            dropped = _drop_caches()
            proc = subprocess.run([sys.executable, __file__, "--child", str(archive), str(model), str(out), mode],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            assert res["processed"] == 0 and res["skipped"] == args.studies, res
            res["load_average"] = os.getloadavg()[0]
            runs[mode].append(res)
            print(f"{mode:6s} run {rep + 1}: {res['seconds']:6.2f} s, {res['bytes_read'] / 2**20:8.1f} MiB read "
                  f"(load {res['load_average']:.1f})", flush=True)
    result = {
        "benchmark": "second batch run over an unchanged archive: stat fast path vs full hashing (--verify)",
        "studies": args.studies, "shape": args.shape, "archive_bytes": size,
        "archive_generation_seconds": gen_s, "first_run_seconds": first_s,
        "first_run_processed": len(first["processed"]), "page_cache_dropped": dropped,
        "runs": runs,
        "fast_seconds_median": statistics.median(r["seconds"] for r in runs["fast"]),
        "verify_seconds_median": statistics.median(r["seconds"] for r in runs["verify"]),
        "fast_bytes_read_median": statistics.median(r["bytes_read"] for r in runs["fast"]),
        "verify_bytes_read_median": statistics.median(r["bytes_read"] for r in runs["verify"]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (HERE / "unchanged_results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()

"""Batch benchmark: the segment-archive Prefect flow against a plain Python loop over the same
library calls (medseg.batch), on a phantom archive of 200 small studies.

For archive sizes 50, 100 and 200 (the first N studies of one archive), each mode runs in a
fresh process with a fresh output folder and reports:

- wall time of the batch (model loading included, Python imports and Prefect's temporary
  server start excluded: the server is started by a warm-up flow first, and its start-up time
  is reported on its own), studies per minute;
- peak resident memory of the process (``ru_maxrss``): it must stay flat as the archive grows
  (studies are streamed one at a time, nothing is kept per study but a small record).

The flow's overhead is ``flow time / loop time - 1`` at each size (target <= 10%), from the best
of ``--repeats`` runs of each mode (the runs alternate which mode goes first; the median is
reported too): the machine is shared, and the least disturbed run is the fairest comparison.

    python benchmarks/batch/run.py [--sizes 50 100 200] [--shape 48 48 32]

Writes ``benchmarks/batch/results.json``. The machine is shared: timings are noisy, the
side-by-side ratio in one run is what counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _child(mode: str, archive: str, model: str, out: str) -> None:
    """One measured batch in this process; prints a JSON line with the figures."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(2)
    startup = 0.0
    if mode == "flow":
        from prefect import flow

        @flow(name="warm-up")
        def warm_up() -> int:
            return 1

        t = time.perf_counter()
        warm_up()
        startup = time.perf_counter() - t
        import flows.segment_archive as fsa

        t = time.perf_counter()
        record = fsa.segment_archive(archive, model, out)
        elapsed = time.perf_counter() - t
    else:
        from concurrent.futures import ThreadPoolExecutor

        from medseg.batch import BatchOptions, run_batch

        def loop() -> dict:
            return run_batch(archive, model, out, BatchOptions())

        # The flow runs its tasks in one worker thread (ThreadPoolTaskRunner(max_workers=1)); the
        # loop does too, so that both compute alike (torch's CPU kernels run at a different speed
        # in the main thread than in a worker thread on this machine: see README.md).
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:
            record = pool.submit(loop).result()
        elapsed = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # time spent inside the studies' own work (process_study, as recorded in each state file)
    study_s = sum(json.loads(p.read_text())["seconds"] for p in Path(out, "state").glob("*.json")
                  if not p.name.startswith("."))
    print(json.dumps({"mode": mode, "seconds": elapsed, "study_seconds": study_s, "startup_seconds": startup,
                      "peak_rss_mb": peak_mb,
                      "processed": len(record["processed"]), "failed": len(record["failed"])}))


def _make_archive(root: Path, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    """``n`` phantom studies (images only) and one manifest per archive size."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / "images" / f"study_{i:03d}.nii.gz"
        if not path.is_file():
            write_volume(make_phantom(1000 + i, shape=shape, spacing=spacing, n_tumours=2).image, path)
    return root


def _manifest(root: Path, n: int) -> Path:
    path = root / f"manifest_{n}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "image", "label", "split"])
        for i in range(n):
            w.writerow([f"study_{i:03d}", f"images/study_{i:03d}.nii.gz", "", "test"])
    return path


def _model(work: Path) -> Path:
    """The project's quick phantom U-Net (trained once, kept in the work folder)."""
    from medseg.training import quick_train_phantom_model

    model = work / "training" / "model"
    if not (model / "model.pt").is_file():
        model = quick_train_phantom_model(work / "training")
    return model


def _run(mode: str, manifest: Path, model: Path, out: Path) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(out.parent / f"prefect_home_{out.name}"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(manifest), str(model), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 32])
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 4.5])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode and size (best and median kept)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg_bench_batch"))
    parser.add_argument("--child", nargs=4, metavar=("MODE", "ARCHIVE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    import shutil

    sys.path.insert(0, str(ROOT))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    archive = _make_archive(work / "archive", max(args.sizes), tuple(args.shape), tuple(args.spacing))
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    model = _model(work)
    train_s = time.perf_counter() - t
    results_path = HERE / "results.json"
    previous = json.loads(results_path.read_text()).get("rows", []) if results_path.is_file() else []
    rows = [r for r in previous if r["studies"] not in args.sizes]  # sizes not re-run this time are kept
    for n in args.sizes:
        manifest = _manifest(archive, n)
        runs: dict[str, list[dict]] = {"loop": [], "flow": []}
        for rep in range(args.repeats):
            # alternate which mode goes first, so that a change of load on the shared machine
            # does not always fall on the same side
            for mode in (("loop", "flow") if rep % 2 == 0 else ("flow", "loop")):
                out = work / f"out_{mode}_{n}"
                shutil.rmtree(out, ignore_errors=True)
                res = _run(mode, manifest, model, out)
                if res["processed"] != n:
                    raise RuntimeError(f"{mode} processed {res['processed']} of {n} studies")
                runs[mode].append(res)
                print(f"n={n:4d} {mode:5s} run {rep + 1}: {res['seconds']:7.1f} s  {60 * n / res['seconds']:7.1f} "
                      f"studies/min  in studies {res['study_seconds']:7.1f} s  peak {res['peak_rss_mb']:.0f} MB",
                      flush=True)
        best = {m: min(r["seconds"] for r in runs[m]) for m in runs}
        med = {m: statistics.median(r["seconds"] for r in runs[m]) for m in runs}
        outside = {m: min(r["seconds"] - r["study_seconds"] for r in runs[m]) for m in runs}
        rows.append({"studies": n, "repeats": args.repeats,
                     "loop_outside_studies_seconds_best": outside["loop"],
                     "flow_outside_studies_seconds_best": outside["flow"],
                     "flow_orchestration_seconds_per_study": (outside["flow"] - outside["loop"]) / n,
                     "study_seconds_median_per_study": {m: statistics.median(r["study_seconds"] for r in runs[m]) / n
                                                        for m in runs},
                     "loop_seconds_best": best["loop"], "flow_seconds_best": best["flow"],
                     "loop_seconds_median": med["loop"], "flow_seconds_median": med["flow"],
                     "loop_seconds_all": [r["seconds"] for r in runs["loop"]],
                     "flow_seconds_all": [r["seconds"] for r in runs["flow"]],
                     "loop_studies_per_min": 60 * n / best["loop"], "flow_studies_per_min": 60 * n / best["flow"],
                     "flow_overhead_best": best["flow"] / best["loop"] - 1,
                     "flow_overhead_median": med["flow"] / med["loop"] - 1,
                     "loop_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["loop"]),
                     "flow_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["flow"]),
                     "prefect_startup_seconds": statistics.median(r["startup_seconds"] for r in runs["flow"]),
                     "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "load_average": os.getloadavg()[0]})
        rows.sort(key=lambda r: r["studies"])
        _write_results(results_path, args, gen_s, train_s, rows)  # after every size: partial runs survive
    print(json.dumps(rows, indent=2))


def _write_results(path: Path, args, gen_s: float, train_s: float, rows: list[dict]) -> None:
    results = {
        "benchmark": "batch: segment-archive Prefect flow vs plain Python loop over medseg.batch",
        "study_shape": args.shape, "study_spacing_mm": args.spacing,
        "archive_generation_seconds": gen_s, "model_training_seconds": train_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "shared machine (up to 8 engineers running at once): timings are noisy; "
                            "the side-by-side ratio of one run is what counts"},
        "rows": rows,
    }
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

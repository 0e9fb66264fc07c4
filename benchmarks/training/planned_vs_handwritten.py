"""Planned vs hand-written configs, cross-validated, given the same minutes: ``medseg plan`` against a person's YAML.

For each dataset, side by side in one run:

1. **planned**: ``medseg plan MANIFEST -o planned.yaml --minutes N/K`` (the dataset fingerprint and
   nnU-Net-style decisions, no hand-tuning), then
   ``medseg train planned.yaml --out planned/ --folds all --max-minutes N``;
2. **hand-written**: a copy of the hand-written config with ``cross_validation: {folds: K}``
   added (the planned config's fold count, so that both are scored on the same out-of-fold
   cases), trained with the same command and minutes.

Each ``medseg train --folds all`` shares its minutes equally between its folds and writes
``DIR/cv_summary.json`` (the ``medseg evaluate`` summary of every out-of-fold prediction). The
table compares, per dataset:

- **BraTS gliomas** (``data_manifests/brats_glioma.csv`` vs ``configs/brats_unet3d.yaml``): Dice of
  whole tumour, tumour core and enhancing tumour (the hand-written config's ``data.regions``),
  computed on each fold's out-of-fold label maps (``DIR/fold_K/validation/<case>.nii.gz``) against
  the manifest's references, mean over cases; and the per-label mean Dice of ``cv_summary.json``;
- **MS lesions** (``data_manifests/ms_lesions.csv`` vs ``configs/ms_lesions_unet3d.yaml``):
  lesion-wise recall and precision (``cv_summary.json``'s ``lesions``: a lesion is detected when
  10 % of it is covered) and lesion Dice.

The fold count is the planned config's ``cross_validation.folds``, capped at the number of labelled
cases (4 BraTS, 2 MS); where the cap changes it, the planned config is copied with that one value
changed (recorded as ``folds_capped``). Every command is its own process; thread count pinned for all
(``MEDSEG_THREADS``). Results go to ``planned_vs_handwritten.json`` and the second table of
``README.md`` next to this file; work files to ``_work/planned_vs_handwritten/`` (a run whose
``cv_summary.json`` is there is reused; ``--fresh`` trains again).

    python benchmarks/training/planned_vs_handwritten.py                  # 2 datasets x 2 configs x 15 min
    python benchmarks/training/planned_vs_handwritten.py --minutes 5 --datasets brats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "_work" / "planned_vs_handwritten"
RESULTS = HERE / "planned_vs_handwritten.json"

# dataset -> its manifest, the hand-written config, and what the table reports
DATASETS = {
    "brats": {"title": "BraTS gliomas (4 cases)", "manifest": ROOT / "data_manifests" / "brats_glioma.csv",
              "config": ROOT / "configs" / "brats_unet3d.yaml", "report": "regions"},
    "ms": {"title": "MS lesions (2 cases)", "manifest": ROOT / "data_manifests" / "ms_lesions.csv",
           "config": ROOT / "configs" / "ms_lesions_unet3d.yaml", "report": "lesions"},
}
DEFAULT_FOLDS = 5  # TrainConfig.cross_validation's default, when a config has no such section


def _medseg(args: list[str], env: dict, log: Path) -> dict:
    """Run ``medseg ARGS`` in its own process; stdout and stderr to ``log``. Returns wall time and exit code."""
    cmd = [sys.executable, "-m", "medseg", *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    wall = time.perf_counter() - t0
    print(f"  medseg {' '.join(args)}: exit {rc}, {wall:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed (exit {rc}):\n{log.read_text()[-3000:]}")
    return {"command": ["medseg", *args], "wall_s": wall}


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _write_yaml(data: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _labelled_cases(manifest: Path) -> list:
    """The manifest's cases with a label in splits train and val (those cross-validation splits)."""
    from medseg.manifest import read_manifest

    return [r for r in read_manifest(manifest) if r.label is not None and r.split in ("train", "val")]


def _with_folds(config: Path, folds: int, out: Path) -> Path:
    """A copy of ``config`` at ``out`` with ``cross_validation.folds = folds`` and ``data.manifest``
    made absolute (it was relative to the original's folder)."""
    data = _read_yaml(config)
    manifest = data.get("data", {}).get("manifest")
    if manifest is not None and not Path(manifest).is_absolute():
        data["data"]["manifest"] = str((config.resolve().parent / manifest).resolve())
    data["cross_validation"] = {**(data.get("cross_validation") or {}), "folds": folds}
    return _write_yaml(data, out)


def _region_dice(model_dir: Path, manifest: Path, regions: dict[str, list[int]]) -> dict[str, float]:
    """Mean over cases of each region's Dice (a union of labels), from the out-of-fold label maps
    ``model_dir/fold_K/validation/<case>.nii.gz`` against the manifest's reference labels."""
    import numpy as np

    from medseg.io import read_label
    from medseg.measure.metrics import confusion_counts, overlap_metrics

    refs = {r.case_id: r.label for r in _labelled_cases(manifest)}
    per_region: dict[str, list[float]] = {name: [] for name in regions}
    for pred_path in sorted(model_dir.glob("fold_*/validation/*.nii.gz")):
        case = pred_path.name[: -len(".nii.gz")]
        pred = read_label(pred_path).array
        ref = read_label(refs[case]).array
        for name, ids in regions.items():
            p, r = np.isin(pred, ids).astype(np.uint8), np.isin(ref, ids).astype(np.uint8)
            c = confusion_counts(p, r, [1])[1]
            per_region[name].append(float(overlap_metrics(c["TP"], c["FP"], c["FN"], c["TN"])["Dice"]))
    return {name: float(np.nanmean(v)) if v else float("nan") for name, v in per_region.items()}


def _fold_runs(model_dir: Path) -> list[dict]:
    """Each fold's training summary: steps done and scheduled, how it stopped, its minutes."""
    out = []
    for log in sorted(model_dir.glob("fold_*/training_log.json")):
        s = json.loads(log.read_text())["summary"]
        out.append({"fold": log.parent.name, "steps_done": s.get("steps_done"), "total_steps": s.get("total_steps"),
                    "schedule_steps": s.get("schedule_steps"), "stopped_by": s.get("stopped_by"),
                    "budget_minutes": s.get("budget_minutes"), "elapsed_minutes": s.get("elapsed_minutes")})
    return out


def _scores(model_dir: Path, dataset: dict, regions: dict[str, list[int]]) -> dict:
    """What the table reports for one trained model folder (``cv_summary.json`` and the out-of-fold maps)."""
    cv = json.loads((model_dir / "cv_summary.json").read_text())
    scores: dict = {"foreground_mean_dice": cv["foreground_mean"]["Dice"],
                    "dice": {cv["labels"].get(k, k): v["Dice"] for k, v in cv["mean"].items() if k != "0"}}
    if dataset["report"] == "regions":
        scores["regions"] = _region_dice(model_dir, dataset["manifest"], regions)
    else:
        scores["lesions"] = {cv["labels"].get(k, k): {m: cv["lesions"][k][m] for m in
                                                     ("recall", "precision", "f1", "n_ref", "n_detected", "n_pred")}
                             for k in cv.get("lesion_labels", []) if k in cv["lesions"]}
    return scores


def run_dataset(name: str, minutes: float, device: str, env: dict, fresh: bool) -> dict:
    dataset = DATASETS[name]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    print(f"{dataset['title']}: {minutes:g} min per config", flush=True)
    n_cases = len(_labelled_cases(dataset["manifest"]))
    regions = {k: list(v) for k, v in (_read_yaml(dataset["config"])["data"].get("regions") or {}).items()}

    planned = work / "planned.yaml"
    for old in (planned, work / "planned.fingerprint.json"):  # planned again each time (seconds)
        old.unlink(missing_ok=True)
    # the dataset's class names (a fact of the data, not a tuning): the hand-written config's
    labels = work / "labels.json"
    labels.write_text(json.dumps({str(k): v for k, v in _read_yaml(dataset["config"])["data"]["labels"].items()}))
    # plan --minutes is one training run's (one fold's) budget; the folds share the command's minutes
    per_fold = minutes / min(DEFAULT_FOLDS, n_cases)
    plan = _medseg(["plan", str(dataset["manifest"]), "-o", str(planned), "--minutes", f"{per_fold:g}",
                    "--labels", str(labels), "--device", device], env, work / "plan.log")
    planned_folds = int((_read_yaml(planned).get("cross_validation") or {}).get("folds", DEFAULT_FOLDS))
    folds = min(planned_folds, n_cases)
    planned_config = planned if folds == planned_folds else _with_folds(planned, folds, work / "planned_folds.yaml")
    configs = {"hand-written": _with_folds(dataset["config"], folds, work / "handwritten.yaml"),
               "planned": planned_config}

    result: dict = {"title": dataset["title"], "manifest": str(dataset["manifest"].relative_to(ROOT)),
                    "handwritten_config": str(dataset["config"].relative_to(ROOT)), "minutes": minutes,
                    "n_cases": n_cases, "folds": folds, "folds_capped": folds != planned_folds,
                    "plan": plan, "runs": {}}
    for kind, config in configs.items():
        model_dir = work / kind.replace("-", "")
        if fresh or not (model_dir / "cv_summary.json").is_file():
            shutil.rmtree(model_dir, ignore_errors=True)  # the whole budget in one command, from scratch
            run = _medseg(["train", str(config), "--out", str(model_dir), "--folds", "all", "--max-minutes",
                           f"{minutes:g}", "--device", device], env, work / f"train_{kind}.log")
        else:
            run = {"command": None, "wall_s": None, "reused": True}
        result["runs"][kind] = {**run, "config": str(config.relative_to(ROOT)), "model_dir": str(model_dir.relative_to(ROOT)),
                                "folds": _fold_runs(model_dir), "scores": _scores(model_dir, dataset, regions)}
    return result


def _table(results: dict) -> str:
    def num(v) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    lines = ["| dataset | metric (cross-validated) | hand-written | planned | planned − hand-written |",
             "|---|---|---|---|---|"]
    runs_lines = ["", "| dataset | config | folds | steps done per fold (scheduled / configured) | stopped by | wall |",
                  "|---|---|---|---|---|---|"]
    for name, res in results["datasets"].items():
        hand, plan = res["runs"]["hand-written"]["scores"], res["runs"]["planned"]["scores"]
        rows: list[tuple[str, float, float]] = []
        for region in hand.get("regions", {}):
            rows.append((f"{region.replace('_', ' ')} Dice", hand["regions"][region], plan["regions"].get(region)))
        for label in hand.get("lesions", {}):
            for m in ("recall", "precision"):
                rows.append((f"lesion-wise {m} ({label})", hand["lesions"][label][m],
                             plan.get("lesions", {}).get(label, {}).get(m)))
            rows.append((f"Dice ({label})", hand["dice"].get(label), plan["dice"].get(label)))
        rows.append(("mean Dice over labels", hand["foreground_mean_dice"], plan["foreground_mean_dice"]))
        for metric, h, p in rows:
            diff = p - h if h is not None and p is not None else None
            lines.append(f"| {res['title']} | {metric} | {num(h)} | {num(p)} | "
                         f"{'n/a' if diff is None or diff != diff else f'{diff:+.3f}'} |")
        for kind in ("hand-written", "planned"):
            run = res["runs"][kind]
            steps = ", ".join(f"{f['steps_done']} ({f['schedule_steps']} / {f['total_steps']})" for f in run["folds"])
            stopped = ", ".join(sorted({str(f["stopped_by"]) for f in run["folds"]}))
            wall = f"{run['wall_s'] / 60:.1f} min" if run.get("wall_s") else "reused"
            runs_lines.append(f"| {res['title']} | {kind} (`{run['config']}`) | {res['folds']} | {steps} | {stopped} | "
                              f"{wall} |")
    return "\n".join(lines + runs_lines)


def _write_readme(table: str, results: dict) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- planned_vs_handwritten -->", "<!-- /planned_vs_handwritten -->"
    m = results["machine"]
    block = (f"{start}\n{table}\n\n{results['minutes']:g} minutes per config and dataset (`--max-minutes`, shared "
             f"by the folds). Machine: {m['platform']}, {m['threads']} torch thread(s), device {results['device']}, "
             f"load average {m['load_average_before'][0]:.1f} before / {m['load_average_after'][0]:.1f} after.\n{end}")
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + block + "\n"
    readme.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="minutes per config and dataset (plan --minutes, "
                   "train --max-minutes; default 15)")
    p.add_argument("--datasets", default="brats,ms", help=f"comma-separated, of {', '.join(DATASETS)} (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="plan --device and train --device")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every command (MEDSEG_THREADS; "
                   "default: 2, or 1 when the machine is busy)")
    p.add_argument("--fresh", action="store_true", help="train again even where a cv_summary.json is kept")
    args = p.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        p.error(f"--datasets: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(DATASETS)}")
    if not args.minutes > 0:
        p.error("--minutes must be positive")

    from medseg.runtime import default_threads

    threads = args.threads or default_threads()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MEDSEG_THREADS=str(threads))
    load_before = os.getloadavg()
    print(f"threads {threads}, load average {load_before[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads,
                                 "load_average_before": load_before},
                     "minutes": args.minutes, "device": args.device, "datasets": {}}
    for name in names:
        results["datasets"][name] = run_dataset(name, args.minutes, args.device, env, args.fresh)
    results["total_s"] = time.perf_counter() - t0
    results["machine"]["load_average_after"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2))
    table = _table(results)
    _write_readme(table, results)
    print(table)


if __name__ == "__main__":
    main()

"""Write ``tasks.json`` (the TotalSegmentator task table medseg ships) from an unpacked
TotalSegmentator source tree.

    python -m medseg.inference.totalseg.make_tasks /path/to/site-packages/totalsegmentator [VERSION]

The tables are read from ``map_to_binary.py`` (class maps, part maps, dataset id → part name) and
``map_tasks_config.py`` (dataset ids, trainers, resampling per task and mode) with
:func:`ast.literal_eval` on their top-level dictionary literals: nothing of TotalSegmentator is
imported or run. The facts that live in code rather than in those tables (the step size of the
``total`` tasks, the large-image split, the input resampling order of the command line) are
written below with the file they come from; check them again for a new version.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["read_literals", "build_table", "main"]

# The tasks medseg runs: name → (TotalSegmentator task, its mode: --fast, --fastest or neither).
TASKS = {
    "total": ("total", "default"),
    "total_fast": ("total", "fast"),
    "total_fastest": ("total", "fastest"),
    "total_mr": ("total_mr", "default"),
    "total_mr_fast": ("total_mr", "fast"),
    "total_mr_fastest": ("total_mr", "fastest"),
}
# nnunet.py, nnUNet_predict_image: part maps per TotalSegmentator task.
PART_TABLES = {"total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
               "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr")}
# nnunet.py, nnUNet_predict_image: `step_size = 0.8` for task_name in total, total_v3, total_mr.
STEP_SIZE = 0.8
# bin/TotalSegmentator.py: --resampling_order default.
INPUT_RESAMPLING_ORDER = 1
# nnunet.py, nnUNet_predict_image: the split into three z-slabs of images with more voxels
# than this on the resampled grid and more than 200 slices, for tasks of several part models.
SPLIT = {"voxels_over": 512 * 512 * 900, "slices_over": 200, "margin": 20}
# python_api.py: totalsegmentator(plans="nnUNetPlans"); map_tasks_config.DEFAULT_CONFIG
# gives model 3d_fullres, folds [0]; python_api passes tta=False (no mirroring).


def _literal(node: ast.AST) -> Any:
    """``node`` as a literal; a dictionary keeps the entries whose key and value are literals
    (``{"a": 1, "test": class_map["test"]}`` gives ``{"a": 1}``)."""
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values):
            try:
                out[ast.literal_eval(key)] = _literal(value)
            except ValueError:
                continue
        return out
    return ast.literal_eval(node)


def read_literals(path: Path) -> dict[str, Any]:
    """The top-level ``NAME = <literal>`` assignments of a Python file, evaluated as literals
    (assignments whose value is not a literal are skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = _literal(node.value)
            except ValueError:
                continue
    return out


def _labels(mapping: dict[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in sorted(mapping.items())}


def build_table(source: Path, version: str) -> dict[str, Any]:
    """The task table (see ``tasks.json``) from the TotalSegmentator package folder ``source``."""
    binary = read_literals(source / "map_to_binary.py")
    config = read_literals(source / "map_tasks_config.py")
    defaults = config["DEFAULT_CONFIG"]
    task_configs = config["TASK_CONFIGS"]
    weights = config["TASK_ID_WEIGHTS_CONFIGS"]
    tasks: dict[str, Any] = {}
    for name, (ts_task, mode) in TASKS.items():
        sub = task_configs[ts_task]["sub_modes"][mode]
        resample = sub["resample"]
        resample = [float(resample)] * 3 if isinstance(resample, (int, float)) else [float(v) for v in resample]
        ids = sub["task_id"] if isinstance(sub["task_id"], list) else [sub["task_id"]]
        class_map = binary["class_map"][ts_task]
        if len(ids) > 1:
            part_maps_name, id_to_part_name = PART_TABLES[ts_task]
            part_maps, id_to_part = binary[part_maps_name], binary[id_to_part_name]
            parts = [{"dataset_id": i, "folder": weights[i]["foldername"], "part": id_to_part[i],
                      "labels": _labels(part_maps[id_to_part[i]])} for i in ids]
        else:  # one model: its label ids are the task's (nothing is relabelled)
            parts = [{"dataset_id": ids[0], "folder": weights[ids[0]]["foldername"], "part": None, "labels": None}]
        tasks[name] = {
            "totalsegmentator_task": ts_task,
            "mode": mode,
            "modality": "MR" if ts_task.endswith("_mr") else "CT",
            "trainer": sub["trainer"],
            "plans": "nnUNetPlans",
            "configuration": defaults["model"],
            "folds": list(defaults["folds"]),
            "checkpoint": "checkpoint_final.pth",
            "resample_mm": resample,
            "step_size": STEP_SIZE,
            "mirroring": False,
            "crop": defaults["crop"],
            "labels": _labels(class_map),
            "parts": parts,
        }
    return {
        "totalsegmentator_version": version,
        "generated_by": "python -m medseg.inference.totalseg.make_tasks",
        "input_resampling_order": INPUT_RESAMPLING_ORDER,
        "split": SPLIT,
        "tasks": tasks,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print("usage: python -m medseg.inference.totalseg.make_tasks TOTALSEGMENTATOR_SOURCE [VERSION]", file=sys.stderr)
        return 2
    source = Path(argv[0])
    version = argv[1] if len(argv) > 1 else "2.18.0"
    table = build_table(source, version)
    out = Path(__file__).with_name("tasks.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {', '.join(table['tasks'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What nnU-Net's default planner gives for the benchmark's two datasets (run with nnU-Net's Python).

    nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... \\
        /work/nnunet-venv/bin/python benchmarks/nnunet/default_plans.py WORKDIR

For each dataset it writes a raw dataset (``dataset.json`` and one 8³ image, which the planner
only opens to choose its reader) and a dataset fingerprint of 100 identical cases, runs
``ExperimentPlanner(...).plan_experiment()`` (nnU-Net's default planner, 8 GB target) and prints
the ``3d_fullres`` configuration as one JSON line: patch size (nnU-Net's axis order, z y x),
spacing (mm), features, strides, kernel sizes and convolutions per stage. ``run.py`` builds its
models from these numbers (the large model with half the features, see its docstring).

Datasets:
- ``small``: CT studies of 200×200×120 voxels at 0.78×0.78×1.0 mm, 6 labels;
- ``large``: CT studies resampled to 3 mm, 133×133×133 voxels (a 512×512×400 CT at
  0.78×0.78×1.0 mm), 118 labels (TotalSegmentator's ``total`` task has 117 classes).
"""

import json
import os
import sys
from pathlib import Path

DATASETS = {
    "small": {"id": 901, "spacing_zyx": [1.0, 0.78125, 0.78125], "shape_zyx": [120, 200, 200], "labels": 6},
    "large": {"id": 902, "spacing_zyx": [3.0, 3.0, 3.0], "shape_zyx": [133, 133, 133], "labels": 118},
}


def plan(work: Path, name: str, spec: dict) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    dataset = f"Dataset{spec['id']}_{name}"
    raw = work / "raw" / dataset
    pre = work / "preprocessed" / dataset
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    pre.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.zeros((8, 8, 8), dtype=np.int16))
    sitk.WriteImage(img, str(raw / "imagesTr" / "case_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8, 8), dtype=np.uint8)), str(raw / "labelsTr" / "case.nii.gz"))
    n = 100
    labels = {"background": 0, **{f"class_{i}": i for i in range(1, spec["labels"])}}
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": n, "file_ending": ".nii.gz",
        "dataset": {"case": {"images": ["imagesTr/case_0000.nii.gz"], "label": "labelsTr/case.nii.gz"}}}))
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [spec["spacing_zyx"]] * n, "shapes_after_crop": [spec["shape_zyx"]] * n,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 500.0, "mean": 40.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -900.0,
            "percentile_99_5": 300.0, "std": 120.0}}}))
    planner = ExperimentPlanner(dataset)
    plans = planner.plan_experiment()
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]["arch_kwargs"]
    return {"dataset": name, "patch_zyx": conf["patch_size"], "spacing_zyx": conf["spacing"],
            "features": arch["features_per_stage"], "strides": arch["strides"], "kernel_sizes": arch["kernel_sizes"],
            "n_conv_per_stage": arch["n_conv_per_stage"], "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
            "transpose_forward": plans["transpose_forward"]}


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        if os.environ.get(key) is None:
            raise SystemExit(f"set {key} (the planner reads it at import)")
    if Path(os.environ["nnUNet_raw"]).resolve() != work / "raw" or \
            Path(os.environ["nnUNet_preprocessed"]).resolve() != work / "preprocessed":
        raise SystemExit("nnUNet_raw and nnUNet_preprocessed must be WORKDIR/raw and WORKDIR/preprocessed")
    for name, spec in DATASETS.items():
        print(json.dumps(plan(work, name, spec)), flush=True)


if __name__ == "__main__":
    main()

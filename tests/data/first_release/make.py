"""Writes the first release's model directory and its own predictions (the fixture beside this file).

Run it with the FIRST RELEASE's code (commit 12312cb), not the current one:

    git worktree add /tmp/r1 12312cb
    cd /tmp/r1 && PYTHONPATH=/tmp/r1 python /path/to/tests/data/first_release/make.py /path/to/tests/data/first_release

It trains a small 3D U-Net on phantoms with that release's trainer, then segments one unseen
oblique phantom with that release's `medseg segment` code path (plain, and with the CRF and a
volume report). tests/inference/test_first_release_model.py checks that today's code reads the
folder and gives the same labels.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch

    from medseg.inference import Predictor, segment_file
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom, write_phantom_archive
    from medseg.training import train
    from medseg.training.quick import quick_phantom_config

    torch.manual_seed(0)
    work = out / "_work"
    manifest = write_phantom_archive(work / "phantoms", 3, seed=0, splits={"train": 2, "val": 1},
                                     shape=(48, 44, 32), spacing=(4.0, 4.0, 5.0), n_tumours=2)
    cfg = quick_phantom_config(steps=80).model_dump(mode="json")
    cfg["model"]["options"] = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
    cfg["num_threads"] = 1
    cfg["autocast"] = "none"
    from medseg.training.config import TrainConfig

    model = train(TrainConfig.model_validate(cfg), manifest=manifest, out_dir=work / "model", device="cpu",
                  progress=False)
    keep = out / "model"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    for name in ("model.pt", "plans.json", "labels.json"):
        shutil.copy2(model / name, keep / name)
    study = make_phantom(77, shape=(50, 46, 30), spacing=(4.0, 4.0, 5.0), orientation="LPS",
                         rotation_deg=(9.0, -5.0, 12.0), n_tumours=2)
    write_volume(study.image, out / "study.nii.gz")
    predictor = Predictor.from_model_dir(keep, device="cpu", num_threads=1)
    segment_file(out / "study.nii.gz", predictor, out / "labels_plain.nii.gz")
    segment_file(out / "study.nii.gz", predictor, out / "labels_crf.nii.gz", crf=True,
                 volumes_path=out / "volumes_crf.json")
    shutil.rmtree(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())

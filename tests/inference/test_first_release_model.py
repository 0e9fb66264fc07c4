"""A model directory written by the first release (tests/data/first_release, made by its make.py with
that release's code) still loads, and today's code gives the labels that release gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.io import read_volume

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "first_release"


def test_first_release_model_directory_gives_the_same_labels(tmp_path):
    from medseg.inference import Predictor, StudyOptions, segment_file

    predictor = Predictor.from_model_dir(FIXTURE / "model", device="cpu", num_threads=1)
    plain = segment_file(FIXTURE / "study.nii.gz", predictor, tmp_path / "plain.nii.gz")
    expected = read_volume(FIXTURE / "labels_plain.nii.gz")
    assert len(np.unique(expected.array)) >= 4  # organs were found: the comparison means something
    assert np.array_equal(plain.labels.array, expected.array)
    written = read_volume(tmp_path / "plain.nii.gz")
    assert np.array_equal(written.affine, expected.affine) and np.array_equal(written.array, expected.array)

    crf = segment_file(FIXTURE / "study.nii.gz", predictor, tmp_path / "crf.nii.gz",
                       options=StudyOptions.for_model(predictor.plans, crf=True), volumes_path=tmp_path / "v.json")
    assert np.array_equal(crf.labels.array, read_volume(FIXTURE / "labels_crf.nii.gz").array)
    old = json.loads((FIXTURE / "volumes_crf.json").read_text())["structures"]
    new = json.loads((tmp_path / "v.json").read_text())["structures"]
    assert {k: v["voxels"] for k, v in new.items()} == {k: v["voxels"] for k, v in old.items()}

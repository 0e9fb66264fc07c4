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
                       options=StudyOptions.for_model(predictor.info, crf=True), volumes_path=tmp_path / "v.json")
    assert np.array_equal(crf.labels.array, read_volume(FIXTURE / "labels_crf.nii.gz").array)
    old = json.loads((FIXTURE / "volumes_crf.json").read_text())["structures"]
    new = json.loads((tmp_path / "v.json").read_text())["structures"]
    assert {k: v["voxels"] for k, v in new.items()} == {k: v["voxels"] for k, v in old.items()}


def test_a_batch_output_of_the_first_release_is_continued_not_redone(tmp_path):
    """The first release's batch states name a study by its content hash and the run by a
    configuration key; today's code computes the same ones (values computed with that release's
    medseg.batch.content_hash / config_key), so an archive it segmented is not segmented again."""
    from medseg.batch import BatchOptions, SegmentJob
    from medseg.inference import DEFAULT_COMPONENTS
    from medseg.io import content_hash

    assert content_hash([FIXTURE / "study.nii.gz"]) == "b1c39416736e0897098a8c64a92179e8"
    model = str(FIXTURE / "model")
    assert SegmentJob("archive", model).config_key(tmp_path) == "202e1c2d5d6ef627f6cff4a981ba39f4"
    options = BatchOptions(crf=True, components=DEFAULT_COMPONENTS, tta=True)
    assert SegmentJob("archive", model, options).config_key(tmp_path) == "f273e64c340b8b337dd48c54d1564190"

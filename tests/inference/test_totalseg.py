"""TotalSegmentator weights folders as a model kind: medseg's labels equal TotalSegmentator's own.

The fixture (tests/data/totalseg, written by tests/fixtures/make_totalseg.py with TotalSegmentator
2.18.0) is a weights folder of tiny random-weight nnU-Net models under TotalSegmentator's dataset
and trainer folder names, with each part's real class names, and TotalSegmentator's own
``--ml -ta total`` results (default, ``--fast``, and ``--force_split`` on a taller image).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "totalseg"
WEIGHTS = DATA / "weights"
RESULTS = WEIGHTS / "nnunet" / "results"


def _label_table(path: Path) -> dict[int, str]:
    """The label table TotalSegmentator writes into its NIfTI extension."""
    import nibabel as nib

    xml = nib.load(path).header.extensions[0].get_content().decode("utf-8")
    return {int(k): v for k, v in re.findall(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[(.*?)\]\]>', xml)}


def _read(path: Path):
    from medseg.io import read_volume

    return read_volume(path)


@pytest.fixture(scope="module")
def total_predictor():
    from medseg.inference.kinds import ModelOptions, load_predictor

    return load_predictor(WEIGHTS, options=ModelOptions(task="total"), device="cpu")


# ---- the table ------------------------------------------------------------------------------


def test_task_labels_are_totalsegmentators_class_maps():
    from medseg.inference.totalseg import load_tasks

    tasks = load_tasks()
    assert set(tasks) == {"total", "total_fast", "total_fastest", "total_mr", "total_mr_fast", "total_mr_fastest"}
    total = tasks["total"]
    assert total.labels == _label_table(DATA / "total.nii.gz")  # class_map["total"], as TotalSegmentator wrote it
    assert len(total.labels) == 117 and total.labels[1] == "spleen" and total.labels[117] == "costal_cartilages"
    assert [p.dataset_id for p in total.parts] == [291, 292, 293, 294, 295]
    assert total.parts[2].folder == "Dataset293_TotalSegmentator_part3_cardiac_1559subj"
    assert (total.trainer, total.resample_mm, total.step_size, total.folds) == (
        "nnUNetTrainerNoMirroring", (1.5, 1.5, 1.5), 0.8, (0,))
    assert tasks["total_fast"].resample_mm == (3.0,) * 3 and tasks["total_fastest"].resample_mm == (6.0,) * 3
    assert [p.dataset_id for p in tasks["total_fast"].parts] == [297]
    assert [p.dataset_id for p in tasks["total_mr"].parts] == [850, 851]
    assert tasks["total_mr"].trainer == "nnUNetTrainer_2000epochs_NoMirroring"
    for name in ("total", "total_mr"):  # the parts' classes partition the task's
        spec = tasks[name]
        names = [n for p in spec.parts for n in p.labels.values()]
        assert sorted(names) == sorted(spec.labels.values())
        for part in spec.parts:
            lut = spec.lookup(part)
            assert all(spec.labels[int(lut[i])] == n for i, n in part.labels.items())
    assert tasks["total_fast"].lookup(tasks["total_fast"].parts[0]) is None  # one model: its ids are the task's


def test_make_tasks_reads_literals_only(tmp_path):
    from medseg.inference.totalseg.make_tasks import read_literals

    src = tmp_path / "m.py"
    src.write_text('a = {1: "x"}\nb = {"p": {2: "y"}, "test": a["t"]}\nc = a.copy()\nimport os\n')
    assert read_literals(src) == {"a": {1: "x"}, "b": {"p": {2: "y"}}}


# ---- equivalence with TotalSegmentator --------------------------------------------------------


def test_total_equals_totalsegmentator_on_an_oblique_image(total_predictor):
    image = _read(DATA / "oblique.nii.gz")
    prediction = total_predictor.predict(image)
    want = _read(DATA / "total.nii.gz")
    assert prediction.labels.shape == image.shape and np.array_equal(prediction.labels.affine, image.affine)
    assert prediction.labels.array.dtype == np.uint8
    assert np.array_equal(prediction.labels.array, want.array)
    assert len(np.unique(want.array)) > 10  # several parts' classes, not an empty map
    assert total_predictor.info.kind == "totalsegmentator" and total_predictor.label_names == total_predictor.info.labels


def test_total_fast_equals_totalsegmentator():
    from medseg.inference.kinds import ModelOptions, load_predictor

    predictor = load_predictor(WEIGHTS / "nnunet", options=ModelOptions(task="total_fast"), device="cpu")
    assert predictor.info.spacing_mm == (3.0, 3.0, 3.0)
    labels = predictor.predict(_read(DATA / "oblique.nii.gz")).labels.array
    assert np.array_equal(labels, _read(DATA / "total_fast.nii.gz").array)


def test_three_slab_split_equals_totalsegmentators(total_predictor):
    """TotalSegmentator splits images over 512·512·900 voxels; its --force_split runs the same
    code on a small image, and so does a task whose split rule applies to any size."""
    from medseg.inference.totalseg.table import SplitRule
    from medseg.inference.totalseg.task import TaskPredictor

    spec = total_predictor.spec
    assert not spec.split.applies((40, 37, 93), 5)
    forced = TaskPredictor(replace(spec, split=SplitRule(voxels_over=0, slices_over=0, margin=spec.split.margin)),
                           total_predictor.parts, total_predictor.info)
    image = _read(DATA / "tall.nii.gz")
    want = _read(DATA / "total_split.nii.gz").array
    assert np.array_equal(forced.predict(image).labels.array, want)
    assert not np.array_equal(total_predictor.predict(image).labels.array, want)  # the split changes labels


def test_later_parts_overwrite_earlier_ones(total_predictor):
    """Voxels claimed by two parts take the later part's label (TotalSegmentator's rule; the
    equivalence above shows it is theirs): here the reverse order would change the result."""
    from medseg.inference.totalseg.grid import canonical_grid, to_canonical, to_spacing
    from medseg.io.volume import Volume

    spec = total_predictor.spec
    image = _read(DATA / "oblique.nii.gz")
    grid = canonical_grid(image.shape, image.affine)
    array, affine = to_spacing(to_canonical(image.array, grid), grid, spec.resample_mm, spec.input_resampling_order)
    mapped = [spec.lookup(part)[predictor.predict(Volume(array, affine)).labels.array]
              for part, predictor in total_predictor.parts]
    claims = sum((m > 0).astype(int) for m in mapped)
    assert (claims >= 2).sum() > 100
    last_wins = np.zeros(array.shape, np.uint8)
    first_wins = np.zeros(array.shape, np.uint8)
    for m in mapped:
        np.copyto(last_wins, m, where=m > 0)
    for m in reversed(mapped):
        np.copyto(first_wins, m, where=m > 0)
    assert not np.array_equal(last_wins, first_wins)
    # the task's merge on the same grid (the input already canonical and at 1.5 mm)
    merged = total_predictor.predict(Volume(array, affine)).labels.array
    assert np.array_equal(merged, last_wins)


# ---- probabilities -----------------------------------------------------------------------------


def test_a_task_has_no_probabilities(total_predictor, cli, tmp_path):
    image = _read(DATA / "oblique.nii.gz")
    with pytest.raises(ValueError, match="no class probabilities"):
        total_predictor.predict(image, keep_probabilities=True)
    prediction = total_predictor.predict(image)
    with pytest.raises(ValueError, match="merges the labels of its part models"):
        prediction.probabilities()
    assert total_predictor.info.details["probabilities"] is False
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", DATA / "oblique.nii.gz", "--model", WEIGHTS, "--task", "total", "-o", out, "--crf")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--crf does not apply" in r.stderr
    assert not out.exists()


# ---- the weights folder ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [WEIGHTS, WEIGHTS / "nnunet", RESULTS])
def test_weights_folder_forms(path):
    from medseg.inference.kinds import ModelOptions, describe_model, model_files

    info = describe_model(path, ModelOptions(task="total"))
    assert info.kind == "totalsegmentator" and info.path == RESULTS and info.folds == (0,)
    assert info.channels == ("CT",) and info.modality == "CT" and info.spacing_mm == (1.5, 1.5, 1.5)
    assert [p["dataset_id"] for p in info.details["parts"]] == [291, 292, 293, 294, 295]
    files = model_files(path, ModelOptions(task="total"))
    assert len(files) == 15 and all(f.is_file() for f in files)
    assert files[-1] == (RESULTS / "Dataset295_TotalSegmentator_part5_ribs_1559subj" /
                         "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth")


def test_segment_with_a_task_writes_the_input_grid(cli, tmp_path):
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", DATA / "oblique.nii.gz", "--model", WEIGHTS, "--task", "total", "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    seg, want = _read(out), _read(DATA / "total.nii.gz")
    assert np.array_equal(seg.array, want.array) and np.array_equal(seg.affine, _read(DATA / "oblique.nii.gz").affine)


def test_missing_part_is_one_line_and_nothing_written(cli, tmp_path):
    weights = tmp_path / "home"
    shutil.copytree(WEIGHTS, weights)
    shutil.rmtree(weights / "nnunet" / "results" / "Dataset293_TotalSegmentator_part3_cardiac_1559subj")
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", DATA / "oblique.nii.gz", "--model", weights, "--task", "total", "-o", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [f"medseg: error: {weights / 'nnunet' / 'results'}: --task total needs "
                     "Dataset293_TotalSegmentator_part3_cardiac_1559subj/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres "
                     "(not found); medseg never downloads weights"]
    assert not out.exists() and list(tmp_path.iterdir()) == [weights]


def test_unknown_task_is_one_line(cli, tmp_path):
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", DATA / "oblique.nii.gz", "--model", WEIGHTS, "--task", "totl", "-o", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown TotalSegmentator task 'totl'; known tasks: total, total_fast" in lines[0]
    assert not out.exists()


def test_models_describe_names_the_task(cli):
    r = cli("models", "--describe", WEIGHTS, "--task", "total")
    assert r.returncode == 0, r.stderr
    assert "(totalsegmentator: TotalSegmentator 2.18.0 task total, 5 part model(s) (291, 292, 293, 294, 295)" in r.stdout
    assert "117: 1 spleen," in r.stdout and "step size 0.8" in r.stdout

"""k-fold cross-validation: splits, fold training, out-of-fold maps, cv_summary.json, CV-chosen post-processing."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import InputError
from medseg.io import read_label, read_volume
from medseg.manifest import read_manifest
from medseg.training import TrainConfig, train_folds
from medseg.training.crossval import determine_postprocessing
from medseg.training.data import CaseSplit
from medseg.training.folds import fold_finished, fold_splits, make_splits, read_splits, train_fold
from tests.training.conftest import tiny_config, write_config

# 2 folds of the 4 phantoms; the CT window fitted from foreground percentiles (one statistic for every fold)
CV_UPDATES = dict(steps=4, steps_per_epoch=2, cross_validation={"folds": 2, "seed": 0},
                  data={"preprocess": {"target_spacing": [6.0, 6.0, 6.0],
                                       "intensity": [{"kind": "ct", "foreground_percentiles": [0.5, 99.5]}]}})


def _cv_config(**updates) -> TrainConfig:
    return TrainConfig.model_validate(tiny_config(**{**CV_UPDATES, **updates}))


@pytest.fixture(scope="module")
def cv_dir(phantom_manifest, tmp_path_factory) -> Path:
    """Both folds of the phantom archive trained with :func:`train_folds` (a few seconds)."""
    out = tmp_path_factory.mktemp("cv") / "model"
    train_folds(_cv_config(), manifest=phantom_manifest, model_dir=out, device="cpu", progress=False)
    return out


def _nan_equal(a, b, path="") -> None:
    """``a == b`` for JSON-like values, NaN equal to NaN, floats to 1e-12."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _nan_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _nan_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


# ----------------------------------------------------------------------------------------- splits
def test_splits_are_deterministic_disjoint_and_cover_every_case_once():
    ids = [f"case_{i:02d}" for i in range(11)]
    splits = make_splits(ids, 5, seed=0)
    assert make_splits(list(reversed(ids)), 5, seed=0) == splits  # the order given does not matter
    assert make_splits(ids, 5, seed=1) != splits
    assert [len(s.val) for s in splits] == [3, 2, 2, 2, 2]
    assert sorted(c for s in splits for c in s.val) == ids
    for s in splits:
        assert not set(s.train) & set(s.val) and sorted(s.train + s.val) == ids
        assert list(s.train) == sorted(s.train) and list(s.val) == sorted(s.val)


def test_splits_are_nnunets_kfold():
    # nnU-Net's generate_crossval_split is scikit-learn's KFold(shuffle=True) over the sorted ids
    KFold = pytest.importorskip("sklearn.model_selection").KFold
    ids = sorted(f"BraTS_{i:03d}" for i in range(17))
    for seed in (0, 12345):
        expected = [CaseSplit(tuple(ids[i] for i in tr), tuple(ids[i] for i in va))
                    for tr, va in KFold(n_splits=5, shuffle=True, random_state=seed).split(ids)]
        assert make_splits(ids, 5, seed) == expected


def test_too_few_cases_cannot_be_split():
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        make_splits(["a", "b", "c"], 5)
    with pytest.raises(ValueError, match="1 case"):
        make_splits(["a"], 2)


@pytest.mark.parametrize("content, words", [
    ('[{"train": ["phantom_010"], "val": ["nobody"]}]', "fold 0: unknown case 'nobody' in 'val'"),
    ('[{"train": ["phantom_010", "phantom_011"], "val": ["phantom_011"]}]', "'phantom_011' is in both"),
    ('[{"train": ["phantom_010"], "val": ["phantom_011"]}, {"train": ["phantom_010"], "val": ["phantom_011"]}]',
     "'val' of folds 0 and 1"),
    ('[{"train": [], "val": ["phantom_011"]}]', "fold 0 has no training cases"),
    ('[{"train": ["phantom_010"], "val": ["phantom_011"], "test": []}]', "a splits file is a list"),
    ('{"train": ["phantom_010"]}', "a splits file is a list"),
    ("[{not json", "not valid JSON"),
])
def test_a_bad_splits_file_is_named_with_its_problem(tmp_path, content, words):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(InputError, match="splits.json: ") as err:
        read_splits(path, ["phantom_010", "phantom_011", "phantom_012"])
    assert words in str(err.value)


# ---------------------------------------------------------------------------------- fold training
def test_folds_train_on_their_split_with_one_preprocessing(cv_dir, phantom_manifest):
    from medseg.preprocess import fit_foreground_intensity

    rows = read_manifest(phantom_manifest)
    ids = [r.case_id for r in rows]  # 4 labelled cases: 3 train + 1 val
    splits = read_splits(cv_dir / "splits.json")
    assert splits == make_splits(ids, 2, seed=0)
    assert json.loads((cv_dir / "splits.json").read_text()) == [{"train": list(s.train), "val": list(s.val)}
                                                               for s in splits]
    plans = [(cv_dir / f"fold_{k}" / "plans.json").read_bytes() for k in range(2)]
    assert plans[0] == plans[1]  # identical preprocessing: only the weights differ
    # the CT window was fitted on every labelled case (in manifest order), not on a fold's training cases
    cfg = _cv_config()
    samples = []
    for r in rows:
        image = read_volume(r.images[0])
        samples.append(([image.array], read_label(r.label, image).array))
    expected = fit_foreground_intensity(cfg.data.preprocess, samples, seed=cfg.seed).intensity[0]
    fitted = json.loads(plans[0])["preprocess"]["intensity"][0]
    assert fitted["window"] == pytest.approx(list(expected.window), abs=1e-9)
    assert fitted["mean"] == pytest.approx(expected.mean, abs=1e-9)
    for k, split in enumerate(splits):
        log = json.loads((cv_dir / f"fold_{k}" / "training_log.json").read_text())["summary"]
        assert log["steps_done"] == 4 and log["n_train_cases"] == len(split.train) == 2
        assert log["n_val_cases"] == len(split.val) == 2
        ckpt = torch.load(cv_dir / f"fold_{k}" / "checkpoints" / "last.pt", weights_only=True)
        assert ckpt["cases"] == {"train": list(split.train), "val": list(split.val)}
    w0 = torch.load(cv_dir / "fold_0" / "model.pt", weights_only=True)
    w1 = torch.load(cv_dir / "fold_1" / "model.pt", weights_only=True)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_out_of_fold_maps_are_on_the_input_grid_and_are_what_validation_measured(cv_dir, phantom_manifest):
    rows = {r.case_id: r for r in read_manifest(phantom_manifest)}
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    for k, split in enumerate(read_splits(cv_dir / "splits.json")):
        assert sorted(p.name for p in (cv_dir / f"fold_{k}" / "validation").iterdir()) == sorted(
            f"{c}.nii.gz" for c in split.val)
        for case in split.val:
            pred = read_label(cv_dir / f"fold_{k}" / "validation" / f"{case}.nii.gz")
            image = read_volume(rows[case].images[0])
            assert pred.shape == image.shape
            np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
            assert set(np.unique(pred.array)) <= set(range(6))
        # the fold's out-of-fold Dice is the validation Dice of the weights model.pt holds
        best = json.loads((cv_dir / f"fold_{k}" / "training_log.json").read_text())["summary"]["best_val_dice_mean"]
        fold = summary["folds"][k]
        assert fold["fold"] == k and fold["cases"] == list(split.val)
        assert fold["foreground_mean"]["Dice"] == pytest.approx(best, abs=1e-6)


def test_cv_summary_is_medseg_evaluate_of_the_out_of_fold_maps(cv_dir, phantom_manifest, tmp_path, cli):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for r in read_manifest(phantom_manifest):
        shutil.copy(next(cv_dir.glob(f"fold_*/validation/{r.case_id}.nii.gz")), pred / f"{r.case_id}.nii.gz")
        shutil.copy(r.label, ref / f"{r.case_id}.nii.gz")
    result = cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "eval",
                 "--labels", cv_dir / "fold_0" / "labels.json")
    assert result.returncode == 0, result.stderr
    direct = json.loads((tmp_path / "eval" / "summary.json").read_text())
    cv = json.loads((cv_dir / "cv_summary.json").read_text())
    for key in ("mean", "foreground_mean", "lesions", "labels", "lesion_labels", "lesion_overlap", "nsd_tolerance_mm"):
        _nan_equal(cv[key], direct[key], key)
    per_case = {c["case"]: c for c in direct["metric_per_case"]}
    assert sorted(c["case"] for c in cv["metric_per_case"]) == sorted(per_case)
    for c in cv["metric_per_case"]:
        _nan_equal(c["metrics"], per_case[c["case"]]["metrics"], c["case"])
        _nan_equal(c["lesions"], per_case[c["case"]]["lesions"], c["case"])
    # the post-processing's "before" is the summary's out-of-fold Dice
    pp = json.loads((cv_dir / "postprocessing.json").read_text())
    _nan_equal(pp["dice"]["before"]["mean"], {k: v["Dice"] for k, v in cv["mean"].items()})
    assert sorted(pp["largest_component"]) == ["1", "2", "3", "4", "5"]


def test_a_rerun_skips_finished_folds_and_rewrites_only_missing_maps(cv_dir, phantom_manifest, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(cv_dir, out)
    weights = {k: (out / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in range(2)}
    missing = next((out / "fold_1" / "validation").iterdir())
    expected = read_label(missing).array
    missing.unlink()
    (out / "cv_summary.json").unlink()
    said = []
    train_folds(_cv_config(), manifest=phantom_manifest, model_dir=out, device="cpu", progress=False,
                notify=said.append)
    assert said == [f"fold {k} is already trained ({out / f'fold_{k}'}): skipped" for k in range(2)]
    assert {k: (out / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in range(2)} == weights
    np.testing.assert_array_equal(read_label(missing).array, expected)
    _nan_equal(json.loads((out / "cv_summary.json").read_text())["mean"],
               json.loads((cv_dir / "cv_summary.json").read_text())["mean"])


def test_an_interrupted_fold_resumes_to_the_uninterrupted_weights(cv_dir, phantom_manifest, tmp_path):
    out = tmp_path / "model"
    cfg = _cv_config()
    train_fold(cfg, manifest=phantom_manifest, model_dir=out, fold=1, device="cpu", stop_after_steps=2)
    assert not (out / "fold_1" / "validation").exists() and not (out / "cv_summary.json").exists()
    with pytest.raises(InputError, match="pass --resume"):
        train_fold(cfg, manifest=phantom_manifest, model_dir=out, fold=1, device="cpu")
    train_fold(cfg, manifest=phantom_manifest, model_dir=out, fold=1, device="cpu", resume=True)
    a = torch.load(out / "fold_1" / "model.pt", weights_only=True)
    b = torch.load(cv_dir / "fold_1" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (out / "fold_1" / "validation").iterdir()) == sorted(
        p.name for p in (cv_dir / "fold_1" / "validation").iterdir())
    assert not (out / "cv_summary.json").exists()  # fold 0 is not trained yet
    # an edited splits.json no longer matches the interrupted fold's cases
    train_fold(cfg, manifest=phantom_manifest, model_dir=out, fold=0, device="cpu", stop_after_steps=1)
    splits = json.loads((out / "splits.json").read_text())
    splits[0]["train"], splits[0]["val"] = splits[0]["val"], splits[0]["train"]
    splits[1]["train"], splits[1]["val"] = splits[1]["val"], splits[1]["train"]
    (out / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputError, match="cannot resume: the interrupted run trained and validated on other cases"):
        train_fold(cfg, manifest=phantom_manifest, model_dir=out, fold=0, device="cpu", resume=True)


# ------------------------------------------------------------------------------ post-processing
def _blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_largest_component_is_kept_where_it_raises_the_out_of_fold_dice_and_not_where_it_lowers_it():
    from medseg.postprocess.components import ComponentsConfig, clean_labels

    shape, spacing = (40, 40, 30), (1.0, 1.0, 1.0)
    cases = []
    for shift in (0, 2):
        organ = _blob(shape, (12 + shift, 12, 12), 7)
        lesions = _blob(shape, (30, 30, 8 + shift), 3) | _blob(shape, (30, 8, 22), 2)  # two true lesions
        ref = np.zeros(shape, np.uint8)
        ref[organ] = 1
        ref[lesions] = 2
        pred = ref.copy()
        pred[_blob(shape, (30, 28, 22 - shift), 2)] = 1  # a spurious piece of organ, far from it
        cases.append((pred, ref))
    pp = determine_postprocessing([(p, r, spacing) for p, r in cases], [1, 2])
    # on: organ label cleaned (the spurious piece goes); off: the lesion label (its second lesion would go)
    assert pp["largest_component"] == {"1": True, "2": False}
    assert [t["kept"] for t in pp["trials"]] == [False, True, False]  # all at once lowers label 2
    on = {1: [], 2: []}
    off = {1: [], 2: []}
    for pred, ref in cases:
        everything = clean_labels(pred, spacing, ComponentsConfig(largest_component=True))
        for lab in (1, 2):
            on[lab].append(_dice(everything == lab, ref == lab))
            off[lab].append(_dice(pred == lab, ref == lab))
    assert np.mean(on[1]) > np.mean(off[1]) and np.mean(on[2]) < np.mean(off[2]) == 1.0
    before, after = pp["dice"]["before"], pp["dice"]["after"]
    assert before["mean"]["1"] == pytest.approx(np.mean(off[1]), abs=1e-12)
    assert after["mean"]["1"] == pytest.approx(np.mean(on[1]), abs=1e-12) == 1.0
    assert before["mean"]["2"] == after["mean"]["2"] == 1.0
    assert after["foreground_mean"] == 1.0 > before["foreground_mean"]
    # one label: the all-labels trial decides alone
    single = [(np.where(p == 1, 1, 0).astype(np.uint8), np.where(r == 1, 1, 0).astype(np.uint8), spacing)
              for p, r in cases]
    pp1 = determine_postprocessing(single, [1])
    assert pp1["largest_component"] == {"1": True} and len(pp1["trials"]) == 1
    lesions_only = [(np.where(p == 2, 1, 0).astype(np.uint8), np.where(r == 2, 1, 0).astype(np.uint8), spacing)
                    for p, r in cases]
    assert determine_postprocessing(lesions_only, [1])["largest_component"] == {"1": False}


# --------------------------------------------------------------------------------------- bad input
def _one_line_error(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), result.stderr
    return lines[0]


def test_one_labelled_case_cannot_be_split(phantom_manifest, tmp_path, cli):
    rows = list(csv.DictReader(open(phantom_manifest)))
    one = phantom_manifest.parent / "one_case.csv"
    with open(one, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerow(rows[0])
        for r in rows[1:]:
            w.writerow({**r, "split": "test"})
    config = write_config(tiny_config(data={"manifest": str(one)}), tmp_path / "tiny.yaml")
    line = _one_line_error(cli("train", config, "--out", tmp_path / "cv", "--folds", "all", "--device", "cpu"))
    assert line == (f"medseg: error: {one}: only one labelled case ('phantom_010', splits train, val): cannot split "
                    "it into cross-validation folds; cross-validation needs at least two cases")
    assert not (tmp_path / "cv").exists()
    # fewer cases than folds
    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}), tmp_path / "five.yaml")
    line = _one_line_error(cli("train", config, "--out", tmp_path / "cv", "--fold", "0", "--device", "cpu"))
    assert "4 labelled cases (splits train, val) cannot make 5 cross-validation folds" in line
    assert "set cross_validation.folds to at most 4" in line
    assert not (tmp_path / "cv").exists()


def test_a_fold_the_splits_do_not_have_and_bad_fold_options(phantom_manifest, tmp_path, cli):
    config = write_config(tiny_config(**{**CV_UPDATES, "data": {"manifest": str(phantom_manifest)}}),
                          tmp_path / "tiny.yaml")
    out = tmp_path / "cv"
    line = _one_line_error(cli("train", config, "--out", out, "--fold", "2", "--device", "cpu"))
    assert line == "medseg: error: fold 2 asked for, but cross_validation.folds is 2 (folds 0 to 1)"
    assert not out.exists()
    line = _one_line_error(cli("train", config, "--out", out, "--folds", "0,3", "--device", "cpu"))
    assert "fold 3 asked for" in line and not out.exists()
    line = _one_line_error(cli("train", config, "--out", out, "--folds", "zero", "--device", "cpu"))
    assert "--folds takes fold numbers" in line and not out.exists()
    line = _one_line_error(cli("train", config, "--out", out, "--fold", "0", "--folds", "all"))
    assert line == "medseg: error: give --fold K or --folds LIST, not both" and not out.exists()
    line = _one_line_error(cli("train", config, "--out", out, "--folds", "all", "--device", "gpu"))
    assert line == "medseg: error: device must be one of auto, cpu, cuda or cuda:N, not 'gpu'" and not out.exists()
    # an existing splits.json decides the number of folds
    out.mkdir()
    (out / "splits.json").write_text(json.dumps([{"train": ["phantom_010"], "val": ["phantom_011"]}]))
    line = _one_line_error(cli("train", config, "--out", out, "--fold", "1", "--device", "cpu"))
    assert line == f"medseg: error: {out / 'splits.json'}: fold 1 asked for, but it holds 1 fold (0 to 0)"
    # a splits.json naming a case the manifest does not have: named, nothing written
    (out / "splits.json").write_text(json.dumps([{"train": ["phantom_010"], "val": ["phantom_999"]}]))
    line = _one_line_error(cli("train", config, "--out", out, "--fold", "0", "--device", "cpu"))
    assert line == (f"medseg: error: {out / 'splits.json'}: fold 0: unknown case 'phantom_999' in 'val': not a "
                    "labelled case of the manifest's training and validation splits")
    assert sorted(p.name for p in out.iterdir()) == ["splits.json"]


def test_a_single_model_folder_is_not_turned_into_folds(phantom_manifest, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.pt").write_bytes(b"")
    with pytest.raises(InputError, match="holds a single model"):
        train_folds(_cv_config(), manifest=phantom_manifest, model_dir=out, device="cpu")
    assert not (out / "splits.json").exists()


def test_fold_splits_reads_the_file_as_it_is(phantom_manifest, tmp_path):
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["phantom_013"], "val": ["phantom_010"]},
                                                      {"train": ["phantom_010"], "val": ["phantom_013"]},
                                                      {"train": ["phantom_011"], "val": ["phantom_012"]}]))
    cfg = _cv_config()
    splits = fold_splits(cfg, phantom_manifest, tmp_path)
    assert splits == [CaseSplit(("phantom_013",), ("phantom_010",)), CaseSplit(("phantom_010",), ("phantom_013",)),
                      CaseSplit(("phantom_011",), ("phantom_012",))]


# ----------------------------------------------------------------------------------------- BraTS
def test_cross_validation_on_the_four_brats_cases(shared_data, tmp_path, cli):
    from medseg.plans import load_plans

    root = Path(__file__).resolve().parents[2]
    cfg = dict(tiny_config(
        model={"name": "unet", "spatial_dims": 3, "options": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
        loss={"name": "dice_ce", "options": {"include_background": False}},
        patch_size=[32, 32, 32], steps=2, steps_per_epoch=2, batch_size=1,
        cross_validation={"folds": 4, "seed": 0},
        data={"manifest": str(root / "data_manifests" / "brats_glioma.csv"), "channels": ["FLAIR", "T1c"],
              "labels": {1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"},
              "regions": {"whole_tumour": [1, 2, 3, 4]},
              "preprocess": {"orientation": "RAS", "target_spacing": [6.0, 6.0, 6.0],
                             "intensity": [{"kind": "none"}, {"kind": "none"}],
                             "crop_foreground": {"threshold": -2.5, "margin_vox": 1}},
              "augment": {}}))
    config = write_config(cfg, tmp_path / "brats_tiny.yaml")
    out = tmp_path / "brats_cv"
    result = cli("train", config, "--out", out, "--folds", "all", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    rows = {r.case_id: r for r in read_manifest(root / "data_manifests" / "brats_glioma.csv")}
    splits = read_splits(out / "splits.json")
    assert splits == make_splits(sorted(rows), 4, seed=0) and all(len(s.val) == 1 for s in splits)
    assert len({load_plans(out / f"fold_{k}").model_dump_json() for k in range(4)}) == 1
    for k, split in enumerate(splits):
        (case,) = split.val
        pred = read_label(out / f"fold_{k}" / "validation" / f"{case}.nii.gz")
        image = read_volume(rows[case].images[0])
        assert pred.shape == image.shape == (240, 240, 155)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
    summary = json.loads((out / "cv_summary.json").read_text())
    assert sorted(c["case"] for c in summary["metric_per_case"]) == sorted(rows)
    assert [f["cases"] for f in summary["folds"]] == [list(s.val) for s in splits]
    assert set(summary["lesions"]) == {"1", "2", "3", "4"}
    pp = json.loads((out / "postprocessing.json").read_text())
    assert set(pp["largest_component"]) == {"1", "2", "3", "4"}
    assert all(isinstance(v, bool) for v in pp["largest_component"].values())


def test_a_budget_is_shared_by_the_folds_and_a_budget_ended_fold_is_finished(cv_dir, phantom_manifest, tmp_path):
    """``max_minutes`` of ``train_folds`` is the whole call's: each fold gets its share of what is
    left (a generous budget changes no weight), and a fold that its budget ended counts as trained."""
    out = tmp_path / "model"
    train_folds(_cv_config(), manifest=phantom_manifest, model_dir=out, device="cpu", progress=False, max_minutes=30.0)
    shares = [json.loads((out / f"fold_{k}" / "training_log.json").read_text())["summary"]["budget_minutes"]
              for k in range(2)]
    assert shares[0] == pytest.approx(15.0, abs=0.05)  # half of the 30 minutes, two folds to train
    assert 25.0 < shares[1] < 30.0  # all that the first fold left
    for k in range(2):
        a = torch.load(out / f"fold_{k}" / "model.pt", weights_only=True)
        b = torch.load(cv_dir / f"fold_{k}" / "model.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)

    log = out / "fold_0" / "training_log.json"
    data = json.loads(log.read_text())
    data["summary"].update(steps_done=2, stopped_by="budget")
    log.write_text(json.dumps(data))
    (out / "fold_0" / "model.pt").touch()
    assert fold_finished(out / "fold_0", _cv_config())
    data["summary"].update(stopped_by="stop_after_steps")
    log.write_text(json.dumps(data))
    assert not fold_finished(out / "fold_0", _cv_config())


def test_the_folds_train_writes_segment_as_one_ensemble_with_its_postprocessing(cv_dir, phantom_manifest, tmp_path,
                                                                                  cli):
    """What ``medseg train --folds all`` writes is a model ``medseg segment`` reads: both folds
    averaged, the post-processing chosen by the cross-validation applied, the input's grid kept."""
    from medseg.inference.kinds import describe_model
    from medseg.plans import read_postprocessing

    info = describe_model(cv_dir)
    assert info.kind == "medseg" and info.folds == (0, 1)
    assert info.largest_component == read_postprocessing(cv_dir, info.labels)
    study = read_manifest(phantom_manifest)[3]  # phantom_013, oblique LAS
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", str(study.images[0]), "--model", str(cv_dir), "-o", str(out), "--device", "cpu",
            "--backend", "torch")
    assert r.returncode == 0, r.stderr
    seg, image = read_label(out), read_volume(study.images[0])
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-6)
    one = tmp_path / "fold0.nii.gz"
    assert cli("segment", str(study.images[0]), "--model", str(cv_dir), "-o", str(one), "--device", "cpu",
               "--backend", "torch", "--folds", "0").returncode == 0
    assert not np.array_equal(read_label(one).array, seg.array)  # the ensemble is not fold 0 alone

"""A medseg model folder with folds (``fold_K/`` model directories, as ``medseg train --folds``
writes): detected, described, segmented as an ensemble whose probabilities are the mean of the
folds', and its cross-validated post-processing (``postprocessing.json``) applied by ``segment``
and ``batch``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_volume, write_volume
from medseg.phantoms import make_phantom
from tests.training.conftest import tiny_config

PLANS_AND_WEIGHTS = ("plans.json", "model.pt", "labels.json")


@pytest.fixture(scope="module")
def fold_folder(tmp_path_factory) -> Path:
    """Two folds trained by the trainer into ``MODEL/fold_0`` and ``MODEL/fold_1`` (a tiny U-Net,
    4 steps each, on 4 phantoms, each fold validating on another case): one plans file, different
    weights."""
    from medseg.manifest import read_manifest, write_manifest
    from medseg.phantoms import write_phantom_archive
    from medseg.training import train
    from medseg.training.config import TrainConfig

    root = tmp_path_factory.mktemp("cv")
    model = root / "model"
    rows = read_manifest(write_phantom_archive(root / "phantoms", 4, seed=10, splits={"train": 3, "val": 1}))
    splits = []
    for k in range(2):
        val = rows[len(rows) - 1 - k].case_id
        fold_rows = [dataclasses.replace(r, split="val" if r.case_id == val else "train") for r in rows]
        splits.append({"train": [r.case_id for r in fold_rows if r.split == "train"], "val": [val]})
        manifest = write_manifest(fold_rows, root / "phantoms" / f"fold_{k}.csv")
        cfg = TrainConfig.model_validate(tiny_config(
            steps=4, steps_per_epoch=4, checkpoint_every_steps=4, seed=k,
            validation={"every_epochs": 1000, "overlap": 0.25, "sw_batch_size": 2}))
        train(cfg, manifest=manifest, out_dir=model / f"fold_{k}", device="cpu", progress=False)
    (model / "splits.json").write_text(json.dumps(splits))
    return model


@pytest.fixture(scope="module")
def oblique_study(tmp_path_factory) -> Path:
    """An unseen phantom on an oblique LPS grid."""
    path = tmp_path_factory.mktemp("study") / "oblique_lps.nii.gz"
    write_volume(make_phantom(77, shape=(48, 44, 30), spacing=(4.0, 4.0, 5.0), orientation="LPS",
                              rotation_deg=(12.0, -8.0, 15.0)).image, path)
    return path


def _copy_folds(dirs: dict[int, Path], dst: Path) -> Path:
    """A fold folder ``dst`` whose ``fold_K`` is a copy of the model directory ``dirs[K]``."""
    for k, src in dirs.items():
        (dst / f"fold_{k}").mkdir(parents=True)
        for name in PLANS_AND_WEIGHTS:
            shutil.copy2(src / name, dst / f"fold_{k}" / name)
    return dst


def test_a_fold_folder_is_a_medseg_model_with_its_folds(fold_folder, cli):
    from medseg.inference.kinds import ModelOptions, describe_model, detect_kind, model_files

    assert detect_kind(fold_folder) == "medseg"
    info = describe_model(fold_folder)
    assert info.folds == (0, 1) and info.largest_component is None and info.channels == ("CT",)
    assert describe_model(fold_folder, ModelOptions(folds=(1,))).folds == (1,)
    assert model_files(fold_folder) == [fold_folder / f"fold_{k}" / name for k in (0, 1)
                                        for name in ("plans.json", "model.pt")]
    assert model_files(fold_folder, ModelOptions(folds=(1,))) == [fold_folder / "fold_1" / "plans.json",
                                                                  fold_folder / "fold_1" / "model.pt"]
    r = cli("models", "--describe", fold_folder)
    assert r.returncode == 0, r.stderr
    assert "folds:         0, 1 (each fold's softmax probabilities averaged)" in r.stdout
    assert "post-processing" not in r.stdout
    assert json.loads(cli("models", "--describe", fold_folder, "--json").stdout)["folds"] == [0, 1]


def test_the_ensemble_probabilities_are_the_mean_of_the_folds(fold_folder, oblique_study, cli, tmp_path):
    """`segment --folds 0`, `--folds 1` and the default (both): the ensemble's probabilities are
    the mean of the single folds' (float16 files), its labels on the input's exact grid."""
    from medseg.io.probabilities import read_probabilities

    image = read_volume(oblique_study)
    probs, labels = {}, {}
    for name, args in (("0", ["--folds", "0"]), ("1", ["--folds", "1"]), ("both", [])):
        seg, prob = tmp_path / f"seg_{name}.nii.gz", tmp_path / f"prob_{name}.nii.gz"
        r = cli("segment", oblique_study, "--model", fold_folder, "-o", seg, "--probabilities", prob,
                "--device", "cpu", "--backend", "torch", "--threads", "1", *args)
        assert r.returncode == 0, r.stderr
        probs[name] = read_probabilities(prob, image).astype(np.float32)  # on the input grid
        labels[name] = read_volume(seg)
    assert labels["both"].shape == image.shape and np.array_equal(labels["both"].affine, image.affine)
    assert probs["both"].shape == image.shape + (6,)
    assert np.abs(probs["0"] - probs["1"]).max() > 0.1  # the folds differ: the mean means something
    mean = (probs["0"] + probs["1"]) / 2
    assert np.abs(probs["both"] - mean).max() < 2e-3  # float16 files
    np.testing.assert_allclose(probs["both"].sum(axis=-1), 1.0, atol=5e-3)
    agree = (labels["both"].array == probs["both"].argmax(axis=-1)).mean()
    assert agree > 0.99  # labels are the argmax of the float32 mean; the file holds float16


def test_mirrored_windows_of_the_ensemble_are_the_mean_of_each_folds(fold_folder):
    """With TTA, the ensemble averages every fold's mirrored softmax (one mean over folds and flips)."""
    from medseg.inference import Predictor

    load = dict(device="cpu", backend="torch", num_threads=1)
    ensemble = Predictor.from_model_dir(fold_folder, **load)
    single = [Predictor.from_model_dir(fold_folder, folds=[k], **load) for k in (0, 1)]
    assert len(ensemble.nets) == 2 and ensemble.info.folds == (0, 1)
    batch = np.random.default_rng(0).normal(size=(2, 1) + ensemble.window).astype(np.float32)
    for tta in (False, True):
        got = ensemble.window_scores(batch, tta=tta)
        expected = (single[0].window_scores(batch, tta=tta) + single[1].window_scores(batch, tta=tta)) / 2
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ensemble.window_scores(batch, tta=True), ensemble.window_scores(batch, tta=False))


def test_a_backend_compiles_one_network_per_fold(fold_folder, oblique_study):
    from medseg.inference import Predictor

    image = read_volume(oblique_study)
    torch_p = Predictor.from_model_dir(fold_folder, device="cpu", backend="torch", num_threads=1)
    ort_p = Predictor.from_model_dir(fold_folder, device="cpu", backend="onnxruntime", num_threads=1)
    assert len(ort_p.forwards) == 2 and ort_p.backend == "onnxruntime f32"
    assert ort_p.forwards[0].cache_entry != ort_p.forwards[1].cache_entry
    ref, got = torch_p.predict(image).labels, ort_p.predict(image).labels
    assert np.array_equal(got.affine, ref.affine) and (got.array == ref.array).mean() >= 0.999


def test_what_a_fold_folder_refuses(fold_folder, oblique_study, cli, tmp_path):
    """One line each, naming the file: --folds on a plain model directory, a fold that is not
    trained, folds whose plans differ (the fold and the key), a bad postprocessing.json."""
    from medseg.errors import InputError
    from medseg.inference.kinds import ModelOptions, describe_model

    def refused(model, *args) -> str:
        r = cli("segment", oblique_study, "--model", model, "-o", tmp_path / "seg.nii.gz", *args)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "seg.nii.gz").exists()
        return r.stderr.strip()

    plain = fold_folder / "fold_0"
    assert refused(plain, "--folds", "0") == (f"medseg: error: {plain}: a medseg model directory without fold_*/ "
                                             "folders has no folds: leave out --folds")
    assert f"{fold_folder / 'fold_2' / 'model.pt'}: not found (--folds names a fold" in refused(fold_folder, "--folds", "1,2")

    other = _copy_folds({k: fold_folder / f"fold_{k}" for k in (0, 1)}, tmp_path / "other")
    plans = json.loads((other / "fold_1" / "plans.json").read_text())
    plans["preprocess"]["intensity"][0]["window"] = [-100.0, 200.0]
    (other / "fold_1" / "plans.json").write_text(json.dumps(plans))
    assert refused(other) == (f"medseg: error: {other / 'fold_1' / 'plans.json'}: differs from fold_0/plans.json at "
                              "preprocess.intensity[0].window[0] (-100.0, fold_0: -150.0): the folds of an ensemble must "
                              "share one plans file")
    assert describe_model(other, ModelOptions(folds=(1,))).folds == (1,)  # a single fold has nothing to differ from

    (other / "postprocessing.json").write_text(json.dumps({"largest_component": {"9": True}}))
    with pytest.raises(InputError, match=r"postprocessing.json: largest_component: label 9 is not one of the model's"):
        describe_model(other, ModelOptions(folds=(0,)))
    (other / "postprocessing.json").write_text(json.dumps({"largest_component": {"1": "yes"}}))
    with pytest.raises(InputError, match=r"label 1 must be true or false, not 'yes'"):
        describe_model(other, ModelOptions(folds=(0,)))

    untrained = tmp_path / "untrained"
    (untrained / "fold_0").mkdir(parents=True)
    shutil.copy2(fold_folder / "fold_0" / "plans.json", untrained / "fold_0" / "plans.json")
    assert refused(untrained) == (f"medseg: error: {untrained}: no trained fold: no fold_*/ holds both plans.json "
                                  "and model.pt")


# ---------------------------------------------------------------------- post-processing from CV

def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3)))


@pytest.fixture(scope="module")
def trained_folds(phantom_model, tmp_path_factory) -> Path:
    """A fold folder of the session's trained phantom model (fold 0) and a copy with perturbed
    weights (fold 1)."""
    import torch

    model = _copy_folds({0: phantom_model, 1: phantom_model}, tmp_path_factory.mktemp("trained") / "model")
    weights = torch.load(model / "fold_1" / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1
                 else v for k, v in weights.items()}
    torch.save(perturbed, model / "fold_1" / "model.pt")
    return model


@pytest.fixture(scope="module")
def spurious_study(tmp_path_factory) -> Path:
    """An oblique LPS phantom with a spleen-like ball (115 HU, 10 mm radius) in soft tissue far
    from the spleen: the network labels it spleen, a second, smaller spleen component."""
    study = make_phantom(21, shape=(60, 52, 36), spacing=(3.5, 3.5, 4.0), orientation="LPS",
                         rotation_deg=(10.0, -6.0, 12.0))
    image = study.image
    vox = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), axis=-1).astype(np.float64)
    world = vox @ image.affine[:3, :3].T + image.affine[:3, 3]
    ball = np.sum((world - np.array([-40.0, 40.0, 0.0])) ** 2, axis=-1) <= 10.0**2
    array = image.array.copy()
    array[ball] = 115
    path = tmp_path_factory.mktemp("spurious") / "study.nii.gz"
    write_volume(image.with_array(array), path)
    np.save(path.with_name("ball.npy"), ball)
    return path


POSTPROCESSING = {"largest_component": {"1": False, "2": True, "3": False, "4": False, "5": False},
                  "dice": {"before": {"2": 0.81}, "after": {"2": 0.86}}}


def test_postprocessing_from_cross_validation_keeps_the_largest_component(trained_folds, spurious_study, cli,
                                                                          tmp_path):
    """The same fold folder without and with postprocessing.json: with it, the spleen's spurious
    second component is gone, the kept component is the largest, and nothing else changes."""
    model = _copy_folds({k: trained_folds / f"fold_{k}" for k in (0, 1)}, tmp_path / "model")
    run = ("--device", "cpu", "--backend", "torch", "--threads", "1")
    assert cli("segment", spurious_study, "--model", model, "-o", tmp_path / "off.nii.gz", *run).returncode == 0
    (model / "postprocessing.json").write_text(json.dumps(POSTPROCESSING))
    r = cli("segment", spurious_study, "--model", model, "-o", tmp_path / "on.nii.gz", *run)
    assert r.returncode == 0, r.stderr
    off, on = read_volume(tmp_path / "off.nii.gz").array, read_volume(tmp_path / "on.nii.gz").array
    ball = np.load(spurious_study.with_name("ball.npy"))

    comp, n = _components(off == 2)
    assert n >= 2 and (off[ball] == 2).sum() > 0.5 * ball.sum()  # the ball became a second spleen
    sizes = np.bincount(comp.ravel())[1:]
    largest = comp == 1 + int(np.argmax(sizes))
    assert not (largest & ball).any() and sizes.max() > 2 * sorted(sizes)[-2]
    assert _components(on == 2)[1] == 1 and np.array_equal(on == 2, largest)
    dropped = (off == 2) & ~largest
    assert np.all(on[dropped] == 0) and np.array_equal(on[~dropped], off[~dropped])
    assert _components(on == 1)[1] == _components(off == 1)[1]  # classes marked false keep their components

    r = cli("models", "--describe", model)
    assert ("post-processing: keep only the largest component of 2 spleen (chosen by cross-validation, "
            "postprocessing.json; applied by segment and batch)") in r.stdout

    # with --components too: the small blobs go, and the spleen is still its largest component alone
    r = cli("segment", spurious_study, "--model", model, "-o", tmp_path / "both.nii.gz", "--components", *run)
    assert r.returncode == 0, r.stderr
    both = read_volume(tmp_path / "both.nii.gz").array
    assert np.array_equal(both == 2, largest)


def test_batch_applies_the_postprocessing_and_redoes_studies_when_it_changes(trained_folds, spurious_study,
                                                                            tmp_path):
    from medseg.batch import BatchOptions, run_batch
    from medseg.inference import Predictor, StudyOptions, run_study
    from medseg.inference.kinds import model_files

    model = _copy_folds({k: trained_folds / f"fold_{k}" for k in (0, 1)}, tmp_path / "model")
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy2(spurious_study, archive / "study.nii.gz")
    out = tmp_path / "out"
    options = BatchOptions(backend="torch")
    assert run_batch(archive, model, out, options, device="cpu")["processed"] == ["study"]
    assert run_batch(archive, model, out, options, device="cpu")["skipped"] == ["study"]
    off = read_volume(out / "studies" / "study" / "segmentation.nii.gz").array

    (model / "postprocessing.json").write_text(json.dumps(POSTPROCESSING))
    assert model_files(model)[-1] == model / "postprocessing.json"
    assert run_batch(archive, model, out, options, device="cpu")["processed"] == ["study"]  # a new decision
    on = read_volume(out / "studies" / "study" / "segmentation.nii.gz").array
    assert _components(off == 2)[1] >= 2 and _components(on == 2)[1] == 1

    predictor = Predictor.from_model_dir(model, device="cpu", backend="torch")
    assert predictor.info.largest_component == (2,)
    expected = run_study(read_volume(spurious_study), predictor, StudyOptions.for_model(predictor.info),
                         volumes=False).labels.array
    assert np.array_equal(on, expected)  # the pipeline `medseg segment` runs

"""``medseg plan``: a config that trains, the fingerprint beside it, and one-line refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from medseg.io import Volume
from tests.planning.conftest import phantom_cases, write_manifest_dataset

LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}


def _phantom_dataset(root: Path, n: int = 3) -> Path:
    studies = phantom_cases(n)
    return write_manifest_dataset(root, [{"id": s.case_id, "images": [s.image], "label": s.label,
                                          "split": "val" if i == n - 1 else "train"} for i, s in enumerate(studies)],
                                  labels=LABELS)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), result.stderr
    return lines[0]


def test_plan_then_train_a_few_steps_from_the_planned_config(tmp_path, cli):
    import torch

    manifest = _phantom_dataset(tmp_path / "data")
    config = tmp_path / "cfg" / "phantoms.yaml"
    config.parent.mkdir()
    result = cli("plan", manifest, "-o", config, "--device", "cpu", "--minutes", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(config)
    assert sorted(p.name for p in config.parent.iterdir()) == ["phantoms.fingerprint.json", "phantoms.yaml"]
    planned = yaml.safe_load(config.read_text())
    assert planned["data"]["manifest"] == "../data/manifest.csv" and planned["max_minutes"] == 2.0
    assert planned["data"]["labels"] == LABELS and planned["cross_validation"] == {"folds": 3, "seed": 0}
    fingerprint = json.loads((config.parent / "phantoms.fingerprint.json").read_text())
    assert [c["case_id"] for c in fingerprint["cases"]] == ["ph0", "ph1", "ph2"]
    assert planned["data"]["preprocess"]["intensity"][0]["window"] == [
        round(fingerprint["channels"][0]["foreground"]["percentile_00_5"], 6),
        round(fingerprint["channels"][0]["foreground"]["percentile_99_5"], 6)]

    run = tmp_path / "run"
    result = cli("train", config, "--out", run, "--device", "cpu", "--stop-after-steps", "2")
    assert result.returncode == 0, result.stderr
    plans = json.loads((run / "plans.json").read_text())
    assert plans["model"]["options"] == planned["model"]["options"]
    assert plans["inference"]["patch_size"] == planned["patch_size"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_a_dataset_json_gets_a_manifest_beside_the_config(tmp_path, cli):
    from medseg.io import write_volume
    from medseg.training import load_train_config
    from medseg.training.data import load_split_rows

    data = tmp_path / "Dataset001"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for s in phantom_cases(2):
        write_volume(s.image, data / "imagesTr" / f"{s.case_id}_0000.nii.gz")
        write_volume(s.label, data / "labelsTr" / f"{s.case_id}.nii.gz")
    (data / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 2,
        "labels": {"background": 0, **{name: lid for lid, name in LABELS.items()}}}))
    config = tmp_path / "plans" / "d1.yml"
    result = cli("plan", data / "dataset.json", "-o", config, "--device", "cuda")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in config.parent.iterdir()) == ["d1.fingerprint.json", "d1.manifest.csv", "d1.yml"]
    cfg = load_train_config(config)
    assert cfg.data.manifest == (config.parent / "d1.manifest.csv").resolve() and cfg.data.allow_outside
    assert cfg.optimiser.name == "sgd" and cfg.epochs == 1000  # nnU-Net's GPU schedule
    train, val = load_split_rows(cfg, cfg.data.manifest)
    assert [r.case_id for r in train] == ["ph0", "ph1"] and train[0].images[0] == data / "imagesTr" / "ph0_0000.nii.gz"


def test_an_existing_config_is_never_overwritten(tmp_path, cli):
    manifest = _phantom_dataset(tmp_path)
    config = tmp_path / "cfg.yaml"
    config.write_text("mine\n")
    before = _files(tmp_path)
    line = _one_error_line(cli("plan", manifest, "-o", config, "--device", "cpu"))
    assert line == f"medseg: error: {config}: already exists: medseg plan never overwrites a config (choose another -o, or remove it first)"
    assert config.read_text() == "mine\n" and _files(tmp_path) == before


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, cli):
    studies = phantom_cases(2)
    # one case: no folds
    one = write_manifest_dataset(tmp_path / "one", [{"id": "a", "images": [studies[0].image], "label": studies[0].label}])
    # channels on different grids
    s = studies[0]
    shifted = Volume(s.image.array, s.image.affine @ np.diag([1.0, 1.0, 1.25, 1.0]))
    grids = write_manifest_dataset(tmp_path / "grids", [
        {"id": "a", "images": [s.image, s.image], "label": s.label},
        {"id": "b", "images": [s.image, shifted], "label": s.label}], modality="T1;T2")
    # a label value that the labels list lacks
    values = write_manifest_dataset(tmp_path / "values", [{"id": x.case_id, "images": [x.image], "label": x.label}
                                                          for x in studies], labels={1: "liver", 2: "spleen"})
    # a missing file
    missing = _phantom_dataset(tmp_path / "missing", 2)
    (tmp_path / "missing" / "images" / "ph1_0000.nii.gz").unlink()
    cases = [
        (one, "1 labelled train/val case: cross-validation needs at least 2"),
        (grids, "case 'b': channel T2 is not on the grid of channel T1"),
        (values, "label value 3 is not in the labels list"),
        (missing, "line 3: file not found"),
        (tmp_path / "nothing.csv", "nothing.csv: manifest not found"),
    ]
    out = tmp_path / "out"
    out.mkdir()
    for dataset, words in cases:
        before = _files(tmp_path)
        line = _one_error_line(cli("plan", dataset, "-o", out / "cfg.yaml", "--device", "cpu"))
        assert words in line, line
        assert _files(tmp_path) == before, dataset
    assert "grids/images/b_0001.nii.gz" in _one_error_line(cli("plan", grids, "-o", out / "c.yaml", "--device", "cpu"))
    assert "values/labels/ph0.nii.gz: label value 3" in _one_error_line(
        cli("plan", values, "-o", out / "c.yaml", "--device", "cpu"))
    ok = _phantom_dataset(tmp_path / "ok", 2)
    for options, words in [
        (["--device", "tpu"], "medseg: error: --device must be cpu, cuda or auto, not 'tpu'"),
        (["--device", "cpu", "--memory-gb", "0"], "medseg: error: --memory-gb must be a positive number of GB, not 0.0"),
        (["--device", "cpu", "--minutes", "-5"], "medseg: error: --minutes must be a positive number of minutes, not -5.0"),
        (["--device", "cpu", "--minutes", "0.005"], "medseg: error: --minutes 0.005 is too short for one epoch of 50 steps"),
    ]:
        line = _one_error_line(cli("plan", ok, "-o", out / "cfg.yaml", *options))
        assert line.startswith(words), line
    assert _files(out) == []

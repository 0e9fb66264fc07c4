"""The trainer: learning on phantoms, the model directory, exact resumption, 2D slices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import InputError
from medseg.phantoms import make_phantom
from medseg.plans import load_plans, read_labels
from medseg.training import TrainConfig, load_train_config, train
from tests.training.conftest import TINY_CONFIG, dice, predictor_val_dice, segment_volume, tiny_config, write_config

TIMING_COLUMNS = {"train_seconds", "samples_per_s", "val_seconds"}


def test_quick_phantom_model_learns_and_segments_a_held_out_phantom(phantom_model):
    log = json.loads((phantom_model / "training_log.json").read_text())
    losses = [row["train_loss"] for row in log["epochs"]]
    assert len(losses) == 5
    assert losses[-1] < 0.6 * losses[0], losses
    assert log["summary"]["steps_done"] == 300
    assert log["epochs"][-1]["val_dice_foreground"] >= 0.8
    # validated (bf16) by the predictor a user gets from the model directory, on the val phantom's own grid
    users = predictor_val_dice(phantom_model, phantom_model.parent / "phantoms" / "manifest.csv",
                               load_plans(phantom_model).labels, num_threads=log["summary"]["threads"], autocast="bf16")
    assert users == pytest.approx(log["summary"]["best_val_dice_mean"], abs=1e-6)
    # a phantom never seen in training, on an oblique LPS grid, segmented from the model directory alone
    study = make_phantom(77, orientation="LPS", rotation_deg=(5.0, -4.0, 8.0))
    pred = segment_volume(phantom_model, study.image)
    ref = study.label.array
    assert pred.shape == ref.shape
    assert dice(pred > 0, ref > 0) >= 0.8
    assert dice(pred == 1, ref == 1) >= 0.8  # liver


def test_model_directory_is_complete_and_loads_weights_only(phantom_model):
    plans = load_plans(phantom_model)
    assert plans.model.name == "unet" and plans.model.spatial_dims == 3
    assert plans.model.in_channels == 1 and plans.model.out_channels == 6
    assert plans.inference.patch_size == (48, 48, 32) and plans.inference.slice_axis is None
    assert plans.preprocess.target_spacing == (4.0, 4.0, 4.0)
    assert plans.labels == {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}
    assert read_labels(phantom_model / "labels.json") == plans.labels
    state = torch.load(phantom_model / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(phantom_model / "checkpoints" / name, weights_only=True)
        assert ckpt["step"] == 300
    # the resolved config re-validates and rebuilds the same run
    cfg = load_train_config(phantom_model / "config.yaml")
    assert cfg.total_steps == 300 and cfg.model.options["channels"] == [8, 16, 32, 64]
    header = (phantom_model / "training_log.csv").read_text().splitlines()[0].split(",")
    for col in ("epoch", "step", "train_loss", "lr", "samples_per_s", "val_dice_liver", "val_dice_mean",
                "val_dice_foreground"):
        assert col in header
    assert not list(phantom_model.rglob(".*partial*"))


def _rows_without_timing(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())["epochs"]
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    lb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    assert la["step"] == lb["step"] == 12
    for k in la["model"]:
        assert torch.equal(la["model"][k], lb["model"][k]), k
    for pid, st in la["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, lb["optimizer"]["state"][pid][k]), (pid, k)
    assert la["scheduler"]["last_epoch"] == lb["scheduler"]["last_epoch"] == 12
    assert _rows_without_timing(a / "training_log.json") == _rows_without_timing(b / "training_log.json")


@pytest.fixture(scope="module")
def uninterrupted(phantom_manifest, tmp_path_factory) -> Path:
    cfg = TrainConfig.model_validate(tiny_config())
    return train(cfg, manifest=phantom_manifest, out_dir=tmp_path_factory.mktemp("straight") / "run", progress=False)


def test_validation_dice_is_the_users_predictor_on_the_model_directory(phantom_manifest, tmp_path):
    """The checkpoint is chosen by the Dice of medseg's own predictor on the val case's original grid:
    the logged best val_dice_mean is what Predictor.from_model_dir(model dir) gets on that case."""
    cfg = TrainConfig.model_validate(tiny_config(steps=120, steps_per_epoch=30,
                                                 optimiser={"name": "adamw", "lr": 0.02}))
    model_dir = train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "run", progress=False)
    log = json.loads((model_dir / "training_log.json").read_text())
    rows = log["epochs"]
    assert [r["step"] for r in rows] == [30, 60, 90, 120]  # validated every epoch
    assert len({r["val_dice_mean"] for r in rows}) == 4 and rows[-1]["val_dice_foreground"] > 0.5  # it learned
    summary = log["summary"]
    best = max(rows, key=lambda r: r["val_dice_mean"])
    assert summary["best_step"] == best["step"] and summary["best_val_dice_mean"] == best["val_dice_mean"]
    assert {"val_dice_liver", "val_dice_foreground", "val_dice_kidneys"} <= set(best)
    users = predictor_val_dice(model_dir, phantom_manifest, cfg.data.labels, num_threads=1)
    assert users == pytest.approx(best["val_dice_mean"], abs=1e-6)


def test_stopped_then_killed_then_resumed_equals_uninterrupted(uninterrupted, phantom_manifest, tmp_path, cli):
    """Process 1 stops after 5 steps; process 2 resumes and is killed with SIGKILL mid-run;
    a third resumption finishes: the weights, optimiser state, step and log equal a straight run."""
    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}, checkpoint_every_steps=1),
                          tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    first = cli("train", config, "--out", run, "--device", "cpu", "--stop-after-steps", "5")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(run)
    assert "━" not in first.stderr and "ETA" not in first.stderr  # no progress bar when not a terminal
    assert torch.load(last, weights_only=True)["step"] == 5
    with pytest.raises(InputError, match="already holds a training run; pass --resume"):
        train(load_train_config(config), out_dir=run, progress=False)  # never trains over a run silently

    stamp = last.stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "train", str(config), "--out", str(run), "--device", "cpu",
                             "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while last.stat().st_mtime_ns == stamp and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = torch.load(last, weights_only=True)["step"]  # whole despite the kill (atomic writes)
    assert 6 <= killed_at <= 12
    resumed = train(load_train_config(config), out_dir=run, resume=True, progress=False)
    _assert_same_run(uninterrupted, resumed)


def test_resume_before_the_first_checkpoint_starts_from_step_0(uninterrupted, phantom_manifest, tmp_path):
    """A run killed before its first checkpoint leaves at most an empty checkpoints/ folder and a
    hidden temporary: --resume then trains from step 0 (saying so) and ends as a straight run."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.partial-99999.pt").write_bytes(b"torn")
    said: list[str] = []
    resumed = train(TrainConfig.model_validate(tiny_config()), manifest=phantom_manifest, out_dir=run, resume=True,
                    progress=False, notify=said.append)
    assert said == [f"no checkpoint in {run} yet: starting from step 0"]
    _assert_same_run(uninterrupted, resumed)
    # a folder that does not exist yet is the same case
    said.clear()
    cfg = TrainConfig.model_validate(tiny_config(steps=1))
    train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "new", resume=True, progress=False, notify=said.append)
    assert said == [f"no checkpoint in {tmp_path / 'new'} yet: starting from step 0"]
    assert torch.load(tmp_path / "new" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


@pytest.mark.parametrize("files, words", [
    (["model.pt", "plans.json", "labels.json", "training_log.csv"],
     "cannot resume: holds a model directory but no checkpoints/last.pt to continue from; choose another --out"),
    (["scan.nii.gz", "notes/a.txt", "checkpoints/best.pt", "checkpoints/old/last.pt"],
     "cannot resume: no checkpoints/last.pt, and it holds checkpoints/best.pt, checkpoints/old, notes and 1 more: "
     "not an interrupted medseg run; choose another --out"),
])
def test_resume_without_a_checkpoint_refuses_a_model_or_other_files(phantom_manifest, tmp_path, files, words):
    run = tmp_path / "run"
    for name in files:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"kept")
    said: list[str] = []
    with pytest.raises(InputError) as err:
        train(TrainConfig.model_validate(tiny_config()), manifest=phantom_manifest, out_dir=run, resume=True,
              progress=False, notify=said.append)
    assert str(err.value) == f"{run}: {words}"
    assert said == []
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == sorted(files)
    assert all((run / name).read_bytes() == b"kept" for name in files)


def test_2d_training_samples_slices_and_records_the_slice_axis(phantom_manifest, tmp_path):
    cfg = TrainConfig.model_validate(tiny_config(
        model={"name": "unet", "spatial_dims": 2, "options": {"channels": [4, 8, 16], "strides": [2, 2],
                                                              "num_res_units": 0}},
        patch_size=[32, 24], batch_size=4, steps=8, data={"slice_axis": 1}))
    model_dir = train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "run2d", progress=False)
    plans = load_plans(model_dir)
    assert plans.model.spatial_dims == 2
    assert plans.inference.slice_axis == 1
    assert plans.inference.patch_size == (32, 24)
    log = json.loads((model_dir / "training_log.json").read_text())
    row = log["epochs"][-1]
    assert np.isfinite(row["train_loss"]) and 0.0 <= row["val_dice_foreground"] <= 1.0
    # validation went through the predictor, slice by slice along axis 1, as segment does
    users = predictor_val_dice(model_dir, phantom_manifest, TINY_CONFIG["data"]["labels"], num_threads=1)
    assert users == pytest.approx(log["summary"]["best_val_dice_mean"], abs=1e-6)
    study = make_phantom(5)
    pred = segment_volume(model_dir, study.image)
    assert pred.shape == study.label.shape


def test_multichannel_input_with_foreground_crop_and_percentile_window(phantom_manifest, tmp_path):
    # two channels per case (the same CT twice: one windowed from training-foreground percentiles, one fixed)
    import csv

    rows = list(csv.DictReader(open(phantom_manifest)))
    manifest2 = phantom_manifest.parent / "manifest_2ch.csv"
    with open(manifest2, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image": f"{r['image']};{r['image']}"})
    cfg = TrainConfig.model_validate(tiny_config(steps=4, data={
        "channels": ["CT_fitted", "CT_fixed"],
        "preprocess": {"target_spacing": [6.0, 6.0, 6.0], "crop_foreground": {"threshold": -500.0, "margin_vox": 1},
                       "intensity": [{"kind": "ct", "foreground_percentiles": [0.5, 99.5]},
                                     {"kind": "ct", "window": [-150, 250]}]}}))
    model_dir = train(cfg, manifest=manifest2, out_dir=tmp_path / "run2ch", progress=False)
    plans = load_plans(model_dir)
    assert plans.model.in_channels == 2 and plans.channel_names == ["CT_fitted", "CT_fixed"]
    fitted = plans.preprocess.intensity[0]
    # phantom organs are 45..150 HU (+ noise): the fitted window brackets them and is saved as numbers
    assert -100 < fitted.window[0] < 60 < 140 < fitted.window[1] < 260
    assert fitted.mean is not None and fitted.std > 0
    assert plans.preprocess.intensity[1].window == (-150.0, 250.0) and plans.preprocess.intensity[1].mean is None
    assert plans.preprocess.crop_foreground is not None

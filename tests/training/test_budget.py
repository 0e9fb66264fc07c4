"""The time budget (``max_minutes`` / ``--max-minutes``): a shortened run whose schedule still ends,
a budget too small for one epoch refused with nothing written, resumption of a shortened run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medseg.plans import load_plans
from medseg.training import TrainConfig, load_train_config, train
from medseg.training.trainer import make_lr_lambda
from tests.training.conftest import tiny_config, write_config

TIMING_COLUMNS = {"train_seconds", "samples_per_s", "val_seconds"}
LR = 0.01


def _log(run: Path) -> dict:
    return json.loads((run / "training_log.json").read_text())


def _rows_without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in _log(run)["epochs"]]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = (torch.load(run / "model.pt", weights_only=True) for run in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _end_lr(cfg: TrainConfig, total: int) -> float:
    """The learning rate of the last step of a schedule spanning ``total`` steps."""
    return LR * make_lr_lambda(cfg, total)(total - 1)


@pytest.fixture(scope="module")
def long_config() -> dict:
    return tiny_config(steps=128, steps_per_epoch=8, validation={"every_epochs": 2, "overlap": 0.25, "sw_batch_size": 2},
                       checkpoint_every_steps=8)


@pytest.fixture(scope="module")
def unbudgeted(long_config, phantom_manifest, tmp_path_factory) -> Path:
    """The run without budget, after a one-step run that does this process's first imports (so that
    its set-up time is what a budgeted run's will be)."""
    work = tmp_path_factory.mktemp("unbudgeted")
    train(TrainConfig.model_validate(tiny_config(steps=1)), manifest=phantom_manifest, out_dir=work / "warm",
          progress=False)
    return train(TrainConfig.model_validate(long_config), manifest=phantom_manifest, out_dir=work / "run",
                 progress=False)


def _minutes_for_part(unbudgeted: Path, part: float) -> float:
    """A budget of the run's setup plus ``part`` of its training and validation time, as measured on
    this machine by the run without budget (so the budget adapts to a busy machine)."""
    summary, rows = _log(unbudgeted)["summary"], _log(unbudgeted)["epochs"]
    work = sum(r["train_seconds"] + r.get("val_seconds", 0.0) for r in rows)
    return (summary["elapsed_minutes"] * 60.0 - (1.0 - part) * work) / 60.0


@pytest.fixture(scope="module")
def budgeted(long_config, unbudgeted, phantom_manifest, tmp_path_factory) -> tuple[Path, float]:
    """The same config with a budget for about a quarter of its steps."""
    minutes = _minutes_for_part(unbudgeted, 0.25)
    cfg = TrainConfig.model_validate(long_config)
    run = train(cfg, manifest=phantom_manifest, out_dir=tmp_path_factory.mktemp("budgeted") / "run", progress=False,
                max_minutes=minutes)
    return run, minutes


def test_a_budget_shortens_the_run_and_its_schedule_still_ends(long_config, unbudgeted, budgeted):
    cfg = TrainConfig.model_validate(long_config)
    # without a budget: every configured step, the schedule over all of them
    off = _log(unbudgeted)["summary"]
    assert off["steps_done"] == off["schedule_steps"] == 128 and off["stopped_by"] == "steps"
    assert off["budget_minutes"] is None
    assert _log(unbudgeted)["epochs"][-1]["lr"] == pytest.approx(_end_lr(cfg, 128), rel=1e-12)

    run, minutes = budgeted
    log = _log(run)
    on, rows = log["summary"], log["epochs"]
    done = on["steps_done"]
    assert on["stopped_by"] == "budget" and on["budget_minutes"] == pytest.approx(minutes)
    assert 8 <= done == on["schedule_steps"] < 128 and done % 8 == 0  # whole epochs, fewer than configured
    assert on["total_steps"] == 128
    # the learning rate reached the end of the shortened schedule, falling all the way after the warm-up
    assert rows[-1]["lr"] == pytest.approx(_end_lr(cfg, done), rel=1e-12)
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True)
    # within the budget, give or take one epoch (8 steps and a validation at this run's measured speed)
    last = rows[-1]
    epoch_s = last["train_seconds"] + last["val_seconds"]
    assert on["elapsed_minutes"] * 60.0 <= minutes * 60.0 + epoch_s
    # the last step was validated, and the model directory is whole
    assert last["step"] == done and "val_dice_mean" in last
    weights = torch.load(run / "model.pt", weights_only=True)
    assert weights.keys() == torch.load(unbudgeted / "model.pt", weights_only=True).keys()
    assert load_plans(run).labels == load_plans(unbudgeted).labels
    assert load_train_config(run / "config.yaml").max_minutes == pytest.approx(minutes)
    assert (run / "training_log.csv").is_file() and (run / "labels.json").is_file()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == on["best_step"] <= done
    assert all(torch.equal(weights[k], best["model"][k]) for k in weights)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == done and ckpt["schedule_steps"] == done


def test_resuming_a_shortened_run_keeps_its_schedule(long_config, budgeted, phantom_manifest, tmp_path):
    run, _ = budgeted
    before = _log(run)
    # a finished shortened run: resuming (without a budget) trains nothing more
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    train(TrainConfig.model_validate(long_config), manifest=phantom_manifest, out_dir=copy, resume=True, progress=False)
    after = _log(copy)
    assert after["summary"]["steps_done"] == before["summary"]["steps_done"]
    assert after["summary"]["stopped_by"] == "budget" and after["summary"]["budget_minutes"] is None
    assert _rows_without_timing(copy) == _rows_without_timing(run)
    _same_weights(run, copy)


def test_a_paused_budgeted_run_resumes_on_its_shortened_schedule(long_config, unbudgeted, phantom_manifest, tmp_path):
    """Stopped after 8 steps of a budgeted run, then resumed without a budget: the run goes on to the
    shortened length stored in its checkpoint (not the configured 128), its schedule ending there."""
    cfg = TrainConfig.model_validate(long_config)
    run = tmp_path / "run"
    train(cfg, manifest=phantom_manifest, out_dir=run, progress=False, max_minutes=_minutes_for_part(unbudgeted, 0.25),
          stop_after_steps=8)
    paused = _log(run)["summary"]
    assert paused["steps_done"] == 8 and paused["stopped_by"] == "stop_after_steps"
    length = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["schedule_steps"]
    assert length == paused["schedule_steps"] and 8 < length < 128
    train(cfg, manifest=phantom_manifest, out_dir=run, resume=True, progress=False)
    log = _log(run)
    assert log["summary"]["steps_done"] == log["summary"]["schedule_steps"] == length
    assert log["summary"]["stopped_by"] == "budget"
    assert [r["step"] for r in log["epochs"]] == list(range(8, length + 1, 8))
    assert log["epochs"][-1]["lr"] == pytest.approx(_end_lr(cfg, length), rel=1e-12)


def test_a_budget_that_holds_the_whole_run_changes_nothing(phantom_manifest, tmp_path):
    """Measuring the speed runs on a copy of the model with its own optimiser, and puts the random
    states back: with a budget that the configured steps fit, the run is bit-identical to one without,
    also when a budget is given to the resumption of a run paused without one."""
    cfg = TrainConfig.model_validate(tiny_config())
    plain = train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "plain", progress=False)
    roomy = train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "roomy", progress=False, max_minutes=30)
    _same_weights(plain, roomy)
    assert _rows_without_timing(plain) == _rows_without_timing(roomy)
    assert _log(roomy)["summary"]["stopped_by"] == "steps" and _log(roomy)["summary"]["budget_minutes"] == 30
    resumed = tmp_path / "resumed"
    train(cfg, manifest=phantom_manifest, out_dir=resumed, progress=False, stop_after_steps=5)
    train(cfg, manifest=phantom_manifest, out_dir=resumed, resume=True, progress=False, max_minutes=30)
    _same_weights(plain, resumed)
    assert _rows_without_timing(plain) == _rows_without_timing(resumed)
    la, lb = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (plain, resumed))
    for pid, st in la["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, lb["optimizer"]["state"][pid][k]), (pid, k)


@pytest.mark.parametrize("where", ["option", "config"])
def test_a_budget_too_small_for_one_epoch_is_refused_with_nothing_written(phantom_manifest, tmp_path, cli, where):
    budget = {"max_minutes": 0.001 if where == "config" else 30}  # the option overrides the config
    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}, **budget), tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    option = ["--max-minutes", "0.001"] if where == "option" else []
    result = cli("train", config, "--out", run, "--device", "cpu", *option)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medseg: error: max_minutes 0.001 (--max-minutes, or max_minutes in the config) is too "
                               "small for one epoch of this run: about ")
    assert lines[0].endswith("give more minutes or fewer steps_per_epoch")
    assert not run.exists()
    assert result.stdout == ""

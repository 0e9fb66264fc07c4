"""``medseg train``: one-line errors that blame the right thing (the config, or the device)."""

from __future__ import annotations

from tests.training.conftest import tiny_config, write_config


def test_cli_reports_an_unknown_key_in_one_line(tmp_path, cli):
    path = write_config(tiny_config(data={"manifest": "x.csv", "augment": {"flip_probability": 0.5}}), tmp_path / "c.yaml")
    result = cli("train", path, "--out", tmp_path / "run")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: ")
    assert "data.augment.flip_probability: unknown key" in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_reports_an_absent_device_as_a_device_error_not_the_configs(tmp_path, phantom_manifest, cli):
    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    device = _absent_cuda()
    result = cli("train", config, "--out", tmp_path / "run", "--device", device)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"medseg: error: device '{device}' asked for, but ")
    assert "tiny.yaml" not in lines[0] and str(tmp_path) not in lines[0]
    assert not (tmp_path / "run").exists()
    # a setting of the config itself still names the YAML file
    bad = write_config(tiny_config(data={"manifest": str(phantom_manifest)}, autocast="fp16"), tmp_path / "fp16.yaml")
    result = cli("train", bad, "--out", tmp_path / "run", "--device", "cpu")
    assert result.returncode == 1
    assert result.stderr.strip() == f"medseg: error: {bad}: autocast 'fp16' needs a CUDA device; use 'bf16' on the CPU"


def _absent_cuda() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_cli_resume_before_the_first_checkpoint_starts_from_step_0_and_says_so(tmp_path, phantom_manifest, cli):
    import torch

    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    result = cli("train", config, "--out", run, "--device", "cpu", "--resume", "--stop-after-steps", "2")
    assert result.returncode == 0, result.stderr
    # said even when stderr is not a terminal (a log file): the only stderr line
    assert result.stderr.strip().splitlines() == [f"[medseg] no checkpoint in {run} yet: starting from step 0"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    # from now on --resume continues the checkpoint, silently
    again = cli("train", config, "--out", run, "--device", "cpu", "--resume", "--stop-after-steps", "3")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3


def test_cli_resume_refuses_a_finished_model_without_checkpoints(tmp_path, phantom_manifest, phantom_model, cli):
    import shutil

    config = write_config(tiny_config(data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    model = tmp_path / "model"
    shutil.copytree(phantom_model, model, ignore=shutil.ignore_patterns("checkpoints"))
    before = sorted(p.name for p in model.iterdir())
    result = cli("train", config, "--out", model, "--device", "cpu", "--resume")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"medseg: error: {model}: cannot resume: holds a model directory but no "
                                     "checkpoints/last.pt to continue from; choose another --out")
    assert sorted(p.name for p in model.iterdir()) == before

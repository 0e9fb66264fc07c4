"""Config validation (unknown keys named), the shipped configs, the CLI errors and the Prefect flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.training import TrainConfig, load_train_config
from tests.training.conftest import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_build_their_model(path):
    from medseg.models import available_models, create_model

    cfg = load_train_config(path)
    assert cfg.data.manifest is not None and cfg.data.manifest.is_absolute()
    if cfg.model.name not in available_models():
        pytest.skip(f"architecture {cfg.model.name!r} is not in this checkout's registry yet")
    net = create_model(cfg.model.name, cfg.model.spatial_dims, len(cfg.data.channels), cfg.num_classes,
                       **cfg.model.options)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_brats_manifest_resolves_inside_its_root(shared_data):
    from medseg.training.data import load_split_rows

    cfg = load_train_config(ROOT / "configs" / "brats_unet3d.yaml")
    assert cfg.data.root is None
    train_rows, val_rows = load_split_rows(cfg, cfg.data.manifest)
    assert len(train_rows) == 3 and len(val_rows) == 1
    assert all(len(r.images) == 2 and r.images[0].name.startswith("Flair") for r in train_rows + val_rows)
    assert all(p.is_relative_to(shared_data) for r in train_rows + val_rows for p in r.images + (r.label,))


def test_shared_data_dir_follows_the_environment_else_the_main_working_tree(monkeypatch, tmp_path):
    import subprocess

    from medseg.manifest import shared_data_dir

    monkeypatch.setenv("MEDSEG_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    monkeypatch.delenv("MEDSEG_SHARED_DATA")
    try:  # the main working tree of this checkout's repository (this checkout, unless it is a linked worktree)
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert shared_data_dir() == (Path(common).parent.parent / "shared" / "data").resolve()


def test_shared_data_paths_resolve_and_stay_confined(monkeypatch, tmp_path):
    from medseg.manifest import read_manifest

    shared = tmp_path / "elsewhere" / "shared"
    (shared / "case").mkdir(parents=True)
    (shared / "case" / "ct.nii.gz").write_bytes(b"x")
    monkeypatch.setenv("MEDSEG_SHARED_DATA", str(shared))
    folder = tmp_path / "checkout" / "data_manifests"
    folder.mkdir(parents=True)
    good = folder / "good.csv"
    good.write_text("case_id,image,label,split\nc1,${MEDSEG_SHARED_DATA}/case/ct.nii.gz,,test\n")
    (row,) = read_manifest(good)
    assert row.images == ((shared / "case" / "ct.nii.gz").resolve(),)
    bad = folder / "bad.csv"
    bad.write_text("case_id,image,label,split\nc1,${MEDSEG_SHARED_DATA}/../../etc/passwd,,test\n")
    with pytest.raises(InputError, match=r"line 2: path '\$\{MEDSEG_SHARED_DATA\}/\.\./\.\./etc/passwd' escapes "
                                          "the shared data folder"):
        read_manifest(bad, check_exists=False)
    # without the prefix, the shared folder is not an allowed root: the manifest's folder is
    plain = folder / "plain.csv"
    plain.write_text("case_id,image,label,split\nc1,../../elsewhere/shared/case/ct.nii.gz,,test\n")
    with pytest.raises(InputError, match="escapes the manifest root"):
        read_manifest(plain)


@pytest.mark.parametrize("change, words", [
    ({"optimiser": {"name": "adamw", "lrr": 0.1}}, "optimiser.lrr: unknown key"),
    ({"data": {"augment": {"flip_probability": 0.5}}}, "data.augment.flip_probability: unknown key"),
    ({"learning_rate": 0.1}, "learning_rate: unknown key"),
    ({"epochs": 3}, "give exactly one of 'steps' or 'epochs'"),
    ({"patch_size": [32, 32]}, "patch_size must be 3 positive voxel counts"),
    ({"loss": {"name": "focal", "options": {"gama": 2}}}, "unknown option 'gama' for loss 'focal'; did you mean 'gamma'"),
    ({"loss": {"name": "dice_focall"}}, "loss.name"),
    ({"data": {"labels": {1: "a", 3: "b"}}}, "labels must map the ids 1..K"),
    ({"optimiser": {"name": "adam"}}, "optimiser.name"),
])
def test_config_errors_name_the_key(tmp_path, change, words):
    path = write_config(tiny_config(**change), tmp_path / "bad.yaml")
    with pytest.raises(InputError) as err:
        load_train_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_cli_reports_an_unknown_key_in_one_line(tmp_path, cli):
    path = write_config(tiny_config(data={"manifest": "x.csv", "augment": {"flip_probability": 0.5}}), tmp_path / "c.yaml")
    result = cli("train", path, "--out", tmp_path / "run")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: ")
    assert "data.augment.flip_probability: unknown key" in lines[0]
    assert not (tmp_path / "run").exists()


def test_missing_manifest_and_bad_device_are_clear(tmp_path, phantom_manifest):
    from medseg.runtime import DeviceError
    from medseg.training import train

    cfg = TrainConfig.model_validate(tiny_config())
    with pytest.raises(ValueError, match="no manifest"):
        train(cfg, out_dir=tmp_path / "a")
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda or cuda:N, not 'gpu'"):
        train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "b", device="gpu")
    with pytest.raises(InputError, match="nothing to resume"):
        train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "c", resume=True)


def _absent_cuda() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


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


def test_training_flow_on_a_real_prefect_engine(prefect_server, phantom_manifest, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train import train_flow

    config = write_config(tiny_config(steps=4, data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    state = train_flow(str(config), str(tmp_path / "run"), return_state=True)
    assert state.is_completed()
    model_dir = Path(state.result())
    assert (model_dir / "model.pt").is_file() and (model_dir / "plans.json").is_file()
    assert json.loads((model_dir / "training_log.json").read_text())["summary"]["steps_done"] == 4

    import anyio

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    recorded = anyio.run(runs)
    assert len(recorded) == 1 and recorded[0].state.is_completed()

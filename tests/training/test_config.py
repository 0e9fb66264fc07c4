"""Config validation (unknown keys named), the shipped configs, library errors that name the right thing."""

from __future__ import annotations

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


@pytest.mark.parametrize("change, words", [
    ({"optimiser": {"name": "adamw", "lrr": 0.1}}, "optimiser.lrr: unknown key"),
    ({"data": {"augment": {"flip_probability": 0.5}}}, "data.augment.flip_probability: unknown key"),
    ({"learning_rate": 0.1}, "learning_rate: unknown key"),
    ({"epochs": 3}, "give exactly one of 'steps' or 'epochs'"),
    ({"patch_size": [32, 32]}, "patch_size must be 3 positive voxel counts"),
    ({"patch_size": [100000, 100000, 100000]},
     "patch_size: [100000, 100000, 100000]: 100000 voxels along axis 0 is more than 1024"),
    ({"patch_size": [1024, 1024, 32]}, "patch_size: [1024, 1024, 32]: 33554432 voxels is more than 16777216"),
    ({"patch_size": [0, 32, 32]}, "patch_size: [0, 32, 32]: 0 voxels along axis 0; each side must be at least 1"),
    ({"patch_size": [32, 32, -4]}, "patch_size: [32, 32, -4]: -4 voxels along axis 2"),
    ({"data": {"labels": {1: "liver", 2: "liver"}}},
     "data.labels: the name 'liver' is used by both label 1 and label 2"),
    ({"loss": {"name": "focal", "options": {"gama": 2}}}, "unknown option 'gama' for loss 'focal'; did you mean 'gamma'"),
    ({"loss": {"name": "dice_focall"}}, "loss.name"),
    ({"data": {"labels": {1: "a", 3: "b"}}}, "labels must map the ids 1..K"),
    ({"optimiser": {"name": "adam"}}, "optimiser.name"),
    ({"cross_validation": {"folds": 1}}, "cross_validation.folds"),
    ({"cross_validation": {"folds": 5, "fold": 0}}, "cross_validation.fold: unknown key"),
    ({"max_minutes": 0}, "max_minutes: Input should be greater than 0"),
])
def test_config_errors_name_the_key(tmp_path, change, words):
    path = write_config(tiny_config(**change), tmp_path / "bad.yaml")
    with pytest.raises(InputError) as err:
        load_train_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_cross_validation_defaults_to_five_folds():
    cfg = TrainConfig.model_validate(tiny_config())
    assert (cfg.cross_validation.folds, cfg.cross_validation.seed) == (5, 0)
    cfg = TrainConfig.model_validate(tiny_config(cross_validation={"folds": 4, "seed": 12345}))
    assert (cfg.cross_validation.folds, cfg.cross_validation.seed) == (4, 12345)


def test_largest_patch_is_accepted():
    cfg = TrainConfig.model_validate(tiny_config(patch_size=[256, 256, 256]))
    assert cfg.patch_size == [256, 256, 256]
    assert TrainConfig.model_validate(tiny_config(model={"name": "unet", "spatial_dims": 2},
                                                  patch_size=[1024, 1024])).patch_size == [1024, 1024]


@pytest.mark.parametrize("data, words", [
    (b"seed: 1\nmodel: {name: unet\xe9}\n", "not UTF-8 text: byte 0xe9 at line 2, column 19"),
    (b"\xef\xbb\xbfseed: 1\n\xff", "not UTF-8 text: byte 0xff at line 2, column 1"),
    (b"seed: 1\n\x00", "holds a NUL byte at line 2, column 1: a binary file, not a training config"),
    (b"seed: 1\nmodel: {name: [unet}\n", "not valid YAML at line 2, column 20 (expected ',' or ']', but got '}')"),
])
def test_config_files_that_cannot_be_read_are_named(tmp_path, data, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        load_train_config(path)
    assert str(err.value).startswith(f"{path}: {words}")


def test_a_config_with_a_byte_order_mark_reads(tmp_path):
    path = write_config(tiny_config(), tmp_path / "bom.yaml")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_train_config(path).seed == 3


def test_missing_manifest_and_bad_device_are_clear(tmp_path, phantom_manifest):
    from medseg.runtime import DeviceError
    from medseg.training import train

    cfg = TrainConfig.model_validate(tiny_config())
    with pytest.raises(ValueError, match="no manifest"):
        train(cfg, out_dir=tmp_path / "a")
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda or cuda:N, not 'gpu'"):
        train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "b", device="gpu")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="cannot resume: holds a model directory"):
        train(cfg, manifest=phantom_manifest, out_dir=tmp_path / "c", resume=True)

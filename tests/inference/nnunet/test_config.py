"""nnU-Net folders read as data: the old plans format, allow-lists, safe checkpoints, and one
line for each kind of bad folder (nothing written)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import InputError
from medseg.inference.nnunet.config import build_network, load_checkpoint, read_config
from tests.support_nnunet import write_nnunet_folder

LABELS = {"background": 0, "liver": 1, "tumour": 2}


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(40, 200, (30, 28, 12)).astype(np.float32)
    affine = np.diag([1.2, 1.1, 2.5, 1.0])
    path = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(img, affine), path)
    return path


def _one_error(r, *fragments):
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_old_plans_format_builds_the_same_network(tmp_path):
    """TotalSegmentator's v2 weights use plans without an ``architecture`` entry: nnU-Net rebuilds
    it from UNet_class_name & co., and so does medseg — the same modules and shapes."""
    folder = write_nnunet_folder(tmp_path / "new", labels=LABELS)
    plans = json.loads((folder / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    arch = conf.pop("architecture")["arch_kwargs"]
    conf.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 16,
                 "n_conv_per_stage_encoder": arch["n_conv_per_stage"],
                 "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
                 "pool_op_kernel_sizes": arch["strides"], "conv_kernel_sizes": arch["kernel_sizes"],
                 "num_pool_per_axis": [2, 2, 2]})
    old = tmp_path / "old" / folder.name
    shutil.copytree(folder, old)
    (old / "plans.json").write_text(json.dumps(plans))
    new_net, old_net = build_network(read_config(folder)), build_network(read_config(old))
    assert {k: v.shape for k, v in new_net.state_dict().items()} == {k: v.shape for k, v in old_net.state_dict().items()}
    state = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    old_net.load_state_dict(state)
    new_net.load_state_dict(state)
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        assert torch.equal(old_net(x), new_net(x))


def test_default_plans_shape_two_convs_per_stage_and_anisotropic_strides(tmp_path):
    """Folders shaped like nnU-Net's default plans (2 convolutions per stage, a last stride of
    1×2×2) build and load: the network's stages follow plans.json and the weights fit strictly."""
    folder = write_nnunet_folder(tmp_path, labels=LABELS, patch=(8, 32, 32), features=(4, 8, 16),
                                 strides=((1, 1, 1), (2, 2, 2), (1, 2, 2)), n_conv_per_stage=2)
    net = build_network(read_config(folder))
    net.load_state_dict(load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"], strict=True)
    stages = net.encoder.stages
    assert [len(s[0].convs) for s in stages] == [2, 2, 2]
    assert [tuple(s[0].convs[0].conv.stride) for s in stages] == [(1, 1, 1), (2, 2, 2), (1, 2, 2)]
    with torch.inference_mode():
        assert tuple(net.eval()(torch.randn(1, 1, 8, 32, 32)).shape) == (1, 3, 8, 32, 32)


def test_region_based_labels_follow_regions_class_order(tmp_path):
    folder = write_nnunet_folder(tmp_path, labels={"background": 0, "whole": [1, 2], "core": 2},
                                 regions_class_order=[1, 2])
    cfg = read_config(folder)
    assert cfg.regions == [(1, 2), (2,)] and cfg.regions_class_order == [1, 2] and cfg.n_heads == 2
    assert cfg.labels == {1: "whole", 2: "core"}


def test_checkpoint_with_other_objects_is_refused_by_name(tmp_path):
    import argparse

    folder = write_nnunet_folder(tmp_path, labels=LABELS, extra_checkpoint={"args": argparse.Namespace(a=1)})
    with pytest.raises(InputError, match="argparse.Namespace"):
        load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")


def test_numpy_scalars_of_nnunet_checkpoints_load(tmp_path):
    folder = write_nnunet_folder(tmp_path, labels=LABELS,
                                 extra_checkpoint={"logging": {"ema_fg_dice": [np.float64(0.1), np.float32(0.2)],
                                                               "epoch_end_timestamps": [np.float64(1.0)]},
                                                   "_best_ema": np.float64(0.7)})
    ckpt = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert float(ckpt["_best_ema"]) == pytest.approx(0.7)


@pytest.mark.parametrize("breakage, fragments", [
    ("no checkpoint", ["no trained fold", "checkpoint_final.pth"]),
    ("best only", ["no trained fold", "--checkpoint best"]),
    ("other plans", ["weights do not fit the network in plans.json", "encoder.stages.0"]),
    ("unknown trainer", ["unknown trainer 'MyFancyTrainer'"]),
    ("unknown network", ["unknown network class 'my.module.Net'"]),
    ("unknown op", ["conv_op 'os.system'"]),
    ("cascade", ["cascade"]),
    ("missing fold", ["fold_3", "not found"]),
])
def test_bad_nnunet_folders_get_one_line_and_nothing_written(tmp_path, case, cli, breakage, fragments):
    trainer = "MyFancyTrainer" if breakage == "unknown trainer" else "nnUNetTrainer"
    configuration = "3d_cascade_fullres" if breakage == "cascade" else "3d_fullres"
    folder = write_nnunet_folder(tmp_path / "m", labels=LABELS, trainer=trainer, configuration=configuration,
                                 checkpoint="checkpoint_best.pth" if breakage == "best only" else "checkpoint_final.pth")
    extra = []
    if breakage == "no checkpoint":
        shutil.rmtree(folder / "fold_0")
    elif breakage == "other plans":
        other = write_nnunet_folder(tmp_path / "other", labels=LABELS, features=(8, 16, 32))
        shutil.copy(other / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_final.pth")
    elif breakage in ("unknown network", "unknown op", "cascade"):
        plans = json.loads((folder / "plans.json").read_text())
        conf = plans["configurations"][configuration]
        if breakage == "unknown network":
            conf["architecture"]["network_class_name"] = "my.module.Net"
        elif breakage == "unknown op":
            conf["architecture"]["arch_kwargs"]["conv_op"] = "os.system"
        else:
            conf["previous_stage"] = "3d_lowres"
        (folder / "plans.json").write_text(json.dumps(plans))
    elif breakage == "missing fold":
        extra = ["--folds", "0,3"]
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", case, "--model", folder, "-o", out, *extra)
    _one_error(r, *fragments)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_too_few_channels_names_the_model_channels(tmp_path, case, cli):
    folder = write_nnunet_folder(tmp_path, labels=LABELS, channels=("T1", "T2"))
    r = cli("segment", case, "--model", folder, "-o", tmp_path / "seg.nii.gz")
    _one_error(r, "2 channel(s) (T1, T2)", "not 1")


def test_crf_is_refused_for_a_region_based_model(tmp_path, case, cli):
    folder = write_nnunet_folder(tmp_path, labels={"background": 0, "whole": [1, 2], "core": 2},
                                 regions_class_order=[1, 2])
    r = cli("segment", case, "--model", folder, "-o", tmp_path / "seg.nii.gz", "--crf")
    _one_error(r, "region-based", "--crf does not apply")
    r = cli("segment", case, "--model", folder, "-o", tmp_path / "seg.nii.gz", "--volumes", tmp_path / "v.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert set(report["structures"]) == {"whole", "core"}


def test_checkpoint_best_runs_the_best_weights(tmp_path, case):
    """--checkpoint best loads checkpoint_best.pth: the labels differ from checkpoint_final.pth's
    when the weights differ, and equal a folder whose final checkpoint holds those weights."""
    from medseg.inference import Predictor
    from medseg.io import read_volume

    folder = write_nnunet_folder(tmp_path / "m", labels=LABELS, seed=1)
    other = write_nnunet_folder(tmp_path / "o", labels=LABELS, seed=7)
    shutil.copy(other / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_best.pth")
    image = read_volume(case)
    best = Predictor.from_model_dir(folder, device="cpu", checkpoint="best").predict(image).labels.array
    final = Predictor.from_model_dir(folder, device="cpu").predict(image).labels.array
    assert np.array_equal(best, Predictor.from_model_dir(other, device="cpu").predict(image).labels.array)
    assert not np.array_equal(best, final)

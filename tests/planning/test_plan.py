"""Plan decisions: nnU-Net's heuristics on anisotropic, isotropic, CT and MR datasets, sized to a budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from medseg.errors import InputError
from medseg.planning.plan import (
    SECONDS_PER_GMAC,
    TRAIN_TIME_FRACTION,
    PlanBudget,
    fullres_target_spacing,
    plan_training,
    pool_and_conv_props,
    unet_cost,
)
from medseg.training.config import TrainConfig
from tests.planning.conftest import synthetic_fingerprint

CPU = PlanBudget("cpu", 8.0)
CUDA = PlanBudget("cuda", 8.0)


def _plan(fp, budget=CPU):
    plan = plan_training(fp, budget, manifest="dataset.csv")
    cfg = plan.config
    TrainConfig.model_validate(cfg)  # every plan is a valid training config
    return plan, cfg


def _aniso(n=5, orientation="RAS"):
    z = [5.0, 5.0, 5.0, 4.0, 2.5][:n]
    spacings = [(0.8, 0.8, s) for s in z]
    shapes = [(512, 512, 40)] * n
    if orientation == "IPL":  # the same scans stored slice-first: (I, P, L) axes
        spacings = [(s[2], s[1], s[0]) for s in spacings]
        shapes = [(s[2], s[1], s[0]) for s in shapes]
    return synthetic_fingerprint(spacings=spacings, shapes=shapes, orientation=orientation)


# ------------------------------------------------------------------------------------------------ nnU-Net's rules


def test_target_spacing_is_the_median_or_the_low_resolution_axis_rule():
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 1.2, 1.0], [0.9, 0.9, 1.1]])
    target, axis = fullres_target_spacing(iso, np.full((3, 3), 200))
    assert axis is None and target.tolist() == [1.0, 1.0, 1.0]
    # 0.8 x 0.8 x 5 mm, 40 slices of 512 x 512: the thick axis takes the 10th percentile of its spacings
    spacings = np.array([[0.8, 0.8, z] for z in (5.0, 5.0, 5.0, 3.0, 1.5)])
    shapes = np.array([[512, 512, 40]] * 5)
    target, axis = fullres_target_spacing(spacings, shapes)
    assert axis == 2 and target[:2].tolist() == [0.8, 0.8]
    assert target[2] == pytest.approx(np.percentile([5.0, 5.0, 5.0, 3.0, 1.5], 10)) == pytest.approx(2.1)
    # never finer than the other axes
    spacings[3:, 2] = 0.5
    target, _ = fullres_target_spacing(spacings, shapes)
    assert target[2] == pytest.approx(0.8 + 1e-5)
    # thick slices but as many voxels along that axis: the median stays
    target, axis = fullres_target_spacing(spacings, np.array([[512, 512, 200]] * 5))
    assert axis is None and target[2] == 5.0


def test_pool_and_conv_props_gives_nnunets_values():
    # values of nnU-Net 2.8.1's get_pool_and_conv_props for the same arguments
    n_pool, pools, kernels, patch, divisor = pool_and_conv_props([0.8, 0.8, 5.0], [256, 256, 40])
    assert n_pool == [6, 6, 3] and list(patch) == [256, 256, 40] and list(divisor) == [64, 64, 8]
    assert pools == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    n_pool, pools, _, patch, _ = pool_and_conv_props([1.0, 1.0, 1.0], [128, 128, 128])
    assert n_pool == [5, 5, 5] and pools == [[1, 1, 1]] + [[2, 2, 2]] * 5 and list(patch) == [128, 128, 128]
    # a patch is rounded up to what its poolings divide
    assert list(pool_and_conv_props([1.0, 1.0, 1.0], [100, 90, 70])[3]) == [112, 96, 80]


def test_unet_cost_counts_the_registrys_unet():
    """Feature-map elements equal the sizes of the U-Net's conv outputs, counted with hooks."""
    import torch

    from medseg.models import create_model

    patch, strides, channels = (24, 16, 8), [[2, 2, 1], [2, 2, 2]], [4, 8, 16]
    net = create_model("unet", 3, 2, 3, channels=channels, strides=strides, num_res_units=2)
    sizes = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            m.register_forward_hook(lambda mod, i, o: sizes.append(o[0].numel()))
    with torch.no_grad():
        net(torch.zeros(1, 2, *patch))
    elements, macs = unet_cost(patch, strides, channels, 2, 3)
    assert elements == sum(sizes)
    assert macs > 27 * elements  # every conv has at least one input channel and 27 taps


# ------------------------------------------------------------------------------------------------ decisions


def test_anisotropic_data_gets_the_low_resolution_rule_and_anisotropic_patch_and_strides():
    plan, cfg = _plan(_aniso(), CUDA)
    spacing = cfg["data"]["preprocess"]["target_spacing"]
    assert spacing[:2] == [0.8, 0.8] and spacing[2] == pytest.approx(np.percentile([5, 5, 5, 4, 2.5], 10))
    strides = cfg["model"]["options"]["strides"]
    # the thick axis is not pooled at the first level, where it is over 2x coarser than the others
    assert strides[0] == [2, 2, 1] and strides[1] == 2
    divisor = [math.prod(s[a] if isinstance(s, list) else s for s in strides) for a in range(3)]
    patch = cfg["patch_size"]
    assert patch[0] > 2 * patch[2] and all(p % d == 0 for p, d in zip(patch, divisor))
    assert cfg["data"]["augment"]["rotate_deg"] == 0.0  # nnU-Net rotates such patches in-plane only
    assert "anisotropic" in plan.to_yaml()


def test_the_stored_axis_order_does_not_change_the_plan():
    """Scans stored slice-first (IPL) plan as the same scans stored RAS: spacing and patch on R, A, S."""
    _, ras = _plan(_aniso(), CUDA)
    _, ipl = _plan(_aniso(orientation="IPL"), CUDA)
    for key in ("patch_size", "model"):
        assert ipl[key] == ras[key]
    assert ipl["data"]["preprocess"]["target_spacing"] == ras["data"]["preprocess"]["target_spacing"]


def test_isotropic_data_pools_every_axis_and_rotates():
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 4, shapes=[(160, 160, 160)] * 4)
    _, cfg = _plan(fp, CUDA)
    assert cfg["data"]["preprocess"]["target_spacing"] == [1.0, 1.0, 1.0]
    assert all(s == 2 for s in cfg["model"]["options"]["strides"])
    patch = cfg["patch_size"]
    assert len(set(patch)) == 1 and patch[0] <= 160
    assert cfg["data"]["augment"]["rotate_deg"] == 30.0
    assert cfg["model"]["options"]["channels"][:2] == [32, 64] and max(cfg["model"]["options"]["channels"]) <= 320


def test_ct_channels_are_clipped_to_the_fingerprints_percentiles_and_normalised_with_its_mean_and_std():
    stats = {"mean": 61.25, "std": 43.5, "median": 55.0, "min": -1000.0, "max": 1500.0,
             "percentile_00_5": -87.125, "percentile_99_5": 262.5}
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 2.0)] * 3, shapes=[(200, 200, 100)] * 3, stats=stats)
    _, cfg = _plan(fp)
    assert cfg["data"]["preprocess"]["intensity"] == [{"kind": "ct", "window": [-87.125, 262.5], "mean": 61.25,
                                                       "std": 43.5}]
    assert cfg["data"]["channels"] == ["CT"]


@pytest.mark.parametrize(("crop_fraction", "inside"), [(0.4, True), (1.0, False)])
def test_mr_channels_are_zscored_inside_the_nonzero_mask_when_cropping_shrinks_the_cases(crop_fraction, inside):
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 3, shapes=[(180, 220, 180)] * 3, modality="MR",
                               channels=2, crop_fraction=crop_fraction)
    _, cfg = _plan(fp)
    pre = cfg["data"]["preprocess"]
    assert pre["intensity"] == [{"kind": "zscore", "nonzero_only": inside}] * 2
    assert (pre["crop_foreground"] == {"threshold": None, "margin_vox": 0}) == inside
    assert pre["crop_foreground"] is None or crop_fraction < 1


def test_images_normalised_before_they_came_are_cropped_above_their_constant_background():
    """z-scored MR (BraTS as shipped): the background is each image's lowest value, not 0."""
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 3, shapes=[(240, 240, 155)] * 3, modality="MR",
                               channels=2, crop_fraction=0.35, background=-3.25)
    _, cfg = _plan(fp)
    pre = cfg["data"]["preprocess"]
    assert pre["crop_foreground"] == {"threshold": -3.25, "margin_vox": 2}
    assert pre["intensity"] == [{"kind": "zscore", "nonzero_only": False}] * 2  # no nonzero mask to z-score in


def test_a_cpu_plan_is_smaller_and_shorter_than_a_gpu_plan_and_says_so():
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 4, shapes=[(240, 240, 155)] * 4, modality="MR")
    cpu_plan, cpu = _plan(fp, CPU)
    _, gpu = _plan(fp, CUDA)
    assert cpu["model"]["options"]["channels"][0] == 16 and gpu["model"]["options"]["channels"][0] == 32
    assert math.prod(cpu["patch_size"]) < math.prod(gpu["patch_size"])
    assert (gpu["epochs"], gpu["steps_per_epoch"], gpu["optimiser"]["name"]) == (1000, 250, "sgd")
    assert gpu["optimiser"]["momentum"] == 0.99 and gpu["optimiser"]["lr"] == 0.01
    assert (cpu["epochs"], cpu["steps_per_epoch"], cpu["optimiser"]["name"]) == (100, 50, "adamw")
    assert cpu["autocast"] == "bf16" and gpu["autocast"] == "auto"
    text = cpu_plan.to_yaml()
    assert "too slow on a CPU" in text and "max_minutes" not in text


def test_minutes_size_the_run_and_shrink_the_network_when_few():
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 4, shapes=[(240, 240, 155)] * 4, modality="MR")
    _, free = _plan(fp, CPU)
    _, hour = _plan(fp, PlanBudget("cpu", 8.0, 60.0))
    plan, short = _plan(fp, PlanBudget("cpu", 8.0, 5.0))
    assert "max_minutes" not in free and hour["max_minutes"] == 60.0 and short["max_minutes"] == 5.0
    steps = lambda c: c["epochs"] * c["steps_per_epoch"]  # noqa: E731
    assert steps(short) < steps(hour) and steps(free) == 5000
    assert math.prod(short["patch_size"]) <= math.prod(hour["patch_size"]) <= math.prod(free["patch_size"])
    # a few minutes: the widths are halved so that the patch keeps some context
    assert short["model"]["options"]["channels"][0] == 8 and hour["model"]["options"]["channels"][0] == 16
    assert "halved once" in plan.to_yaml()
    # what fits: the planned steps take at most the training share of the budget at the estimated rate
    elements, macs = unet_cost(short["patch_size"], [s if isinstance(s, list) else [s] * 3
                                                     for s in short["model"]["options"]["strides"]],
                               short["model"]["options"]["channels"], 2, 2)
    step_seconds = short["batch_size"] * macs / 1e9 * SECONDS_PER_GMAC["cpu"]
    assert steps(short) * step_seconds <= 5.0 * 60 * TRAIN_TIME_FRACTION
    with pytest.raises(InputError, match=r"--minutes 0.01 is too short for one epoch of 50 steps"):
        plan_training(fp, PlanBudget("cpu", 8.0, 0.01), manifest="dataset.csv")


def test_tiny_classes_make_the_loss_dice_focal():
    labels = {1: "liver", 2: "lesion"}
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 3, shapes=[(100, 100, 100)] * 3, labels=labels,
                               fractions={1: 0.05, 2: 0.0004})
    plan, cfg = _plan(fp)
    assert cfg["loss"] == {"name": "dice_focal", "options": {"include_background": False, "gamma": 2.0}}
    assert "tiny classes (lesion" in plan.to_yaml()
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 3, shapes=[(100, 100, 100)] * 3, labels=labels,
                               fractions={1: 0.05, 2: 0.004})
    assert _plan(fp)[1]["loss"] == {"name": "dice_ce", "options": {"include_background": False}}


def test_sided_labels_turn_mirroring_off():
    shapes, spacings = [(100, 100, 100)] * 3, [(1.0, 1.0, 1.0)] * 3
    sided = synthetic_fingerprint(spacings=spacings, shapes=shapes, labels={1: "kidney_left", 2: "kidney_right"})
    plain = synthetic_fingerprint(spacings=spacings, shapes=shapes, labels={1: "liver", 2: "spleen"})
    assert _plan(sided)[1]["data"]["augment"]["flip_prob"] == 0.0
    assert _plan(plain)[1]["data"]["augment"]["flip_prob"] == 0.5


def test_folds_are_five_or_one_per_case_and_one_case_cannot_be_split():
    def folds(n):
        fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * n, shapes=[(80, 80, 80)] * n)
        return _plan(fp)[1]["cross_validation"]

    assert folds(7) == {"folds": 5, "seed": 0} and folds(4) == {"folds": 4, "seed": 0}
    with pytest.raises(InputError, match="1 labelled train/val case: cross-validation needs at least 2"):
        folds(1)


def test_every_decision_has_a_reason_and_the_yaml_loads_back(tmp_path):
    from medseg.training import load_train_config

    plan, cfg = _plan(_aniso(), PlanBudget("cpu", 4.0, 30.0))
    text = plan.to_yaml()
    assert yaml.safe_load(text) == cfg
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#") or stripped.endswith(":"):
            continue  # comments, and section keys whose entries carry the reasons
        assert lines[i - 1].strip().startswith("#"), f"no reason above {stripped!r}"
    (tmp_path / "dataset.csv").write_text("case_id,image,label,split\n")
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    loaded = load_train_config(path)
    assert loaded.max_minutes == 30.0 and loaded.cross_validation.folds == 5
    assert loaded.data.manifest == (tmp_path / "dataset.csv").resolve()


def test_a_short_run_whose_patch_sees_little_of_the_case_gets_nnunets_lowres_spacing():
    """On a CPU budget, a fullres patch would see a few percent of a 240x240x155 brain: the spacing
    is coarsened as nnU-Net's 3d_lowres (finest axes first) until the patch sees a quarter of the
    median case; a GPU run, whose patch sees enough, keeps the median spacing."""
    fp = synthetic_fingerprint(spacings=[(1.0, 1.0, 1.0)] * 4, shapes=[(240, 240, 155)] * 4, modality="MR")
    plan, short = _plan(fp, PlanBudget("cpu", 8.0, 5.0))
    spacing = short["data"]["preprocess"]["target_spacing"]
    assert all(s > 1.5 for s in spacing) and len(set(spacing)) == 1
    median = [240 / spacing[0], 240 / spacing[1], 155 / spacing[2]]
    assert math.prod(short["patch_size"]) / math.prod(median) >= 0.25
    assert "3d_lowres" in plan.to_yaml()
    _, gpu = _plan(fp, CUDA)
    assert gpu["data"]["preprocess"]["target_spacing"] == [1.0, 1.0, 1.0]
    # 0.8 x 0.8 x 5 mm: the in-plane axes coarsen first, the thick axis stays until within 2x of them
    _, aniso = _plan(_aniso(), PlanBudget("cpu", 8.0, 5.0))
    r, a, s = aniso["data"]["preprocess"]["target_spacing"]
    assert r == a > 0.8 and (s == pytest.approx(2.1) or s <= 2 * r)

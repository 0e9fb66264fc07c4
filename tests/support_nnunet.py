"""Write nnU-Net v2 trained-model folders with random weights (tests of the model kinds).

The layout and checkpoint format are nnU-Net's own (``<Trainer>__<Plans>__<configuration>/``
with ``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth`` holding
``network_weights``, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``); the
network is dynamic_network_architectures' PlainConvUNet, as nnU-Net builds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["write_nnunet_folder", "plain_unet_architecture"]


def plain_unet_architecture(dims: int = 3, features: Sequence[int] = (4, 8, 16),
                            strides: Sequence[Sequence[int]] | None = None, n_conv_per_stage: int = 1) -> dict[str, Any]:
    """The ``architecture`` entry of a PlainConvUNet configuration (3×3×3 kernels; ``strides`` per
    stage, default 1 then 2 along every axis; ``n_conv_per_stage`` convolutions in each encoder and
    decoder stage, 2 in nnU-Net's default plans)."""
    n = len(features)
    strides = strides or [[1] * dims] + [[2] * dims] * (n - 1)
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
                            "kernel_sizes": [[3] * dims] * n, "strides": [list(s) for s in strides],
                            "n_conv_per_stage": [n_conv_per_stage] * n,
                            "n_conv_per_stage_decoder": [n_conv_per_stage] * (n - 1), "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def write_nnunet_folder(root: str | Path, *, labels: dict[str, Any], channels: Sequence[str] = ("CT",),
                        patch: Sequence[int] = (16, 32, 32), spacing: Sequence[float] = (2.0, 1.5, 1.5),
                        transpose_forward: Sequence[int] = (0, 1, 2), normalization: Sequence[str] | None = None,
                        folds: Sequence[int] = (0,), trainer: str = "nnUNetTrainer", plans_name: str = "nnUNetPlans",
                        configuration: str = "3d_fullres", regions_class_order: Sequence[int] | None = None,
                        features: Sequence[int] = (4, 8, 16), strides: Sequence[Sequence[int]] | None = None,
                        n_conv_per_stage: int = 1, seed: int = 0, mirror_axes=(0, 1, 2),
                        dataset_name: str = "Dataset999_Random", checkpoint: str = "checkpoint_final.pth",
                        extra_checkpoint: dict | None = None, background_bias: float = 0.0) -> Path:
    """Write a trained-model folder with random (seeded) weights and return its path.

    ``labels``: dataset.json's ``labels`` (``{"background": 0, "liver": 1}``; regions as lists).
    ``background_bias``: added to the first output's bias in every output layer (a positive value
    leaves more voxels background).
    ``patch`` and ``spacing`` (mm) in nnU-Net's axis order; ``features``, ``strides`` and
    ``n_conv_per_stage``: the network (see :func:`plain_unet_architecture`).
    """
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = Path(root) / f"{trainer}__{plans_name}__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    dims = len(patch)
    tf = [int(i) for i in transpose_forward]
    tb = [int(i) for i in np.argsort(tf)]
    normalization = list(normalization or ["CTNormalization" if c.upper() == "CT" else "ZScoreNormalization"
                                           for c in channels])
    arch = plain_unet_architecture(dims, features, strides, n_conv_per_stage)
    res = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": dataset_name, "plans_name": plans_name, "image_reader_writer": "SimpleITKIO",
        "transpose_forward": tf, "transpose_backward": tb, "label_manager": "LabelManager",
        "configurations": {configuration: {
            "data_identifier": f"{plans_name}_{configuration}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "spacing": list(spacing),
            "normalization_schemes": normalization, "use_mask_for_norm": [False] * len(channels),
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": res,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**res, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**res, "order": 1},
            "architecture": arch, "batch_dice": False}},
        "foreground_intensity_properties_per_channel": {
            str(i): {"max": 500.0, "mean": 40.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -900.0,
                     "percentile_99_5": 300.0, "std": 120.0} for i in range(len(channels))},
    }
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
               "numTraining": 1, "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        dataset["regions_class_order"] = list(regions_class_order)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    entries = [v for k, v in labels.items() if k != "ignore"]
    if regions_class_order is not None:
        heads = sum(1 for v in entries if not (isinstance(v, list) and set(v) == {0}) and v != 0)
    else:
        heads = len(entries)
    conv = getattr(torch.nn, f"Conv{dims}d")
    norm = getattr(torch.nn, f"InstanceNorm{dims}d")
    kwargs = dict(arch["arch_kwargs"], conv_op=conv, norm_op=norm, nonlin=torch.nn.LeakyReLU)
    for fold in folds:
        torch.manual_seed(seed + int(fold))
        net = PlainConvUNet(input_channels=len(channels), num_classes=heads, deep_supervision=True, **kwargs)
        if background_bias:
            with torch.no_grad():
                for layer in net.decoder.seg_layers:
                    layer.bias[0] += background_bias
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        ckpt = {"network_weights": net.state_dict(), "init_args": {"configuration": configuration},
                "trainer_name": trainer, "inference_allowed_mirroring_axes": mirror_axes,
                "current_epoch": 1, "_best_ema": np.float64(0.5)}
        ckpt.update(extra_checkpoint or {})
        torch.save(ckpt, folder / f"fold_{fold}" / checkpoint)
    return folder

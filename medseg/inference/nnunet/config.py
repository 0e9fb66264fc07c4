"""An nnU-Net v2 model folder read as data: plans, dataset, labels, network and checkpoints.

Nothing from the folder is evaluated: class and op names in ``plans.json`` are looked up in
allow-lists (never imported by the names a file gives), and checkpoints are unpickled with
``torch.load(weights_only=True)`` plus the numpy types nnU-Net's training loop stores.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError

__all__ = ["NnunetConfig", "read_config", "build_network", "load_checkpoint", "fold_folders", "CHECKPOINT_FILES",
           "NORMALIZATION_SCHEMES", "RESAMPLING_FUNCTIONS"]

CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}

# nnU-Net's normalisation schemes by the names plans.json uses (ZScore for unknown channel names
# is decided by nnU-Net's planner, not at inference: the plans always name a class).
NORMALIZATION_SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                         "RGBTo01Normalization")

# resampling functions medseg reproduces, by the names plans.json uses
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet")

# trainers whose network is the one the plans describe (nnU-Net's default trainer and its
# variants that change the schedule, augmentation, loss, optimiser or mirroring only)
_TRAINER = re.compile(
    r"nnUNetTrainer(_\d+epochs?)?(_?NoMirroring)?"
    r"(_?(DA\w*|NoDA|Dice\w*|CE\w*|TopK\w*|Adam\w*|SGD\w*|Cosine\w*|\d*_?[Ll]r\w*|onlyMirror01\w*|"
    r"NoDeepSupervision|probabilisticOversampling\w*|Benchmark_\w+|fast\w*|better\w*|"
    r"[Ee]poch\w*|\d+epochs?\w*|NoMirroring))*"
)


def _network_classes() -> dict[str, Any]:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    classes = {"PlainConvUNet": PlainConvUNet, "ResidualEncoderUNet": ResidualEncoderUNet}
    return {f"{module}.{name}": cls for name, cls in classes.items()
            for module in ("dynamic_network_architectures.architectures.unet",
                           "dynamic_network_architectures.architectures.residual_unet")}


def _ops() -> dict[str, Any]:
    import torch.nn as nn

    names = ["Conv1d", "Conv2d", "Conv3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d",
             "BatchNorm2d", "BatchNorm3d", "GroupNorm", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "LeakyReLU",
             "ReLU", "ELU", "GELU", "PReLU", "SiLU"]
    ops: dict[str, Any] = {}
    for name in names:
        cls = getattr(nn, name)
        for prefix in ("torch.nn", "torch.nn.modules.conv", "torch.nn.modules.instancenorm",
                       "torch.nn.modules.batchnorm", "torch.nn.modules.normalization", "torch.nn.modules.dropout",
                       "torch.nn.modules.activation"):
            ops[f"{prefix}.{name}"] = cls
    return ops


@dataclass
class NnunetConfig:
    """What the predictor needs from ``plans.json`` and ``dataset.json``, in nnU-Net's axis order
    (the reverse of medseg's/nibabel's array axes; ``transpose_forward`` applied to spacing).

    Attributes:
        folder: the trained-model folder.
        configuration: its name (``3d_fullres``, ``2d``, ``3d_lowres``…).
        trainer, plans_name: from the folder name (``<Trainer>__<Plans>__<configuration>``) or the plans.
        channels: input channel names (``dataset.json`` ``channel_names`` in index order).
        labels: label value → name of the written label map (background excluded).
        regions: for region-based models, each region's label values (in output-head order);
            ``None`` for softmax models.
        regions_class_order: the label value each region head writes (region models).
        n_heads: network output channels.
        transpose_forward, transpose_backward: nnU-Net's axis permutations.
        spacing: target spacing (mm) of the configuration, after ``transpose_forward``; 2 values
            for 2D configurations.
        patch_size: the window (2 or 3 values).
        normalization: scheme name per channel; ``use_mask_for_norm`` per channel.
        intensity_properties: per channel index (``"0"``…): mean, std, percentile_00_5, percentile_99_5.
        resampling_data, resampling_probabilities: ``(function name, kwargs)``.
        architecture: ``(class name, kwargs, kwargs that name classes)``.
    """

    folder: Path
    configuration: str
    trainer: str
    plans_name: str
    channels: list[str]
    labels: dict[int, str]
    regions: list[tuple[int, ...]] | None
    regions_class_order: list[int] | None
    n_heads: int
    transpose_forward: list[int]
    transpose_backward: list[int]
    spacing: list[float]
    patch_size: list[int]
    normalization: list[str]
    use_mask_for_norm: list[bool]
    intensity_properties: dict[str, dict[str, float]]
    resampling_data: tuple[str, dict[str, Any]]
    resampling_probabilities: tuple[str, dict[str, Any]]
    architecture: tuple[str, dict[str, Any], list[str]]
    dataset_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2

    @property
    def modality(self) -> str:
        """``"CT"`` when every channel is CT-normalised, else ``"MR"`` (the CRF's defaults)."""
        return "CT" if all(n == "CTNormalization" for n in self.normalization) else "MR"


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _convert_old_architecture(conf: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``architecture`` entry nnU-Net builds from plans written before it had one (the
    format of TotalSegmentator's v2 weights): same network, same kwargs as nnU-Net's
    ``ConfigurationManager`` reconstructs."""
    name = conf.get("UNet_class_name")
    if name not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise InputError(path, f"unknown network class {name!r} in the old plans format (medseg runs PlainConvUNet "
                         "and ResidualEncoderUNet)")
    try:
        n_stages = len(conf["n_conv_per_stage_encoder"])
        dim = len(conf["patch_size"])
        blocks = "n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage"
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": conf["conv_kernel_sizes"],
            "strides": conf["pool_op_kernel_sizes"],
            blocks: conf["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as exc:
        raise InputError(path, f"old-format plans lack {exc} for the network") from None
    module = "unet" if name == "PlainConvUNet" else "residual_unet"
    return {"network_class_name": f"dynamic_network_architectures.architectures.{module}.{name}",
            "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def _configuration(plans: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """The configuration ``name`` with ``inherits_from`` resolved (as nnU-Net's PlansManager)."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        known = ", ".join(configs) if isinstance(configs, dict) else "none"
        raise InputError(path, f"has no configuration {name!r} (it has: {known})")
    seen: list[str] = []
    chain: list[dict[str, Any]] = []
    current = name
    while True:
        if current in seen:
            raise InputError(path, f"configurations inherit in a circle: {' -> '.join(seen + [current])}")
        seen.append(current)
        conf = configs.get(current)
        if not isinstance(conf, dict):
            raise InputError(path, f"configuration {seen[-2] if len(seen) > 1 else name!r} inherits from "
                             f"{current!r}, which does not exist")
        chain.append(conf)
        parent = conf.get("inherits_from")
        if parent is None:
            break
        current = parent
    merged: dict[str, Any] = {}
    for conf in reversed(chain):
        merged.update(conf)
    if "architecture" not in merged:
        merged["architecture"] = _convert_old_architecture(merged, path)
    return merged


def _labels(dataset: dict[str, Any], path: Path) -> tuple[dict[int, str], list[tuple[int, ...]] | None,
                                                           list[int] | None, int]:
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "has no \"labels\" mapping")
    entries = {k: v for k, v in raw.items() if k != "ignore"}
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in entries.values())
    if not has_regions:
        labels: dict[int, str] = {}
        values = []
        for name, value in entries.items():
            v = value[0] if isinstance(value, (list, tuple)) else value
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(path, f"label {name!r} has value {value!r}, expected a non-negative integer")
            values.append(v)
            if v != 0:
                labels[v] = str(name)
        n_heads = len(set(values) | {0})
        if sorted(set(values) | {0}) != list(range(n_heads)):
            raise InputError(path, f"label values {sorted(set(values))} are not consecutive from 0 (nnU-Net requires it)")
        return labels, None, None, n_heads
    order = dataset.get("regions_class_order")
    regions: list[tuple[int, ...]] = []
    names: list[str] = []
    for name, value in entries.items():
        r = tuple(int(x) for x in value) if isinstance(value, (list, tuple)) else (int(value),)
        if set(r) == {0}:
            continue
        regions.append(r)
        names.append(str(name))
    if not isinstance(order, list) or len(order) != len(regions):
        raise InputError(path, f"region-based labels need \"regions_class_order\" with one value per region "
                         f"({len(regions)}), not {order!r}")
    labels = {}
    for name, value in zip(names, order):
        labels[int(value)] = name
    return labels, regions, [int(v) for v in order], len(regions)


def read_config(folder: str | Path, configuration: str | None = None) -> NnunetConfig:
    """Read ``plans.json`` and ``dataset.json`` of an nnU-Net v2 trained-model folder.

    Args:
        folder: ``<Trainer>__<Plans>__<configuration>/``.
        configuration: which configuration of the plans (default: from the folder name).

    Raises:
        InputError: a missing or invalid file, an unknown trainer, network class, op,
            normalisation scheme or resampling function, or a cascade (not supported).
    """
    folder = Path(folder)
    plans_path, dataset_path = folder / "plans.json", folder / "dataset.json"
    plans = _load_json(plans_path)
    dataset = _load_json(dataset_path)
    if not isinstance(plans, dict):
        raise InputError(plans_path, "is not an nnU-Net plans object")
    if not isinstance(dataset, dict):
        raise InputError(dataset_path, "is not an nnU-Net dataset.json object")
    parts = folder.name.split("__")
    trainer, plans_name, conf_name = (parts if len(parts) == 3 else ("nnUNetTrainer", plans.get("plans_name", ""), None))
    configuration = configuration or conf_name
    if configuration is None:
        raise InputError(folder, "the folder name is not <Trainer>__<Plans>__<configuration>: cannot tell the configuration")
    if not _TRAINER.fullmatch(trainer):
        raise InputError(folder, f"unknown trainer {trainer!r}: medseg runs nnU-Net's default trainer and its variants "
                         "that keep the plans' network (epochs, NoMirroring, augmentation, loss, optimiser)")
    conf = _configuration(plans, configuration, plans_path)
    if conf.get("previous_stage") or "cascade" in configuration:
        raise InputError(folder, f"{configuration} is a cascade stage (it needs the low-resolution stage's "
                         "segmentation as input): medseg does not run nnU-Net cascades; use 3d_fullres or 3d_lowres")
    labels, regions, order, n_heads = _labels(dataset, dataset_path)
    channels_raw = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels_raw, dict) or not channels_raw:
        raise InputError(dataset_path, "has no \"channel_names\"")
    channels = [str(channels_raw[k]) for k in sorted(channels_raw, key=lambda k: int(k))]
    arch = conf["architecture"]
    try:
        architecture = (str(arch["network_class_name"]), dict(arch["arch_kwargs"]),
                        list(arch.get("_kw_requires_import", [])))
        normalization = [str(n) for n in conf["normalization_schemes"]]
        use_mask = [bool(u) for u in conf["use_mask_for_norm"]]
        spacing = [float(s) for s in conf["spacing"]]
        patch = [int(p) for p in conf["patch_size"]]
        tf, tb = [int(i) for i in plans["transpose_forward"]], [int(i) for i in plans["transpose_backward"]]
        res_data = (str(conf["resampling_fn_data"]), dict(conf.get("resampling_fn_data_kwargs") or {}))
        res_prob = (str(conf["resampling_fn_probabilities"]), dict(conf.get("resampling_fn_probabilities_kwargs") or {}))
        props = {str(k): {kk: float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))}
                 for k, v in (plans.get("foreground_intensity_properties_per_channel") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(plans_path, f"configuration {configuration!r} lacks or mangles {exc}") from None
    for name in normalization:
        if name not in NORMALIZATION_SCHEMES:
            raise InputError(plans_path, f"unknown normalisation scheme {name!r} (medseg knows "
                             f"{', '.join(NORMALIZATION_SCHEMES)})")
    for fn, _ in (res_data, res_prob):
        if fn not in RESAMPLING_FUNCTIONS:
            raise InputError(plans_path, f"unknown resampling function {fn!r} (medseg knows "
                             f"{', '.join(RESAMPLING_FUNCTIONS)})")
    if len(normalization) != len(channels) or len(use_mask) != len(channels):
        raise InputError(plans_path, f"{len(normalization)} normalisation schemes for {len(channels)} channels "
                         "in dataset.json: the plans belong to another dataset")
    if "CTNormalization" in normalization:
        for i, name in enumerate(normalization):
            if name == "CTNormalization" and not {"mean", "std", "percentile_00_5", "percentile_99_5"} <= set(props.get(str(i), {})):
                raise InputError(plans_path, f"channel {i} uses CTNormalization but the plans lack its intensity "
                                 "properties (mean, std, percentile_00_5, percentile_99_5)")
    if sorted(tf) != [0, 1, 2] or sorted(tb) != [0, 1, 2]:
        raise InputError(plans_path, f"transpose_forward {tf} / transpose_backward {tb} are not permutations of 0, 1, 2")
    if len(patch) not in (2, 3) or len(spacing) != len(patch):
        raise InputError(plans_path, f"patch size {patch} and spacing {spacing} do not describe a 2D or 3D configuration")
    if architecture[0] not in _network_classes():
        raise InputError(plans_path, f"unknown network class {architecture[0]!r} (medseg builds "
                         "PlainConvUNet and ResidualEncoderUNet from dynamic_network_architectures)")
    for key in architecture[2]:
        value = architecture[1].get(key)
        if value is not None and value not in _ops():
            raise InputError(plans_path, f"{key} {value!r} is not an op medseg builds (convolutions, instance/batch/"
                             "group norms, dropouts and common nonlinearities of torch.nn)")
    return NnunetConfig(
        folder=folder, configuration=configuration, trainer=trainer, plans_name=str(plans.get("plans_name", plans_name)),
        channels=channels, labels=labels, regions=regions, regions_class_order=order, n_heads=n_heads,
        transpose_forward=tf, transpose_backward=tb, spacing=spacing, patch_size=patch,
        normalization=normalization, use_mask_for_norm=use_mask, intensity_properties=props,
        resampling_data=res_data, resampling_probabilities=res_prob, architecture=architecture,
        dataset_name=str(plans.get("dataset_name", dataset.get("name", ""))))


def build_network(config: NnunetConfig):
    """The network the plans describe (eval mode, random weights, no deep supervision), built from
    the allow-listed class and ops only."""
    cls = _network_classes()[config.architecture[0]]
    kwargs = dict(config.architecture[1])
    ops = _ops()
    for key in config.architecture[2]:
        if kwargs.get(key) is not None:
            kwargs[key] = ops[kwargs[key]]
    kwargs["deep_supervision"] = False
    try:
        net = cls(input_channels=len(config.channels), num_classes=config.n_heads, **kwargs)
    except (TypeError, ValueError, AssertionError, IndexError) as exc:
        raise InputError(config.folder / "plans.json", f"cannot build {config.architecture[0].rsplit('.', 1)[-1]} "
                         f"from its arch_kwargs ({exc})") from None
    return net.eval()


def fold_folders(folder: Path, checkpoint: str = "final") -> dict[int | str, Path]:
    """Folds present in the folder: ``{fold: checkpoint file}`` (``fold_all`` as ``"all"``)."""
    name = CHECKPOINT_FILES[checkpoint]
    out: dict[int | str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        m = re.fullmatch(r"fold_(\d+|all)", entry.name)
        if m and (entry / name).is_file():
            out[int(m.group(1)) if m.group(1).isdigit() else "all"] = entry / name
    return out


def _numpy_globals() -> list[Any]:
    """The numpy types nnU-Net's checkpoints pickle (epoch metrics, EMA Dice as numpy scalars)."""
    import numpy as np

    found: list[Any] = [np.dtype, np.ndarray]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found += [getattr(module, n) for n in ("scalar", "_reconstruct") if hasattr(module, n)]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and not n.startswith("_")
                  and n not in ("ObjectDType", "VoidDType")]
    return found


def load_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint, unpickled safely (``weights_only=True`` + numpy scalar types).

    Returns:
        the checkpoint dict (``network_weights``, ``init_args``, ``trainer_name``,
        ``inference_allowed_mirroring_axes``…).

    Raises:
        InputError: unreadable, not an nnU-Net checkpoint, or it pickles other objects (named).
    """
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_numpy_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it pickles {m.group(1)}, which medseg never unpickles" if m else \
            "it holds objects other than tensors, containers and numpy scalars, which medseg never unpickles"
        raise InputError(path, f"not a loadable nnU-Net checkpoint: {what}") from None
    except Exception as exc:  # a truncated or damaged zip, not a torch file
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise InputError(path, "not an nnU-Net checkpoint (no network_weights)")
    return ckpt

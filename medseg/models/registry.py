"""The explicit registry of architectures and :func:`create_model`.

Each entry's builder validates its options (worded ``ValueError``/``TypeError``) and imports its
architecture module lazily, so importing the registry is cheap. The trainer stores
``{name, spatial_dims, in_channels, out_channels, options}`` in ``plans.json``
(:class:`medseg.plans.ModelSpec`) and the predictor calls ``create_model(**spec)`` with it.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ModelEntry", "MODELS", "available_models", "create_model"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: registry key (``"unet"``).
        builder: ``builder(spatial_dims, in_channels, out_channels, **options) -> nn.Module``.
        spatial_dims: the dimensionalities it supports.
        description: one line for ``medseg models``.
        defaults: default options (documented in the builder's docstring).
    """

    name: str
    builder: Callable[..., Any]
    spatial_dims: tuple[int, ...] = (2, 3)
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


def _check_common(in_channels: int, out_channels: int) -> None:
    from medseg.models.blocks import check_positive_int

    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, *,
                channels: tuple[int, ...] = (16, 32, 64, 128, 256), strides: tuple[int, ...] = (2, 2, 2, 2),
                num_res_units: int = 2, norm: str = "instance", dropout: float = 0.0):
    """U-Net (MONAI's residual ``UNet``): see :class:`medseg.models.unet.UNet`.

    Options: ``channels`` (width per level), ``strides`` (``len(channels) - 1`` values, each one
    number for every axis or one per axis, e.g. ``[[2, 2, 1], [2, 2, 2]]`` for thick slices along
    the last axis), ``num_res_units`` (0 = plain conv blocks), ``norm`` ("instance" | "batch"),
    ``dropout``.
    """
    from medseg.models import blocks
    from medseg.models.unet import UNet

    _check_common(in_channels, out_channels)
    channels = blocks.check_int_sequence("channels", channels, min_len=2)
    strides = _check_strides(strides, len(channels) - 1, spatial_dims)
    if isinstance(num_res_units, bool) or not isinstance(num_res_units, int) or num_res_units < 0:
        raise ValueError(f"num_res_units must be an integer >= 0, not {num_res_units!r}")
    blocks.check_choice("norm", norm, blocks.NORMS)
    return UNet(spatial_dims, in_channels, out_channels, channels=channels, strides=strides,
                num_res_units=num_res_units, norm=norm, dropout=blocks.check_probability("dropout", dropout))


def _check_strides(strides: Any, levels: int, spatial_dims: int) -> tuple[int | tuple[int, ...], ...]:
    """``strides`` of a U-Net: ``levels`` entries, each an int >= 1 (every axis) or ``spatial_dims`` ints >= 1."""
    from collections.abc import Sequence

    from medseg.models import blocks

    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
        raise TypeError(f"strides must be a sequence of integers (or of per-axis integer lists), e.g. (2, 2, 2), "
                        f"not {strides!r}")
    if len(strides) != levels:
        raise ValueError(f"strides must have exactly {levels} values, got {len(strides)}: {tuple(strides)}")
    out: list[int | tuple[int, ...]] = []
    for i, s in enumerate(strides):
        if isinstance(s, Sequence) and not isinstance(s, (str, bytes)):
            out.append(blocks.check_int_sequence(f"strides[{i}]", s, length=spatial_dims))
        elif isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"strides must contain integers or per-axis integer lists only, not {tuple(strides)!r}")
        elif s < 1:
            raise ValueError(f"every value of strides must be >= 1, got {tuple(strides)}")
        else:
            out.append(s)
    return tuple(out)


def _build_vnet(spatial_dims: int, in_channels: int, out_channels: int, *, base_channels: int = 16,
                act: str = "prelu", dropout: float = 0.0):
    """V-Net from MONAI's V-Net blocks: see :class:`medseg.models.vnet.VNet`.

    Options: ``base_channels`` (first-stage width, a multiple of ``in_channels``; doubles at each
    of 4 stages), ``act`` ("prelu" | "elu"), ``dropout``.
    """
    from medseg.models import blocks
    from medseg.models.vnet import VNet

    _check_common(in_channels, out_channels)
    blocks.check_positive_int("base_channels", base_channels)
    blocks.check_choice("act", act, ("prelu", "elu"))
    return VNet(spatial_dims, in_channels, out_channels, base_channels=base_channels, act=act,
                dropout=blocks.check_probability("dropout", dropout))


def _build_fcn(spatial_dims: int, in_channels: int, out_channels: int, *,
               channels: tuple[int, ...] = (16, 32, 64, 128, 256), decoder_channels: int = 32,
               upsample: str = "interpolate", fused_levels: int = 3, norm: str = "instance"):
    """FCN: see :class:`medseg.models.fcn.FCN`.

    Options: ``channels`` (encoder width per level; ``len - 1`` halvings), ``decoder_channels``,
    ``upsample`` ("interpolate": linear + conv, no checkerboard artefacts | "transposed"),
    ``fused_levels`` (skips fused: 1 = FCN-32s, 2 = FCN-16s, 3 = FCN-8s), ``norm``.
    """
    from medseg.models import blocks
    from medseg.models.fcn import FCN

    _check_common(in_channels, out_channels)
    channels = blocks.check_int_sequence("channels", channels, min_len=2)
    blocks.check_positive_int("decoder_channels", decoder_channels)
    blocks.check_choice("upsample", upsample, ("interpolate", "transposed"))
    blocks.check_positive_int("fused_levels", fused_levels)
    if fused_levels > len(channels):
        raise ValueError(f"fused_levels ({fused_levels}) cannot exceed the number of encoder levels "
                         f"(len(channels) = {len(channels)})")
    blocks.check_choice("norm", norm, blocks.NORMS)
    return FCN(spatial_dims, in_channels, out_channels, channels=channels, decoder_channels=decoder_channels,
               upsample=upsample, fused_levels=fused_levels, norm=norm)


def _check_output_stride(output_stride: int, channels: tuple[int, ...]) -> None:
    from medseg.models.blocks import check_positive_int

    check_positive_int("output_stride", output_stride)
    valid = [2**i for i in range(1, len(channels))]
    if output_stride not in valid:
        raise ValueError(f"output_stride must be a power of two reachable with {len(channels) - 1} stages "
                         f"(one of {valid}), not {output_stride}")


def _build_pspnet(spatial_dims: int, in_channels: int, out_channels: int, *,
                  channels: tuple[int, ...] = (16, 32, 64, 128, 256), output_stride: int = 8,
                  bins: tuple[int, ...] = (1, 2, 3, 6), pool: str = "avg", decoder_channels: int = 64,
                  norm: str = "instance", dropout: float = 0.1):
    """PSPNet: see :class:`medseg.models.pspnet.PSPNet`.

    Options: ``channels`` (encoder widths), ``output_stride`` (downsampling of the pooled features;
    later stages are dilated), ``bins`` (four pyramid bin sizes per axis), ``pool`` ("avg" | "max"),
    ``decoder_channels``, ``norm``, ``dropout`` (after the final conv).
    """
    from medseg.models import blocks
    from medseg.models.pspnet import PSPNet

    _check_common(in_channels, out_channels)
    channels = blocks.check_int_sequence("channels", channels, min_len=2)
    _check_output_stride(output_stride, channels)
    bins = blocks.check_int_sequence("bins", bins, length=4)
    blocks.check_choice("pool", pool, ("avg", "max"))
    blocks.check_positive_int("decoder_channels", decoder_channels)
    blocks.check_choice("norm", norm, blocks.NORMS)
    return PSPNet(spatial_dims, in_channels, out_channels, channels=channels, output_stride=output_stride,
                  bins=bins, pool=pool, decoder_channels=decoder_channels, norm=norm,
                  dropout=blocks.check_probability("dropout", dropout))


def _build_deeplabv3(spatial_dims: int, in_channels: int, out_channels: int, *,
                     channels: tuple[int, ...] = (16, 32, 64, 128, 256), output_stride: int = 8,
                     rates: tuple[int, ...] = (2, 4, 6), cascade_rates: tuple[int, ...] = (2, 4),
                     decoder_channels: int = 64, norm: str = "instance", dropout: float = 0.1):
    """DeepLabv3: see :class:`medseg.models.deeplabv3.DeepLabV3`.

    Options: ``channels`` (encoder widths), ``output_stride`` (stages past it are dilated),
    ``rates`` (ASPP dilations; the paper's (6, 12, 18) is for 1/16 features of 513-pixel images,
    the default suits 1/8 features of 96-voxel patches), ``cascade_rates`` (dilations of the
    cascaded residual units before ASPP; () for none), ``decoder_channels``, ``norm``, ``dropout``.
    """
    from medseg.models import blocks
    from medseg.models.deeplabv3 import DeepLabV3

    _check_common(in_channels, out_channels)
    channels = blocks.check_int_sequence("channels", channels, min_len=2)
    _check_output_stride(output_stride, channels)
    rates = blocks.check_int_sequence("rates", rates, min_len=1)
    cascade_rates = blocks.check_int_sequence("cascade_rates", cascade_rates, min_len=0)
    blocks.check_positive_int("decoder_channels", decoder_channels)
    blocks.check_choice("norm", norm, blocks.NORMS)
    return DeepLabV3(spatial_dims, in_channels, out_channels, channels=channels, output_stride=output_stride,
                     rates=rates, cascade_rates=cascade_rates, decoder_channels=decoder_channels, norm=norm,
                     dropout=blocks.check_probability("dropout", dropout))


def _build_tiramisu(spatial_dims: int, in_channels: int, out_channels: int, *, first_channels: int = 48,
                    growth_rate: int = 12, down_layers: tuple[int, ...] = (4, 4, 4, 4), bottleneck_layers: int = 4,
                    norm: str = "batch", dropout: float = 0.2, memory_efficient: bool = False):
    """Tiramisu (FC-DenseNet): see :class:`medseg.models.tiramisu.Tiramisu`.

    Options: ``first_channels`` (first conv), ``growth_rate`` (channels per dense layer),
    ``down_layers`` (dense layers per encoder block; the decoder mirrors them),
    ``bottleneck_layers``, ``norm``, ``dropout`` (paper: 0.2), ``memory_efficient``
    (gradient checkpointing of the dense concatenations).
    """
    from medseg.models import blocks
    from medseg.models.tiramisu import Tiramisu

    _check_common(in_channels, out_channels)
    blocks.check_positive_int("first_channels", first_channels)
    blocks.check_positive_int("growth_rate", growth_rate)
    down_layers = blocks.check_int_sequence("down_layers", down_layers, min_len=1)
    blocks.check_positive_int("bottleneck_layers", bottleneck_layers)
    blocks.check_choice("norm", norm, blocks.NORMS)
    if not isinstance(memory_efficient, bool):
        raise TypeError(f"memory_efficient must be True or False, not {memory_efficient!r}")
    return Tiramisu(spatial_dims, in_channels, out_channels, first_channels=first_channels,
                    growth_rate=growth_rate, down_layers=down_layers, bottleneck_layers=bottleneck_layers,
                    norm=norm, dropout=blocks.check_probability("dropout", dropout),
                    memory_efficient=memory_efficient)


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry("unet", _build_unet, (2, 3), "U-Net with skips at every level (MONAI UNet, residual units)"),
    "vnet": ModelEntry("vnet", _build_vnet, (2, 3), "V-Net: residual stages of 5-wide convs, PReLU (MONAI blocks)"),
    "fcn": ModelEntry("fcn", _build_fcn, (2, 3), "FCN-8s: skip fusion; transposed-conv or interpolation decoder"),
    "pspnet": ModelEntry("pspnet", _build_pspnet, (2, 3), "PSPNet: pyramid pooling (4 bins, avg/max) on dilated features"),
    "deeplabv3": ModelEntry("deeplabv3", _build_deeplabv3, (2, 3),
                            "DeepLabv3: cascaded atrous units + ASPP with image pooling"),
    "tiramisu": ModelEntry("tiramisu", _build_tiramisu, (2, 3),
                           "FC-DenseNet: dense blocks down and up; memory-efficient option"),
}


def available_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(MODELS)


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def create_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, **options: Any):
    """Build a registered architecture.

    Args:
        name: registry name (see :func:`available_models`).
        spatial_dims: 2 (slices, input ``(B, C, H, W)``) or 3 (volumes, ``(B, C, D, H, W)``).
        in_channels: input channels (image modalities).
        out_channels: classes including background (logits out).
        options: architecture options (see each builder's docstring).

    Raises:
        ValueError: unknown name or option (the message lists the valid ones and the closest),
            or unsupported ``spatial_dims``.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown architecture '{name}'; {_suggest(key, available_models())}"
                         f"available: {', '.join(available_models())}")
    entry = MODELS[key]
    if spatial_dims not in entry.spatial_dims:
        raise ValueError(f"architecture '{key}' supports spatial_dims {entry.spatial_dims}, not {spatial_dims}")
    params = inspect.signature(entry.builder).parameters
    valid = [p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY]
    for opt in options:
        if opt not in valid:
            raise ValueError(f"unknown option '{opt}' for architecture '{key}'; {_suggest(opt, valid)}"
                             f"valid options: {', '.join(valid) or '(none)'}")
    return entry.builder(spatial_dims, in_channels, out_channels, **{**entry.defaults, **options})

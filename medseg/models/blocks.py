"""Dimension-agnostic building blocks shared by every architecture.

Everything here is built from MONAI's factories (``Conv[Conv.CONV, spatial_dims]``, ``Norm``,
``Act``, ``Pool``) and blocks (``Convolution``, ``ResidualUnit``), so one code path gives the 2D
(``(B, C, H, W)``) and the 3D (``(B, C, D, H, W)``) network. Also here: the argument checks with
worded errors that every builder uses, and the pad/crop helpers that let any architecture take
inputs of any size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = [
    "NORMS",
    "check_choice",
    "check_positive_int",
    "check_int_sequence",
    "check_probability",
    "conv_norm_act",
    "interpolate_mode",
    "pad_to_multiple",
    "ResidualEncoder",
    "UpsampleBlock",
    "SegmentationHead",
]

NORMS = ("batch", "instance")


def check_choice(arg: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming ``arg`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_positive_int(arg: str, value: Any) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise a worded ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be a positive integer, not {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{arg} must be a positive integer, not {value}")
    return value


def check_int_sequence(arg: str, value: Any, *, min_len: int = 1, length: int | None = None,
                       minimum: int = 1) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints >= ``minimum``; raise a worded error otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{arg} must be a sequence of integers, e.g. (16, 32, 64), not {value!r}")
    items = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise TypeError(f"{arg} must contain integers only, not {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{arg} must have exactly {length} values, got {len(items)}: {items}")
    if len(items) < min_len:
        raise ValueError(f"{arg} must have at least {min_len} values, got {len(items)}: {items}")
    if any(v < minimum for v in items):
        raise ValueError(f"every value of {arg} must be >= {minimum}, got {items}")
    return items


def check_probability(arg: str, value: Any) -> float:
    """Return ``value`` as a float in [0, 1); raise a worded error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number in [0, 1), not {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{arg} must be a number in [0, 1), not {value}")
    return float(value)


def interpolate_mode(spatial_dims: int) -> str:
    """``"bilinear"`` for 2D, ``"trilinear"`` for 3D (what ``F.interpolate`` calls linear)."""
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]


def conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int, *, kernel_size: int = 3,
                  strides: int = 1, dilation: int = 1, norm: str | None = "instance",
                  act: str | tuple | None = "relu", bias: bool | None = None) -> Convolution:
    """Conv → norm → act (MONAI ``Convolution``), "same" padding, ``bias`` off when a norm follows."""
    return Convolution(spatial_dims, in_channels, out_channels, strides=strides, kernel_size=kernel_size,
                       dilation=dilation, norm=norm, act=act, bias=(norm is None) if bias is None else bias)


def pad_to_multiple(x: torch.Tensor, divisor: Sequence[int], mode: str = "replicate",
                    min_multiple: int = 1) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of ``x`` (B, C, *spatial) up to multiples of ``divisor``.

    Each axis becomes at least ``min_multiple * divisor`` long. The padding is split evenly before/after each axis (replicated edge values, so no artificial
    step at the border). Returns the padded tensor and the index that crops an output of the padded
    size back to the input's size: ``out[crop]``.
    """
    sizes = x.shape[2:]
    before: list[int] = []
    after: list[int] = []
    for size, div in zip(sizes, divisor):
        total = max(math.ceil(size / div), min_multiple) * div - size
        before.append(total // 2)
        after.append(total - total // 2)
    crop = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(before, sizes))
    if not any(before) and not any(after):
        return x, crop
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after)):
        pads += [b, a]
    return F.pad(x, pads, mode=mode), crop


class ResidualEncoder(nn.Module):
    """A residual CNN backbone: a full-resolution stem, then one stage per extra width.

    Stage ``i`` halves the resolution (a strided ``ResidualUnit``) until ``output_stride`` is
    reached; later stages keep the resolution and use dilated (atrous) convolutions instead, the
    dilation doubling stage after stage (DeepLab's cascaded atrous convolution, PSPNet's dilated
    backbone).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: width of the stem and of each stage, e.g. ``(16, 32, 64, 128, 256)``.
        units_per_stage: residual units per stage (each unit is two conv-norm-act).
        output_stride: the largest downsampling factor; ``None`` downsamples at every stage.
        norm: ``"batch"`` or ``"instance"``.
        act: activation name for MONAI's ``Act`` factory.

    Forward: ``(B, in_channels, *S)`` → list of features, shallow to deep: feature ``i`` is
    ``(B, channels[i], *S / stride_i)`` with ``stride_i`` in :attr:`strides`.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], *, units_per_stage: int = 1,
                 output_stride: int | None = None, norm: str = "instance", act: str = "relu") -> None:
        super().__init__()
        self.stem = ResidualUnit(spatial_dims, in_channels, channels[0], strides=1, subunits=2, norm=norm, act=act)
        self.stages = nn.ModuleList()
        stride, dilation = 1, 1
        self.strides: list[int] = [1]
        self.dilations: list[int] = [1]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            if output_stride is None or stride < output_stride:
                stride *= 2
                units = [ResidualUnit(spatial_dims, c_in, c_out, strides=2, subunits=2, norm=norm, act=act)]
            else:
                dilation *= 2
                units = [ResidualUnit(spatial_dims, c_in, c_out, strides=1, dilation=dilation, subunits=2,
                                      norm=norm, act=act)]
            units += [ResidualUnit(spatial_dims, c_out, c_out, strides=1, dilation=dilation, subunits=2, norm=norm,
                                   act=act) for _ in range(units_per_stage - 1)]
            self.stages.append(nn.Sequential(*units))
            self.strides.append(stride)
            self.dilations.append(dilation)
        self.out_channels = tuple(channels)
        self.output_stride = stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class UpsampleBlock(nn.Module):
    """Doubles the spatial size: ``(B, C_in, *S)`` → ``(B, C_out, *2S)``.

    ``mode="transposed"``: a learned transposed convolution (kernel 4, stride 2, padding 1) → norm →
    act. Its kernel overlaps unevenly between neighbouring outputs, which is what produces
    checkerboard artefacts (Odena et al., 2016).
    ``mode="interpolate"``: (bi/tri)linear interpolation ×2, then a 3-wide conv → norm → act; every
    output gets the same number of contributions, so no checkerboard artefacts.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, mode: str = "interpolate",
                 norm: str = "instance", act: str = "relu") -> None:
        super().__init__()
        check_choice("upsample", mode, ("transposed", "interpolate"))
        self.mode = mode
        if mode == "transposed":
            self.up = nn.Identity()
            self.conv = Convolution(spatial_dims, in_channels, out_channels, strides=2, kernel_size=4, padding=1,
                                    output_padding=0, is_transposed=True, norm=norm, act=act, bias=False)
        else:
            self.up = nn.Upsample(scale_factor=2, mode=interpolate_mode(spatial_dims), align_corners=False)
            self.conv = conv_norm_act(spatial_dims, in_channels, out_channels, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class SegmentationHead(nn.Module):
    """The last layer of every encoder-decoder model: a 1-wide conv to class logits (no activation).

    ``(B, C, *S)`` → ``(B, out_channels, *S)``. The shared forward of
    :class:`medseg.models.base.EncoderDecoderModel` resizes these logits to the input size when the
    decoder works at a lower resolution (PSPNet, DeepLabv3).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = Convolution(spatial_dims, in_channels, out_channels, kernel_size=kernel_size, conv_only=True,
                                bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

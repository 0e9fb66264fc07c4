"""U-Net: encoder–decoder with a skip connection at every level (MONAI's residual ``UNet``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import UNet as MonaiUNet

from medseg.models.base import SegmentationModel

__all__ = ["UNet"]


class UNet(SegmentationModel):
    """The standard U-Net of the field, 2D or 3D: MONAI's ``UNet`` behind medseg's shared forward.

    Each level is a strided conv block (``num_res_units`` residual units, or plain conv blocks with
    0) whose output is concatenated, channel-wise, with the upsampled output of the level below
    before that level's up-block (the skip connection): see MONAI's ``SkipConnection``.

    Inputs: ``(B, in_channels, *S)``; any size: the input is padded internally up to a multiple of
    the product of the strides along each axis and the logits ``(B, out_channels, *S)`` are cropped back.

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: input channels / classes (logits).
        channels: width of each level, e.g. ``(16, 32, 64, 128, 256)``.
        strides: downsampling between levels (``len(channels) - 1`` values), each one factor for
            every axis or one per axis (``(2, 2, 1)``: the last axis keeps its resolution, as
            nnU-Net does with the thick-slice axis of anisotropic data).
        num_res_units: residual units per block (0: plain conv blocks).
        norm: ``"instance"`` or ``"batch"``.
        dropout: dropout probability.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
                 strides: Sequence[int | Sequence[int]], num_res_units: int, norm: str, dropout: float) -> None:
        per_axis = [tuple(s) if isinstance(s, Sequence) else (int(s),) * spatial_dims for s in strides]
        super().__init__(spatial_dims, in_channels, out_channels,
                         tuple(math.prod(s[axis] for s in per_axis) for axis in range(spatial_dims)))
        self.net = MonaiUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                             channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                             norm=norm, dropout=dropout)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

"""DeepLabv3: cascaded and parallel atrous convolution (Chen et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from monai.networks.layers.factories import Act, Conv, Pool
from torch import nn

from medseg.models.base import EncoderDecoderModel
from medseg.models.blocks import ResidualEncoder, SegmentationHead, conv_norm_act, interpolate_mode

__all__ = ["DeepLabV3", "ASPP", "DeepLabV3Decoder"]


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool → 1-wide conv → ReLU → broadcast to ``*S``.

    No normalisation: the pooled map has one value per channel, which batch/instance norm cannot
    normalise at batch size 1.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)
        self.act = Act["relu"]()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(self.pool(x)))
        return F.interpolate(y, size=x.shape[2:], mode=interpolate_mode(self.spatial_dims), align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel branches, concatenated, projected.

    Branches: a 1-wide conv; one 3-wide conv per rate in ``rates`` with that dilation; image
    pooling. Each → ``channels``; the concatenation → 1-wide conv → norm → ReLU (→ dropout).

    Forward: ``(B, C_in, *S)`` → ``(B, channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, rates: Sequence[int], *, norm: str,
                 dropout: float) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            [conv_norm_act(spatial_dims, in_channels, channels, kernel_size=1, norm=norm)]
            + [conv_norm_act(spatial_dims, in_channels, channels, dilation=r, norm=norm) for r in rates]
        )
        self.image_pooling = ImagePooling(spatial_dims, in_channels, channels)
        self.project = conv_norm_act(spatial_dims, channels * (len(rates) + 2), channels, kernel_size=1, norm=norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches] + [self.image_pooling(x)]
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class DeepLabV3Decoder(nn.Module):
    """Cascaded atrous residual units (``cascade_rates``) → :class:`ASPP` → 3-wide conv → norm → ReLU.

    Features ``[..., (B, C, *S / os)]`` → ``(B, decoder_channels, *S / os)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, decoder_channels: int, *, rates: Sequence[int],
                 cascade_rates: Sequence[int], norm: str, dropout: float) -> None:
        super().__init__()
        self.cascade = nn.Sequential(*(ResidualUnit(spatial_dims, in_channels, in_channels, dilation=r, subunits=2,
                                                    norm=norm, act="relu") for r in cascade_rates))
        self.aspp = ASPP(spatial_dims, in_channels, decoder_channels, rates, norm=norm, dropout=dropout)
        self.conv = conv_norm_act(spatial_dims, decoder_channels, decoder_channels, norm=norm)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.aspp(self.cascade(features[-1])))


class DeepLabV3(EncoderDecoderModel):
    """DeepLabv3, 2D or 3D: atrous convolution both cascaded and parallel.

    Encoder: residual CNN that downsamples until ``output_stride`` and continues with dilated
    stages (dilation doubling), so the deepest features stay at ``1/output_stride`` resolution.
    Decoder: :class:`DeepLabV3Decoder`: more residual units with dilations ``cascade_rates``
    (cascaded atrous convolution), then :class:`ASPP` with dilations ``rates`` and image pooling
    (parallel atrous convolution). Head: 1-wide conv to logits, upsampled (linear) to the input size.

    Inputs: ``(B, in_channels, *S)``; any size: padded internally up to a multiple of
    ``output_stride`` per axis and the logits ``(B, out_channels, *S)`` are cropped back.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
                 output_stride: int, rates: Sequence[int], cascade_rates: Sequence[int], decoder_channels: int,
                 norm: str, dropout: float) -> None:
        encoder = ResidualEncoder(spatial_dims, in_channels, channels, output_stride=output_stride, norm=norm)
        super().__init__(
            spatial_dims, in_channels, out_channels, encoder.output_stride,
            encoder=encoder,
            decoder=DeepLabV3Decoder(spatial_dims, channels[-1], decoder_channels, rates=rates,
                                     cascade_rates=cascade_rates, norm=norm, dropout=dropout),
            head=SegmentationHead(spatial_dims, decoder_channels, out_channels),
        )

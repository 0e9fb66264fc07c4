"""FCN: a fully convolutional encoder whose coarse predictions are upsampled and fused with skips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import EncoderDecoderModel
from medseg.models.blocks import ResidualEncoder, SegmentationHead, UpsampleBlock, conv_norm_act

__all__ = ["FCN", "FCNDecoder"]


class FCNDecoder(nn.Module):
    """FCN-8s-style decoder: from the deepest features up to full resolution, ×2 per step.

    Each encoder level is projected to ``decoder_channels`` by a 1-wide conv; the deepest
    ``fused_levels`` projections are summed into the upsampled path (FCN-32s: 1, FCN-16s: 2,
    FCN-8s: 3); the remaining steps up to full resolution upsample without skips.

    Args:
        upsample: ``"transposed"`` (learned transposed convolutions, kernel 4 / stride 2: they can
            leave checkerboard artefacts) or ``"interpolate"`` (linear interpolation followed by a
            3-wide convolution, which avoids checkerboard artefacts).

    Forward: features ``[(B, C_i, *S / 2**i)]`` → ``(B, decoder_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], decoder_channels: int, *,
                 upsample: str, fused_levels: int, norm: str) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        self.fused = [depth - i for i in range(fused_levels)]
        self.project = nn.ModuleDict({
            str(level): conv_norm_act(spatial_dims, encoder_channels[level], decoder_channels, kernel_size=1,
                                      norm=norm, act=None)
            for level in self.fused
        })
        self.up = nn.ModuleList(UpsampleBlock(spatial_dims, decoder_channels, decoder_channels, mode=upsample,
                                              norm=norm) for _ in range(depth))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = self.project[str(depth)](features[depth])
        for step, level in enumerate(range(depth - 1, -1, -1)):
            x = self.up[step](x)
            if level in self.fused:
                x = x + self.project[str(level)](features[level])
        return x


class FCN(EncoderDecoderModel):
    """Fully convolutional network (Long et al., 2015), 2D or 3D.

    Encoder: a residual CNN (:class:`~medseg.models.blocks.ResidualEncoder`) halving the resolution
    at each of ``len(channels) - 1`` stages. Decoder: :class:`FCNDecoder` (skip fusion of the
    deepest ``fused_levels`` levels, then upsampling to full resolution). Head: 1-wide conv to logits.

    The decoder's upsampling is a choice: ``upsample="transposed"`` uses learned transposed
    convolutions (the original FCN's "deconvolution"), ``upsample="interpolate"`` uses linear
    interpolation + convolution, which avoids the checkerboard artefacts of transposed
    convolutions whose kernel overlaps unevenly (Odena et al., 2016).

    Inputs: ``(B, in_channels, *S)``; any size: padded internally up to a multiple of
    ``2 ** (len(channels) - 1)`` per axis and the logits ``(B, out_channels, *S)`` cropped back.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
                 decoder_channels: int, upsample: str, fused_levels: int, norm: str) -> None:
        encoder = ResidualEncoder(spatial_dims, in_channels, channels, norm=norm)
        super().__init__(
            spatial_dims, in_channels, out_channels, encoder.output_stride,
            encoder=encoder,
            decoder=FCNDecoder(spatial_dims, channels, decoder_channels, upsample=upsample,
                               fused_levels=fused_levels, norm=norm),
            head=SegmentationHead(spatial_dims, decoder_channels, out_channels),
        )

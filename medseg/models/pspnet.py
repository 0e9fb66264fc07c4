"""PSPNet: pyramid pooling of a dilated backbone's features (Zhao et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Act, Conv, Pool
from torch import nn

from medseg.models.base import EncoderDecoderModel
from medseg.models.blocks import ResidualEncoder, SegmentationHead, conv_norm_act, interpolate_mode

__all__ = ["PSPNet", "PyramidPooling", "PSPDecoder"]


class PyramidPooling(nn.Module):
    """Pool the features to each of ``bins`` (bins per axis), reduce, upsample back, concatenate.

    Branch ``b``: adaptive average/max pooling to ``(b,) * spatial_dims`` → 1-wide conv to
    ``in_channels // len(bins)`` → ReLU → linear interpolation to the input size. The branches have
    no normalisation: a 1-bin branch has one value per channel, which batch/instance norm cannot
    normalise at batch size 1.

    Forward: ``(B, C, *S)`` → ``(B, C + len(bins) * (C // len(bins)), *S)`` (input first).
    """

    def __init__(self, spatial_dims: int, in_channels: int, bins: Sequence[int], pool: str) -> None:
        super().__init__()
        pool_type = Pool[Pool.ADAPTIVEAVG if pool == "avg" else Pool.ADAPTIVEMAX, spatial_dims]
        conv_type = Conv[Conv.CONV, spatial_dims]
        reduced = max(1, in_channels // len(bins))
        self.bins = tuple(bins)
        self.pools = nn.ModuleList(pool_type(b) for b in bins)
        self.reduce = nn.ModuleList(nn.Sequential(conv_type(in_channels, reduced, kernel_size=1), Act["relu"]())
                                    for _ in bins)
        self.spatial_dims = spatial_dims
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        branches = [x]
        for pool, reduce in zip(self.pools, self.reduce):
            branches.append(F.interpolate(reduce(pool(x)), size=size, mode=interpolate_mode(self.spatial_dims),
                                          align_corners=False))
        return torch.cat(branches, dim=1)


class PSPDecoder(nn.Module):
    """Pyramid pooling on the deepest features, then a 3-wide conv → norm → ReLU (→ dropout).

    Features ``[..., (B, C, *S / os)]`` → ``(B, decoder_channels, *S / os)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, decoder_channels: int, *, bins: Sequence[int],
                 pool: str, norm: str, dropout: float) -> None:
        super().__init__()
        self.pyramid = PyramidPooling(spatial_dims, in_channels, bins, pool)
        self.fuse = conv_norm_act(spatial_dims, self.pyramid.out_channels, decoder_channels, norm=norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.dropout(self.fuse(self.pyramid(features[-1])))


class PSPNet(EncoderDecoderModel):
    """Pyramid scene parsing network, 2D or 3D.

    Encoder: residual CNN whose stages stop downsampling at ``output_stride`` and continue with
    dilated convolutions. Decoder: :class:`PSPDecoder` (pyramid pooling with ``bins``, e.g. the
    paper's 1, 2, 3, 6 bins per axis, average or max pooling; upsampled and concatenated; final
    conv). Head: 1-wide conv to logits, upsampled (linear) to the input size.

    Inputs: ``(B, in_channels, *S)``; any size: padded internally up to a multiple of
    ``output_stride`` per axis and the logits ``(B, out_channels, *S)`` are cropped back.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
                 output_stride: int, bins: Sequence[int], pool: str, decoder_channels: int, norm: str,
                 dropout: float) -> None:
        encoder = ResidualEncoder(spatial_dims, in_channels, channels, output_stride=output_stride, norm=norm)
        super().__init__(
            spatial_dims, in_channels, out_channels, encoder.output_stride,
            encoder=encoder,
            decoder=PSPDecoder(spatial_dims, channels[-1], decoder_channels, bins=bins, pool=pool, norm=norm,
                               dropout=dropout),
            head=SegmentationHead(spatial_dims, decoder_channels, out_channels),
        )

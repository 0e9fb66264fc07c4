"""V-Net (Milletari et al., 2016) assembled from MONAI's V-Net blocks with a configurable width."""

from __future__ import annotations

import torch
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn

from medseg.models.base import EncoderDecoderModel

__all__ = ["VNet", "VNetEncoder", "VNetDecoder"]

# convolutions per stage, as in the paper and MONAI's VNet
_DOWN_CONVS = (1, 2, 3, 2)
_UP_CONVS = (2, 2, 1, 1)


class VNetEncoder(nn.Module):
    """Input transition (5-wide conv + residual) and four residual down stages (2-wide stride-2 conv).

    ``(B, C_in, *S)`` → ``[(B, w, *S), (B, 2w, *S/2), (B, 4w, *S/4), (B, 8w, *S/8), (B, 16w, *S/16)]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, base_channels: int, act: str, dropout: float) -> None:
        super().__init__()
        self.input = InputTransition(spatial_dims, in_channels, base_channels, act)
        drop = dropout or None
        self.down = nn.ModuleList(
            DownTransition(spatial_dims, base_channels * 2**i, nconvs, act, dropout_prob=drop if i >= 2 else None,
                           dropout_dim=spatial_dims)
            for i, nconvs in enumerate(_DOWN_CONVS)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.input(x)]
        for stage in self.down:
            features.append(stage(features[-1]))
        return features


class VNetDecoder(nn.Module):
    """Four residual up stages (2-wide stride-2 transposed conv, concatenation with the skip, 5-wide convs).

    Features of :class:`VNetEncoder` → ``(B, 2w, *S)``.
    """

    def __init__(self, spatial_dims: int, base_channels: int, act: str, dropout: float) -> None:
        super().__init__()
        w = base_channels
        widths = ((16 * w, 16 * w), (16 * w, 8 * w), (8 * w, 4 * w), (4 * w, 2 * w))
        drop = dropout or None
        self.up = nn.ModuleList(
            UpTransition(spatial_dims, c_in, c_out, nconvs, act,
                         dropout_prob=(drop if i < 2 else None, dropout), dropout_dim=spatial_dims)
            for i, ((c_in, c_out), nconvs) in enumerate(zip(widths, _UP_CONVS))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(self.up, reversed(features[:-1])):
            x = stage(x, skip)
        return x


class VNet(EncoderDecoderModel):
    """V-Net, 2D or 3D: residual stages of 5×5(×5) convolutions with PReLU, batch norm, strided
    convolutions for downsampling, and skip concatenation in the decoder.

    Built from MONAI's V-Net blocks (``InputTransition``, ``DownTransition``, ``UpTransition``,
    ``OutputTransition``); with ``base_channels=16`` it is MONAI's ``VNet`` (same layers and parameter
    count), with the paper's PReLU. The head is MONAI's output transition (5-wide conv, norm, PReLU,
    1-wide conv to logits).

    Inputs: ``(B, in_channels, *S)``; any size: padded internally up to a multiple of 16 per axis
    (four stride-2 stages) and the logits ``(B, out_channels, *S)`` are cropped back.

    Args:
        base_channels: width of the first stage (doubling at each of the four down stages); must
            be a multiple of ``in_channels`` (the input transition repeats the input channels).
        act: ``"prelu"`` (the paper) or ``"elu"`` (MONAI's default).
        dropout: dropout probability in the two deepest down stages and on the skips (MONAI's VNet
            uses 0.5).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, base_channels: int, act: str,
                 dropout: float) -> None:
        if base_channels % in_channels:
            raise ValueError(f"vnet base_channels ({base_channels}) must be a multiple of in_channels "
                             f"({in_channels}): the input transition repeats the input channels to that width")
        super().__init__(
            spatial_dims, in_channels, out_channels, 2 ** len(_DOWN_CONVS),
            encoder=VNetEncoder(spatial_dims, in_channels, base_channels, act, dropout),
            decoder=VNetDecoder(spatial_dims, base_channels, act, dropout),
            head=OutputTransition(spatial_dims, 2 * base_channels, out_channels, act),
        )

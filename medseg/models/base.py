"""The one forward every medseg architecture shares.

:class:`SegmentationModel` checks the input, pads its spatial size up to what the network can
take (a multiple of :attr:`~SegmentationModel.size_divisor` per axis), runs the network and crops
the logits back, so every architecture accepts any input size and returns logits of exactly that
size. :class:`EncoderDecoderModel` is segmentation_models.pytorch's composition
``encoder → decoder → head``: an architecture's ``__init__`` only wires those three parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import interpolate_mode, pad_to_multiple

__all__ = ["SegmentationModel", "EncoderDecoderModel"]


class SegmentationModel(nn.Module):
    """Base of every registered architecture: ``(B, in_channels, *S)`` → logits ``(B, out_channels, *S)``.

    Inputs whose size is not a multiple of :attr:`size_divisor` are padded internally (edge values
    replicated, split evenly before/after each axis) and the logits are cropped back, so any size
    is accepted. Each axis is padded to at least twice the divisor, so that the deepest level has
    more than one voxel (instance norm cannot normalise a single voxel). Subclasses implement
    :meth:`forward_padded`.

    Attributes:
        spatial_dims: 2 (``(B, C, H, W)``) or 3 (``(B, C, D, H, W)``).
        in_channels / out_channels: input channels and classes (logits).
        size_divisor: per spatial axis, the multiple the network needs.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, size_divisor: int | Sequence[int]) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        if isinstance(size_divisor, int):
            size_divisor = (size_divisor,) * spatial_dims
        self.size_divisor = tuple(int(d) for d in size_divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` → logits ``(B, out_channels, *S)`` (no activation)."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = "D, H, W" if self.spatial_dims == 3 else "H, W"
            raise ValueError(f"{type(self).__name__} expects input of shape (B, {self.in_channels}, {axes}), "
                             f"got {tuple(x.shape)}")
        padded, crop = pad_to_multiple(x, self.size_divisor, min_multiple=2)
        return self.forward_padded(padded)[crop]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose spatial size is a multiple of :attr:`size_divisor`."""
        raise NotImplementedError


class EncoderDecoderModel(SegmentationModel):
    """``encoder(x) → features (list, shallow to deep) → decoder(features) → head → logits``.

    If the head's output is smaller than the (padded) input (decoders that stop at 1/8 or 1/16
    resolution), the logits are resized to the input size by (bi/tri)linear interpolation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, size_divisor: int | Sequence[int],
                 encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_divisor)
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        logits = self.head(self.decoder(features))
        if logits.shape[2:] != x.shape[2:]:
            logits = F.interpolate(logits, size=x.shape[2:], mode=interpolate_mode(self.spatial_dims),
                                   align_corners=False)
        return logits

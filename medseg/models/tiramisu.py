"""Tiramisu: FC-DenseNet (Jégou et al., 2017), with an optional memory-efficient dense layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from monai.networks.layers.factories import Act, Conv, Dropout, Norm, Pool
from torch import nn
from torch.utils.checkpoint import checkpoint

from medseg.models.base import EncoderDecoderModel
from medseg.models.blocks import SegmentationHead

__all__ = ["Tiramisu", "DenseLayer", "DenseBlock", "TiramisuEncoder", "TiramisuDecoder"]


@contextlib.contextmanager
def _frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers (batch-norm running statistics) on exit."""
    saved = {name: buf.clone() for name, buf in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in module.named_buffers():
                buf.copy_(saved[name])


class DenseLayer(nn.Module):
    """Concatenate the inputs → norm → ReLU → 3-wide conv to ``growth_rate`` channels (→ dropout).

    With ``memory_efficient=True`` the concatenation and norm-ReLU-conv are recomputed during the
    backward pass instead of stored (``torch.utils.checkpoint``): the concatenated tensor, which
    grows with every layer of a dense block, is then never kept for backward. Outputs and
    gradients are the same; batch-norm running statistics are updated once, not again on
    recomputation.

    Forward: list of ``(B, C_i, *S)`` → ``(B, growth_rate, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, *, norm: str, dropout: float,
                 memory_efficient: bool) -> None:
        super().__init__()
        self.norm = Norm[norm, spatial_dims](in_channels)
        self.act = Act["relu"](inplace=True)  # on the norm's fresh output: saves one copy, autograd-safe
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.memory_efficient = memory_efficient

    def _concat_norm_act_conv(self, *features: torch.Tensor) -> torch.Tensor:
        x = features[0] if len(features) == 1 else torch.cat(features, dim=1)
        return self.conv(self.act(self.norm(x)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            calls = 0

            def run(*inputs: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                calls += 1
                if calls == 1 or not self.training:
                    return self._concat_norm_act_conv(*inputs)
                with _frozen_statistics(self.norm):  # recomputation in backward: no second statistics update
                    return self._concat_norm_act_conv(*inputs)

            out = checkpoint(run, *features, use_reentrant=False)
        else:
            out = self._concat_norm_act_conv(*features)
        return self.dropout(out)


class DenseBlock(nn.Module):
    """``n_layers`` dense layers, each seeing the block input and every earlier layer's output.

    Forward: ``(B, C, *S)`` → ``(all, new)``: ``all`` = input and new features concatenated
    ``(B, C + n_layers * growth_rate, *S)``; ``new`` = only the new features ``(B, n_layers * growth_rate, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, n_layers: int, growth_rate: int, *, norm: str,
                 dropout: float, memory_efficient: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, in_channels + i * growth_rate, growth_rate, norm=norm, dropout=dropout,
                       memory_efficient=memory_efficient)
            for i in range(n_layers)
        )
        self.in_channels = in_channels
        self.out_channels = in_channels + n_layers * growth_rate
        self.new_channels = n_layers * growth_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1), torch.cat(features[1:], dim=1)


class TransitionDown(nn.Sequential):
    """Norm → ReLU → 1-wide conv → dropout → 2-wide max pool: ``(B, C, *S)`` → ``(B, C, *S/2)``."""

    def __init__(self, spatial_dims: int, channels: int, *, norm: str, dropout: float) -> None:
        super().__init__(
            Norm[norm, spatial_dims](channels), Act["relu"](),
            Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1, bias=False),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
        )


class TiramisuEncoder(nn.Module):
    """First 3-wide conv, then per level a dense block (its full output is the skip) and a transition down.

    ``(B, C_in, *S)`` → ``[skip_0 (B, ., *S), …, skip_{n-1}, bottom (B, ., *S / 2**n)]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, first_channels: int, growth_rate: int,
                 down_layers: Sequence[int], *, norm: str, dropout: float, memory_efficient: bool) -> None:
        super().__init__()
        self.first = Conv[Conv.CONV, spatial_dims](in_channels, first_channels, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = first_channels
        self.skip_channels: list[int] = []
        for n_layers in down_layers:
            block = DenseBlock(spatial_dims, channels, n_layers, growth_rate, norm=norm, dropout=dropout,
                               memory_efficient=memory_efficient)
            channels = block.out_channels
            self.blocks.append(block)
            self.transitions.append(TransitionDown(spatial_dims, channels, norm=norm, dropout=dropout))
            self.skip_channels.append(channels)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.first(x)
        features = []
        for block, transition in zip(self.blocks, self.transitions):
            x, _ = block(x)
            features.append(x)
            x = transition(x)
        features.append(x)
        return features


class TiramisuDecoder(nn.Module):
    """Bottleneck dense block, then per level: transposed conv ×2 of the previous block's *new*
    features, concatenation with the skip, dense block. The last block returns all its features.

    Encoder features → ``(B, skip_0 + up + n_layers * growth_rate, *S)``.
    """

    def __init__(self, spatial_dims: int, bottom_channels: int, skip_channels: Sequence[int], growth_rate: int,
                 bottleneck_layers: int, up_layers: Sequence[int], *, norm: str, dropout: float,
                 memory_efficient: bool) -> None:
        super().__init__()
        kw = {"norm": norm, "dropout": dropout, "memory_efficient": memory_efficient}
        self.bottleneck = DenseBlock(spatial_dims, bottom_channels, bottleneck_layers, growth_rate, **kw)
        conv_t = Conv[Conv.CONVTRANS, spatial_dims]
        self.transitions = nn.ModuleList()
        self.blocks = nn.ModuleList()
        new = self.bottleneck.new_channels
        for skip, n_layers in zip(reversed(skip_channels), up_layers):
            self.transitions.append(conv_t(new, new, kernel_size=3, stride=2, padding=1, output_padding=1))
            block = DenseBlock(spatial_dims, new + skip, n_layers, growth_rate, **kw)
            self.blocks.append(block)
            new = block.new_channels
        self.out_channels = self.blocks[-1].out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        _, x = self.bottleneck(features[-1])
        last = len(self.blocks) - 1
        for i, (transition, block, skip) in enumerate(zip(self.transitions, self.blocks, reversed(features[:-1]))):
            everything, new = block(torch.cat([transition(x), skip], dim=1))
            x = everything if i == last else new
        return x


class Tiramisu(EncoderDecoderModel):
    """The one hundred layers Tiramisu: fully convolutional DenseNet, 2D or 3D.

    Dense blocks (each layer: norm → ReLU → 3-wide conv, its output concatenated to everything
    before it) in the encoder and the decoder; transitions down (1-wide conv + max pool) and up
    (stride-2 transposed conv); encoder block outputs are concatenated into the decoder (skips).
    Head: 1-wide conv to logits. ``down_layers=(4, 5, 7, 10, 12)``, ``bottleneck_layers=15``,
    ``growth_rate=16`` is FC-DenseNet103; the default is a smaller four-level network.

    Dense concatenation is this architecture's memory problem: ``memory_efficient=True``
    checkpoints the concatenation + norm-ReLU-conv of every dense layer (recomputed in backward),
    trading compute for memory with identical outputs and gradients.

    Inputs: ``(B, in_channels, *S)``; any size: padded internally up to a multiple of
    ``2 ** len(down_layers)`` per axis and the logits ``(B, out_channels, *S)`` are cropped back.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, first_channels: int,
                 growth_rate: int, down_layers: Sequence[int], bottleneck_layers: int, norm: str, dropout: float,
                 memory_efficient: bool) -> None:
        kw = {"norm": norm, "dropout": dropout, "memory_efficient": memory_efficient}
        encoder = TiramisuEncoder(spatial_dims, in_channels, first_channels, growth_rate, down_layers, **kw)
        decoder = TiramisuDecoder(spatial_dims, encoder.out_channels, encoder.skip_channels, growth_rate,
                                  bottleneck_layers, tuple(reversed(down_layers)), **kw)
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** len(down_layers), encoder=encoder,
                         decoder=decoder, head=SegmentationHead(spatial_dims, decoder.out_channels, out_channels))

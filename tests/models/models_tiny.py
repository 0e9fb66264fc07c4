"""Tiny architecture options and odd input sizes shared by the model tests."""

from __future__ import annotations

# Small widths so that the contract runs in seconds; every architecture keeps its distinctive parts
# (PSPNet/DeepLabv3 keep a dilated stage: output_stride 4 with three halvings available).
TINY_OPTIONS: dict[str, dict] = {
    "unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "vnet": {"base_channels": 2},
    "fcn": {"channels": (4, 8, 8, 16), "decoder_channels": 8},
    "pspnet": {"channels": (4, 8, 8, 16), "output_stride": 4, "decoder_channels": 8},
    "deeplabv3": {"channels": (4, 8, 8, 16), "output_stride": 4, "decoder_channels": 8, "rates": (1, 2, 3)},
    "tiramisu": {"first_channels": 8, "growth_rate": 4, "down_layers": (2, 2), "bottleneck_layers": 2},
}

# odd, non-square sizes that no architecture divides
INPUT_SHAPES: dict[int, tuple[int, ...]] = {2: (33, 47), 3: (19, 24, 29)}

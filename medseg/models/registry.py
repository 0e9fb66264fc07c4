"""The explicit registry of architectures and :func:`create_model`."""

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


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, *,
                channels: tuple[int, ...] = (16, 32, 64, 128, 256), strides: tuple[int, ...] = (2, 2, 2, 2),
                num_res_units: int = 2, norm: str = "instance", dropout: float = 0.0):
    """MONAI's residual U-Net: skip connections at every level, ``num_res_units`` per block."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                norm=norm, dropout=dropout)


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry("unet", _build_unet, (2, 3), "U-Net with skips at every level (MONAI UNet, residual units)"),
}


def available_models() -> list[str]:
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

"""Segmentation architectures, 2D and 3D from the same code, behind an explicit registry.

>>> from medseg.models import create_model
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3)

Every model is a plain ``nn.Module`` mapping ``(B, C_in, *spatial)`` to logits
``(B, C_out, *spatial)`` (no activation inside), for any spatial size (inputs are padded internally
to what the network can take and the logits cropped back). Architectures: ``unet``, ``vnet``,
``fcn``, ``pspnet``, ``deeplabv3``, ``tiramisu``, each 2D (``spatial_dims=2``, ``(B, C, H, W)``)
and 3D (``spatial_dims=3``, ``(B, C, D, H, W)``) from the same code.

Layout: :mod:`~medseg.models.blocks` (shared dimension-agnostic blocks from MONAI's factories),
:mod:`~medseg.models.base` (the shared pad → encoder → decoder → head → crop forward), one
module per architecture, :mod:`~medseg.models.registry`.
"""

from medseg.models.registry import MODELS, ModelEntry, available_models, create_model

__all__ = ["MODELS", "ModelEntry", "available_models", "create_model"]

"""Segmentation architectures, 2D and 3D from the same code, behind an explicit registry.

>>> from medseg.models import create_model
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3)

Every model is a plain ``nn.Module`` mapping ``(B, C_in, *spatial)`` to logits
``(B, C_out, *spatial)`` (no activation inside).
"""

from medseg.models.registry import MODELS, ModelEntry, available_models, create_model

__all__ = ["MODELS", "ModelEntry", "available_models", "create_model"]

"""CRF-as-RNN: dense-CRF mean-field iterations as a differentiable layer (Zheng et al., ICCV 2015).

The layer takes a network's logits as unaries and runs ``iterations`` mean-field steps with the
same spatial and bilateral kernels as :func:`medseg.postprocess.crf.dense_crf` (widths in mm,
fixed), learning the kernel weights and the label-compatibility matrix end to end::

    Q⁰ = softmax(z);   zᵗ⁺¹ = z − μ · (w_s K̃_s Qᵗ + w_b K̃_b Qᵗ);   Qᵗ⁺¹ = softmax(zᵗ⁺¹)

It returns logits (``z^T``), so any loss that takes logits works unchanged. Gradients flow to
the logits, ``w_s``, ``w_b`` and ``μ``; the bilateral filter is symmetric, so its backward pass
is the same filter (custom autograd function); the spatial filter uses autograd directly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medseg.postprocess.crf import CRFConfig, crf_filters

__all__ = ["CRFasRNN", "CRFWrappedModel", "wrap_with_crf_rnn"]


class CRFasRNN(nn.Module):
    """Mean-field dense CRF as a recurrent layer with learnable weights and compatibility.

    Args:
        num_classes: K (channels of the logits, background included).
        spacing_mm: voxel size of the inputs in mm, 3 values (3D) or 2 (2D slices).
        cfg: kernel widths, iterations and initial weights (:class:`CRFConfig`). Its
            ``intensity_sigma`` is in the units of the image this layer sees (usually the
            network's normalised input); ``None`` (the default here) estimates it per image.
        learn_compatibility: learn the K×K compatibility matrix (initialised to Potts, or to
            ``cfg.compatibility`` when that is a matrix); otherwise it stays fixed.

    Shapes:
        forward(logits ``(B, K, *spatial)``, image ``(B, Ci, *spatial)``) → logits ``(B, K, *spatial)``.
        Works on the logits' device and dtype (float32, or float64 for gradient checks).
    """

    def __init__(self, num_classes: int, spacing_mm: Sequence[float], cfg: CRFConfig | None = None,
                 learn_compatibility: bool = True):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2 (background included), got {num_classes}")
        sp = [float(s) for s in spacing_mm]
        if len(sp) not in (2, 3) or any(not math.isfinite(s) or s <= 0 for s in sp):
            raise ValueError(f"spacing_mm must be 2 or 3 positive numbers in mm, got {spacing_mm}")
        self.num_classes = int(num_classes)
        self.spacing_mm = tuple(sp)
        self.cfg = cfg or CRFConfig(method="bilateral_grid")
        if self.cfg.method != "bilateral_grid":
            raise ValueError("CRFasRNN supports method 'bilateral_grid' only")
        if self.cfg.compatibility == "potts":
            mu = 1.0 - torch.eye(self.num_classes)
        else:
            mu = torch.tensor(self.cfg.compatibility, dtype=torch.float32)
            if mu.shape != (self.num_classes, self.num_classes):
                raise ValueError(f"cfg.compatibility is {tuple(mu.shape)} but num_classes is {self.num_classes}")
        self.spatial_weight = nn.Parameter(torch.tensor(float(self.cfg.spatial_weight)))
        self.bilateral_weight = nn.Parameter(torch.tensor(float(self.cfg.bilateral_weight)))
        if learn_compatibility:
            self.compatibility = nn.Parameter(mu)
        else:
            self.register_buffer("compatibility", mu)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, spacing_mm={self.spacing_mm}, iterations={self.cfg.iterations}, "
                f"spatial_sigma_mm={self.cfg.spatial_sigma_mm}, bilateral_sigma_mm={self.cfg.bilateral_sigma_mm}")

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if logits.ndim != image.ndim or logits.ndim not in (4, 5):
            raise ValueError(f"logits (B, K, *spatial) and image (B, Ci, *spatial) must both be 4D or 5D, "
                             f"got {tuple(logits.shape)} and {tuple(image.shape)}")
        spatial_dims = logits.ndim - 2
        if spatial_dims != len(self.spacing_mm):
            raise ValueError(f"{spatial_dims}D inputs but spacing_mm has {len(self.spacing_mm)} values")
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels, expected num_classes={self.num_classes}")
        if logits.shape[0] != image.shape[0] or logits.shape[2:] != image.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} does not match logits {tuple(logits.shape)} "
                             "in batch size or spatial shape")
        if self.cfg.iterations == 0:
            return logits
        sp = self.spacing_mm if spatial_dims == 3 else self.spacing_mm + (1e6,)
        # mixed precision stops here: the mean field runs in float32 (float64 stays float64)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        outs = []
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for b in range(logits.shape[0]):
                z = logits[b].to(dtype)
                img = image[b]
                if spatial_dims == 2:
                    z = z.unsqueeze(-1)
                    img = img.unsqueeze(-1)
                outs.append(self._mean_field(z, img, sp).reshape(logits.shape[1:]))
        return torch.stack(outs)

    def _mean_field(self, z: torch.Tensor, img: torch.Tensor, sp) -> torch.Tensor:
        k = z.shape[0]
        shape = tuple(int(s) for s in z.shape[1:])
        with torch.no_grad():
            feats = img.detach().float().cpu().numpy().astype(np.float32)
            spatial, bilateral = crf_filters(feats, shape, sp, self.cfg, device=z.device, dtype=z.dtype)
        unary = z.reshape(k, -1)
        mu = self.compatibility.to(z.dtype)
        ws = self.spatial_weight.to(z.dtype)
        wb = self.bilateral_weight.to(z.dtype)
        q = torch.softmax(unary, dim=0)
        out = unary
        for _ in range(self.cfg.iterations):
            ms = torch.stack([spatial(q[c].reshape(shape)).reshape(-1) for c in range(k)])
            mb = torch.stack([bilateral.differentiable(q[c]) for c in range(k)])
            out = unary - mu @ (ws * ms + wb * mb)
            q = torch.softmax(out, dim=0)
        return out


class CRFWrappedModel(nn.Module):
    """A segmentation network followed by :class:`CRFasRNN`, using the network's input as the image.

    ``forward(x (B, Ci, *spatial)) -> logits (B, K, *spatial)``. ``net`` is the wrapped model
    (its ``state_dict`` keys are prefixed ``net.``; the CRF's are ``crf.``).
    """

    def __init__(self, net: nn.Module, crf: CRFasRNN):
        super().__init__()
        self.net = net
        self.crf = crf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crf(self.net(x), x)


def wrap_with_crf_rnn(model: nn.Module, num_classes: int, spacing_mm: Sequence[float],
                      cfg: CRFConfig | None = None) -> CRFWrappedModel:
    """Put a trainable CRF-as-RNN layer on top of ``model`` (see :class:`CRFWrappedModel`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return CRFWrappedModel(model, CRFasRNN(num_classes, spacing_mm, cfg))

"""Segmentation losses on logits: cross-entropy, focal, soft Dice, Dice+focal, Dice+CE.

Every loss maps ``(logits, target)`` to a scalar:

- ``logits``: ``(B, C, *spatial)`` raw network outputs (no softmax applied), C classes
  including background (channel 0);
- ``target``: integer class ids ``(B, 1, *spatial)`` or ``(B, *spatial)``.

>>> from medseg.losses import create_loss
>>> loss_fn = create_loss("dice_focal", gamma=2.0, include_background=False)
>>> loss = loss_fn(logits, target)

Definitions (p = softmax probability, t = one-hot target, N voxels):

- ``ce``: ``-(1/N) Σ_voxels log p_true`` (nats). With ``class_weights`` w, the weighted mean
  ``Σ w_y·(-log p_y) / Σ w_y`` (PyTorch's convention).
- ``focal``: ``(1/N) Σ_voxels Σ_c -α_c (1 - p_c)^γ t_c log p_c``, i.e. per voxel
  ``-α_y (1 - p_y)^γ log p_y`` (Lin et al. 2017, softmax form); ``class_weights`` are α
  (default all 1). With ``include_background=False`` background voxels contribute nothing.
  Note: MONAI's ``FocalLoss`` with ``reduction="mean"`` also averages over the class axis
  (divides by C); here the classes are summed, so the value of one voxel is the textbook one.
- ``dice``: ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` per class (and per sample unless
  ``batch=True``), averaged over classes (and samples); ``smooth`` is s.
- ``dice_focal`` / ``dice_ce``: ``lambda_dice · dice + lambda_focal · focal`` (resp. ``lambda_ce · ce``).

MONAI's ``DiceLoss``, ``FocalLoss`` (its element-wise terms) and ``DiceCELoss`` do the work.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, get_args

import torch
from torch import nn

__all__ = ["LossName", "LOSS_NAMES", "create_loss", "CrossEntropyLoss", "FocalLoss", "SoftDiceLoss",
           "DiceFocalLoss", "DiceCELoss"]

LossName = Literal["ce", "focal", "dice", "dice_focal", "dice_ce"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)


def _as_index_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target as ``(B, *spatial)`` int64 class ids (accepts ``(B, 1, *spatial)``)."""
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != logits.ndim - 1 or tuple(target.shape[1:]) != tuple(logits.shape[2:]) \
            or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target of shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         "expected class ids (B, 1, *spatial) or (B, *spatial)")
    return target.long()


def _weights(values: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    w = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if w.ndim != 1 or (w < 0).any():
        raise ValueError(f"{name} must be a list of non-negative numbers (one per class), not {values!r}")
    return w


def _check_classes(w: torch.Tensor | None, n: int, name: str) -> None:
    if w is not None and w.numel() != n:
        raise ValueError(f"{name} has {w.numel()} values but the logits have {n} classes")


class CrossEntropyLoss(nn.Module):
    """Voxel-wise softmax cross-entropy (nats), optionally class-weighted.

    Args:
        class_weights: one weight per class (C values) or None.
    """

    def __init__(self, *, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.register_buffer("class_weights", _weights(class_weights, "class_weights"), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tgt = _as_index_target(target, logits)
        _check_classes(self.class_weights, logits.shape[1], "class_weights")
        w = None if self.class_weights is None else self.class_weights.to(logits.device)
        return nn.functional.cross_entropy(logits.float(), tgt, weight=w)


class FocalLoss(nn.Module):
    """Softmax focal loss, summed over classes and averaged over voxels (see module docstring).

    Args:
        gamma: focusing exponent γ ≥ 0 (0 gives cross-entropy).
        class_weights: α per class (C values, or C-1 when ``include_background=False``) or None.
        include_background: when False, channel 0 is dropped (background voxels add 0).
    """

    def __init__(self, *, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 include_background: bool = True):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, not {gamma}")
        from monai.losses import FocalLoss as MonaiFocalLoss

        alpha = _weights(class_weights, "class_weights")
        self.register_buffer("alpha", alpha, persistent=False)
        self.include_background = include_background
        # element-wise terms -(1 - p_c)^γ t_c log p_c from MONAI, softmax over *all* classes (MONAI's
        # include_background=False would renormalise the softmax without channel 0); class
        # selection, α and the reduction (sum over classes, mean over voxels) are ours
        self.focal = MonaiFocalLoss(include_background=True, to_onehot_y=True, gamma=gamma, reduction="none",
                                    use_softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tgt = _as_index_target(target, logits)
        per_elem = self.focal(logits.float(), tgt[:, None])  # (B, C, *spatial)
        if not self.include_background:
            per_elem = per_elem[:, 1:]
        if self.alpha is not None:
            if self.alpha.numel() != per_elem.shape[1]:
                raise ValueError(f"class_weights has {self.alpha.numel()} values but {per_elem.shape[1]} classes are "
                                 f"scored (logits have {logits.shape[1]}, include_background={self.include_background})")
            per_elem = per_elem * self.alpha.to(per_elem.device).view([1, -1] + [1] * (per_elem.ndim - 2))
        return per_elem.sum(dim=1).mean()


class SoftDiceLoss(nn.Module):
    """Soft Dice loss on softmax probabilities (MONAI ``DiceLoss``).

    Args:
        smooth: s added to numerator and denominator.
        batch: sum over the whole batch before the ratio (per-batch Dice) instead of per sample.
        include_background: when False, class 0 is left out of the mean.
    """

    def __init__(self, *, smooth: float = 1e-5, batch: bool = False, include_background: bool = True):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, not {smooth}")
        from monai.losses import DiceLoss

        self.dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                             smooth_nr=smooth, smooth_dr=smooth, batch=batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tgt = _as_index_target(target, logits)
        return self.dice(logits.float(), tgt[:, None])


class DiceFocalLoss(nn.Module):
    """``lambda_dice · SoftDiceLoss + lambda_focal · FocalLoss`` (options as in those two)."""

    def __init__(self, *, gamma: float = 2.0, class_weights: Sequence[float] | None = None, smooth: float = 1e-5,
                 batch: bool = False, include_background: bool = True, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0):
        super().__init__()
        if lambda_dice < 0 or lambda_focal < 0:
            raise ValueError(f"lambda_dice and lambda_focal must be >= 0, not {lambda_dice}, {lambda_focal}")
        self.dice = SoftDiceLoss(smooth=smooth, batch=batch, include_background=include_background)
        # the focal term always scores every class (background voxels are most of the volume)
        self.focal = FocalLoss(gamma=gamma, class_weights=class_weights, include_background=True)
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(logits, target)


class DiceCELoss(nn.Module):
    """``lambda_dice · soft Dice + lambda_ce · cross-entropy`` (MONAI ``DiceCELoss``).

    ``class_weights`` weight the cross-entropy term only.
    """

    def __init__(self, *, class_weights: Sequence[float] | None = None, smooth: float = 1e-5, batch: bool = False,
                 include_background: bool = True, lambda_dice: float = 1.0, lambda_ce: float = 1.0):
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, not {lambda_dice}, {lambda_ce}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, not {smooth}")
        from monai.losses import DiceLoss

        self.dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                             smooth_nr=smooth, smooth_dr=smooth, batch=batch)
        self.ce = CrossEntropyLoss(class_weights=class_weights)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tgt = _as_index_target(target, logits)
        logits = logits.float()
        return self.lambda_dice * self.dice(logits, tgt[:, None]) + self.lambda_ce * self.ce(logits, tgt)


_LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "dice": SoftDiceLoss,
    "dice_focal": DiceFocalLoss,
    "dice_ce": DiceCELoss,
}


def create_loss(name: LossName, **options: Any) -> nn.Module:
    """Build a loss by name.

    Args:
        name: one of ``ce``, ``focal``, ``dice``, ``dice_focal``, ``dice_ce``.
        options: that loss's keyword options (``gamma``, ``class_weights``, ``smooth``, ``batch``,
            ``include_background``, ``lambda_dice``, ``lambda_focal``, ``lambda_ce``; see the classes).

    Raises:
        ValueError: unknown loss name or an option that loss does not take (the message lists the valid ones).
    """
    import difflib
    import inspect

    if name not in _LOSSES:
        close = difflib.get_close_matches(str(name), LOSS_NAMES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"unknown loss '{name}'; {hint}available: {', '.join(LOSS_NAMES)}")
    cls = _LOSSES[name]
    valid = [p for p, v in inspect.signature(cls.__init__).parameters.items() if v.kind == inspect.Parameter.KEYWORD_ONLY]
    for opt in options:
        if opt not in valid:
            close = difflib.get_close_matches(opt, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown option '{opt}' for loss '{name}'; {hint}valid options: {', '.join(valid)}")
    return cls(**options)

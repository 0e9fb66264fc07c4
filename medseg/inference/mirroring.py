"""Mirror test-time augmentation of a network's window batch, the same for every model kind."""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

__all__ = ["flip_sets", "mirrored_mean"]


def flip_sets(dims: Sequence[int], tta: bool) -> list[tuple[int, ...]]:
    """The tensor dims to flip for each pass: ``[()]`` without TTA, else no flip then every
    combination of ``dims`` (nnU-Net's order: single axes first)."""
    if not tta or not dims:
        return [()]
    dims = tuple(int(d) for d in dims)
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def mirrored_mean(forward: Callable, x, flips: Sequence[tuple[int, ...]], transform: Callable | None = None):
    """``mean over flips of flip(transform(forward(flip(x))))``, float32.

    Args:
        forward: the network (or a compiled backend's forward), ``(B, C, *window)`` → ``(B, K, *window)``.
        x: the window batch, a tensor on the network's device.
        flips: :func:`flip_sets`.
        transform: applied to each pass's output before averaging (e.g. softmax over the classes);
            ``None`` averages the logits (nnU-Net, MONAI).
    """
    import torch

    total = None
    for dims in flips:
        out = forward(torch.flip(x, dims) if dims else x).float()
        if transform is not None:
            out = transform(out)
        if dims:
            out = torch.flip(out, dims)
        total = out if total is None else total.add_(out)
    if len(flips) > 1:
        total.div_(len(flips))
    return total

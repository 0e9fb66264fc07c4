"""Resampling per-class scores back to the input's grid slab by slab (bounded memory).

:class:`SlabResampler` computes exactly what ``torch.nn.functional.interpolate(...,
mode="trilinear", align_corners=False)`` computes over the whole volume (the interpolation that
:func:`medseg.preprocess.invert_spatial` uses), but from slabs along the last axis arriving in
order: trilinear interpolation is bilinear in-plane followed by linear along ``Z``, so every
output slice needs only two neighbouring input slices. Memory is bounded by ``max_bytes`` of
working buffers however many classes and slices there are.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = ["SlabResampler", "linear_source_indices", "nearest_source_indices"]


def linear_source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second.

    Follows PyTorch's ``align_corners=False`` rule: ``src = (dst + 0.5) × in/out − 0.5``,
    clamped at 0; ``i1 = min(i0 + 1, in − 1)``.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    w1[i0 == i1] = 0.0
    return i0, i1, w1


def nearest_source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-slice interpolation in the form of :func:`linear_source_indices` (second weight 0):
    the source ``floor((dst + 0.5) × in/out)``, torch's ``nearest-exact`` (and scipy's order-0
    ``map_coordinates`` at the same centres)."""
    src = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)).astype(np.int64)
    i0 = np.clip(src, 0, in_size - 1)
    return i0, i0.copy(), np.zeros(out_size, dtype=np.float32)


class SlabResampler:
    """Trilinear resampling of ``(K, X, Y, Z)`` to ``(K, X', Y', Z')`` fed by ``Z`` slabs in order.

    Args:
        in_shape: ``(X, Y, Z)`` of the arriving data.
        out_shape: ``(X', Y', Z')`` of the result.
        n_channels: ``K``.
        max_bytes: budget for the working buffers of one output chunk (float32).
        modes: ``"linear"`` or ``"nearest"`` per axis ``(X, Y, Z)`` (nnU-Net's export takes the
            nearest slice along an anisotropic axis); all linear is trilinear.

    Use :meth:`push` with consecutive slabs ``(K, X, Y, dz)``; it yields ``(z0, chunk)`` with
    ``chunk`` ``(K, X', Y', m)`` float32 for output slices ``z0 .. z0+m-1`` as soon as they can be
    computed. After the last input slice every output slice has been yielded.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], n_channels: int,
                 max_bytes: int = 256 * 2**20, modes: Sequence[str] = ("linear", "linear", "linear")):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if len(self.in_shape) != 3 or len(self.out_shape) != 3:
            raise ValueError(f"in_shape and out_shape must be 3D, not {self.in_shape} and {self.out_shape}")
        self.n_channels = int(n_channels)
        self.modes = tuple(modes)
        if len(self.modes) != 3 or any(m not in ("linear", "nearest") for m in self.modes):
            raise ValueError(f"modes must be 3 of 'linear'/'nearest', not {modes}")
        tables = [(nearest_source_indices if m == "nearest" else linear_source_indices)(i, o)
                  for m, i, o in zip(self.modes, self.in_shape, self.out_shape)]
        self._plane_tables = tables[:2]
        self.i0, self.i1, self.w1 = tables[2]
        per_slice = self.n_channels * self.out_shape[0] * self.out_shape[1] * 4
        # each output slice may need two resized source slices plus itself
        self.chunk = max(1, int(max_bytes // (3 * per_slice)))
        self._next_in = 0  # next input Z expected
        self._next_out = 0  # next output Z to produce
        self._held: np.ndarray | None = None  # input slices [held_lo, next_in) still needed
        self._held_lo = 0

    @property
    def done(self) -> bool:
        return self._next_out >= self.out_shape[2]

    def _resize_plane(self, slices: np.ndarray) -> np.ndarray:
        """``(K, X, Y, n)`` → ``(K, X', Y', n)`` bilinear (align_corners=False)."""
        if slices.shape[1:3] == self.out_shape[:2]:
            return slices
        if self.modes[:2] != ("linear", "linear"):
            out = slices
            for axis, (i0, i1, w1) in zip((1, 2), self._plane_tables):
                if out.shape[axis] == self.out_shape[axis - 1]:
                    continue
                shape = [1] * out.ndim
                shape[axis] = -1
                w = w1.reshape(shape)
                out = np.take(out, i0, axis=axis) * (1.0 - w) + np.take(out, i1, axis=axis) * w
            return out.astype(np.float32, copy=False)
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(slices, -1, 0)))  # (n, K, X, Y)
        r = F.interpolate(t, size=self.out_shape[:2], mode="bilinear", align_corners=False)
        return np.moveaxis(r.numpy(), 0, -1)

    def push(self, slab: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if slab.ndim != 4 or slab.shape[0] != self.n_channels or slab.shape[1:3] != self.in_shape[:2]:
            raise ValueError(f"slab of shape {slab.shape} does not fit (K={self.n_channels}, {self.in_shape[:2]}, dz)")
        a = self._next_in
        b = a + slab.shape[-1]
        if b > self.in_shape[2]:
            raise ValueError(f"slabs cover Z up to {b}, beyond the input depth {self.in_shape[2]}")
        held, held_lo = self._held, self._held_lo

        def sources(lo: int, hi: int) -> np.ndarray:
            """Input slices [lo, hi) from the held ones and this slab (copies only that range)."""
            parts = []
            if held is not None and lo < a:
                parts.append(held[..., lo - held_lo:min(hi, a) - held_lo])
            if hi > a:
                parts.append(slab[..., max(lo, a) - a:hi - a])
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

        self._next_in = b
        last = b == self.in_shape[2]
        while self._next_out < self.out_shape[2]:
            start = self._next_out
            stop = min(start + self.chunk, self.out_shape[2])
            # only output slices whose sources have all arrived
            ready = np.nonzero(self.i1[start:stop] < b)[0]
            if ready.size == 0:
                break
            stop = start + int(ready[-1]) + 1 if not last else stop
            i0, i1, w1 = self.i0[start:stop], self.i1[start:stop], self.w1[start:stop]
            src_lo, src_hi = int(i0.min()), int(i1.max()) + 1
            resized = self._resize_plane(sources(src_lo, src_hi))
            out = resized[..., i0 - src_lo] * (1.0 - w1)
            out += resized[..., i1 - src_lo] * w1
            self._next_out = stop
            yield start, out.astype(np.float32, copy=False)
        if self._next_out < self.out_shape[2]:
            keep_from = int(self.i0[self._next_out])
            self._held = sources(keep_from, b).copy() if keep_from < b else None
            self._held_lo = keep_from
        else:
            self._held = None

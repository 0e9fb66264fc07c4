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

__all__ = ["SlabResampler", "AxisMap", "linear_source_indices", "class_argmax"]


def class_argmax(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The class of the highest score per voxel: ``scores.argmax(axis=0)`` (ties to the lowest
    class, a NaN score wins as in numpy), written into ``out`` when given.

    numpy reduces the slowest axis of a ``(K, X, Y, Z)`` array voxel by voxel; this runs ``K``
    passes over contiguous class planes instead (2–2.5× faster on 20 classes), with the same result.

    Args:
        scores: ``(K, ...)`` per-class scores (probabilities or logits), any float dtype.
        out: ``scores.shape[1:]`` integer array to write into (default: a new uint8 array for
            ``K <= 256`` classes, else uint16).

    Returns:
        ``out``, or the new label array.
    """
    k = scores.shape[0]
    if out is not None and out.shape != scores.shape[1:]:
        raise ValueError(f"out has shape {out.shape}, the scores' voxels {scores.shape[1:]}")
    if k == 0:
        raise ValueError("no classes to choose from")
    labels = np.zeros(scores.shape[1:], dtype=np.uint8 if k <= 256 else np.uint16)  # contiguous
    best = np.array(scores[0], copy=True)
    higher = np.empty(best.shape, dtype=bool)
    for c in range(1, k):
        np.greater(scores[c], best, out=higher)
        np.copyto(labels, c, where=higher)
        np.maximum(best, scores[c], out=best)
    if np.isnan(best).any():  # a NaN score: numpy's rule (the first NaN class) where there is one
        nan = np.isnan(best)
        labels[nan] = np.asarray(scores)[:, nan].argmax(axis=0)
    if out is None:
        return labels
    out[...] = labels
    return out


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


class AxisMap:
    """A 1D resampling along one axis: output index ``j`` takes ``w0[j]·x[i0[j]] + w1[j]·x[i1[j]]``.

    Build it with :meth:`affine`: output index ``j`` sits at input coordinate ``scale·j + offset``
    (what ``torch.nn.functional.grid_sample`` samples when an axis-aligned affine maps output
    voxels to input voxels, as MONAI's ``Spacingd`` and its inverse do).
    """

    def __init__(self, i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray, *, same_fov_linear: bool = False):
        self.i0, self.i1 = np.asarray(i0, dtype=np.int64), np.asarray(i1, dtype=np.int64)
        self.w0, self.w1 = np.asarray(w0, dtype=np.float32), np.asarray(w1, dtype=np.float32)
        # torch's bilinear (align_corners=False) computes exactly this map, ~8x faster on planes
        self.same_fov_linear = bool(same_fov_linear)

    @classmethod
    def linear(cls, in_size: int, out_size: int) -> "AxisMap":
        """Linear interpolation over the same field of view (:func:`linear_source_indices`:
        ``align_corners=False``, edges clamped), as torch's trilinear and skimage's order 1."""
        i0, i1, w1 = linear_source_indices(in_size, out_size)
        return cls(i0, i1, (1.0 - w1).astype(np.float32), w1, same_fov_linear=True)

    @classmethod
    def nearest(cls, in_size: int, out_size: int) -> "AxisMap":
        """The nearest source over the same field of view: ``floor((j + 0.5)·in/out)``, torch's
        ``nearest-exact`` and scipy's order-0 ``map_coordinates`` at ``(j + 0.5)·in/out − 0.5``
        (nnU-Net's two export rules along an anisotropic axis)."""
        src = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)).astype(np.int64)
        i0 = np.clip(src, 0, in_size - 1)
        return cls(i0, i0, np.ones(out_size, dtype=np.float32), np.zeros(out_size, dtype=np.float32))

    @classmethod
    def affine(cls, in_size: int, out_size: int, scale: float, offset: float, *, mode: str = "bilinear",
               padding: str = "border") -> "AxisMap":
        """``mode``: ``"bilinear"`` (linear) or ``"nearest"`` (round half to even, as grid_sample);
        ``padding``: ``"border"`` (coordinates clamped into the input) or ``"zeros"`` (samples
        outside the input count as 0)."""
        if mode not in ("bilinear", "nearest") or padding not in ("border", "zeros"):
            raise ValueError(f"mode must be bilinear or nearest and padding border or zeros, not {mode}, {padding}")
        src = float(scale) * np.arange(out_size, dtype=np.float64) + float(offset)
        last = in_size - 1
        if padding == "border":
            src = np.clip(src, 0.0, last)
        if mode == "nearest":
            i0 = np.rint(src).astype(np.int64)
            inside = (i0 >= 0) & (i0 <= last)
            i0 = np.clip(i0, 0, last)
            return cls(i0, i0, inside.astype(np.float32), np.zeros(out_size, dtype=np.float32))
        f = np.floor(src)
        w1 = src - f
        i0 = f.astype(np.int64)
        i1 = i0 + 1
        w0 = 1.0 - w1
        w0 = np.where((i0 >= 0) & (i0 <= last), w0, 0.0)
        w1 = np.where((i1 >= 0) & (i1 <= last), w1, 0.0)
        return cls(np.clip(i0, 0, last), np.clip(i1, 0, last), w0, w1)

    def apply(self, array: np.ndarray, axis: int) -> np.ndarray:
        """Resample ``array`` along ``axis`` (float32)."""
        shape = [1] * array.ndim
        shape[axis] = -1
        out = np.take(array, self.i0, axis=axis) * self.w0.reshape(shape)
        if np.any(self.w1):
            out += np.take(array, self.i1, axis=axis) * self.w1.reshape(shape)
        return out.astype(np.float32, copy=False)


class SlabResampler:
    """Trilinear resampling of ``(K, X, Y, Z)`` to ``(K, X', Y', Z')`` fed by ``Z`` slabs in order.

    Args:
        in_shape: ``(X, Y, Z)`` of the arriving data.
        out_shape: ``(X', Y', Z')`` of the result.
        n_channels: ``K``.
        max_bytes: budget for the working buffers of one output chunk (float32).
        axis_maps: one :class:`AxisMap` per axis instead of the same-field-of-view trilinear rule
            (``None``).

    Use :meth:`push` with consecutive slabs ``(K, X, Y, dz)``; it yields ``(z0, chunk)`` with
    ``chunk`` ``(K, X', Y', m)`` float32 for output slices ``z0 .. z0+m-1`` as soon as they can be
    computed. After the last input slice every output slice has been yielded.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], n_channels: int,
                 max_bytes: int = 256 * 2**20, axis_maps: Sequence[AxisMap] | None = None):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if len(self.in_shape) != 3 or len(self.out_shape) != 3:
            raise ValueError(f"in_shape and out_shape must be 3D, not {self.in_shape} and {self.out_shape}")
        self.n_channels = int(n_channels)
        self.axis_maps = None if axis_maps is None else tuple(axis_maps)
        if self.axis_maps is not None:
            if len(self.axis_maps) != 3 or any(len(m.i0) != n for m, n in zip(self.axis_maps, self.out_shape)):
                raise ValueError(f"axis_maps must be three AxisMaps of the output sizes {self.out_shape}")
            z = self.axis_maps[2]
            self.i0, self.i1, self.w0, self.w1 = z.i0, z.i1, z.w0, z.w1
        else:
            self.i0, self.i1, self.w1 = linear_source_indices(self.in_shape[2], self.out_shape[2])
            self.w0 = (1.0 - self.w1).astype(np.float32)
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
        """``(K, X, Y, n)`` → ``(K, X', Y', n)`` bilinear (align_corners=False, or the axis maps)."""
        if self.axis_maps is not None and not all(m.same_fov_linear for m in self.axis_maps[:2]):
            return self.axis_maps[1].apply(self.axis_maps[0].apply(slices, 1), 2)
        if slices.shape[1:3] == self.out_shape[:2]:
            return slices
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
            i0, i1, w0, w1 = self.i0[start:stop], self.i1[start:stop], self.w0[start:stop], self.w1[start:stop]
            src_lo, src_hi = int(i0.min()), int(i1.max()) + 1
            resized = self._resize_plane(sources(src_lo, src_hi))
            planes = np.moveaxis(resized, -1, 0)  # (n, K, X', Y')
            if planes.flags.c_contiguous:  # torch's bilinear output: whole planes, gathered as blocks
                out = planes[i0 - src_lo] * w0[:, None, None, None]
                out += planes[i1 - src_lo] * w1[:, None, None, None]
                out = np.ascontiguousarray(np.moveaxis(out, 0, -1))
            else:
                out = resized[..., i0 - src_lo] * w0
                out += resized[..., i1 - src_lo] * w1
            self._next_out = stop
            yield start, out.astype(np.float32, copy=False)
        if self._next_out < self.out_shape[2]:
            keep_from = int(self.i0[self._next_out])
            self._held = sources(keep_from, b).copy() if keep_from < b else None
            self._held_lo = keep_from
        else:
            self._held = None

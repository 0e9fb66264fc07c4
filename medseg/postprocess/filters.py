"""Fast Gaussian and bilateral filtering of per-voxel fields, in plain PyTorch (CPU and CUDA).

These are the message-passing operators of the dense CRF (:mod:`medseg.postprocess.crf`) and of
CRF-as-RNN (:mod:`medseg.postprocess.crf_rnn`). Both compute, for every voxel ``i``,

    out_i = n_i^(-1/2) * sum_j k(i, j) * n_j^(-1/2) * q_j,   n_i = sum_j k(i, j)

(the symmetric normalisation of Krähenbühl & Koltun's dense CRF), with ``k`` a Gaussian over
position (mm) or over position and intensity, at a cost linear in the number of voxels:

- :class:`GaussianFilter` (spatial kernel): sum-pool into blocks of about σ/2 voxels, separable
  Gaussian blur of the small grid, trilinear read-back (``F.interpolate``). Blocks of 1 voxel
  (σ under ~1.5 voxels) blur the volume directly.
- :class:`BilateralGridFilter` (appearance kernel): a bilateral grid (Paris & Durand 2006). Each
  voxel is splatted into the spatial cell nearest to it (cells of σ/r voxels) and linearly
  between the two nearest intensity bins (bins of σ_I) of every channel; the grid is blurred with
  a separable Gaussian; each voxel reads back from the same cells with the same weights. Splat
  and slice use the same sparse matrix, so the operator is symmetric (its own adjoint, which
  CRF-as-RNN's backward pass relies on). For inference (``symmetric=False``) each voxel is
  splatted into its nearest bin only, which halves the splatting. The blur widths are reduced by the variance the
  quantisation adds (1/12 cell² per nearest-cell splat or slice, 1/6 bin² per linear one), so
  the effective kernel keeps the requested σ. Runs of empty intensity bins longer than the blur
  reach are squeezed out (exactly: such bins never exchange mass), so CT's wide HU range costs
  only the occupied part.

All precomputation (cell indices, weights, normalisation) happens once at construction; a
filtering call is a few ``bincount``/``index_select`` passes over the voxels plus a blur of a
grid far smaller than the volume.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["GaussianFilter", "BilateralGridFilter", "gaussian_taps", "blur_axis"]


def gaussian_taps(sigma: float, dtype: torch.dtype = torch.float64, truncate: float = 2.5) -> list[float]:
    """Unnormalised 1D Gaussian taps ``exp(-s²/2σ²)`` for ``s = 0..R`` (R = floor(truncate·σ), ≥ 1)."""
    radius = max(1, int(math.floor(truncate * sigma)))
    if sigma <= 1e-6:
        return [1.0]
    return [math.exp(-(s * s) / (2.0 * sigma * sigma)) for s in range(radius + 1)]


def blur_axis(x: torch.Tensor, dim: int, taps: Sequence[float]) -> torch.Tensor:
    """Symmetric 1D convolution of ``x`` along ``dim`` with ``taps`` (centre first), zero outside.

    Shifted multiply-adds on strided views: no im2col buffers, any dtype, autograd-friendly.
    """
    n = x.shape[dim]
    out = x * taps[0]
    for s, g in enumerate(taps[1:], start=1):
        if s >= n:
            break
        out.narrow(dim, s, n - s).add_(x.narrow(dim, 0, n - s), alpha=g)
        out.narrow(dim, 0, n - s).add_(x.narrow(dim, s, n - s), alpha=g)
    return out


def upsample2_linear(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Double ``x`` along ``dim`` with linear interpolation between cell centres (edges replicated).

    Equal to ``F.interpolate(..., scale_factor=2, mode="linear", align_corners=False)`` along one
    axis, done as strided multiply-adds (several times faster than the generic trilinear kernel).
    """
    n = x.shape[dim]
    if x.requires_grad:  # out-of-place version for autograd (CRF-as-RNN)
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        return torch.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], dim + 1).flatten(dim, dim + 1)
    shape = list(x.shape)
    shape[dim] = 2 * n
    out = x.new_empty(shape)
    pairs = out.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    torch.mul(x, 0.75, out=even)
    torch.mul(x, 0.75, out=odd)
    if n > 1:
        even.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=0.25)
        odd.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=0.25)
    even.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=0.25)
    odd.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1), alpha=0.25)
    return out


def _check_sigmas(name: str, values: Sequence[float], count: int) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) != count:
        raise ValueError(f"{name} needs {count} values, got {len(vals)}: {vals}")
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise ValueError(f"{name} must be positive and finite, got {vals}")
    return vals


class GaussianFilter:
    """Normalised 3D Gaussian filter of ``(X, Y, Z)`` fields, σ given in voxels per axis.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        sigma_vox: Gaussian σ along each axis in voxels (σ mm / spacing mm).
        device: where the fields live.
        dtype: float32 (inference) or float64 (gradient checks).
        blocks_per_sigma: pooling block ≈ σ / this (2: blocks of 1.5 voxels for σ = 3 voxels).
    """

    def __init__(self, shape: Sequence[int], sigma_vox: Sequence[float], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, blocks_per_sigma: float = 2.0):
        self.shape = tuple(int(s) for s in shape)
        sig = _check_sigmas("sigma_vox", sigma_vox, 3)
        self.block = tuple(max(1, int(round(s / blocks_per_sigma))) for s in sig)
        self.taps = []
        for s, b in zip(sig, self.block):
            extra = 0.0 if b == 1 else (b * b - 1) / 12.0 + b * b / 6.0
            sc = math.sqrt(max(s * s - extra, 0.09 * s * s)) / b
            self.taps.append(gaussian_taps(sc))
        self.padded = tuple(int(math.ceil(n / b)) * b for n, b in zip(self.shape, self.block))
        self.device = torch.device(device)
        self.dtype = dtype
        ones = torch.ones(self.shape, device=self.device, dtype=dtype)
        norm = self._raw(ones).clamp_min(1e-20)
        self.norm = torch.rsqrt(norm)
        #: 1 / (K 1): row normalisation, equal to the symmetric one away from the borders
        self.inv_count = torch.reciprocal(norm)

    def _raw(self, q: torch.Tensor) -> torch.Tensor:
        """Unnormalised filter of ``(..., X, Y, Z)``."""
        lead = q.shape[:-3]
        x = q.reshape((-1, 1) + self.shape)
        pad = []
        for n, p in zip(reversed(self.shape), reversed(self.padded)):
            pad += [0, p - n]
        if any(pad):
            x = F.pad(x, pad)
        if self.block != (1, 1, 1):
            x = F.avg_pool3d(x, kernel_size=self.block, stride=self.block)
        for axis, taps in enumerate(self.taps):
            x = blur_axis(x, axis + 2, taps)
        if self.block == (2, 2, 2):
            for axis in range(3):
                x = upsample2_linear(x, axis + 2)
        elif self.block != (1, 1, 1):
            x = F.interpolate(x, size=self.padded, mode="trilinear", align_corners=False)
        x = x[..., : self.shape[0], : self.shape[1], : self.shape[2]]
        return x.reshape(lead + self.shape)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """Filter ``q`` of shape ``(..., X, Y, Z)``; returns the same shape (new tensor)."""
        return self._raw(q * self.norm) * self.norm


class BilateralGridFilter:
    """Normalised bilateral (position + intensity) filter on a bilateral grid.

    Args:
        features: ``(Ci, X, Y, Z)`` intensities, one row per image channel, in the image's units.
        sigma_vox: spatial σ along each axis in voxels.
        intensity_sigma: σ per channel, in the features' units (e.g. HU).
        device, dtype: where and in what precision fields are filtered.
        cells_per_sigma: spatial grid cells per σ (the grid's resolution; 1 = cells of σ voxels).
        max_channels: at most this many channels (2^Ci grid corners per voxel).
        symmetric: splat linearly in intensity like the slice (the operator is its own adjoint,
            needed for :meth:`differentiable`); ``False`` splats each voxel into its nearest
            intensity bin only (half the splatting work, same kernel variance; for inference).

    Memory: per voxel ``2^Ci`` int32 indices and float weights, plus the grid.
    """

    def __init__(self, features: torch.Tensor, sigma_vox: Sequence[float], intensity_sigma: Sequence[float],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 cells_per_sigma: float = 1.0, max_channels: int = 3, symmetric: bool = True):
        if features.ndim != 4:
            raise ValueError(f"features must be (Ci, X, Y, Z), got shape {tuple(features.shape)}")
        ci = int(features.shape[0])
        if ci > max_channels:
            raise ValueError(f"the bilateral grid takes at most {max_channels} image channels, got {ci}")
        sig = _check_sigmas("sigma_vox", sigma_vox, 3)
        isig = _check_sigmas("intensity_sigma", intensity_sigma, ci)
        self.device = torch.device(device)
        self.dtype = dtype
        self.shape = tuple(int(s) for s in features.shape[1:])
        n_vox = self.shape[0] * self.shape[1] * self.shape[2]

        # spatial cells (nearest cell centre), blur σ in cells with the quantisation variance removed
        cell_ids = None
        dims: list[int] = []
        self.taps: list[list[float]] = []
        for axis, (n, s) in enumerate(zip(self.shape, sig)):
            cell = max(1.0, s / cells_per_sigma)
            idx = torch.floor(torch.arange(n, device=self.device, dtype=torch.float64) / cell + 0.5).to(torch.int32)
            count = int(idx[-1]) + 1
            comp = 0.0 if cell == 1.0 else 2.0 / 12.0
            sc = math.sqrt(max((s / cell) ** 2 - comp, 0.25 * (s / cell) ** 2))
            self.taps.append(gaussian_taps(sc))
            view = [1, 1, 1]
            view[axis] = n
            idx = idx.view(view)
            cell_ids = idx if cell_ids is None else cell_ids * count + idx
            dims.append(count)
        cell_ids = cell_ids.expand(self.shape).reshape(-1)

        # intensity bins per channel: linear (hat) splat/slice between floor and floor+1
        self.symmetric = symmetric
        bin_sigma = math.sqrt(1.0 - (2.0 / 6.0 if symmetric else 1.0 / 6.0 + 1.0 / 12.0))
        itaps = gaussian_taps(bin_sigma)
        reach = len(itaps) - 1
        corners_lo: list[torch.Tensor] = []
        fracs: list[torch.Tensor] = []
        newpos_list: list[torch.Tensor] = []
        for c in range(ci):
            f = features[c].to(self.device, torch.float32).reshape(-1)
            t = (f - f.min()) * (1.0 / isig[c])
            lo = torch.floor(t)
            frac = (t - lo).to(dtype)
            lo = lo.to(torch.int32)
            # squeeze runs of empty bins longer than the blur reach (exact: they never exchange mass)
            hist = torch.bincount(lo).cpu()
            occ = torch.zeros(len(hist) + 1, dtype=torch.bool)
            occ[:-1] |= hist > 0
            occ[1:] |= hist > 0
            step = []
            run = 0
            for o in occ.tolist():
                run = 0 if o else run + 1
                step.append(1 if run <= reach else 0)
            newpos = (torch.cumsum(torch.tensor(step), 0) - 1).to(device=self.device, dtype=torch.int32)
            corners_lo.append(lo)
            fracs.append(frac)
            newpos_list.append(newpos)
            dims.append(int(newpos[-1]) + 1)
            self.taps.append(itaps)
            del f, t
        self.dims = tuple(dims)
        self.grid_size = int(math.prod(dims))
        if self.grid_size >= 2**31 or self.grid_size > 8 * n_vox + 4_000_000:
            raise ValueError(f"bilateral grid of {self.grid_size} cells (for {n_vox} voxels) is too large: raise "
                             "intensity_sigma or bilateral σ, use fewer image channels, or lower cells_per_sigma")
        # corners: every combination of lo/hi per channel
        keys = []
        weights = []
        for corner in range(2**ci):
            key = cell_ids
            w = None
            for c in range(ci):
                hi = (corner >> c) & 1
                b = newpos_list[c].index_select(0, corners_lo[c] + hi if hi else corners_lo[c])
                key = key * dims[3 + c] + b
                wc = fracs[c] if hi else 1 - fracs[c]
                w = wc if w is None else w * wc
            keys.append(key)
            weights.append(w)
        del corners_lo, fracs, cell_ids
        self.keys = keys
        self.weights = weights
        if symmetric:
            self.splat_keys, self.splat_weights = self.keys, self.weights
        else:
            # nearest intensity corner: the corner whose hat weight is largest
            if ci == 1:
                key = torch.where(weights[1] > weights[0], keys[1], keys[0])
            else:
                best = torch.stack(weights).argmax(0)
                key = keys[0].clone()
                for corner in range(1, 2**ci):
                    sel = best == corner
                    key[sel] = keys[corner][sel]
            self.splat_keys = [key]
            self.splat_weights = [torch.ones(n_vox, dtype=dtype, device=self.device)]
        ones = torch.ones(n_vox, dtype=dtype, device=self.device)
        norm = self._raw(ones)
        nrm = torch.rsqrt(norm.clamp_min(1e-20))
        # fold the symmetric normalisation into the splat/slice weights
        self.weights = [w * nrm for w in weights]
        self.splat_weights = self.weights if symmetric else [w * nrm for w in self.splat_weights]

    def _splat(self, q: torch.Tensor) -> torch.Tensor:
        grid = None
        for key, w in zip(self.splat_keys, self.splat_weights):
            part = torch.bincount(key, weights=q * w, minlength=self.grid_size)
            grid = part if grid is None else grid.add_(part)
        return grid

    def _blur(self, grid: torch.Tensor) -> torch.Tensor:
        g = grid.view(self.dims)
        for axis, taps in enumerate(self.taps):
            g = blur_axis(g, axis, taps)
        return g.reshape(-1)

    def _slice(self, grid: torch.Tensor) -> torch.Tensor:
        out = None
        for key, w in zip(self.keys, self.weights):
            part = grid.index_select(0, key).mul_(w)
            out = part if out is None else out.add_(part)
        return out

    def _raw(self, q: torch.Tensor) -> torch.Tensor:
        return self._slice(self._blur(self._splat(q)))

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """Filter one field ``q`` of shape ``(X, Y, Z)`` or ``(N,)``; returns the same shape."""
        shape = q.shape
        return self._raw(q.reshape(-1).to(self.dtype)).reshape(shape)


class _SymmetricFilterFn(torch.autograd.Function):
    """Autograd for a symmetric linear filter: the backward pass is the same filter."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, flt: "BilateralGridFilter") -> torch.Tensor:  # type: ignore[override]
        ctx.flt = flt
        return flt._raw(q)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.flt._raw(grad.contiguous()), None


def _differentiable(self: BilateralGridFilter, q: torch.Tensor) -> torch.Tensor:
    """Like calling the filter, but differentiable with respect to ``q`` (shape ``(N,)`` or ``(X, Y, Z)``)."""
    if not self.symmetric:
        raise ValueError("differentiable() needs a filter built with symmetric=True")
    shape = q.shape
    return _SymmetricFilterFn.apply(q.reshape(-1), self).reshape(shape)


BilateralGridFilter.differentiable = _differentiable  # type: ignore[attr-defined]

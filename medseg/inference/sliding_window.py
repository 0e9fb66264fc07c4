"""A lean sliding-window accumulator: Gaussian blending, streamed in slabs along the last axis.

Windows are visited in order of their start along the last axis ``Z``. As soon as every window
that touches a range of ``Z`` has been added, that slab is normalised and handed on (and its
buffer freed), so the accumulator only ever holds ``C × X × Y × (window depth + a few slabs)``
float32 values, never ``C × X × Y × Z`` for the whole study.

The window function (the network) runs wherever the caller put it (GPU or CPU) and returns
weighted probabilities; stitching happens here, on the CPU, in numpy.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

__all__ = ["gaussian_importance", "window_starts", "nnunet_window_starts", "nnunet_gaussian", "iter_probability_slabs",
           "sliding_window_probabilities"]

WindowFunction = Callable[[np.ndarray], np.ndarray]


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125, min_weight: float = 1e-3) -> np.ndarray:
    """Gaussian weights of one window, shape ``patch_size``, float32, peak 1 at the centre.

    ``sigma = sigma_scale × window size`` per axis (nnU-Net's choice); weights are clamped
    below at ``min_weight`` so that voxels near window corners still count. Axes of length 1
    (the slice axis of a 2D model) get weight 1.
    """
    if not 0 < sigma_scale:
        raise ValueError(f"sigma_scale must be positive, not {sigma_scale}")
    weights = np.ones((1,) * len(patch_size), dtype=np.float64)
    for axis, p in enumerate(patch_size):
        p = int(p)
        if p < 1:
            raise ValueError(f"patch_size must hold positive sizes, not {tuple(patch_size)}")
        g = np.ones(1) if p == 1 else np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2.0) / (sigma_scale * p)) ** 2)
        shape = [1] * len(patch_size)
        shape[axis] = p
        weights = weights * g.reshape(shape)
    weights /= weights.max()
    return np.maximum(weights, min_weight).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``[0, size)`` with ``overlap`` (0..1).

    The step is ``patch × (1 − overlap)`` rounded down (at least 1); the last window is moved
    back to end exactly at ``size``. ``size`` must be at least ``patch`` (pad first).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), not {overlap}")
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the window ({patch}); pad it first")
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def nnunet_window_starts(size: int, patch: int, step_size: float) -> list[int]:
    """nnU-Net's window starts (``compute_steps_for_sliding_window``): the fewest windows whose
    step is at most ``patch × step_size``, spread evenly over ``[0, size − patch]`` and rounded."""
    if not 0.0 < step_size <= 1.0:
        raise ValueError(f"step size must be in (0, 1], not {step_size}")
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the window ({patch}); pad it first")
    n = int(np.ceil((size - patch) / (patch * step_size))) + 1
    if n == 1:
        return [0]
    step = (size - patch) / (n - 1)
    return [int(np.round(step * i)) for i in range(n)]


def nnunet_gaussian(patch_size: Sequence[int]) -> np.ndarray:
    """nnU-Net's window weights (``compute_gaussian`` with σ = patch/8 and peak 10, rounded to
    float16 as nnU-Net keeps them, zeros replaced by the smallest weight), float32.

    nnU-Net filters a centred impulse with ``scipy.ndimage.gaussian_filter``; that filter runs
    axis after axis, so its result is the outer product of the three 1D filtered impulses,
    multiplied in the same order. It is computed so here (bit-identical, ~10× faster at 96×160×160).
    """
    from scipy.ndimage import gaussian_filter1d

    patch = tuple(int(p) for p in patch_size)
    g = np.ones((1,) * len(patch))
    for axis, p in enumerate(patch):
        impulse = np.zeros(p)
        impulse[p // 2] = 1
        shape = [1] * len(patch)
        shape[axis] = p
        g = g * gaussian_filter1d(impulse, p / 8.0, 0, mode="constant", cval=0).reshape(shape)
    g = (g / (np.max(g) / 10.0)).astype(np.float16)
    g[g == 0] = np.min(g[g != 0])
    return g.astype(np.float32)


def iter_probability_slabs(image: np.ndarray, window_fn: WindowFunction, n_classes: int,
                           patch_size: Sequence[int], *, overlap: float = 0.25, window_batch: int = 2,
                           importance: np.ndarray | None = None, max_slab: int = 16,
                           starts: Callable[[int, int], list[int]] | None = None,
                           accumulate: str = "float32") -> Iterator[tuple[int, np.ndarray]]:
    """Run ``window_fn`` over sliding windows of ``image`` and yield blended probabilities by slab.

    Args:
        image: ``(C, X, Y, Z)`` float32, the preprocessed study.
        window_fn: maps a batch ``(B, C, px, py, pz)`` float32 to per-class scores
            ``(B, K, px, py, pz)`` float32 **already multiplied by** ``importance`` (so the
            weighting can run on the GPU with the network).
        n_classes: ``K``.
        patch_size: window ``(px, py, pz)`` in voxels (1 along the slice axis of a 2D model).
        overlap: fraction of a window shared with its neighbour along each axis.
        window_batch: windows per call of ``window_fn`` (at least; all windows with the same
            start along ``Z`` are batched together, then grouped further up to this count).
        importance: the weights ``window_fn`` applied (:func:`gaussian_importance` by default).
        max_slab: most ``Z`` slices per yielded slab (bounds the copies made for the consumer).
        starts: ``(axis size, window size) -> window starts`` along each axis of the padded image
            (default :func:`window_starts` with ``overlap``; nnU-Net models use
            :func:`nnunet_window_starts`).
        accumulate: ``"float32"``, or ``"float16"`` for nnU-Net's arithmetic: the weighted
            scores and the weights are summed into float16 buffers (each sum rounded to float16,
            windows added to a voxel in lexicographic order of their starts with the last axis
            outermost) and divided in float16, as ``nnUNetPredictor`` does; the slabs then hold
            float16 values (as float32).

    Yields:
        ``(z0, slab)``: ``slab`` ``(K, X, Y, dz)`` float32 weighted means for ``Z`` indices
        ``z0 .. z0+dz-1`` of ``image``, in increasing, gap-free order.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), not shape {image.shape}")
    if len(patch_size) != 3:
        raise ValueError(f"patch_size must have 3 values (use 1 for a 2D model's slice axis), not {tuple(patch_size)}")
    if window_batch < 1:
        raise ValueError(f"window_batch must be at least 1, not {window_batch}")
    patch = tuple(int(p) for p in patch_size)
    weights = gaussian_importance(patch) if importance is None else importance.astype(np.float32, copy=False)
    if weights.shape != patch:
        raise ValueError(f"importance map shape {weights.shape} differs from the window {patch}")
    spatial = image.shape[1:]
    pad_lo = [max(0, p - s) // 2 for p, s in zip(patch, spatial)]
    pad_hi = [max(0, p - s) - lo for p, s, lo in zip(patch, spatial, pad_lo)]
    if any(pad_lo) or any(pad_hi):
        image = np.pad(image, [(0, 0)] + list(zip(pad_lo, pad_hi)), mode="constant", constant_values=0.0)
    padded = image.shape[1:]
    place = starts or (lambda n, p: window_starts(n, p, overlap))
    xs, ys, zs = (sorted(set(place(n, p))) for n, p in zip(padded, patch))
    px, py, pz = patch
    plane = [(x, y) for x in xs for y in ys]
    # crop of the padded grid that is the study
    cx = slice(pad_lo[0], pad_lo[0] + spatial[0])
    cy = slice(pad_lo[1], pad_lo[1] + spatial[1])
    z_lo_valid, z_hi_valid = pad_lo[2], pad_lo[2] + spatial[2]

    # groups of Z starts: at least one, more while a batch would not be full (2D models: slices)
    groups: list[list[int]] = []
    i = 0
    while i < len(zs):
        group = [zs[i]]
        i += 1
        while i < len(zs) and len(group) * len(plane) < window_batch:
            group.append(zs[i])
            i += 1
        groups.append(group)
    # one fixed buffer along Z, shifted in place (no second copy of it at any time)
    depth = max(g[-1] + pz - g[0] for g in groups)
    if accumulate not in ("float32", "float16"):
        raise ValueError(f"accumulate must be 'float32' or 'float16', not {accumulate!r}")
    half = accumulate == "float16"
    acc_dtype = np.float16 if half else np.float32
    acc = np.zeros((n_classes, padded[0], padded[1], depth), dtype=acc_dtype)
    wsum = np.zeros((padded[0], padded[1], depth), dtype=acc_dtype)
    if half:
        weights = weights.astype(np.float16)
    lo = 0  # the padded-grid Z of buffer index 0; always the first start of the current group
    for gi, group in enumerate(groups):
        windows = [(x, y, z) for z in group for (x, y) in plane]
        for b0 in range(0, len(windows), window_batch):
            chunk = windows[b0:b0 + window_batch]
            batch = np.stack([image[:, x:x + px, y:y + py, z:z + pz] for x, y, z in chunk])
            scores = np.asarray(window_fn(batch), dtype=np.float32)
            if scores.shape != (len(chunk), n_classes) + patch:
                raise ValueError(f"window function returned shape {scores.shape}, expected "
                                 f"{(len(chunk), n_classes) + patch}")
            for b, (x, y, z) in enumerate(chunk):
                if half:  # the sum in float32, rounded to the float16 buffer (torch's half arithmetic)
                    block = acc[:, x:x + px, y:y + py, z - lo:z - lo + pz]
                    block[...] = block.astype(np.float32) + scores[b]
                    wblock = wsum[x:x + px, y:y + py, z - lo:z - lo + pz]
                    wblock[...] = wblock.astype(np.float32) + weights.astype(np.float32)
                else:
                    acc[:, x:x + px, y:y + py, z - lo:z - lo + pz] += scores[b]
                    wsum[x:x + px, y:y + py, z - lo:z - lo + pz] += weights
        nxt = groups[gi + 1][0] if gi + 1 < len(groups) else padded[2]
        # [lo, nxt) is final: no later window starts before nxt
        a, b = max(lo, z_lo_valid), min(nxt, z_hi_valid)
        for s0 in range(a, b, max_slab):  # in slabs of at most max_slab slices: small copies
            s1 = min(b, s0 + max_slab)
            mean = acc[:, cx, cy, s0 - lo:s1 - lo] / wsum[None, cx, cy, s0 - lo:s1 - lo]
            yield s0 - z_lo_valid, mean.astype(np.float32) if half else mean
        n = nxt - lo
        carried = max(0, group[-1] + pz - nxt)  # Z slices [nxt, end of this group) already summed
        for j in range(0, carried, n):  # n slices at a time, front to back: never onto one still to be moved
            k = min(n, carried - j)
            acc[..., j:j + k] = acc[..., n + j:n + j + k]
            wsum[..., j:j + k] = wsum[..., n + j:n + j + k]
        acc[..., carried:] = 0.0
        wsum[..., carried:] = 0.0
        lo = nxt


def sliding_window_probabilities(image: np.ndarray, window_fn: WindowFunction, n_classes: int,
                                 patch_size: Sequence[int], *, overlap: float = 0.25, window_batch: int = 2,
                                 importance: np.ndarray | None = None,
                                 starts: Callable[[int, int], list[int]] | None = None) -> np.ndarray:
    """The whole ``(K, X, Y, Z)`` float32 result of :func:`iter_probability_slabs` (small studies, tests)."""
    out = np.empty((n_classes,) + tuple(image.shape[1:]), dtype=np.float32)
    for z0, slab in iter_probability_slabs(image, window_fn, n_classes, patch_size, overlap=overlap,
                                           window_batch=window_batch, importance=importance, starts=starts):
        out[..., z0:z0 + slab.shape[-1]] = slab
    return out

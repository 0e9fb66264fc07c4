"""Classical segmentation baselines that need no training: split-and-merge and thresholds.

**Split and merge** (Horowitz & Pavlidis 1974): split the volume recursively into octants
(quadrants for a 2D slice) until every block satisfies a homogeneity rule, then merge adjacent
regions whose union still satisfies it. Rules: ``"range"`` (max − min ≤ t) or ``"std"``
(standard deviation ≤ t), t in the image's units (HU for CT).

The split is computed bottom-up and vectorised: min/max (or sum/sum of squares) pyramids over
blocks of 2^L voxels; a voxel's leaf is its coarsest homogeneous block whose ancestors are all
inhomogeneous (exactly what the recursive top-down split yields). The merge walks the leaf
adjacency graph with union-find, most similar pairs (closest means) first, and updates the
merged region's statistics as it goes.

**Thresholds**: fixed thresholds (``t1 < t2 < …`` give classes 0, 1, 2, …) and Otsu's method
(two classes, or multi-Otsu for more).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

__all__ = ["split_and_merge", "threshold_segmentation", "otsu_segmentation", "regions_to_labels"]


def _pool(a: np.ndarray, op) -> np.ndarray:
    """Reduce 2×2(×2) blocks of an array whose dims are even."""
    nd = a.ndim
    shape = []
    for s in a.shape:
        shape += [s // 2, 2]
    return op(a.reshape(shape), axis=tuple(range(1, 2 * nd, 2)))


def _upsample(a: np.ndarray) -> np.ndarray:
    for axis in range(a.ndim):
        a = np.repeat(a, 2, axis=axis)
    return a


def _homogeneous(rule: str, t: float, mn, mx, s, ss, cnt) -> np.ndarray:
    if rule == "range":
        return (mx - mn) <= t
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / np.maximum(cnt, 1)
        var = np.maximum(ss / np.maximum(cnt, 1) - mean * mean, 0.0)
    return np.sqrt(var) <= t


def _split(img: np.ndarray, rule: str, t: float) -> np.ndarray:
    """Leaf id per voxel (0..n_leaves-1) of the recursive split."""
    nd = img.ndim
    levels = max(0, int(math.floor(math.log2(max(1, min(img.shape))))))
    block = 2**levels
    padded = tuple(int(math.ceil(s / block)) * block for s in img.shape)
    pad = [(0, p - s) for s, p in zip(img.shape, padded)]
    x = img.astype(np.float64)
    valid = np.pad(np.ones(img.shape, dtype=bool), pad)
    mn = [np.pad(x, pad, constant_values=np.inf)]
    mx = [np.pad(x, pad, constant_values=-np.inf)]
    s = [np.pad(x, pad)]
    ss = [s[0] ** 2]
    cnt = [valid.astype(np.float64)]
    for _ in range(levels):
        mn.append(_pool(mn[-1], np.min))
        mx.append(_pool(mx[-1], np.max))
        if rule == "std":
            s.append(_pool(s[-1], np.sum))
            ss.append(_pool(ss[-1], np.sum))
            cnt.append(_pool(cnt[-1], np.sum))
    ids = None
    next_id = 0
    for level in range(levels, -1, -1):
        if rule == "std":
            homog = _homogeneous(rule, t, None, None, s[level], ss[level], cnt[level])
        else:
            homog = _homogeneous(rule, t, mn[level], mx[level], None, None, None)
        homog |= ~np.isfinite(mn[level]) if rule == "range" else cnt[level] == 0  # padding only
        if level == 0:
            homog[...] = True
        if ids is None:
            ids = np.full(homog.shape, -1, dtype=np.int64)
        else:
            ids = _upsample(ids)
        new = homog & (ids < 0)
        n_new = int(new.sum())
        ids[new] = np.arange(next_id, next_id + n_new)
        next_id += n_new
    crop = tuple(slice(0, n) for n in img.shape)
    ids = ids[crop]
    # compact ids (padding-only leaves vanish)
    _, inv = np.unique(ids, return_inverse=True)
    return inv.reshape(img.shape).astype(np.int64)


def _find(parent: list[int], i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def split_and_merge(image: np.ndarray, threshold: float, rule: Literal["range", "std"] = "range",
                    min_region_voxels: int = 1) -> np.ndarray:
    """Gray-level split-and-merge of a 3D volume (octree) or a 2D slice (quadtree).

    Args:
        image: ``(X, Y, Z)`` or ``(X, Y)`` intensities.
        threshold: homogeneity limit t in the image's units (max − min ≤ t, or std ≤ t).
        rule: ``"range"`` or ``"std"``.
        min_region_voxels: after merging, regions smaller than this are absorbed by the adjacent
            region with the closest mean (noise specks); 1 keeps everything.

    Returns:
        ``int32`` region map of the image's shape, regions numbered 1..R in order of first voxel.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be a 2D slice or a 3D volume, got shape {img.shape}")
    if rule not in ("range", "std"):
        raise ValueError(f"rule must be 'range' or 'std', got {rule!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number ≥ 0 (image units), got {threshold}")
    if min_region_voxels < 1:
        raise ValueError(f"min_region_voxels must be ≥ 1, got {min_region_voxels}")
    x = img.astype(np.float64)
    leaf = _split(x, rule, threshold)
    n = int(leaf.max()) + 1
    flat_leaf = leaf.ravel()
    xf = x.ravel()
    cnt = np.bincount(flat_leaf, minlength=n).astype(np.float64)
    s = np.bincount(flat_leaf, weights=xf, minlength=n)
    ss = np.bincount(flat_leaf, weights=xf * xf, minlength=n)
    mn = np.full(n, np.inf)
    mx = np.full(n, -np.inf)
    np.minimum.at(mn, flat_leaf, xf)
    np.maximum.at(mx, flat_leaf, xf)

    # leaf adjacency: distinct pairs across every axis
    pairs = []
    for axis in range(leaf.ndim):
        a = np.moveaxis(leaf, axis, 0)
        u, v = a[:-1].ravel(), a[1:].ravel()
        diff = u != v
        lo = np.minimum(u[diff], v[diff])
        hi = np.maximum(u[diff], v[diff])
        pairs.append(lo * n + hi)
    keys = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, dtype=np.int64)
    eu, ev = keys // n, keys % n
    mean = s / cnt
    order = np.argsort(np.abs(mean[eu] - mean[ev]), kind="stable")
    parent = list(range(n))
    mn_l, mx_l, s_l, ss_l, c_l = mn.tolist(), mx.tolist(), s.tolist(), ss.tolist(), cnt.tolist()
    is_range = rule == "range"
    for a, b in zip(eu[order].tolist(), ev[order].tolist()):
        ra, rb = _find(parent, a), _find(parent, b)
        if ra == rb:
            continue
        if is_range:
            ok = max(mx_l[ra], mx_l[rb]) - min(mn_l[ra], mn_l[rb]) <= threshold
        else:
            c = c_l[ra] + c_l[rb]
            m = (s_l[ra] + s_l[rb]) / c
            ok = math.sqrt(max((ss_l[ra] + ss_l[rb]) / c - m * m, 0.0)) <= threshold
        if ok:
            parent[rb] = ra
            mn_l[ra] = min(mn_l[ra], mn_l[rb])
            mx_l[ra] = max(mx_l[ra], mx_l[rb])
            s_l[ra] += s_l[rb]
            ss_l[ra] += ss_l[rb]
            c_l[ra] += c_l[rb]
    roots = np.array([_find(parent, i) for i in range(n)], dtype=np.int64)
    region = roots[leaf]

    if min_region_voxels > 1:
        region = _absorb_small(region, x, min_region_voxels)
    # number regions 1..R in order of first appearance
    flat = region.ravel()
    uniq, first = np.unique(flat, return_index=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(1, len(uniq) + 1)
    lut = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    lut[uniq] = rank
    return lut[region].astype(np.int32)


def _absorb_small(region: np.ndarray, x: np.ndarray, min_voxels: int) -> np.ndarray:
    """Merge regions under ``min_voxels`` into the adjacent region with the closest mean (repeat until none)."""
    for _ in range(50):
        _, inv = np.unique(region, return_inverse=True)
        region = inv.reshape(region.shape)
        n = int(region.max()) + 1
        cnt = np.bincount(region.ravel(), minlength=n)
        small = cnt < min_voxels
        if not small.any() or n == 1:
            return region
        mean = np.bincount(region.ravel(), weights=x.ravel(), minlength=n) / np.maximum(cnt, 1)
        best = np.full(n, -1, dtype=np.int64)
        best_d = np.full(n, np.inf)
        for axis in range(region.ndim):
            a = np.moveaxis(region, axis, 0)
            for u, v in ((a[:-1].ravel(), a[1:].ravel()), (a[1:].ravel(), a[:-1].ravel())):
                m = (u != v) & small[u]
                uu, vv = u[m], v[m]
                d = np.abs(mean[uu] - mean[vv])
                # keep the closest neighbour per small region
                o = np.lexsort((d, uu))
                uu, vv, d = uu[o], vv[o], d[o]
                firsts = np.r_[True, uu[1:] != uu[:-1]]
                uu, vv, d = uu[firsts], vv[firsts], d[firsts]
                better = d < best_d[uu]
                best[uu[better]] = vv[better]
                best_d[uu[better]] = d[better]
        target = np.arange(n)
        # absorb the smallest regions first; a region absorbed into another small one follows it next round
        movable = small & (best >= 0)
        if not movable.any():
            return region
        target[movable] = best[movable]
        region = target[region]
    return region


def regions_to_labels(regions: np.ndarray, image: np.ndarray, n_classes: int) -> np.ndarray:
    """Label regions by their mean intensity: Otsu classes of the region means (0 = darkest)."""
    from skimage.filters import threshold_multiotsu

    reg = np.asarray(regions)
    n = int(reg.max()) + 1
    cnt = np.bincount(reg.ravel(), minlength=n)
    mean = np.bincount(reg.ravel(), weights=np.asarray(image, dtype=np.float64).ravel(), minlength=n) / np.maximum(cnt, 1)
    present = cnt > 0
    if n_classes < 2:
        raise ValueError(f"n_classes must be ≥ 2, got {n_classes}")
    if int(present.sum()) <= n_classes:
        thresholds = np.sort(mean[present])[1:]
    else:
        # voxel-weighted histogram of the region means; multi-Otsu on it (coarser bins for many classes)
        nbins = 256 if n_classes <= 3 else 64
        hist, edges = np.histogram(mean[present], bins=nbins, weights=cnt[present])
        centres = (edges[:-1] + edges[1:]) / 2
        thresholds = threshold_multiotsu(hist=(hist, centres), classes=n_classes)
    classes = np.digitize(mean, thresholds)
    return classes[reg].astype(np.uint8 if n_classes < 256 else np.uint16)


def threshold_segmentation(image: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Fixed thresholds ``t1 < t2 < …``: class c where ``t_c ≤ value < t_{c+1}`` (0 below t1).

    Returns ``uint8`` classes (``uint16`` beyond 255 classes) of the image's shape.
    """
    th = np.asarray([float(t) for t in thresholds], dtype=np.float64)
    if th.size == 0:
        raise ValueError("thresholds must hold at least one value")
    if not np.all(np.isfinite(th)) or np.any(np.diff(th) <= 0):
        raise ValueError(f"thresholds must be finite and strictly increasing, got {th.tolist()}")
    out = np.digitize(np.asarray(image, dtype=np.float64), th)
    return out.astype(np.uint8 if th.size < 256 else np.uint16)


def otsu_segmentation(image: np.ndarray, classes: int = 2) -> tuple[np.ndarray, list[float]]:
    """Otsu's threshold (``classes`` = 2) or multi-Otsu (more classes) on the image's histogram.

    Returns ``(labels, thresholds)``: ``uint8`` classes 0..classes-1 and the thresholds used.
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if classes < 2 or classes > 10:
        raise ValueError(f"classes must be between 2 and 10, got {classes}")
    img = np.asarray(image, dtype=np.float64)
    if np.unique(img[:: max(1, img.size // 100000)]).size < 2 and np.unique(img).size < 2:
        raise ValueError("image is constant: Otsu's method needs at least two intensity levels")
    if classes == 2:
        th = [float(threshold_otsu(img, nbins=256))]
    else:
        th = [float(v) for v in threshold_multiotsu(img, classes=classes, nbins=256)]
    return threshold_segmentation(img, th), th

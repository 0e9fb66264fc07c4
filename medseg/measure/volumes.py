"""Per-structure volumes (mL), intensity statistics (image units, e.g. HU), centroids and boxes (mm).

One pass over the label map serves every label: the map is read in slabs along its last axis and
each slab feeds a handful of ``np.bincount`` calls over a compact label index (label × axis
position histograms give voxel counts, centroids and bounding boxes; label × intensity
histograms give mean/std/min/max/median exactly for integer images). Float images are sorted
once (voxels inside the requested labels only) for medians. Nothing is done per label over the
whole volume, so the cost barely grows with the number of labels (see ``benchmarks/volumes``).

The report is the volume report of DESIGN.md::

    {"segmentation": str, "image": str | None, "spacing_mm": [sx, sy, sz], "shape": [I, J, K],
     "voxel_volume_ml": float, "orientation": "RAS",
     "structures": {name: {"label", "voxels", "volume_ml", "intensity_mean", "intensity_std",
                           "intensity_min", "intensity_max", "intensity_median", "centroid_mm",
                           "bbox_mm", "bbox_voxels", "touches_border"[, "volume_ml_soft"]}}}

Intensity statistics are ``None`` (JSON ``null``) for an empty structure or without an image;
``intensity_std`` is the population standard deviation (``ddof=0``, numpy's default).
``centroid_mm`` is the world (RAS+, mm) position of the mean voxel centre; ``bbox_mm`` is
``[[x_min, y_min, z_min], [x_max, y_max, z_max]]`` over the voxel centres of the structure's
index box, in world mm; ``bbox_voxels`` is ``[[i0, j0, k0], [i1, j1, k1]]`` (inclusive).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medseg.io import check_same_grid
from medseg.io.volume import Volume
from medseg.plans import check_labels

__all__ = ["compute_volumes", "present_labels", "CompactLabels"]

# Voxels per slab (bounded temporary memory: a few int64 arrays of this size).
_SLAB_VOXELS = 1 << 21
# Largest (labels × intensity range) histogram used for integer images before falling back to sorting.
_MAX_HIST_BINS = 1 << 25


# Largest label value mapped through a dense lookup table (larger ids are looked up by bisection).
_MAX_LUT = 1 << 22


class CompactLabels:
    """Maps raw label values to compact indices: requested ids → 0..L-1, everything else → L.

    The compact indices keep ``np.bincount`` histograms over labels small whatever the label
    values are (a dense lookup table up to 4 Mi values, bisection beyond, e.g. for uint32
    instance ids). ``n`` is the number of requested ids (L).

    Args:
        seg: any array holding the largest label value that will be mapped (only its maximum is read).
        ids: the requested label ids, in the order of their compact indices.
    """

    def __init__(self, seg: np.ndarray, ids: list[int]):
        self.n = len(ids)
        top = int(seg.max()) if seg.size else 0
        size = max(top, max(ids, default=0)) + 1
        if size <= _MAX_LUT:
            self.lut = np.full(size, self.n, dtype=np.intp)
            self.lut[np.asarray(ids, dtype=np.intp)] = np.arange(self.n, dtype=np.intp)
        else:  # e.g. uint32 instance ids: no 16 GiB table
            self.lut = None
            self.order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
            self.sorted_ids = np.asarray(ids, dtype=np.int64)[self.order]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """The compact index (``np.intp``, same shape) of every value of ``values``."""
        if self.lut is not None:
            return np.take(self.lut, values)
        if not self.n:
            return np.zeros(values.shape, dtype=np.intp)
        pos = np.searchsorted(self.sorted_ids, values)
        pos_c = np.minimum(pos, self.n - 1)
        hit = self.sorted_ids[pos_c] == values
        return np.where(hit, self.order[pos_c], self.n).astype(np.intp)


def present_labels(arr: np.ndarray) -> list[int]:
    """The distinct values of an integer label map, ascending (slab-wise bincount for 8/16-bit maps)."""
    arr = np.asarray(arr)
    if not arr.size:
        return []
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2 and arr.ndim == 3:
        seen = np.zeros(1 << (8 * arr.dtype.itemsize), dtype=bool)
        for k0, k1 in _slabs(arr.shape):
            seen |= np.bincount(arr[:, :, k0:k1].ravel(order="K"), minlength=seen.size) > 0
        return [int(v) for v in np.flatnonzero(seen)]
    return [int(v) for v in np.unique(arr)]


def _slabs(shape: tuple[int, int, int]):
    per_slice = max(1, shape[0] * shape[1])
    step = max(1, _SLAB_VOXELS // per_slice)
    for k0 in range(0, shape[2], step):
        yield k0, min(shape[2], k0 + step)


def _hist_median(hist: np.ndarray, counts: np.ndarray, offset: int) -> np.ndarray:
    """Median per row of a value histogram ``hist (L, R)`` (value = column + offset); numpy's rule."""
    out = np.full(hist.shape[0], np.nan)
    cum = np.cumsum(hist, axis=1)
    for row in np.flatnonzero(counts):
        n = int(counts[row])
        lo = int(np.searchsorted(cum[row], (n - 1) // 2, side="right"))
        hi = int(np.searchsorted(cum[row], n // 2, side="right"))
        out[row] = (lo + hi) / 2.0 + offset
    return out


def _intensity_stats(lab_slabs, img: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Mean/std/min/max/median of ``img`` per compact label 0..n-1 (NaN where empty)."""
    stats = {k: np.full(n, np.nan) for k in ("mean", "std", "min", "max", "median")}
    if img.dtype.kind in "iub" and img.size:
        vmin, vmax = int(img.min()), int(img.max())
        rng = vmax - vmin + 1
        if (n + 1) * rng <= _MAX_HIST_BINS:
            hist = np.zeros((n + 1) * rng, dtype=np.int64)
            for (k0, k1), lab in lab_slabs():
                vals = img[:, :, k0:k1].reshape(-1, order="F").astype(np.intp)
                vals -= vmin
                vals += lab * rng
                hist += np.bincount(vals, minlength=(n + 1) * rng)
            hist = hist.reshape(n + 1, rng)[:n]
            counts = hist.sum(axis=1)
            values = np.arange(rng, dtype=np.float64) + vmin
            has = counts > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (hist @ values) / counts
                # Centred second moment (accurate): sum_r h[l, r] (v_r - mean_l)^2 / n_l.
                var = np.einsum("lr,lr->l", hist, (values[None, :] - np.nan_to_num(mean)[:, None]) ** 2) / counts
            stats["mean"] = np.where(has, mean, np.nan)
            stats["std"] = np.where(has, np.sqrt(np.maximum(var, 0.0)), np.nan)
            nz = hist > 0
            first = np.argmax(nz, axis=1)
            last = rng - 1 - np.argmax(nz[:, ::-1], axis=1)
            stats["min"] = np.where(has, first + vmin, np.nan).astype(np.float64)
            stats["max"] = np.where(has, last + vmin, np.nan).astype(np.float64)
            stats["median"] = _hist_median(hist, counts, vmin)
            return stats
    # Sorting path (float images, or integer images with a huge value range): one sort of the
    # voxels inside the requested labels, grouped by label.
    labs, vals = [], []
    for (k0, k1), lab in lab_slabs():
        keep = lab < n
        labs.append(lab[keep])
        vals.append(img[:, :, k0:k1].reshape(-1, order="F")[keep].astype(np.float64))
    lab = np.concatenate(labs) if labs else np.zeros(0, np.intp)
    val = np.concatenate(vals) if vals else np.zeros(0)
    order = np.argsort(val, kind="stable")
    lab = lab[order]
    val = val[order]
    order = np.argsort(lab, kind="stable")
    lab = lab[order]
    val = val[order]
    counts = np.bincount(lab, minlength=n)[:n]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.bincount(lab, weights=val, minlength=n)[:n]
    has = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
        dev = (val - np.nan_to_num(mean)[lab]) ** 2 if val.size else val
        var = np.bincount(lab, weights=dev, minlength=n)[:n] / counts
    stats["mean"] = np.where(has, mean, np.nan)
    stats["std"] = np.where(has, np.sqrt(var), np.nan)
    for row in np.flatnonzero(has):
        s, c = int(starts[row]), int(counts[row])
        stats["min"][row] = val[s]
        stats["max"][row] = val[s + c - 1]
        stats["median"][row] = (val[s + (c - 1) // 2] + val[s + c // 2]) / 2.0
    return stats


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def compute_volumes(seg: Volume, image: Volume | None = None, labels: dict[int, str] | None = None,
                    probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """Volume report of a label map (DESIGN.md "Volume report"), all labels in one pass.

    Args:
        seg: integer label map ``(I, J, K)``; volumes use its own affine (voxel volume in mL from
            the determinant).
        image: optional image on the same grid ``(I, J, K)`` (HU for CT) for intensity statistics.
        labels: label id → structure name (0 background is not a structure unless listed). Every
            listed label appears in the report (zero voxels where absent). Default: the ids present
            in ``seg`` other than 0, named by their id (``"1"``, ``"2"``, …).
        probabilities: optional soft probabilities ``(C, I, J, K)`` (channel c for label c) on the
            same grid; adds ``volume_ml_soft`` = sum of channel ``label`` × voxel volume (mL), or
            ``None`` for labels without a channel.

    Returns:
        The report dict; numbers unrounded, NaN written as ``None``.

    Raises:
        ValueError: an image or probability array not on the label map's grid (an image off it:
            :class:`medseg.errors.InputError` naming ``seg``, from :func:`medseg.io.check_same_grid`),
            a non-integer map.
    """
    arr = np.asarray(seg.array)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"seg must be an integer label map, not dtype {arr.dtype} ({seg.source})")
    if arr.size and arr.min() < 0:
        raise ValueError(f"seg holds negative label values ({seg.source})")
    if image is not None:
        check_same_grid(image, seg)
    if labels is None:
        labels = {v: str(v) for v in present_labels(arr) if v != 0}
    labels = check_labels(labels)
    ids = list(labels)
    shape = seg.shape
    compact = CompactLabels(arr, ids)
    n = compact.n

    def lab_slabs():
        for k0, k1 in _slabs(shape):
            yield (k0, k1), compact(arr[:, :, k0:k1].reshape(-1, order="F"))

    # Label × position histograms along each axis (Fortran order inside a slab: i fastest).
    I, J, K = shape
    hist_i = np.zeros((n + 1) * I, dtype=np.int64)
    hist_j = np.zeros((n + 1) * J, dtype=np.int64)
    hist_k = np.zeros((n + 1, K), dtype=np.int64)
    for (k0, k1), lab in lab_slabs():
        c = k1 - k0
        ii = np.tile(np.arange(I, dtype=np.intp), J * c)
        hist_i += np.bincount(lab * I + ii, minlength=(n + 1) * I)
        jj = np.tile(np.repeat(np.arange(J, dtype=np.intp), I), c)
        hist_j += np.bincount(lab * J + jj, minlength=(n + 1) * J)
        kk = np.repeat(np.arange(c, dtype=np.intp), I * J)
        hist_k[:, k0:k1] += np.bincount(lab * c + kk, minlength=(n + 1) * c).reshape(n + 1, c)
    hists = [hist_i.reshape(n + 1, I)[:n], hist_j.reshape(n + 1, J)[:n], hist_k[:n]]
    counts = hists[0].sum(axis=1)

    stats = _intensity_stats(lab_slabs, np.asarray(image.array), n) if image is not None else None

    soft: list[float | None] | None = None
    if probabilities is not None:
        probs = np.asarray(probabilities)
        if probs.ndim != 4 or tuple(probs.shape[1:]) != shape:
            raise ValueError(f"probabilities must be (C, I, J, K) = (C, {I}, {J}, {K}) on the segmentation's grid, "
                             f"not {tuple(probs.shape)}")
        soft = [float(np.sum(probs[i], dtype=np.float64)) * seg.voxel_volume_ml if i < probs.shape[0] else None
                for i in ids]

    affine = seg.affine
    structures: dict[str, dict[str, Any]] = {}
    for row, (label, name) in enumerate(labels.items()):
        nvox = int(counts[row])
        rec: dict[str, Any] = {"label": label, "voxels": nvox, "volume_ml": nvox * seg.voxel_volume_ml}
        if soft is not None:
            rec["volume_ml_soft"] = soft[row]
        for key in ("mean", "std", "min", "max", "median"):
            rec[f"intensity_{key}"] = _nan_to_none(float(stats[key][row])) if stats is not None else None
        if nvox:
            lo, hi, mean_idx = [], [], []
            for axis, h in enumerate(hists):
                nz = np.flatnonzero(h[row])
                lo.append(int(nz[0]))
                hi.append(int(nz[-1]))
                mean_idx.append(float(h[row] @ np.arange(h.shape[1], dtype=np.float64)) / nvox)
            centroid = affine @ np.array(mean_idx + [1.0])
            corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
            world = (affine @ corners.T)[:3]
            rec["centroid_mm"] = [float(v) for v in centroid[:3]]
            rec["bbox_mm"] = [[float(v) for v in world.min(axis=1)], [float(v) for v in world.max(axis=1)]]
            rec["bbox_voxels"] = [lo, hi]
            rec["touches_border"] = bool(any(lo[a] == 0 or hi[a] == shape[a] - 1 for a in range(3)))
        else:
            rec["centroid_mm"] = None
            rec["bbox_mm"] = None
            rec["bbox_voxels"] = None
            rec["touches_border"] = False
        structures[name] = rec
    return {
        "segmentation": seg.source,
        "image": image.source if image is not None else None,
        "spacing_mm": [float(s) for s in seg.spacing],
        "shape": list(shape),
        "orientation": seg.orientation,
        "voxel_volume_ml": seg.voxel_volume_ml,
        "structures": structures,
    }

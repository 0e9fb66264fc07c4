"""Overlap and surface-distance metrics of a predicted against a reference label map, in mm.

:func:`confusion_counts` counts every label of a pair in one pass (a confusion histogram of
``ref × pred``, slab by slab); :func:`case_metrics` works label by label on boolean masks (the
surface and lesion computations need those masks anyway) and crops each pair to its joint
bounding box before any distance transform. Surface distances are exact Euclidean distances in mm between surface voxel centres (voxel
indices × spacing, so anisotropic voxels are measured in mm; nearest neighbours from a
``scipy.spatial.cKDTree``, which equals an EDT with ``sampling=spacing`` evaluated on the
surface), computed inside the bounding box of the two masks only.

Conventions (nnU-Net's for the overlap metrics; MONAI's for HD95):

- ``Dice = 2 TP / (2 TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``; both NaN where the
  prediction and the reference are empty (nnU-Net writes that NaN into its summary.json).
- ``n_pred = TP + FP`` and ``n_ref = TP + FN`` (voxels).
- Surfaces are the mask voxels with a 6-neighbour outside the mask (voxels on the image border
  count as surface). ``HD95`` is the larger of the two directed 95th percentiles of
  surface-to-surface distances (mm). NaN when either mask is empty (no distance is defined).
- ``NSD`` (normalised surface Dice at ``tolerance_mm``): the fraction of surface voxels of both
  masks lying within ``tolerance_mm`` of the other mask's surface; 1 for identical masks, 0
  when exactly one mask is empty, NaN when both are.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medseg.measure.volumes import CompactLabels

__all__ = ["bounding_box", "confusion_counts", "overlap_metrics", "surface_distances", "hd95", "nsd", "label_metrics",
           "case_metrics", "DEFAULT_NSD_TOLERANCE_MM"]

DEFAULT_NSD_TOLERANCE_MM = 2.0
# Voxels per slab of the one-pass confusion count (cache-sized: np.bincount is memory bound).
_SLAB_VOXELS = 1 << 21


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing must give one value (mm) per array axis ({ndim}), not {sp}")
    if any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing must be positive finite mm values, not {sp}")
    return sp


def confusion_counts(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, dict[str, int]]:
    """TP, FP, FN, TN (voxels) per label of two integer label maps of the same shape, in one pass."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}")
    labels = [int(v) for v in labels]
    # Compact values: requested labels 0..L-1, everything else L; counted slab by slab (cache-sized).
    compact = CompactLabels(np.maximum(pred.max(initial=0), ref.max(initial=0)).reshape(1), labels)
    n = len(labels) + 1
    conf = np.zeros(n * n, dtype=np.int64)
    fortran = pred.flags.f_contiguous and not pred.flags.c_contiguous
    axis = pred.ndim - 1 if fortran else 0
    per = max(1, pred.size // max(1, pred.shape[axis]))
    step = max(1, _SLAB_VOXELS // per)
    order = "F" if fortran else "C"  # the same traversal for both maps keeps voxels paired
    for start in range(0, pred.shape[axis], step):
        sl = [slice(None)] * pred.ndim
        sl[axis] = slice(start, start + step)
        p = compact(pred[tuple(sl)].ravel(order=order))
        r = compact(ref[tuple(sl)].ravel(order=order))
        r *= n
        r += p
        conf += np.bincount(r, minlength=n * n)
    conf = conf.reshape(n, n)
    total = int(pred.size)
    out = {}
    for i, label in enumerate(labels):
        tp = int(conf[i, i])
        n_ref = int(conf[i, :].sum())
        n_pred = int(conf[:, i].sum())
        fp, fn = n_pred - tp, n_ref - tp
        out[label] = {"TP": tp, "FP": fp, "FN": fn, "TN": total - tp - fp - fn}
    return out


def overlap_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    """Dice, IoU (NaN where both masks are empty), TP/FP/FN/TN, n_pred, n_ref."""
    denom = tp + fp + fn
    dice = 2 * tp / (2 * tp + fp + fn) if denom else float("nan")
    iou = tp / denom if denom else float("nan")
    return {"Dice": dice, "IoU": iou, "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn}


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The tightest box of slices around the True voxels of ``mask`` (None when it has none)."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if not nz.size:
            return None
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface → ref surface, ref surface → pred surface).

    Both masks must be non-empty. Computed on the two masks' joint bounding box (plus one voxel),
    which holds every surface voxel, so the distances are exact.
    """
    from scipy.spatial import cKDTree

    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}")
    sp = _spacing(spacing, pred.ndim)
    box = bounding_box(pred | ref)
    if box is None or not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    p = np.pad(pred[box], 1)
    r = np.pad(ref[box], 1)
    # A voxel on the image border is a surface voxel: padding with 0 makes erosion see outside.
    pts_p = np.argwhere(_surface(p)) * np.asarray(sp)
    pts_r = np.argwhere(_surface(r)) * np.asarray(sp)
    # Exact nearest surface voxel in mm (a k-d tree over surface points: far cheaper than a
    # distance transform of the whole box for large organs).
    d_pr = cKDTree(pts_r).query(pts_p, workers=1)[0]
    d_rp = cKDTree(pts_p).query(pts_r, workers=1)[0]
    return d_pr, d_rp


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (NaN when either mask is empty)."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if not pred.any() or not ref.any():
        return float("nan")
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (0..1; NaN when both masks are empty)."""
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0 mm, not {tolerance_mm}")
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return float("nan")
    if not has_p or not has_r:
        return 0.0
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (d_pr.size + d_rp.size))


def label_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, box: tuple[slice, ...] | None = None
                  ) -> dict[str, float | int]:
    """All metrics of one binary pair: Dice, IoU, TP, FP, FN, TN, n_pred, n_ref, HD95 (mm), NSD.

    ``box``: optional slices holding every voxel of both masks (their joint bounding box), to
    spare recomputing it; surface distances are computed inside it.
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    n_p, n_r = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
    if n_p and n_r:
        if box is None:
            box = bounding_box(pred_mask | ref_mask)
        p, r = pred_mask[box], ref_mask[box]
        tp = int(np.count_nonzero(p & r))
    else:
        p, r, tp = pred_mask, ref_mask, 0
    out = overlap_metrics(tp, n_p - tp, n_r - tp, int(pred_mask.size) - n_p - n_r + tp)
    out.update(_surface_metrics(p, r, spacing, tolerance_mm, n_p, n_r))
    return out


def _surface_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
                     n_p: int, n_r: int) -> dict[str, float]:
    if n_p == 0 and n_r == 0:
        return {"HD95": float("nan"), "NSD": float("nan")}
    if n_p == 0 or n_r == 0:
        return {"HD95": float("nan"), "NSD": 0.0}
    d_pr, d_rp = surface_distances(pred_mask, ref_mask, spacing)
    return {"HD95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
            "NSD": float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (d_pr.size + d_rp.size))}


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int],
                 tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[int, dict[str, float | int]]:
    """Metrics of every label of one case: ``{label: {Dice, IoU, TP, FP, FN, TN, n_pred, n_ref, HD95, NSD}}``.

    ``pred`` and ``ref``: integer label maps ``(I, J, K)`` on the same grid; ``spacing``: voxel
    size in mm along each array axis.
    """
    sp = _spacing(spacing, np.ndim(pred))
    out: dict[int, dict[str, float | int]] = {}
    for label in labels:
        out[int(label)] = label_metrics(pred == label, ref == label, sp, tolerance_mm)
    return out

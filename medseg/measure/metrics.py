"""Overlap and surface-distance metrics of a predicted against a reference label map, in mm.

All labels of a pair are counted in one pass (a confusion histogram of ``ref × pred``), so
TP/FP/FN/TN, Dice and IoU cost one ``np.bincount`` however many labels there are. Surface
distances use exact Euclidean distance transforms (``scipy.ndimage.distance_transform_edt``
with ``sampling=`` the voxel spacing, so anisotropic voxels are measured in mm), computed on
the bounding box of the two masks only.

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

__all__ = ["confusion_counts", "overlap_metrics", "surface_distances", "hd95", "nsd", "label_metrics",
           "case_metrics", "DEFAULT_NSD_TOLERANCE_MM"]

DEFAULT_NSD_TOLERANCE_MM = 2.0


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
    top = max([int(pred.max()) if pred.size else 0, int(ref.max()) if ref.size else 0] + labels) + 1
    # Compact values: requested labels 0..L-1, everything else L.
    lut = np.full(top, len(labels), dtype=np.intp)
    lut[labels] = np.arange(len(labels))
    n = len(labels) + 1
    # The same traversal order for both maps keeps voxels paired whatever their memory layout.
    order = "F" if pred.flags.f_contiguous and not pred.flags.c_contiguous else "C"
    p = lut[pred.reshape(-1, order=order)]
    r = lut[ref.reshape(-1, order=order)]
    conf = np.bincount(r * n + p, minlength=n * n).reshape(n, n)
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


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
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
    from scipy import ndimage

    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}")
    sp = _spacing(spacing, pred.ndim)
    box = _bbox(pred | ref)
    if box is None or not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    p = np.pad(pred[box], 1)
    r = np.pad(ref[box], 1)
    # A voxel on the image border is a surface voxel: padding with 0 makes erosion see outside.
    sp_ = _surface(p)
    sr = _surface(r)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    return dist_to_r[sp_], dist_to_p[sr]


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
                  tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float | int]:
    """All metrics of one binary pair: Dice, IoU, TP, FP, FN, TN, n_pred, n_ref, HD95 (mm), NSD."""
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    tp = int(np.count_nonzero(pred_mask & ref_mask))
    n_p, n_r = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
    out = overlap_metrics(tp, n_p - tp, n_r - tp, int(pred_mask.size) - n_p - n_r + tp)
    out.update(_surface_metrics(pred_mask, ref_mask, spacing, tolerance_mm, n_p, n_r))
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
    counts = confusion_counts(pred, ref, labels)
    boxes_p, boxes_r = _label_boxes(pred), _label_boxes(ref)
    out: dict[int, dict[str, float | int]] = {}
    for label in labels:
        label = int(label)
        c = counts[label]
        m = overlap_metrics(c["TP"], c["FP"], c["FN"], c["TN"])
        n_p, n_r = m["n_pred"], m["n_ref"]
        if n_p and n_r:
            # Only the pair's joint bounding box is turned into masks.
            if label == 0:
                box = tuple(slice(0, s) for s in np.shape(pred))
            else:
                bp, br = boxes_p[label - 1], boxes_r[label - 1]
                box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(bp, br))
            m.update(_surface_metrics(pred[box] == label, ref[box] == label, sp, tolerance_mm, n_p, n_r))
        else:
            m.update(_surface_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,), tolerance_mm, n_p, n_r))
        out[label] = m
    return out


def _label_boxes(arr: np.ndarray) -> list:
    """Bounding slices of every label value 1..max in one pass (``scipy.ndimage.find_objects``)."""
    from scipy import ndimage

    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 8:
        arr = arr.astype(np.intp)
    return ndimage.find_objects(arr)

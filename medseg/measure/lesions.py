"""Lesion-wise detection: connected components of one label, matched between prediction and reference.

Rules (DESIGN.md):

- Lesions are connected components with 26-connectivity in 3D (8 in 2D).
- A reference lesion is **detected** when predicted foreground of the same label covers at least
  ``overlap`` (default 10%) of its voxels.
- A predicted component that touches (shares a voxel with) no reference lesion is a **false
  positive**.
- ``recall = n_detected / n_ref``, ``precision = (n_pred - n_false_positive) / n_pred`` (the
  fraction of predicted components that touch a reference lesion), ``F1`` their harmonic mean;
  NaN where a denominator is zero.
- Sizes are in mL (voxel count × voxel volume from the affine); ``by_size`` splits reference
  lesions into buckets ``[lo, hi)`` of volume in mL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from medseg.measure.metrics import bounding_box

__all__ = ["default_lesion_labels", "resolve_lesion_labels", "LesionRecord", "LesionResult", "LesionSlice", "DEFAULT_SIZE_BUCKETS_ML", "connected_components",
           "match_lesions", "summarize_lesions", "detection_scores", "lesion_slice", "axial_axis"]

# Bucket edges in mL: <0.01, 0.01-0.1, 0.1-1, 1-10, >=10 (an MS lesion is ~0.01-1 mL, a liver tumour 1-100 mL).
DEFAULT_SIZE_BUCKETS_ML: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 10.0, math.inf)


def default_lesion_labels(names: Mapping[int, str]) -> list[int]:
    """The label ids whose names make them lesion classes (tumour, lesion, metastasis, nodule,
    cyst, oedema, necrosis, enhancing…; :attr:`medseg.io.StructureCode.is_lesion`); organs are not."""
    from medseg.io.codes import structure_code

    return sorted(int(k) for k, v in names.items() if int(k) != 0 and structure_code(str(v)).is_lesion)


def resolve_lesion_labels(spec: str | Sequence[str | int] | None, names: Mapping[int, str]) -> list[int]:
    """The lesion classes a setting names: ``None`` or ``"auto"`` → :func:`default_lesion_labels`;
    otherwise label names or ids (a comma-separated string or a list); ``"none"`` → none.

    Raises:
        ValueError: a name or id that ``names`` does not have (listing the ones it has).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return default_lesion_labels(names)
    items = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else [str(t).strip() for t in spec]
    items = [t for t in items if t]
    if [t.lower() for t in items] == ["none"]:
        return []
    by_name = {str(v): int(k) for k, v in names.items()}
    out = []
    for t in items:
        if t in by_name:
            out.append(by_name[t])
        elif t.isdigit() and int(t) in {int(k) for k in names}:
            out.append(int(t))
        else:
            raise ValueError(f"lesion label {t!r} is not a label name or id of "
                             f"{', '.join(f'{k}={v}' for k, v in sorted(names.items()) if int(k))}")
    return sorted(set(out))


@dataclass
class LesionRecord:
    """One reference lesion: id (1-based, in ``scipy.ndimage.label`` order), size and match."""

    lesion_id: int
    voxels: int
    volume_ml: float
    centroid_mm: list[float]
    centroid_voxel: list[float]
    bbox_voxels: list[list[int]]
    covered_voxels: int
    covered_fraction: float
    detected: bool


@dataclass
class LesionResult:
    """Lesion-wise detection of one label in one case."""

    n_ref: int
    n_detected: int
    n_pred: int
    n_false_positive: int
    lesions: list[LesionRecord] = field(default_factory=list)
    false_positives: list[dict[str, Any]] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        return detection_scores(self.n_ref, self.n_detected, self.n_pred, self.n_false_positive)

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores(), "n_ref": self.n_ref, "n_detected": self.n_detected, "n_pred": self.n_pred,
                "n_false_positive": self.n_false_positive}


def detection_scores(n_ref: int, n_detected: int, n_pred: int, n_false_positive: int) -> dict[str, float]:
    """Recall, precision and F1 from counts (NaN where undefined)."""
    recall = n_detected / n_ref if n_ref else float("nan")
    precision = (n_pred - n_false_positive) / n_pred if n_pred else float("nan")
    if math.isnan(recall) or math.isnan(precision) or recall + precision == 0:
        f1 = float("nan") if (math.isnan(recall) or math.isnan(precision)) else 0.0
    else:
        f1 = 2 * recall * precision / (recall + precision)
    return {"recall": recall, "precision": precision, "f1": f1}


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the components of a boolean mask with full connectivity (26 in 3D): (ids, count)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    ids, n = ndimage.label(mask, structure=structure)
    return ids, int(n)


def match_lesions(pred_mask: np.ndarray, ref_mask: np.ndarray, affine: np.ndarray, overlap: float = 0.1,
                  box: tuple[slice, ...] | None = None) -> LesionResult:
    """Match the lesions of one binary prediction against one binary reference.

    Args:
        pred_mask, ref_mask: boolean ``(I, J, K)`` masks on the same grid.
        affine: ``(4, 4)`` voxel → world (mm) map of that grid (voxel volume from its determinant).
        overlap: fraction of a reference lesion's voxels that predicted foreground must cover for
            the lesion to count as detected, in ``(0, 1]``.
        box: optional slices holding every voxel of both masks (their joint bounding box); only
            that box is labelled. Computed when not given.

    Returns:
        A :class:`LesionResult` with one :class:`LesionRecord` per reference lesion and a short
        record (``voxels``, ``volume_ml``, ``centroid_mm``) per false-positive component.
    """
    if not 0 < overlap <= 1:
        raise ValueError(f"overlap must be a fraction in (0, 1], not {overlap}")
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"pred mask shape {pred_mask.shape} differs from ref mask shape {ref_mask.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    vox_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    if box is None:
        box = bounding_box(pred_mask | ref_mask)
    if box is None:
        return LesionResult(0, 0, 0, 0)
    offset = np.array([s.start for s in box], dtype=np.float64)
    p, r = pred_mask[box], ref_mask[box]
    ref_ids, n_ref = connected_components(r)
    pred_ids, n_pred = connected_components(p)

    sizes = np.bincount(ref_ids.ravel(), minlength=n_ref + 1)
    covered = np.bincount(ref_ids[p], minlength=n_ref + 1)
    lesions: list[LesionRecord] = []
    if n_ref:
        coords = np.nonzero(ref_ids)
        lab = ref_ids[coords]
        cents = np.stack([np.bincount(lab, weights=c, minlength=n_ref + 1) for c in coords], axis=1)
        from scipy import ndimage

        boxes = ndimage.find_objects(ref_ids)
        for lid in range(1, n_ref + 1):
            nvox = int(sizes[lid])
            cv = cents[lid] / nvox + offset
            world = affine @ np.append(cv, 1.0)
            frac = float(covered[lid]) / nvox
            lesions.append(LesionRecord(
                lesion_id=lid, voxels=nvox, volume_ml=nvox * vox_ml,
                centroid_mm=[float(v) for v in world[:3]], centroid_voxel=[float(v) for v in cv],
                bbox_voxels=[[int(sl.start + offset[a]) for a, sl in enumerate(boxes[lid - 1])],
                             [int(sl.stop - 1 + offset[a]) for a, sl in enumerate(boxes[lid - 1])]],
                covered_voxels=int(covered[lid]), covered_fraction=frac, detected=frac >= overlap))
    false_positives: list[dict[str, Any]] = []
    if n_pred:
        touching = np.bincount(pred_ids[r], minlength=n_pred + 1) > 0
        fp_ids = [i for i in range(1, n_pred + 1) if not touching[i]]
        if fp_ids:
            psizes = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
            coords = np.nonzero(pred_ids)
            lab = pred_ids[coords]
            cents = np.stack([np.bincount(lab, weights=c, minlength=n_pred + 1) for c in coords], axis=1)
            for i in fp_ids:
                cv = cents[i] / psizes[i] + offset
                world = affine @ np.append(cv, 1.0)
                false_positives.append({"component_id": i, "voxels": int(psizes[i]), "volume_ml": float(psizes[i]) * vox_ml,
                                        "centroid_mm": [float(v) for v in world[:3]]})
    n_detected = sum(1 for les in lesions if les.detected)
    return LesionResult(n_ref=n_ref, n_detected=n_detected, n_pred=n_pred, n_false_positive=len(false_positives),
                        lesions=lesions, false_positives=false_positives)


def summarize_lesions(results: Sequence[LesionResult],
                      buckets_ml: Sequence[float] = DEFAULT_SIZE_BUCKETS_ML) -> dict[str, Any]:
    """Pool lesion results (e.g. of every case of one label): counts, scores and ``by_size``.

    Returns:
        ``{recall, precision, f1, n_ref, n_detected, n_pred, n_false_positive, by_size: [{min_ml,
        max_ml, n_ref, n_detected, recall}, ...]}`` (``max_ml`` of the last bucket may be inf).
    """
    edges = [float(b) for b in buckets_ml]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"buckets_ml must be at least two increasing edges in mL, not {list(buckets_ml)}")
    n_ref = sum(r.n_ref for r in results)
    n_det = sum(r.n_detected for r in results)
    n_pred = sum(r.n_pred for r in results)
    n_fp = sum(r.n_false_positive for r in results)
    by_size = []
    for lo, hi in zip(edges, edges[1:]):
        inside = [les for r in results for les in r.lesions if lo <= les.volume_ml < hi]
        det = sum(1 for les in inside if les.detected)
        by_size.append({"min_ml": lo, "max_ml": hi, "n_ref": len(inside), "n_detected": det,
                        "recall": det / len(inside) if inside else float("nan")})
    return {**detection_scores(n_ref, n_det, n_pred, n_fp), "n_ref": n_ref, "n_detected": n_det, "n_pred": n_pred,
            "n_false_positive": n_fp, "by_size": by_size}


@dataclass(frozen=True)
class LesionSlice:
    """The axial slice through one lesion, oriented for display in radiological view.

    Row 0 is anterior, column 0 the patient's right. ``ref`` and ``pred``: boolean ``(H, W)``
    masks; ``image``: ``(H, W)`` image values in the image's own dtype (HU for CT), or None;
    ``aspect``: pixel height / pixel width (mm / mm). The arrays are copies, not views of the volume.
    """

    ref: np.ndarray
    pred: np.ndarray
    image: np.ndarray | None
    aspect: float


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the world S (superior) direction: the axis axial slices are taken across."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0, keepdims=True)
    return int(np.argmax(np.abs(cols[2])))


def lesion_slice(ref_mask: np.ndarray, pred_mask: np.ndarray, affine: np.ndarray, bbox_voxels: Sequence[Sequence[int]],
                 image: np.ndarray | None = None, margin_vox: int = 12) -> LesionSlice:
    """The axial slice through a lesion that holds most of its reference voxels, with a margin around it.

    Args:
        ref_mask, pred_mask: boolean ``(I, J, K)`` masks on one grid.
        affine: ``(4, 4)`` voxel → world (RAS+, mm) map of that grid.
        bbox_voxels: the lesion's box ``[[i0, j0, k0], [i1, j1, k1]]`` (inclusive voxel indices).
        image: optional image ``(I, J, K)`` on the same grid.
        margin_vox: voxels kept around the box in the slice plane (clipped at the volume border).
    """
    affine = np.asarray(affine, dtype=float)
    ax_s = axial_axis(affine)
    inplane = [a for a in range(3) if a != ax_s]
    lo, hi = np.asarray(bbox_voxels[0]), np.asarray(bbox_voxels[1])
    box = [slice(max(0, int(lo[a]) - margin_vox), min(ref_mask.shape[a], int(hi[a]) + margin_vox + 1)) for a in range(3)]
    # The slice (inside the lesion's box) that holds the most reference voxels of that box.
    inner = [slice(int(lo[a]), int(hi[a]) + 1) for a in range(3)]
    other = tuple(a for a in range(3) if a != ax_s)
    counts = ref_mask[tuple(inner)].sum(axis=other)
    k = int(lo[ax_s]) + int(np.argmax(counts))
    box[ax_s] = slice(k, k + 1)
    arrays = [np.squeeze(np.asarray(ref_mask, dtype=bool)[tuple(box)], axis=ax_s),
              np.squeeze(np.asarray(pred_mask, dtype=bool)[tuple(box)], axis=ax_s)]
    if image is not None:
        arrays.append(np.squeeze(np.asarray(image)[tuple(box)], axis=ax_s))
    # Orient: rows along the in-plane axis closest to world y (anterior up), columns along x (right on the left).
    a0, a1 = inplane
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    x_axis = a0 if abs(cols[0, a0]) >= abs(cols[0, a1]) else a1
    y_axis = a1 if x_axis == a0 else a0
    if inplane.index(y_axis) != 0:  # make axis 0 of the 2D arrays the row (y) axis
        arrays = [arr.T for arr in arrays]
    if cols[1, y_axis] > 0:  # index grows toward anterior: flip so anterior is at the top
        arrays = [arr[::-1, :] for arr in arrays]
    if cols[0, x_axis] > 0:  # index grows toward patient right: flip so right is on the left
        arrays = [arr[:, ::-1] for arr in arrays]
    arrays = [np.array(arr, copy=True) for arr in arrays]  # a copy: no view keeps the whole volume alive
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    return LesionSlice(ref=arrays[0], pred=arrays[1], image=arrays[2] if image is not None else None,
                       aspect=float(sp[y_axis] / sp[x_axis]))

"""Evaluate predictions against references: metrics and lesion detection per case, pooled into a summary.

Computes only; :func:`medseg.report.write_evaluation` writes ``summary.json``, ``lesions.csv`` and
``report.html`` from what this module returns.

The summary (``summary.json``'s content) is a superset of nnU-Net v2's ``summary.json``. nnU-Net's
keys: ``metric_per_case`` (each ``{"reference_file", "prediction_file", "metrics": {label: {Dice,
IoU, TP, FP, FN, TN, n_pred, n_ref}}}``), ``mean`` (``{label: {metric: nanmean over cases}}``) and
``foreground_mean`` (``{metric: mean over labels of mean}``, skipping labels whose mean is NaN,
i.e. labels absent from every case, where nnU-Net's plain mean would be NaN); labels are keys
``"1"``, ``"2"``….
medseg adds ``HD95`` (mm) and ``NSD`` to every metrics entry, ``case`` and ``lesions`` to every
case, and top-level ``labels`` (id → name), ``lesions`` (``{label: {recall, precision, f1, n_ref,
n_detected, n_pred, n_false_positive, by_size: [{min_ml, max_ml, n_ref, n_detected, recall}]}}``,
pooled over cases, every label; ``max_ml`` ``null`` for the open-ended bucket), ``lesion_labels``
(the label keys that are lesion classes, which the recall report headlines), ``lesion_overlap``,
``nsd_tolerance_mm``, and ``reference``, ``prediction`` when given.
Undefined values are NaN (written as ``NaN`` exactly as nnU-Net writes them): Dice/IoU/HD95/NSD
where both masks are empty, HD95 where one is, recall without reference lesions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.measure.inputs import CasePair, match_cases
from medseg.measure.lesions import (
    DEFAULT_SIZE_BUCKETS_ML,
    LesionResult,
    LesionSlice,
    default_lesion_labels,
    lesion_slice,
    match_lesions,
    summarize_lesions,
)
from medseg.measure.metrics import DEFAULT_NSD_TOLERANCE_MM, label_metrics, overlap_metrics
from medseg.measure.volumes import present_labels

__all__ = ["CaseEvaluation", "evaluate_case", "evaluate_pairs", "summarize", "evaluate"]

# Missed lesions per case whose axial slice is kept for the report's thumbnails (largest first).
_THUMBNAILS_PER_CASE = 40


@dataclass
class CaseEvaluation:
    """Everything one case contributes: its ``metric_per_case`` entry, lesion results, and the
    axial slices through its largest missed lesions keyed by ``(case, label, lesion_id)`` (for the
    report's thumbnails)."""

    entry: dict[str, Any]
    lesions: dict[int, LesionResult]
    lesion_slices: dict[tuple[str, str, int], LesionSlice] = field(default_factory=dict)
    voxels: int = 0


def _read_pair(pair: CasePair):
    from medseg.io import read_label, read_volume

    ref = read_label(pair.ref)
    pred = read_label(pair.pred)
    if pred.shape != ref.shape:
        raise InputError(pair.pred, f"prediction shape {pred.shape} differs from its reference's {ref.shape} ({pair.ref}); "
                         "both must be on the same voxel grid")
    if not np.allclose(pred.affine, ref.affine, atol=1e-3, rtol=0):
        diff = float(np.abs(pred.affine - ref.affine).max())
        raise InputError(pair.pred, f"prediction geometry differs from its reference's ({pair.ref}): affines differ by "
                         f"up to {diff:.4g} mm; resample the prediction onto the reference grid")
    image = None
    if pair.image is not None:
        image = read_volume(pair.image)
        if not image.same_grid(ref):
            image = None  # a thumbnail background only: fall back to the reference mask
    return pred, ref, image


def evaluate_case(pair: CasePair, labels: Sequence[int] | None = None, *, lesion_overlap: float = 0.1,
                  nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, thumbnails: bool = True) -> CaseEvaluation:
    """Metrics and lesion detection of one case, for ``labels`` (default: ids present in either map, not 0).

    ``thumbnails``: keep the axial slices through the case's largest missed lesions (at most 40)
    that the recall report draws.

    Raises:
        InputError: an unreadable file, a prediction not on its reference's grid.
    """
    pred, ref, image = _read_pair(pair)
    p, r = np.asarray(pred.array), np.asarray(ref.array)
    if labels is None:
        labels = sorted((set(present_labels(p)) | set(present_labels(r))) - {0})
    labels = [int(v) for v in labels]
    metrics: dict[int, dict[str, Any]] = {}
    lesions: dict[int, LesionResult] = {}
    slices: dict[tuple[str, str, int], LesionSlice] = {}
    for label in labels:
        # One pair of masks per label serves the overlap counts, the surfaces and the lesions.
        pm, rm = p == label, r == label
        box = _joint_box(pm, rm)
        metrics[label] = label_metrics(pm, rm, ref.spacing, nsd_tolerance_mm, box=box)
        if box is None:
            lesions[label] = LesionResult(0, 0, 0, 0)
            continue
        res = match_lesions(pm, rm, ref.affine, overlap=lesion_overlap, box=box)
        lesions[label] = res
        if thumbnails:
            missed = sorted((les for les in res.lesions if not les.detected), key=lambda les: -les.voxels)
            for les in missed[:_THUMBNAILS_PER_CASE]:
                slices[(pair.case, str(label), les.lesion_id)] = lesion_slice(
                    rm, pm, ref.affine, les.bbox_voxels, image=None if image is None else image.array)
    entry = {
        "case": pair.case,
        "reference_file": str(pair.ref),
        "prediction_file": str(pair.pred),
        "metrics": {str(label): metrics[label] for label in labels},
        "lesions": {str(label): lesions[label].to_dict() for label in labels},
    }
    return CaseEvaluation(entry=entry, lesions=lesions, lesion_slices=slices, voxels=int(p.size))


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding slices of ``a | b`` from per-axis projections (None when both are empty)."""
    box = []
    for axis in range(a.ndim):
        other = tuple(x for x in range(a.ndim) if x != axis)
        nz = np.flatnonzero(a.any(axis=other) | b.any(axis=other))
        if not nz.size:
            return None
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def _fill_missing(ev: CaseEvaluation, labels: Sequence[int]) -> None:
    """Add both-empty entries for labels a case has in neither map (so every case has every label)."""
    for label in labels:
        key = str(label)
        if key not in ev.entry["metrics"]:
            m = overlap_metrics(0, 0, 0, ev.voxels)
            m.update({"HD95": float("nan"), "NSD": float("nan")})
            ev.entry["metrics"][key] = m
            ev.lesions[label] = LesionResult(0, 0, 0, 0)
            ev.entry["lesions"][key] = ev.lesions[label].to_dict()


def summarize(cases: Sequence[CaseEvaluation], labels: dict[int, str] | None = None, *, lesion_overlap: float = 0.1,
              nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
              size_buckets_ml: Sequence[float] = DEFAULT_SIZE_BUCKETS_ML, reference: str | None = None,
              prediction: str | None = None, lesion_labels: Sequence[int] | None = None) -> dict[str, Any]:
    """The summary dict (summary.json content, see the module docstring) of evaluated cases.

    Args:
        cases: the evaluated cases (every case gets a both-empty entry for the labels it lacks).
        labels: label id → name to summarise (default: every id of any case, named by its id).
        lesion_overlap, nsd_tolerance_mm: the values the cases were evaluated with (recorded).
        size_buckets_ml: lesion size bucket edges in mL.
        reference, prediction: where the references and predictions came from (recorded when given).
        lesion_labels: the label ids that are lesion classes (default: :func:`default_lesion_labels`
            of ``labels``' names; every label when no names are given).
    """
    ids = sorted({int(k) for c in cases for k in c.entry["metrics"]} | set(labels or {}))
    if labels is not None:
        ids = sorted(labels)
    for c in cases:
        _fill_missing(c, ids)
    names = {str(i): (labels or {}).get(i, str(i)) for i in ids}
    metric_names = ["Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "HD95", "NSD"]
    mean: dict[str, dict[str, float]] = {}
    for i in ids:
        mean[str(i)] = {}
        for m in metric_names:
            vals = np.array([c.entry["metrics"][str(i)][m] for c in cases], dtype=float)
            mean[str(i)][m] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else float("nan")
    foreground = {}
    for m in metric_names:
        vals = np.array([mean[str(i)][m] for i in ids if i != 0], dtype=float)
        # nanmean: a label absent from every case (NaN mean) does not turn the whole mean NaN.
        foreground[m] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else float("nan")
    lesions = {}
    for i in ids:
        pooled = summarize_lesions([c.lesions[i] for c in cases], size_buckets_ml)
        for b in pooled["by_size"]:
            if math.isinf(b["max_ml"]):
                b["max_ml"] = None
        lesions[str(i)] = pooled
    summary = {
        "metric_per_case": [c.entry for c in cases],
        "mean": mean,
        "foreground_mean": foreground,
        "labels": names,
        "lesions": lesions,
        "lesion_labels": [str(i) for i in _lesion_ids(ids, labels, lesion_labels)],
        "lesion_overlap": lesion_overlap,
        "nsd_tolerance_mm": nsd_tolerance_mm,
    }
    if reference is not None:
        summary["reference"] = reference
    if prediction is not None:
        summary["prediction"] = prediction
    return summary


def _lesion_ids(ids: Sequence[int], labels: dict[int, str] | None, lesion_labels: Sequence[int] | None) -> list[int]:
    """The lesion classes among ``ids``: as given, else named so, else (no names to tell) every label."""
    if lesion_labels is not None:
        return sorted(int(v) for v in lesion_labels if int(v) in ids)
    if labels is None:
        return [i for i in ids if i != 0]
    return default_lesion_labels({i: labels[i] for i in ids if i in labels})


def evaluate_pairs(pairs: Sequence[CasePair], labels: Sequence[int] | None = None, *, lesion_overlap: float = 0.1,
                   nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> tuple[list[CaseEvaluation], list[dict[str, str]]]:
    """Evaluate every pair; a pair that cannot be evaluated (a missing or unreadable file, another
    grid…) is recorded and the others go on.

    Returns:
        ``(cases, failures)``: the evaluated cases, and one ``{"case", "prediction", "reference",
        "error"}`` per pair that failed (``error`` names the file and the problem).
    """
    cases, failures = [], []
    for pair in pairs:
        try:
            cases.append(evaluate_case(pair, labels, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm))
        except InputError as exc:
            failures.append({"case": pair.case, "prediction": str(pair.pred), "reference": str(pair.ref),
                             "error": str(exc)})
    return cases, failures


def evaluate(pred: str | Path, ref: str | Path, *, labels: dict[int, str] | None = None,
             lesion_overlap: float = 0.1, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
             images: str | Path | None = None, size_buckets_ml: Sequence[float] = DEFAULT_SIZE_BUCKETS_ML,
             lesion_labels: Sequence[int] | None = None) -> tuple[dict[str, Any], list[CaseEvaluation]]:
    """Evaluate ``pred`` against ``ref`` (two label files, or two folders matched by file name).

    A case of two folders that cannot be evaluated (a corrupt prediction, another grid…) is listed
    in the summary's ``failures`` and the other cases are evaluated.

    Args:
        pred, ref: prediction and reference label maps (files or folders).
        labels: label id → name to evaluate (default: every non-zero id present in any case).
        lesion_overlap: fraction of a reference lesion that must be covered to count as detected.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, mm.
        images: optional image file/folder drawn under the missed-lesion thumbnails.
        size_buckets_ml: lesion size bucket edges in mL.
        lesion_labels: the lesion classes (default: from the names, :func:`default_lesion_labels`).

    Returns:
        ``(summary, cases)``: the summary dict (summary.json's content, with ``failures``) and
        the evaluated cases; :func:`medseg.report.write_evaluation` writes both.

    Raises:
        InputError: a missing path, a reference without prediction, two files that cannot be
            evaluated, or no case of two folders that can.
        ValueError: ``lesion_overlap`` outside (0, 1], a negative ``nsd_tolerance_mm``.
    """
    if not 0 < lesion_overlap <= 1:
        raise ValueError(f"lesion_overlap must be a fraction in (0, 1], not {lesion_overlap}")
    if not nsd_tolerance_mm >= 0:
        raise ValueError(f"nsd_tolerance_mm must be >= 0 mm, not {nsd_tolerance_mm}")
    pairs = match_cases(pred, ref, images)
    ids = sorted(labels) if labels is not None else None
    cases, failures = evaluate_pairs(pairs, ids, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm)
    if not cases:  # each error already names its file
        raise InputError(None, failures[0]["error"] if len(failures) == 1 else
                         f"{pred}: none of the {len(failures)} cases could be evaluated (first: {failures[0]['error']})")
    summary = summarize(cases, labels, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm,
                        size_buckets_ml=size_buckets_ml, reference=str(ref), prediction=str(pred),
                        lesion_labels=lesion_labels)
    summary["failures"] = failures
    return summary, cases

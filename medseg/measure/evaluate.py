"""Evaluate predictions against references: files, or folders matched by file name.

Writes into ``out_dir``:

- ``summary.json``: a superset of nnU-Net v2's ``summary.json``. nnU-Net's keys:
  ``metric_per_case`` (each ``{"reference_file", "prediction_file", "metrics": {label: {Dice, IoU,
  TP, FP, FN, TN, n_pred, n_ref}}}``), ``mean`` (``{label: {metric: nanmean over cases}}``) and
  ``foreground_mean`` (``{metric: mean over labels of mean}``, skipping labels whose mean is NaN,
  i.e. labels absent from every case, where nnU-Net's plain mean would be NaN); labels are keys
  ``"1"``, ``"2"``….
  medseg adds ``HD95`` (mm) and ``NSD`` to every metrics entry, ``case`` and ``lesions`` to every
  case, and top-level ``labels`` (id → name), ``lesions`` (``{label: {recall, precision, f1, n_ref,
  n_detected, n_pred, n_false_positive, by_size: [{min_ml, max_ml, n_ref, n_detected, recall}]}}``,
  pooled over cases; ``max_ml`` ``null`` for the open-ended bucket), ``lesion_overlap``,
  ``nsd_tolerance_mm``, ``reference``, ``prediction``.
  Undefined values are written as ``NaN`` exactly as nnU-Net writes them (Python's ``json`` with
  ``allow_nan=True``): Dice/IoU/HD95/NSD where both masks are empty, HD95 where one is, recall
  without reference lesions. Python's ``json.load`` reads them back as ``float('nan')``; strict JSON
  parsers need ``NaN`` allowed.
- ``lesions.csv``: one row per reference lesion: ``case, label, label_name, lesion_id, voxels,
  volume_ml, centroid_x_mm, centroid_y_mm, centroid_z_mm, detected, covered_fraction``.
- ``report.html``: the lesion-recall report (:func:`medseg.report.render_recall_report`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.measure.lesions import DEFAULT_SIZE_BUCKETS_ML, LesionResult, match_lesions, summarize_lesions
from medseg.measure.metrics import DEFAULT_NSD_TOLERANCE_MM, label_metrics, overlap_metrics
from medseg.measure.volumes import csv_text, present_labels

__all__ = ["CasePair", "CaseEvaluation", "match_cases", "evaluate_case", "summarize", "write_evaluation", "evaluate",
           "LESION_CSV_COLUMNS", "case_name", "lesion_rows"]

LESION_CSV_COLUMNS = ("case", "label", "label_name", "lesion_id", "voxels", "volume_ml", "centroid_x_mm",
                      "centroid_y_mm", "centroid_z_mm", "detected", "covered_fraction")
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Missed-lesion thumbnails made per case (the report shows the largest MAX_THUMBNAILS overall).
_THUMBNAILS_PER_CASE = 40


def case_name(path: str | Path) -> str:
    """A file's case name: its name without the image suffix (``case_001.nii.gz`` → ``case_001``)."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: prediction, reference, and optionally the image (for thumbnails)."""

    case: str
    pred: Path
    ref: Path
    image: Path | None = None


@dataclass
class CaseEvaluation:
    """Everything one case contributes: its ``metric_per_case`` entry, lesion results, thumbnails."""

    entry: dict[str, Any]
    lesions: dict[int, LesionResult]
    thumbnails: dict[tuple[str, str, int], bytes] = field(default_factory=dict)
    voxels: int = 0


def _image_files(folder: Path) -> dict[str, Path]:
    from medseg.io import is_image_path

    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_path(p) and not p.name.startswith(".")}


def match_cases(pred: str | Path, ref: str | Path, images: str | Path | None = None) -> list[CasePair]:
    """Pair predictions with references: two files, or two folders matched by file name.

    In folders, a reference ``X.nii.gz`` is matched with the prediction of the same file name, or
    failing that of the same case name (``X`` with another image suffix). Every reference needs a
    prediction (a missing one is an error naming it); predictions without a reference are ignored.
    ``images``: an optional image file/folder for thumbnails (``X.nii.gz`` or nnU-Net's ``X_0000.nii.gz``).

    Raises:
        InputError: a missing path, a folder without images, a reference without prediction.
    """
    pred, ref = Path(pred), Path(ref)
    for p, what in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise InputError(p, f"{what} path does not exist")
    if pred.is_dir() != ref.is_dir():
        raise InputError(pred, f"prediction is a {'folder' if pred.is_dir() else 'file'} but the reference {ref} is a "
                         f"{'folder' if ref.is_dir() else 'file'}: give two files or two folders")
    if not ref.is_dir():
        img = Path(images) if images is not None else None
        if img is not None and img.is_dir():
            img = _find_image(img, case_name(ref))
        return [CasePair(case_name(ref), pred, ref, img)]
    refs = _image_files(ref)
    preds = _image_files(pred)
    if not refs:
        raise InputError(ref, "no reference label files (.nii.gz, .nii, .nrrd, .mha) in this folder")
    by_case = {case_name(p): p for p in preds.values()}
    pairs = []
    for name, r in refs.items():
        p = preds.get(name) or by_case.get(case_name(name))
        if p is None:
            raise InputError(pred, f"no prediction for reference {name} (expected {pred / name})")
        img = _find_image(Path(images), case_name(name)) if images is not None else None
        pairs.append(CasePair(case_name(name), p, r, img))
    return pairs


def _find_image(folder: Path, case: str) -> Path | None:
    for stem in (case, f"{case}_0000"):
        for suffix in _SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


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
    """Metrics and lesion detection of one case, for ``labels`` (default: ids present in either map, not 0)."""
    from medseg.report.plots import lesion_thumbnail_png

    pred, ref, image = _read_pair(pair)
    p, r = np.asarray(pred.array), np.asarray(ref.array)
    if labels is None:
        labels = sorted((set(present_labels(p)) | set(present_labels(r))) - {0})
    labels = [int(v) for v in labels]
    metrics: dict[int, dict[str, Any]] = {}
    lesions: dict[int, LesionResult] = {}
    thumbs: dict[tuple[str, str, int], bytes] = {}
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
                thumbs[(pair.case, str(label), les.lesion_id)] = lesion_thumbnail_png(
                    rm, pm, ref.affine, les.bbox_voxels, image=None if image is None else image.array)
    entry = {
        "case": pair.case,
        "reference_file": str(pair.ref),
        "prediction_file": str(pair.pred),
        "metrics": {str(label): metrics[label] for label in labels},
        "lesions": {str(label): lesions[label].to_dict() for label in labels},
    }
    return CaseEvaluation(entry=entry, lesions=lesions, thumbnails=thumbs, voxels=int(p.size))


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
              size_buckets_ml: Sequence[float] = DEFAULT_SIZE_BUCKETS_ML) -> dict[str, Any]:
    """The summary dict (summary.json content) of evaluated cases."""
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
    return {
        "metric_per_case": [c.entry for c in cases],
        "mean": mean,
        "foreground_mean": foreground,
        "labels": names,
        "lesions": lesions,
        "lesion_overlap": lesion_overlap,
        "nsd_tolerance_mm": nsd_tolerance_mm,
    }


def lesion_rows(cases: Sequence[CaseEvaluation], names: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for c in cases:
        for label, res in c.lesions.items():
            for les in res.lesions:
                rows.append({"case": c.entry["case"], "label": str(label), "label_name": names.get(str(label), str(label)),
                             "lesion_id": les.lesion_id, "voxels": les.voxels, "volume_ml": les.volume_ml,
                             "centroid_x_mm": les.centroid_mm[0], "centroid_y_mm": les.centroid_mm[1],
                             "centroid_z_mm": les.centroid_mm[2], "detected": les.detected,
                             "covered_fraction": les.covered_fraction})
    return rows


def write_evaluation(summary: dict[str, Any], cases: Sequence[CaseEvaluation], out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``lesions.csv`` and ``report.html`` into ``out_dir`` (each atomically)."""
    from medseg.report.recall import render_recall_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = lesion_rows(cases, summary["labels"])
    thumbs: dict[tuple[str, str, int], bytes] = {}
    for c in cases:
        thumbs.update(c.thumbnails)
    paths = {"summary": out / "summary.json", "lesions": out / "lesions.csv", "report": out / "report.html"}
    atomic_write_text(paths["summary"], json.dumps(_plain(summary), indent=4, sort_keys=False, allow_nan=True) + "\n")
    atomic_write_text(paths["lesions"], csv_text(rows, LESION_CSV_COLUMNS))
    atomic_write_text(paths["report"], render_recall_report(summary, rows, thumbs))
    return paths


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def evaluate(pred: str | Path, ref: str | Path, out_dir: str | Path, *, labels: dict[int, str] | None = None,
             lesion_overlap: float = 0.1, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
             images: str | Path | None = None, size_buckets_ml: Sequence[float] = DEFAULT_SIZE_BUCKETS_ML) -> dict[str, Any]:
    """Evaluate ``pred`` against ``ref`` (two label files, or two folders matched by file name).

    Args:
        pred, ref: prediction and reference label maps (files or folders).
        out_dir: where summary.json, lesions.csv and report.html go.
        labels: label id → name to evaluate (default: every non-zero id present in any case).
        lesion_overlap: fraction of a reference lesion that must be covered to count as detected.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, mm.
        images: optional image file/folder drawn under the missed-lesion thumbnails.
        size_buckets_ml: lesion size bucket edges in mL.

    Returns:
        The summary dict (as written to summary.json).
    """
    if not 0 < lesion_overlap <= 1:
        raise ValueError(f"lesion_overlap must be a fraction in (0, 1], not {lesion_overlap}")
    if not nsd_tolerance_mm >= 0:
        raise ValueError(f"nsd_tolerance_mm must be >= 0 mm, not {nsd_tolerance_mm}")
    pairs = match_cases(pred, ref, images)
    ids = sorted(labels) if labels is not None else None
    cases = [evaluate_case(p, ids, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm) for p in pairs]
    summary = summarize(cases, labels, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm,
                        size_buckets_ml=size_buckets_ml)
    summary["reference"] = str(ref)
    summary["prediction"] = str(pred)
    write_evaluation(summary, cases, out_dir)
    return summary

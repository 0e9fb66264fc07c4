"""What a cross-validation tells: ``cv_summary.json`` and the post-processing chosen on it.

Once every fold of a cross-validated model folder (:mod:`medseg.training.folds`) has its
out-of-fold label maps, :func:`evaluate_cross_validation` writes

- ``cv_summary.json``: ``medseg evaluate``'s summary (:func:`medseg.measure.summarize`: Dice,
  IoU, HD95, NSD per case and label, means, lesion-wise recall) of every out-of-fold map against
  its reference, plus ``folds``: per fold its validation ``cases``, ``mean``, ``foreground_mean``
  and ``lesions``;
- ``postprocessing.json``: per label id, whether to keep only its largest connected component
  (:func:`medseg.postprocess.components.clean_labels`), as :func:`determine_postprocessing`
  chose on the out-of-fold Dice::

      {"largest_component": {"1": true, "2": false, ...},
       "dice": {"before": {"mean": {"1": ..., ...}, "foreground_mean": ...},
                "after": {"mean": {...}, "foreground_mean": ...}},
       "trials": [{"labels": [1, 2], "before": ..., "after": ..., "kept": false}, ...],
       "connectivity": 26}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.plans import POSTPROCESSING_FILE
from medseg.training.config import TrainConfig

__all__ = ["CV_SUMMARY_FILE", "determine_postprocessing", "evaluate_cross_validation"]

CV_SUMMARY_FILE = "cv_summary.json"


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=float)
    return float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan")


def determine_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
                             labels: Sequence[int], connectivity: int = 26) -> dict[str, Any]:
    """Choose "keep only the largest connected component" per label on out-of-fold predictions,
    as nnU-Net's ``determine_postprocessing`` does.

    Dice per label is the mean over cases (NaN where both masks are empty, skipped), as in
    ``medseg evaluate``'s ``mean``; ``foreground_mean`` is the mean over labels.

    1. Every label at once: kept when it raises ``foreground_mean`` and lowers no label's Dice.
       (nnU-Net tries the largest component of the union of the labels here; medseg's decision
       is per label, which is what the model folder stores and ``segment`` applies.)
    2. Otherwise, with more than one label, each label in turn: kept when it raises that
       label's Dice. (After step 1 kept, every label's component is the largest already.)

    Removed voxels become background, so one label's clean-up leaves the other labels' Dice as
    it was: each case is cleaned once, every label at once
    (:func:`medseg.postprocess.components.clean_labels`), and both steps are decided from the
    per-label Dice with and without it.

    Args:
        cases: per case ``(prediction, reference, spacing_mm)``: two ``(X, Y, Z)`` label maps
            on one grid and its voxel size.
        labels: the label ids to decide on (0 is background and never one of them).
        connectivity: 26 or 6 (3D neighbourhood of a component).

    Returns:
        The ``postprocessing.json`` content (see the module docstring); label ids as text.
    """
    from medseg.measure.metrics import confusion_counts, overlap_metrics
    from medseg.postprocess.components import ComponentsConfig, clean_labels

    labels = [int(v) for v in labels]
    cfg = ComponentsConfig(largest_component=True, connectivity=connectivity)
    raw: dict[int, list[float]] = {lab: [] for lab in labels}
    largest: dict[int, list[float]] = {lab: [] for lab in labels}

    def dice(pred: np.ndarray, ref: np.ndarray, into: dict[int, list[float]]) -> None:
        for lab, c in confusion_counts(pred, ref, labels).items():
            into[lab].append(float(overlap_metrics(c["TP"], c["FP"], c["FN"], c["TN"])["Dice"]))

    for pred, ref, spacing in cases:
        pred, ref = np.asarray(pred), np.asarray(ref)
        dice(pred, ref, raw)
        dice(clean_labels(pred, spacing, cfg), ref, largest)
    before = {lab: _nanmean(v) for lab, v in raw.items()}
    after_all = {lab: _nanmean(v) for lab, v in largest.items()}
    fg_before, fg_after = _nanmean(before.values()), _nanmean(after_all.values())

    def worse(a: float, b: float) -> bool:  # b lower than a (NaN: no change to compare)
        return not (math.isnan(a) or math.isnan(b)) and b < a

    keep_all = fg_after > fg_before and not any(worse(before[lab], after_all[lab]) for lab in labels)
    trials: list[dict[str, Any]] = [{"labels": labels, "criterion": "foreground_mean, no label worse",
                                     "before": fg_before, "after": fg_after, "kept": bool(keep_all)}]
    decision = {lab: bool(keep_all) for lab in labels}
    if len(labels) > 1 and not keep_all:
        for lab in labels:
            kept = after_all[lab] > before[lab]
            trials.append({"labels": [lab], "criterion": "label Dice", "before": before[lab], "after": after_all[lab],
                           "kept": bool(kept)})
            decision[lab] = bool(kept)
    final = {lab: after_all[lab] if decision[lab] else before[lab] for lab in labels}
    return {
        "largest_component": {str(lab): decision[lab] for lab in labels},
        "dice": {"before": {"mean": {str(k): v for k, v in before.items()}, "foreground_mean": fg_before},
                 "after": {"mean": {str(k): v for k, v in final.items()}, "foreground_mean": _nanmean(final.values())}},
        "trials": trials,
        "connectivity": connectivity,
    }


def _write_json(data: dict[str, Any], path: Path) -> None:
    from medseg.report.formats import json_ready

    atomic_write_text(path, json.dumps(json_ready(data, keep_nan=True), indent=4, allow_nan=True) + "\n")


def evaluate_cross_validation(config: TrainConfig, *, manifest: str | Path | None = None,
                              model_dir: str | Path) -> dict[str, Any] | None:
    """Write ``cv_summary.json`` and ``postprocessing.json`` into ``model_dir`` when every fold
    has finished training and has its out-of-fold maps (see the module docstring).

    The summary is :func:`medseg.measure.summarize` of :func:`medseg.measure.evaluate_case` on each
    out-of-fold map against the manifest's label map (``medseg evaluate`` with the model's
    ``labels.json``: the same numbers), with ``reference`` the manifest and ``prediction``
    ``model_dir``.

    Returns:
        The summary, or ``None`` (nothing written) while a fold is missing.

    Raises:
        InputError: an out-of-fold map or a reference that cannot be evaluated.
    """
    from medseg.io import read_label
    from medseg.measure import CasePair, evaluate_pairs, summarize
    from medseg.training.data import labelled_rows, resolve_manifest
    from medseg.training.folds import fold_dir, fold_finished, fold_splits, validation_map

    model_dir = Path(model_dir)
    manifest = resolve_manifest(config, manifest)
    splits = fold_splits(config, manifest, model_dir)
    for k, split in enumerate(splits):
        if not fold_finished(fold_dir(model_dir, k), config):
            return None
        if not all(validation_map(model_dir, k, c).is_file() for c in split.val):
            return None
    rows = {r.case_id: r for r in labelled_rows(config, manifest)}
    labels = dict(config.data.labels)
    pairs = [CasePair(case, validation_map(model_dir, k, case), rows[case].label)
             for k, split in enumerate(splits) for case in split.val]
    cases, failures = evaluate_pairs(pairs, sorted(labels))
    if failures:
        raise InputError(None, failures[0]["error"])
    summary = summarize(cases, labels, reference=str(manifest), prediction=str(model_dir))
    summary["failures"] = []
    by_case = {c.entry["case"]: c for c in cases}
    summary["folds"] = []
    for k, split in enumerate(splits):
        part = summarize([by_case[c] for c in split.val], labels)
        summary["folds"].append({"fold": k, "cases": list(split.val), "mean": part["mean"],
                                 "foreground_mean": part["foreground_mean"], "lesions": part["lesions"]})
    _write_json(summary, model_dir / CV_SUMMARY_FILE)

    def arrays():
        for pair in pairs:
            pred, ref = read_label(pair.pred), read_label(pair.ref)
            yield pred.array, ref.array, pred.spacing

    _write_json(determine_postprocessing(arrays(), sorted(labels)), model_dir / POSTPROCESSING_FILE)
    return summary

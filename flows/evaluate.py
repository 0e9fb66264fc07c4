"""Prefect flows: evaluate predictions against references (folders or a manifest).

Thin orchestration: one task per case (:func:`medseg.measure.evaluate_case`), one task that
summarises (:func:`medseg.measure.summarize`) and writes ``summary.json``, ``lesions.csv`` and
``report.html`` (:func:`medseg.report.write_evaluation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from medseg.measure import CaseEvaluation, CasePair, evaluate_case, find_case_image, match_cases, summarize
from medseg.measure.metrics import DEFAULT_NSD_TOLERANCE_MM
from medseg.report import write_evaluation

__all__ = ["evaluate_flow", "evaluate_manifest_flow", "evaluate_case_task", "write_evaluation_task"]


@task(name="evaluate-case", task_run_name="evaluate-{pair.case}")
def evaluate_case_task(pair: CasePair, labels: list[int] | None, lesion_overlap: float,
                       nsd_tolerance_mm: float) -> CaseEvaluation:
    return evaluate_case(pair, labels, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm)


@task(name="write-evaluation")
def write_evaluation_task(cases: list[CaseEvaluation], labels: dict[int, str] | None, out_dir: str, lesion_overlap: float,
                          nsd_tolerance_mm: float, reference: str, prediction: str) -> dict[str, Any]:
    summary = summarize(cases, labels, lesion_overlap=lesion_overlap, nsd_tolerance_mm=nsd_tolerance_mm,
                        reference=reference, prediction=prediction)
    write_evaluation(summary, cases, out_dir)
    return summary


def _run(pairs: list[CasePair], labels_file: str | None, out_dir: str, lesion_overlap: float, nsd_tolerance_mm: float,
         reference: str, prediction: str) -> dict[str, Any]:
    from medseg.plans import read_labels

    logger = get_run_logger()
    labels = read_labels(labels_file) if labels_file else None
    ids = sorted(labels) if labels is not None else None
    futures = [evaluate_case_task.submit(p, ids, lesion_overlap, nsd_tolerance_mm) for p in pairs]
    cases = [f.result() for f in futures]
    summary = write_evaluation_task(cases, labels, out_dir, lesion_overlap, nsd_tolerance_mm, reference, prediction)
    for label, les in summary["lesions"].items():
        logger.info("label %s: Dice %.4f, lesion recall %d/%d, %d false positives", label,
                    summary["mean"][label]["Dice"], les["n_detected"], les["n_ref"], les["n_false_positive"])
    return summary


@flow(name="medseg-evaluate")
def evaluate_flow(pred: str, ref: str, out_dir: str, labels_file: str | None = None, lesion_overlap: float = 0.1,
                  nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, images: str | None = None) -> dict[str, Any]:
    """Evaluate prediction file/folder ``pred`` against ``ref`` (matched by file name) into ``out_dir``."""
    pairs = match_cases(pred, ref, images)
    return _run(pairs, labels_file, out_dir, lesion_overlap, nsd_tolerance_mm, str(ref), str(pred))


@flow(name="medseg-evaluate-manifest")
def evaluate_manifest_flow(manifest: str, pred_dir: str, out_dir: str, split: str | None = "test",
                           labels_file: str | None = None, lesion_overlap: float = 0.1,
                           nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, Any]:
    """Evaluate the labelled manifest cases (of ``split``; ``None``: all) against ``pred_dir/<case_id>.nii.gz``.

    The prediction of a case is the file in ``pred_dir`` named after its ``case_id`` (any image
    suffix, or nnU-Net's ``_0000``) or after its label file's name.
    """
    from medseg.errors import InputError
    from medseg.manifest import read_manifest

    rows = [r for r in read_manifest(manifest) if r.label is not None and (split is None or r.split == split)]
    if not rows:
        raise InputError(manifest, "no labelled case" + (f" in split {split!r}" if split else ""))
    pairs = []
    for r in rows:
        same_name = Path(pred_dir) / r.label.name
        pred = find_case_image(pred_dir, r.case_id) or (same_name if same_name.is_file() else None)
        if pred is None:
            raise InputError(pred_dir, f"no prediction for case {r.case_id!r} (expected {r.case_id}.nii.gz)")
        pairs.append(CasePair(r.case_id, pred, r.label, r.images[0]))
    return _run(pairs, labels_file, out_dir, lesion_overlap, nsd_tolerance_mm, str(manifest), str(pred_dir))

"""Measurements people act on: volumes (mL) and intensity statistics, overlap and surface metrics, lesion detection.

This package computes and never writes files (:mod:`medseg.report` writes what it returns).

- :mod:`medseg.measure.volumes`: :func:`~medseg.measure.volumes.compute_volumes` (one pass for all labels).
- :mod:`medseg.measure.metrics`: Dice, IoU, TP/FP/FN/TN, HD95 and NSD in mm.
- :mod:`medseg.measure.lesions`: connected-component lesion detection (recall, precision, F1, by size).
- :mod:`medseg.measure.evaluate`: predictions against references → per-case results and the summary.
- :mod:`medseg.measure.inputs`: the files to measure (folders matched by case name, manifests).
"""

from medseg.measure.evaluate import CaseEvaluation, evaluate, evaluate_case, evaluate_pairs, summarize
from medseg.measure.inputs import CasePair, case_name, find_case_image, find_volume_inputs, image_files, match_cases
from medseg.measure.volumes import compute_volumes, present_labels

__all__ = ["compute_volumes", "present_labels", "CasePair", "CaseEvaluation", "evaluate_case", "evaluate_pairs", "summarize", "evaluate",
           "match_cases", "case_name", "image_files", "find_case_image", "find_volume_inputs"]

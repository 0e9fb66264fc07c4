"""The files of an evaluation (:func:`medseg.measure.evaluate`): ``summary.json``, ``lesions.csv``, ``report.html``.

- ``summary.json``: the summary dict (:mod:`medseg.measure.evaluate` describes its keys), NaN
  written as ``NaN`` exactly as nnU-Net writes it (Python's ``json`` with ``allow_nan=True``;
  ``json.load`` reads it back as ``float('nan')``, strict JSON parsers need ``NaN`` allowed).
- ``lesions.csv``: one row per reference lesion, the columns :data:`LESION_CSV_COLUMNS`.
- ``report.html``: the lesion-recall report (:func:`medseg.report.render_recall_report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from medseg.io.atomic import atomic_write_text
from medseg.measure.evaluate import CaseEvaluation
from medseg.measure.lesions import LesionSlice
from medseg.report.formats import csv_text, json_ready
from medseg.report.recall import render_recall_report

__all__ = ["write_evaluation", "lesion_rows", "LESION_CSV_COLUMNS"]

LESION_CSV_COLUMNS = ("case", "label", "label_name", "lesion_id", "voxels", "volume_ml", "centroid_x_mm",
                      "centroid_y_mm", "centroid_z_mm", "detected", "covered_fraction")


def lesion_rows(cases: Sequence[CaseEvaluation], names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per reference lesion of every case (the columns :data:`LESION_CSV_COLUMNS`; sizes in mL, centroids in mm).

    ``names``: label key (``"1"``) → structure name, as in the summary's ``labels``.
    """
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
    """Write ``summary.json``, ``lesions.csv`` and ``report.html`` into ``out_dir`` (each atomically).

    Args:
        summary: :func:`medseg.measure.summarize` of ``cases``.
        cases: the evaluated cases (:func:`medseg.measure.evaluate_case`): their lesions and the
            slices drawn as missed-lesion thumbnails.
        out_dir: the folder (made when missing).

    Returns:
        ``{"summary": path, "lesions": path, "report": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = lesion_rows(cases, summary["labels"])
    slices: dict[tuple[str, str, int], LesionSlice] = {}
    for c in cases:
        slices.update(c.lesion_slices)
    paths = {"summary": out / "summary.json", "lesions": out / "lesions.csv", "report": out / "report.html"}
    atomic_write_text(paths["summary"], json.dumps(json_ready(summary, keep_nan=True), indent=4, allow_nan=True) + "\n")
    atomic_write_text(paths["lesions"], csv_text(rows, LESION_CSV_COLUMNS))
    atomic_write_text(paths["report"], render_recall_report(summary, rows, slices))
    return paths

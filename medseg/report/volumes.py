"""Volume reports (:func:`medseg.measure.compute_volumes`) as files: JSON, CSV and HTML for one
study, CSV and HTML over many.

The CSV has one row per structure (:data:`VOLUME_CSV_COLUMNS`; the batch CSV adds ``study``
first and ``segmentation``, ``image`` last). The HTML page holds a per-structure table and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from medseg.io.atomic import atomic_write_text
from medseg.measure.inputs import case_name
from medseg.report.formats import csv_text, json_ready
from medseg.report.html import esc, fmt, page, png_img, section, table

__all__ = ["write_volume_report", "volume_report_rows", "render_volume_report", "render_batch_volume_report",
           "write_batch_volume_reports", "study_name", "VOLUME_CSV_COLUMNS", "BATCH_CSV_COLUMNS"]

VOLUME_CSV_COLUMNS = (
    "structure", "label", "voxels", "volume_ml", "volume_ml_soft", "intensity_mean", "intensity_std",
    "intensity_min", "intensity_max", "intensity_median", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
    "touches_border",
)
BATCH_CSV_COLUMNS = ("study",) + VOLUME_CSV_COLUMNS + ("segmentation", "image")


def study_name(report: dict[str, Any]) -> str:
    """The study a report belongs to: ``case_id`` / ``study`` when set, else the segmentation's case name."""
    for key in ("case_id", "study"):
        if report.get(key):
            return str(report[key])
    seg = report.get("segmentation")
    return case_name(str(seg)) if seg else "study"


def volume_report_rows(report: dict[str, Any], study: str | None = None) -> list[dict[str, Any]]:
    """One flat row per structure (the CSV columns :data:`VOLUME_CSV_COLUMNS`, ``study`` first if given)."""
    rows = []
    for name, rec in report["structures"].items():
        row: dict[str, Any] = {} if study is None else {"study": study}
        row.update({"structure": name, "label": rec["label"], "voxels": rec["voxels"], "volume_ml": rec["volume_ml"],
                    "volume_ml_soft": rec.get("volume_ml_soft")})
        for key in ("mean", "std", "min", "max", "median"):
            row[f"intensity_{key}"] = rec.get(f"intensity_{key}")
        cen = rec.get("centroid_mm") or [None] * 3
        box = rec.get("bbox_mm") or [[None] * 3, [None] * 3]
        for axis, v in zip("xyz", cen):
            row[f"centroid_{axis}_mm"] = v
        for axis, v in zip("xyz", box[0]):
            row[f"bbox_min_{axis}_mm"] = v
        for axis, v in zip("xyz", box[1]):
            row[f"bbox_max_{axis}_mm"] = v
        row["touches_border"] = rec.get("touches_border")
        rows.append(row)
    return rows


def write_volume_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as JSON (``.json``), CSV (``.csv``, one row per structure) or HTML (``.html``/``.htm``).

    The file is written whole or not at all (temporary name, then rename). JSON numbers are
    unrounded; NaN/inf become ``null``. Returns ``path``.

    Raises:
        ValueError: any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n"
    elif suffix == ".csv":
        text = csv_text(volume_report_rows(report), VOLUME_CSV_COLUMNS)
    elif suffix in (".html", ".htm"):
        text = render_volume_report(report)
    else:
        raise ValueError(f"{path}: unknown report format {path.suffix!r} (use .json, .csv or .html)")
    return atomic_write_text(path, text)


def render_volume_report(report: dict[str, Any]) -> str:
    """The HTML page of one volume report (DESIGN.md volume report dict)."""
    from medseg.report.plots import intensity_png, volumes_bar_png

    structures = report["structures"]
    present = {n: s for n, s in structures.items() if s["voxels"] > 0}
    total = sum(s["volume_ml"] for s in present.values())
    cut = [n for n, s in present.items() if s.get("touches_border")]
    has_soft = any("volume_ml_soft" in s for s in structures.values())
    has_int = any(s.get("intensity_mean") is not None for s in structures.values())
    head = (f'<div class="headline">{len(present)} of {len(structures)} structures present; '
            f"total labelled volume {fmt(total)} mL"
            + (f"; {len(cut)} touch the image border (volumes there are lower bounds)" if cut else "") + "</div>")
    meta = (f'<p class="meta">Segmentation: {esc(report.get("segmentation"))}<br>Image: {esc(report.get("image") or "none")}'
            f'<br>Voxel spacing: {esc(" × ".join(f"{v:g}" for v in report.get("spacing_mm", [])))} mm'
            f'{"; orientation " + esc(report.get("orientation")) if report.get("orientation") else ""}</p>')
    headers = ["structure", "label", "voxels", "volume (mL)"] + (["soft volume (mL)"] if has_soft else [])
    if has_int:
        headers += ["mean", "std", "min", "median", "max"]
    headers += ["centroid x, y, z (mm)", "touches border"]
    rows, classes = [], []
    for name, s in structures.items():
        row: list[Any] = [name, s["label"], s["voxels"], s["volume_ml"]]
        if has_soft:
            row.append(s.get("volume_ml_soft"))
        if has_int:
            row += [s.get("intensity_mean"), s.get("intensity_std"), s.get("intensity_min"), s.get("intensity_median"),
                    s.get("intensity_max")]
        cen = s.get("centroid_mm")
        row.append(", ".join(f"{v:.1f}" for v in cen) if cen else None)
        row.append(bool(s.get("touches_border")))
        rows.append(row)
        classes.append("border" if s.get("touches_border") else "")
    text_cols = [0, len(headers) - 2]
    body = head + meta
    if present:
        names = list(present)
        body += section("Volumes", png_img(volumes_bar_png(names, [present[n]["volume_ml"] for n in names],
                                                             [bool(present[n].get("touches_border")) for n in names]),
                                           "volume per structure"))
        if has_int:
            body += section("Intensities", png_img(intensity_png(names, [present[n]["intensity_mean"] for n in names],
                                                                 [present[n]["intensity_std"] for n in names]),
                                                   "intensity per structure"))
    body += section("Structures", table(headers, rows, text_cols=text_cols, row_classes=classes))
    return page(f"Volume report: {study_name(report)}", body)


def _preview_thumbnails(previews: Mapping[str, str]) -> str:
    """One thumbnail per study (its ``preview.png`` by relative path), linking to the full image."""
    from urllib.parse import quote

    cells = []
    for study, path in sorted(previews.items()):
        href = esc(quote(str(path)))
        cells.append(f'<div class="thumb"><a href="{href}"><img src="{href}" alt="{esc("preview of " + str(study))}" '
                     f'loading="lazy"></a><br>{esc(study)}</div>')
    return f'<div class="thumbs">{"".join(cells)}</div>'


def render_batch_volume_report(reports: Sequence[dict[str, Any]], previews: Mapping[str, str] | None = None) -> str:
    """HTML page for many studies: per-structure summary table and distribution plots of volume.

    ``previews``: study → path of its QC preview PNG relative to the page (a thumbnail each,
    linking to the full image)."""
    import numpy as np

    from medseg.report.plots import distribution_pngs

    names: list[str] = []
    for r in reports:
        for n in r["structures"]:
            if n not in names:
                names.append(n)
    vols = {n: [r["structures"][n]["volume_ml"] for r in reports if n in r["structures"]] for n in names}
    present = {n: [v for v in vals if v > 0] for n, vals in vols.items()}
    rows = []
    for n in names:
        v = np.asarray(present[n], dtype=float)
        cut = sum(1 for r in reports if r["structures"].get(n, {}).get("touches_border"))
        rows.append([n, len(v), float(v.mean()) if v.size else None, float(np.median(v)) if v.size else None,
                     float(v.std()) if v.size else None, float(v.min()) if v.size else None,
                     float(v.max()) if v.size else None, cut])
    head = f'<div class="headline">{len(reports)} studies, {sum(1 for n in names if present[n])} structures present in at least one</div>'
    studies = table(["study", "segmentation", "structures present", "total volume (mL)"],
                    [[study_name(r), r.get("segmentation"), sum(1 for s in r["structures"].values() if s["voxels"] > 0),
                      sum(s["volume_ml"] for s in r["structures"].values())] for r in reports], text_cols=(0, 1))
    plots = "".join(png_img(png, "volume distributions") for png in
                    distribution_pngs({n: present[n] for n in names if present[n]}))
    body = (head + section("Studies", studies)
            + section("Volume per structure across studies (mL, studies where present)",
                      table(["structure", "studies present", "mean", "median", "std", "min", "max", "touching border"],
                            rows))
            + section("Distributions", plots or "<p>No structure is present in any study.</p>"))
    if previews:
        body += section("QC previews (label outlines; click for the full image)", _preview_thumbnails(previews))
    return page("Volume report: batch", body)


def write_batch_volume_reports(reports: Sequence[dict[str, Any]], csv_path: str | Path, html_path: str | Path,
                               previews: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write one CSV row per study × structure and an HTML page with per-structure distributions.

    Args:
        reports: volume report dicts (:func:`medseg.measure.compute_volumes`); the study
            name is ``report["case_id"]`` (or ``"study"``) when set, else the segmentation's file name.
        csv_path, html_path: output files (written atomically).
        previews: study → QC preview PNG path relative to ``html_path``'s folder (thumbnails).

    Returns:
        ``(csv_path, html_path)``.

    Raises:
        ValueError: no reports.
    """
    if not reports:
        raise ValueError("write_batch_volume_reports needs at least one report")
    rows = []
    for r in reports:
        for row in volume_report_rows(r, study=study_name(r)):
            row["segmentation"] = r.get("segmentation")
            row["image"] = r.get("image")
            rows.append(row)
    csv_path, html_path = Path(csv_path), Path(html_path)
    atomic_write_text(csv_path, csv_text(rows, BATCH_CSV_COLUMNS))
    atomic_write_text(html_path, render_batch_volume_report(reports, previews))
    return csv_path, html_path

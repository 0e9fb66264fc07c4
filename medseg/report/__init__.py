"""Reports people read, written from what :mod:`medseg.measure` computes: JSON, CSV, self-contained
HTML pages (inline PNG plots via matplotlib's Agg canvas). Every file is written atomically.

- :func:`write_volume_report`: one study's volume report as .json, .csv or .html.
- :func:`write_batch_volume_reports`: many studies' volume reports as one CSV and one HTML page.
- :func:`write_evaluation`: an evaluation's summary.json, lesions.csv and report.html.
- :func:`render_volume_report`, :func:`render_batch_volume_report`, :func:`render_recall_report`: the HTML pages.
- :func:`csv_text`, :func:`volume_report_rows`, :func:`lesion_rows`, :func:`json_ready`: CSV rows and JSON-ready values.
- :func:`wilson_interval`: the 95% interval shown with every recall.

This package imports :mod:`medseg.measure`, never the other way round.
"""

from medseg.report.evaluation import LESION_CSV_COLUMNS, lesion_rows, write_evaluation
from medseg.report.formats import csv_text, json_ready
from medseg.report.plots import lesion_thumbnail_png, wilson_interval
from medseg.report.recall import render_recall_report
from medseg.report.volumes import (
    BATCH_CSV_COLUMNS,
    VOLUME_CSV_COLUMNS,
    render_batch_volume_report,
    render_volume_report,
    study_name,
    volume_report_rows,
    write_batch_volume_reports,
    write_volume_report,
)

__all__ = ["write_volume_report", "write_batch_volume_reports", "write_evaluation", "render_volume_report",
           "render_batch_volume_report", "render_recall_report", "csv_text", "json_ready", "volume_report_rows",
           "lesion_rows", "study_name", "wilson_interval", "lesion_thumbnail_png", "VOLUME_CSV_COLUMNS",
           "BATCH_CSV_COLUMNS", "LESION_CSV_COLUMNS"]

"""Reports people read: self-contained HTML pages (inline PNG plots via matplotlib's Agg canvas), CSV.

- :func:`render_volume_report` / :func:`write_batch_volume_reports`: volume reports of one study / many.
- :func:`render_recall_report`: the tumour/lesion-recall report of an evaluation.
- :func:`wilson_interval`: the 95% interval shown with every recall.
"""

from medseg.report.plots import lesion_thumbnail_png, wilson_interval
from medseg.report.recall import render_recall_report
from medseg.report.volumes import render_batch_volume_report, render_volume_report, write_batch_volume_reports

__all__ = ["render_volume_report", "render_batch_volume_report", "write_batch_volume_reports", "render_recall_report",
           "wilson_interval", "lesion_thumbnail_png"]

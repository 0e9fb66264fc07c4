"""Measurements people act on: volumes (mL) and intensity statistics, overlap and surface metrics, lesion detection.

- :mod:`medseg.measure.volumes`: :func:`~medseg.measure.volumes.compute_volumes` (one pass for all labels).
- :mod:`medseg.measure.metrics`: Dice, IoU, TP/FP/FN/TN, HD95 and NSD in mm.
- :mod:`medseg.measure.lesions`: connected-component lesion detection (recall, precision, F1, by size).
- :mod:`medseg.measure.evaluate`: folders of predictions against references → summary.json, lesions.csv, report.html.
"""

__all__: list[str] = []

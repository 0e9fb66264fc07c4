"""JSON- and CSV-ready text of report dicts: numbers at full precision, names from files kept inert."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["json_ready", "csv_text"]


def json_ready(obj: Any, *, keep_nan: bool = False) -> Any:
    """A copy of ``obj`` that ``json.dumps`` accepts: numpy scalars/arrays as Python values, keys as strings.

    NaN/inf floats become ``None`` (JSON ``null``), or stay floats with ``keep_nan`` (for files
    written with ``allow_nan=True`` as nnU-Net's ``summary.json`` is, where they read ``NaN``).
    """
    if isinstance(obj, dict):
        return {str(k): json_ready(v, keep_nan=keep_nan) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, keep_nan=keep_nan) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist(), keep_nan=keep_nan)
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if keep_nan or math.isfinite(float(obj)) else None
    return obj


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a name from a file must not become a spreadsheet formula
    return value


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` under the header ``columns`` (keys not in ``columns`` are left out).

    Floats are written at full precision (``repr``), ``None`` as an empty cell, and a text cell
    starting with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'`` so that no spreadsheet runs it
    as a formula.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buf.getvalue()

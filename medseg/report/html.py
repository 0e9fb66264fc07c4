"""Self-contained HTML pages: inline CSS, inline PNG images (base64), no scripts, no network.

Every string that may come from a file (structure names, file paths, case names) goes through
:func:`esc` (``html.escape`` with quotes) before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any, Iterable, Sequence

__all__ = ["esc", "fmt", "page", "table", "png_img", "figure_png", "section"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.headline{font-size:1.3em;background:#f3f6fa;border-left:4px solid #2a6ebb;padding:.6em 1em;margin:1em 0}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#eee}td.t,th.t{text-align:left}
tr.missed td{background:#fdecea}tr.border td{background:#fff8e1}
.thumbs{display:flex;flex-wrap:wrap;gap:1em}.thumb{border:1px solid #ccc;padding:.4em;font-size:.8em;max-width:260px}
img{max-width:100%}
"""


def esc(value: Any) -> str:
    """``html.escape(str(value), quote=True)``; ``None`` becomes an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    """A number for display (rounded to ``digits`` decimals); ``None``/NaN → ``"–"``; strings escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:,.{digits}f}"
    return esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, text_cols: Sequence[int] = (0,),
          row_classes: Sequence[str] | None = None, digits: int = 2) -> str:
    """An HTML table; cells are formatted with :func:`fmt` (so strings are escaped)."""
    text_cols = set(text_cols)
    head = "".join(f'<th class="t">{esc(h)}</th>' if i in text_cols else f"<th>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{esc(row_classes[n])}"' if row_classes and row_classes[n] else ""
        cells = "".join(f'<td class="t">{fmt(v, digits)}</td>' if i in text_cols else f"<td>{fmt(v, digits)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` inline as a base64 data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure_png(fig, dpi: int = 100) -> bytes:
    """Render a ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state) to PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, body: str) -> str:
    """A whole HTML document (UTF-8, inline CSS, no external assets)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{esc(title)}</h1>{body}"
            "<p class=\"meta\">Written by medseg. Numbers are rounded for display; the JSON/CSV files hold full precision.</p>"
            "</body></html>\n")

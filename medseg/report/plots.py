"""Plots as PNG bytes (matplotlib ``Figure`` objects on the Agg canvas; no pyplot, no display).

Text that may come from a file (structure names, study ids, titles) is drawn with
plain-text properties: never parsed as mathtext (a name like ``a$b$c$`` would otherwise be read as
math and can fail to render) and never sent to TeX, whatever the matplotlib configuration says.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from medseg.measure.lesions import LesionSlice
from medseg.report.html import figure_png

__all__ = ["wilson_interval", "recall_by_size_png", "volumes_bar_png", "intensity_png", "distribution_pngs",
           "lesion_thumbnail_png"]

# Text properties of every string drawn: literal text, no mathtext, no TeX.
_PLAIN_TEXT = {"parse_math": False, "usetex": False}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% by default); (NaN, NaN) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, not {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the extremes
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _bucket_label(lo: float, hi: float | None) -> str:
    def f(v: float) -> str:
        return f"{v:g}"
    if hi is None or math.isinf(hi):
        return f"≥ {f(lo)} mL"
    if lo <= 0:
        return f"< {f(hi)} mL"
    return f"{f(lo)}–{f(hi)} mL"


def recall_by_size_png(by_size: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """Bar chart of lesion recall per size bucket with Wilson 95% intervals and counts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.add_subplot(111)
    names = [_bucket_label(b["min_ml"], b["max_ml"]) for b in by_size]
    rec = [b["n_detected"] / b["n_ref"] if b["n_ref"] else 0.0 for b in by_size]
    lo_hi = [wilson_interval(b["n_detected"], b["n_ref"]) if b["n_ref"] else (0.0, 0.0) for b in by_size]
    err = np.array([[r - lo for r, (lo, _) in zip(rec, lo_hi)], [hi - r for r, (_, hi) in zip(rec, lo_hi)]])
    x = np.arange(len(names))
    ax.bar(x, rec, color="#2a6ebb", yerr=np.clip(err, 0, None), capsize=4)
    for i, b in enumerate(by_size):
        ax.text(i, 1.04, f"{b['n_detected']}/{b['n_ref']}", ha="center", fontsize=8, **_PLAIN_TEXT)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8, **_PLAIN_TEXT)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("recall", **_PLAIN_TEXT)
    ax.set_xlabel("reference lesion volume", **_PLAIN_TEXT)
    if title:
        ax.set_title(title, fontsize=10, **_PLAIN_TEXT)
    return figure_png(fig)


def volumes_bar_png(names: Sequence[str], volumes_ml: Sequence[float], border: Sequence[bool]) -> bytes:
    """Horizontal bars of structure volumes (mL, log scale when they span > 2 decades); hatched when cut by the border."""
    from matplotlib.figure import Figure

    n = len(names)
    fig = Figure(figsize=(7, max(2.0, 0.22 * n + 0.8)))
    ax = fig.add_subplot(111)
    y = np.arange(n)
    colors = ["#e0a030" if b else "#2a6ebb" for b in border]
    ax.barh(y, volumes_ml, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7, **_PLAIN_TEXT)
    ax.invert_yaxis()
    vals = [v for v in volumes_ml if v > 0]
    if vals and max(vals) / min(vals) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("volume (mL); orange: touches the image border", **_PLAIN_TEXT)
    return figure_png(fig)


def intensity_png(names: Sequence[str], mean: Sequence[float], std: Sequence[float], unit: str = "") -> bytes:
    """Mean ± std intensity per structure (points with error bars)."""
    from matplotlib.figure import Figure

    n = len(names)
    fig = Figure(figsize=(7, max(2.0, 0.22 * n + 0.8)))
    ax = fig.add_subplot(111)
    y = np.arange(n)
    ax.errorbar(mean, y, xerr=std, fmt="o", ms=3, color="#2a6ebb", ecolor="#888")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7, **_PLAIN_TEXT)
    ax.invert_yaxis()
    ax.set_xlabel(f"intensity mean ± std {unit}".strip(), **_PLAIN_TEXT)
    return figure_png(fig)


def distribution_pngs(values: dict[str, Sequence[float]], per_figure: int = 20, xlabel: str = "volume (mL)") -> list[bytes]:
    """Small multiples: one histogram (with the individual values as ticks) per structure."""
    from matplotlib.figure import Figure

    names = list(values)
    out = []
    for start in range(0, len(names), per_figure):
        chunk = names[start:start + per_figure]
        cols = 5
        rows = math.ceil(len(chunk) / cols)
        fig = Figure(figsize=(12, 2.0 * rows))
        for i, name in enumerate(chunk):
            ax = fig.add_subplot(rows, cols, i + 1)
            v = np.asarray(values[name], dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=min(20, max(3, v.size)), color="#2a6ebb", alpha=0.8)
                ax.plot(v, np.zeros_like(v), "|", color="k", ms=8)
            ax.set_title(name, fontsize=8, **_PLAIN_TEXT)
            ax.tick_params(labelsize=7)
            ax.set_xlabel(xlabel, fontsize=7, **_PLAIN_TEXT)
        fig.tight_layout()
        out.append(figure_png(fig, dpi=80))
    return out


def lesion_thumbnail_png(view: LesionSlice, title: str = "") -> bytes:
    """A lesion's axial slice (:func:`medseg.measure.lesions.lesion_slice`) as a PNG: the image (or the
    reference mask in grey), reference contour (green) and predicted contour (red), radiological
    view (patient's right on the left, anterior up)."""
    from matplotlib.figure import Figure

    ref2 = view.ref.astype(float)
    pred2 = view.pred.astype(float)
    img2 = view.image.astype(float) if view.image is not None else None
    fig = Figure(figsize=(2.6, 2.6))
    ax = fig.add_subplot(111)
    if img2 is not None:
        vmin, vmax = np.percentile(img2, [1, 99]) if img2.size else (0, 1)
        ax.imshow(img2, cmap="gray", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1, aspect=view.aspect,
                  interpolation="nearest")
    else:
        ax.imshow(ref2 * 0.35, cmap="gray", vmin=0, vmax=1, aspect=view.aspect, interpolation="nearest")
    if ref2.any() and min(ref2.shape) > 1:
        ax.contour(ref2, levels=[0.5], colors=["#00c040"], linewidths=1.2)
    if pred2.any() and min(pred2.shape) > 1:
        ax.contour(pred2, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, **_PLAIN_TEXT)
    return figure_png(fig, dpi=90)

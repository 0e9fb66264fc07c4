"""The tumour/lesion-recall report (HTML) of an evaluation (``medseg evaluate`` → ``report.html``)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from medseg.measure.lesions import LesionSlice
from medseg.report.html import esc, fmt, page, png_img, section, table

__all__ = ["render_recall_report", "recall_headline", "MAX_THUMBNAILS"]

# Missed lesions shown with a picture (the table lists them all).
MAX_THUMBNAILS = 60
# Structures given a headline each (more get one table row each) and a recall-by-size plot.
MAX_HEADLINES = 5
MAX_SIZE_PLOTS = 8


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def recall_headline(stats: dict[str, Any]) -> str:
    """``"Lesion recall 87.5% (95% CI 73.9–94.5%): 35 of 40 reference lesions detected"`` (plain text)."""
    from medseg.report.plots import wilson_interval

    n, k = int(stats["n_ref"]), int(stats["n_detected"])
    if n == 0:
        return "No reference lesions"
    lo, hi = wilson_interval(k, n)
    return f"Lesion recall {_pct(k / n)} (95% CI {_pct(lo)}–{_pct(hi)}): {k} of {n} reference lesions detected"


def render_recall_report(summary: dict[str, Any], lesion_rows: Sequence[dict[str, Any]],
                         lesion_slices: dict[tuple[str, str, int], LesionSlice] | None = None) -> str:
    """The recall report page.

    Args:
        summary: the evaluation summary (``summary.json`` content; see :mod:`medseg.measure.evaluate`).
        lesion_rows: per reference lesion: ``case``, ``label``, ``label_name``, ``lesion_id``,
            ``volume_ml``, ``centroid_x_mm``…, ``detected``, ``covered_fraction``.
        lesion_slices: axial slices through missed lesions keyed by ``(case, label, lesion_id)``;
            the :data:`MAX_THUMBNAILS` largest missed lesions that have one are drawn.

    Only the summary's ``lesion_labels`` (the lesion classes) are headlined, counted, plotted by
    size and listed as missed; the other labels (organs) appear in the voxel-wise metrics only.
    """
    from medseg.report.plots import lesion_thumbnail_png, recall_by_size_png, wilson_interval

    lesion_slices = lesion_slices or {}
    names = summary.get("labels", {})
    body = []
    # only the lesion classes (summaries written before ``lesion_labels`` existed: every label)
    lesion_keys = [str(k) for k in summary.get("lesion_labels", list(summary.get("lesions", {})))]
    all_lesions = {k: v for k, v in summary.get("lesions", {}).items() if k in lesion_keys}
    organs = [names.get(k, k) for k in summary.get("lesions", {}) if k not in lesion_keys and k != "0"]
    if not all_lesions:
        body.append('<div class="headline">No lesion classes among the labels (choose them with --lesion-labels)</div>')
    elif len(all_lesions) <= MAX_HEADLINES:
        for label, stats in all_lesions.items():
            name = names.get(label, label)
            extra = (f"; precision {_pct(stats['precision'])}, F1 {_pct(stats['f1'])}; "
                     f"{stats['n_false_positive']} false-positive component(s) of {stats['n_pred']} predicted")
            body.append(f'<div class="headline"><b>{esc(name)}</b> (label {esc(label)}): {esc(recall_headline(stats))}'
                        f"{esc(extra)}</div>")
    else:  # many structures (e.g. 117 organs): one table row each instead of a headline each
        n_ref = sum(s["n_ref"] for s in all_lesions.values())
        n_det = sum(s["n_detected"] for s in all_lesions.values())
        body.append(f'<div class="headline">All structures: {esc(recall_headline({"n_ref": n_ref, "n_detected": n_det}))}</div>')
        rows = []
        for label, stats in all_lesions.items():
            lo, hi = wilson_interval(stats["n_detected"], stats["n_ref"])
            rows.append([names.get(label, label), label, _pct(stats["recall"]),
                         f"{_pct(lo)}–{_pct(hi)}" if stats["n_ref"] else None,
                         stats["n_detected"], stats["n_ref"], _pct(stats["precision"]), stats["n_false_positive"]])
        body.append(table(["structure", "label", "recall", "95% CI", "detected", "reference components", "precision",
                           "false positives"], rows, text_cols=(0, 1, 2, 3, 6)))
    if organs:
        body.append('<p class="meta">Not lesion classes (Dice and surface distances only): '
                    + esc(", ".join(map(str, organs))) + "</p>")
    body.append('<p class="meta">Reference: ' + esc(summary.get("reference", "")) + "<br>Prediction: "
                + esc(summary.get("prediction", "")) + "<br>A reference lesion (26-connected component) is detected when "
                f"predicted foreground covers at least {fmt(100 * summary.get('lesion_overlap', 0.1), 0)}% of its voxels; "
                "a predicted component touching no reference lesion is a false positive. "
                "Confidence intervals are Wilson score intervals treating lesions as independent.</p>")
    # Size plots for the structures with the most reference lesions.
    plotted = sorted((lab for lab, st in all_lesions.items() if st["n_ref"]), key=lambda lab: -all_lesions[lab]["n_ref"])
    for label in plotted[:MAX_SIZE_PLOTS]:
        stats = all_lesions[label]
        name = names.get(label, label)
        rows = []
        for b in stats["by_size"]:
            lo, hi = wilson_interval(b["n_detected"], b["n_ref"])
            rows.append([f"{b['min_ml']:g}–{'∞' if b['max_ml'] is None else format(b['max_ml'], 'g')} mL", b["n_ref"],
                         b["n_detected"], _pct(b["recall"]) if b["n_ref"] else None,
                         f"{_pct(lo)}–{_pct(hi)}" if b["n_ref"] else None])
        by_size = [{**b, "max_ml": math.inf if b["max_ml"] is None else b["max_ml"]} for b in stats["by_size"]]
        body.append(section(f"Recall by lesion size: {name}",
                            png_img(recall_by_size_png(by_size, title=str(name)), f"recall by size, {name}")
                            + table(["size", "reference lesions", "detected", "recall", "95% CI"], rows,
                                    text_cols=(0, 3, 4))))
    # Per-study table.
    rows = []
    for case in summary.get("metric_per_case", []):
        for label, les in case.get("lesions", {}).items():
            if label not in all_lesions:
                continue
            m = case["metrics"].get(label, {})
            rows.append([case.get("case", ""), names.get(label, label), les["n_ref"], les["n_detected"],
                         _pct(les["recall"]), les["n_pred"], les["n_false_positive"], m.get("Dice"), m.get("HD95"),
                         m.get("NSD")])
    body.append(section("Per study", table(["study", "structure", "reference lesions", "detected", "recall",
                                             "predicted components", "false positives", "Dice", "HD95 (mm)", "NSD"],
                                            rows, text_cols=(0, 1, 4), digits=3)))
    mean_rows = [[names.get(label, label), m.get("Dice"), m.get("IoU"), m.get("HD95"), m.get("NSD")]
                 for label, m in summary.get("mean", {}).items()]
    body.append(section("Voxel-wise metrics (mean over studies, NaN excluded)",
                        table(["structure", "Dice", "IoU", "HD95 (mm)", "NSD"], mean_rows, digits=3)))
    missed = [r for r in lesion_rows if not r["detected"] and str(r["label"]) in all_lesions]
    missed.sort(key=lambda r: -r["volume_ml"])
    mrows = [[r["case"], r.get("label_name", r["label"]), r["lesion_id"], r["volume_ml"],
              f"{r['centroid_x_mm']:.1f}, {r['centroid_y_mm']:.1f}, {r['centroid_z_mm']:.1f}",
              _pct(r["covered_fraction"])] for r in missed]
    thumbs = []
    for r in missed:
        view = lesion_slices.get((str(r["case"]), str(r["label"]), int(r["lesion_id"])))
        if view is None or len(thumbs) >= MAX_THUMBNAILS:
            continue
        png = lesion_thumbnail_png(view)
        cap = (f"{r['case']} · {r.get('label_name', r['label'])} #{r['lesion_id']} · {r['volume_ml']:.3f} mL · "
               f"({r['centroid_x_mm']:.0f}, {r['centroid_y_mm']:.0f}, {r['centroid_z_mm']:.0f}) mm · "
               f"covered {_pct(r['covered_fraction'])}")
        thumbs.append(f'<div class="thumb">{png_img(png, "missed lesion " + cap)}<br>{esc(cap)}</div>')
    note = ("<p class=\"meta\">Thumbnails: axial slice through each missed lesion, radiological view (patient's right "
            "on the left); green = reference, red = prediction. "
            + (f"The {MAX_THUMBNAILS} largest are shown." if len(missed) > MAX_THUMBNAILS else "") + "</p>")
    body.append(section(f"Missed lesions ({len(missed)})",
                        (table(["study", "structure", "lesion", "volume (mL)", "centroid x, y, z (mm)", "covered"],
                               mrows, text_cols=(0, 1, 4, 5), digits=4) + note
                         + f'<div class="thumbs">{"".join(thumbs)}</div>') if missed else "<p>None: every reference lesion was detected.</p>"))
    return page("Lesion recall report", "".join(body))

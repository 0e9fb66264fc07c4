"""The lesion-recall report: Wilson intervals, a page without lesions, thumbnails of missed lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.io import Volume, write_volume
from medseg.measure import evaluate
from medseg.report import render_recall_report, wilson_interval, write_evaluation


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_recall_report_without_lesions_is_not_blank(tmp_path, render_dom):
    summary = {"labels": {"1": "tumour"}, "lesions": {"1": {"recall": float("nan"), "precision": float("nan"),
               "f1": float("nan"), "n_ref": 0, "n_detected": 0, "n_pred": 0, "n_false_positive": 0, "by_size": []}},
               "metric_per_case": [], "mean": {}, "lesion_overlap": 0.1}
    (tmp_path / "r.html").write_text(render_recall_report(summary, []))
    dom = render_dom(tmp_path / "r.html")
    assert "No reference lesions" in dom and "every reference lesion was detected" in dom


def test_missed_lesions_get_thumbnails_only_with_their_slices(tmp_path):
    """Two missed lesions: one thumbnail each when evaluated with thumbnails, none without."""
    ref = np.zeros((30, 30, 12), np.uint8)
    ref[3:8, 3:8, 2:5] = 1
    ref[20:24, 20:24, 6:9] = 1
    ref[12:16, 3:6, 3:6] = 1
    pred = np.zeros_like(ref)
    pred[12:16, 3:6, 3:6] = 1  # the third lesion is found, the first two missed
    vol = Volume(ref, np.diag([0.8, 0.8, 2.5, 1.0]))
    write_volume(vol, tmp_path / "ref.nii.gz")
    write_volume(vol.with_array(pred), tmp_path / "pred.nii.gz")
    summary, cases = evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", labels={1: "lesion"})
    assert sorted(cases[0].lesion_slices) == [("ref", "1", 1), ("ref", "1", 3)]
    assert summary["lesions"]["1"]["n_ref"] == 3 and summary["lesions"]["1"]["n_detected"] == 1
    paths = write_evaluation(summary, cases, tmp_path / "with")
    assert set(paths) == {"summary", "lesions", "report"} and all(p.is_file() for p in paths.values())
    with_thumbs = paths["report"].read_text()
    assert "Missed lesions (2)" in with_thumbs and with_thumbs.count('alt="missed lesion ') == 2
    for c in cases:
        c.lesion_slices.clear()
    without = write_evaluation(summary, cases, tmp_path / "without")["report"].read_text()
    assert "Missed lesions (2)" in without and 'alt="missed lesion ' not in without
    # The same summary and lesion table either way.
    assert (tmp_path / "with" / "summary.json").read_text() == (tmp_path / "without" / "summary.json").read_text()
    assert (tmp_path / "with" / "lesions.csv").read_text() == (tmp_path / "without" / "lesions.csv").read_text()

"""HTML reports: self-contained, escaped, and rendered by headless Chromium."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medseg.io import Volume, read_label, read_volume, write_volume
from medseg.measure.evaluate import evaluate
from medseg.measure.volumes import compute_volumes, write_volume_report
from medseg.report import render_recall_report, wilson_interval, write_batch_volume_reports

EVIL = "<script>alert(1)</script>"


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _assert_escaped(html: str) -> None:
    assert EVIL not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_malicious_label_names_are_escaped_everywhere(tmp_path, render_dom):
    seg = np.zeros((12, 10, 8), np.uint8)
    seg[2:6, 2:6, 2:6] = 1
    seg[7:9, 6:9, 1:3] = 2
    vol = Volume(seg, np.diag([1.5, 1.5, 2.0, 1.0]), source=str(tmp_path / f"{EVIL}.nii.gz"))
    report = compute_volumes(vol, labels={1: EVIL, 2: 'a&b"c'})
    write_volume_report(report, tmp_path / "v.html")
    html = (tmp_path / "v.html").read_text()
    _assert_escaped(html)
    assert "a&amp;b&quot;c" in html
    write_batch_volume_reports([report, {**report, "case_id": EVIL}], tmp_path / "b.csv", tmp_path / "b.html")
    _assert_escaped((tmp_path / "b.html").read_text())
    # The recall report of an evaluation whose label names come from a labels file.
    write_volume(vol, tmp_path / "ref.nii.gz")
    pred = seg.copy()
    pred[7:9, 6:9, 1:3] = 0
    write_volume(vol.with_array(pred), tmp_path / "pred.nii.gz")
    evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "ev", labels={1: EVIL, 2: "b"})
    html = (tmp_path / "ev" / "report.html").read_text()
    _assert_escaped(html)
    # In the browser the name is text, not a script element.
    dom = render_dom(tmp_path / "ev" / "report.html")
    assert "<script" not in dom.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_volume_report_renders_in_chromium(shared_data, tmp_path, render_dom, cli):
    ct = shared_data / "ct_abdomen"
    out = tmp_path / "ct.html"
    proc = cli("volumes", ct / "example_ct_sm_seg.nii.gz", "--image", ct / "example_ct_sm.nii.gz",
               "--labels", ct / "labels.json", "-o", out)
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert "http://" not in html and "https://" not in html and "<link" not in html
    dom = render_dom(out, screenshot=tmp_path / "ct.png")
    assert "40 of 117 structures present" in dom
    assert "1,062.45" in dom  # the liver, mL (TotalSegmentator: 1062450 mm³)
    assert "32 touch the image border" in dom
    assert dom.count("data:image/png;base64,") == 2 and (tmp_path / "ct.png").stat().st_size > 20_000


def test_batch_volume_reports_csv_and_html(shared_data, tmp_path, render_dom):
    ct = shared_data / "ct_abdomen"
    seg = read_label(ct / "example_ct_sm_seg.nii.gz")
    img = read_volume(ct / "example_ct_sm.nii.gz")
    labels = {int(k): v for k, v in json.loads((ct / "labels.json").read_text()).items()}
    reports = []
    for i, cut in enumerate((30, 25, 20)):
        arr = seg.array.copy()
        arr[:, :, cut:] = 0  # three "studies" with less and less of the abdomen
        r = compute_volumes(seg.with_array(arr), img, labels)
        r["case_id"] = f"study{i}"
        reports.append(r)
    csv_path, html_path = write_batch_volume_reports(reports, tmp_path / "all.csv", tmp_path / "all.html")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 * 117 and rows[0]["study"] == "study0" and rows[117]["study"] == "study1"
    liver = [float(r["volume_ml"]) for r in rows if r["structure"] == "liver"]
    assert liver[0] == pytest.approx(1062.45) and liver[0] > liver[1] > liver[2] > 0
    dom = render_dom(html_path)
    assert "3 studies" in dom and "liver" in dom and dom.count("data:image/png;base64,") >= 1
    with pytest.raises(ValueError, match="at least one"):
        write_batch_volume_reports([], tmp_path / "x.csv", tmp_path / "x.html")


def test_recall_report_without_lesions_is_not_blank(tmp_path, render_dom):
    summary = {"labels": {"1": "tumour"}, "lesions": {"1": {"recall": float("nan"), "precision": float("nan"),
               "f1": float("nan"), "n_ref": 0, "n_detected": 0, "n_pred": 0, "n_false_positive": 0, "by_size": []}},
               "metric_per_case": [], "mean": {}, "lesion_overlap": 0.1}
    (tmp_path / "r.html").write_text(render_recall_report(summary, []))
    dom = render_dom(tmp_path / "r.html")
    assert "No reference lesions" in dom and "every reference lesion was detected" in dom

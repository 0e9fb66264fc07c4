"""Volume reports as files: JSON/CSV at full precision, HTML pages rendered by headless Chromium."""

from __future__ import annotations

import csv
import json

import pytest

from medseg.io import read_label, read_volume
from medseg.measure import compute_volumes
from medseg.report import write_batch_volume_reports, write_volume_report


def test_report_formats(shared_data, tmp_path):
    ct = shared_data / "ct_abdomen"
    seg = read_label(ct / "example_ct_sm_seg.nii.gz")
    img = read_volume(ct / "example_ct_sm.nii.gz")
    report = compute_volumes(seg, img, {5: "liver", 1: "spleen", 250: "nothing"})
    assert write_volume_report(report, tmp_path / "r.json") == tmp_path / "r.json"
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)["structures"]["nothing"]["intensity_mean"] is None
    assert json.loads(text)["structures"]["liver"]["volume_ml"] == report["structures"]["liver"]["volume_ml"]
    write_volume_report(report, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["structure"] for r in rows] == ["liver", "spleen", "nothing"]
    assert float(rows[0]["volume_ml"]) == report["structures"]["liver"]["volume_ml"]  # full precision
    assert rows[2]["intensity_mean"] == ""
    with pytest.raises(ValueError, match="unknown report format"):
        write_volume_report(report, tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temporary files left


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
    assert list(rows[0])[0] == "study" and list(rows[0])[-2:] == ["segmentation", "image"]
    liver = [float(r["volume_ml"]) for r in rows if r["structure"] == "liver"]
    assert liver[0] == pytest.approx(1062.45) and liver[0] > liver[1] > liver[2] > 0
    dom = render_dom(html_path)
    assert "3 studies" in dom and "liver" in dom and dom.count("data:image/png;base64,") >= 1
    with pytest.raises(ValueError, match="at least one"):
        write_batch_volume_reports([], tmp_path / "x.csv", tmp_path / "x.html")

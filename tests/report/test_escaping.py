"""Names from files reach the page and the plots as inert text: HTML-escaped, never mathtext or TeX."""

from __future__ import annotations

import html

import numpy as np
import pytest

from medseg.io import Volume, write_volume
from medseg.measure import compute_volumes, evaluate
from medseg.report import write_batch_volume_reports, write_evaluation, write_volume_report

EVIL = "<script>alert(1)</script>"


def _assert_escaped(page: str) -> None:
    assert EVIL not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def _case(tmp_path, names: dict[int, str]):
    """A two-label case (label 2 has a lesion the prediction misses) written as ref/pred files."""
    seg = np.zeros((12, 10, 8), np.uint8)
    seg[2:6, 2:6, 2:6] = 1
    seg[7:9, 6:9, 1:3] = 2
    vol = Volume(seg, np.diag([1.5, 1.5, 2.0, 1.0]), source=str(tmp_path / f"{names[1]}.nii.gz"))
    write_volume(vol, tmp_path / "ref.nii.gz")
    pred = seg.copy()
    pred[7:9, 6:9, 1:3] = 0
    write_volume(vol.with_array(pred), tmp_path / "pred.nii.gz")
    return vol


def test_malicious_label_names_are_escaped_everywhere(tmp_path, render_dom):
    vol = _case(tmp_path, {1: EVIL})
    report = compute_volumes(vol, labels={1: EVIL, 2: 'a&b"c'})
    write_volume_report(report, tmp_path / "v.html")
    page = (tmp_path / "v.html").read_text()
    _assert_escaped(page)
    assert "a&amp;b&quot;c" in page
    write_batch_volume_reports([report, {**report, "case_id": EVIL}], tmp_path / "b.csv", tmp_path / "b.html")
    _assert_escaped((tmp_path / "b.html").read_text())
    # The recall report of an evaluation whose label names come from a labels file.
    summary, cases = evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", labels={1: EVIL, 2: "b"})
    paths = write_evaluation(summary, cases, tmp_path / "ev")
    _assert_escaped(paths["report"].read_text())
    # In the browser the name is text, not a script element.
    dom = render_dom(paths["report"])
    assert "<script" not in dom.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


@pytest.mark.parametrize("names", [{1: "$x^$", 2: "a$b"}, {1: "a$b$c$", 2: r"$\frac{$"}])
def test_dollar_signs_in_names_are_drawn_as_text(tmp_path, names):
    """matplotlib reads ``$...$`` as mathtext; ``$x^$`` is invalid mathtext and used to stop the report."""
    vol = _case(tmp_path, names)
    report = compute_volumes(vol, labels=names)
    report["case_id"] = "study $1$"
    written = [write_volume_report(report, tmp_path / "v.html")]
    written += write_batch_volume_reports([report, {**report, "case_id": "$y_$"}], tmp_path / "b.csv", tmp_path / "b.html")
    summary, cases = evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", labels=names, lesion_labels=[1, 2])
    assert summary["lesions"]["2"]["n_ref"] == 1 and summary["lesions"]["2"]["n_detected"] == 0
    written += write_evaluation(summary, cases, tmp_path / "ev").values()
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    pages = {p.name: p.read_text() for p in written if p.suffix == ".html"}
    assert set(pages) == {"v.html", "b.html", "report.html"}
    for name in names.values():
        for page in pages.values():
            assert html.escape(name, quote=True) in page
    # Plots drawn from the names: volume bars (v.html), distributions (b.html), recall by size (report.html).
    assert pages["v.html"].count("data:image/png;base64,") == 1
    assert pages["b.html"].count("data:image/png;base64,") == 1
    assert pages["report.html"].count("data:image/png;base64,") >= 2  # recall by size + a missed-lesion thumbnail

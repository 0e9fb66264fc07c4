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


def test_recall_report_headlines_lesion_classes_not_organs(tmp_path, cli):
    """A phantom (liver, spleen, kidneys, tumours): the lesions are the tumours; the organs appear
    only in the voxel-wise metrics. --lesion-labels chooses others."""
    import json

    from medseg.measure.lesions import default_lesion_labels, resolve_lesion_labels
    from medseg.phantoms import PHANTOM_LABELS, make_phantom

    study = make_phantom(3, shape=(48, 44, 32), n_tumours=3)
    ref = study.label.array
    pred = ref.copy()
    from medseg.measure.lesions import connected_components

    ids, n = connected_components(ref == 5)
    assert n == 3
    pred[ids == 1] = 1  # one tumour missed (predicted as liver)
    write_volume(study.label, tmp_path / "ref.nii.gz")
    write_volume(study.label.with_array(pred), tmp_path / "pred.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({str(k): v for k, v in PHANTOM_LABELS.items()}))
    assert default_lesion_labels(PHANTOM_LABELS) == [5]
    assert default_lesion_labels({1: "liver", 2: "Enhancing tumour", 3: "oedema", 4: "kidney_cyst_left",
                                  5: "lung_nodules", 6: "brain metastases", 7: "necrosis", 8: "vertebrae_L1"}) == [2, 3, 4, 5, 6, 7]
    assert resolve_lesion_labels("liver,5", PHANTOM_LABELS) == [1, 5]
    with pytest.raises(ValueError, match="'pancreas' is not a label name"):
        resolve_lesion_labels("pancreas", PHANTOM_LABELS)

    r = cli("evaluate", "--pred", tmp_path / "pred.nii.gz", "--ref", tmp_path / "ref.nii.gz", "-o", tmp_path / "auto",
            "--labels", tmp_path / "labels.json")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["lesion_labels"] == ["5"] and set(summary["lesions"]) == {"1", "2", "3", "4", "5"}
    page = (tmp_path / "auto" / "report.html").read_text()
    headlines = [line for line in page.split('<div class="headline">')[1:]]
    assert len(headlines) == 1 and headlines[0].startswith("<b>tumour</b>")
    assert "2 of 3 reference lesions detected" in headlines[0]
    assert "Recall by lesion size: tumour" in page and "Recall by lesion size: liver" not in page
    assert "Missed lesions (1)" in page
    per_study = page.split("<h2>Per study</h2>")[1].split("</table>")[0]
    assert "tumour" in per_study and "liver" not in per_study and "spleen" not in per_study
    voxelwise = page.split("<h2>Voxel-wise metrics")[1].split("</table>")[0]
    assert all(name in voxelwise for name in PHANTOM_LABELS.values())

    r = cli("evaluate", "--pred", tmp_path / "pred.nii.gz", "--ref", tmp_path / "ref.nii.gz", "-o", tmp_path / "chosen",
            "--labels", tmp_path / "labels.json", "--lesion-labels", "liver,tumour")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "chosen" / "report.html").read_text()
    assert page.count('<div class="headline">') == 2 and "<b>liver</b>" in page
    r = cli("evaluate", "--pred", tmp_path / "pred.nii.gz", "--ref", tmp_path / "ref.nii.gz", "-o", tmp_path / "bad",
            "--labels", tmp_path / "labels.json", "--lesion-labels", "pancreas")
    assert r.returncode == 1 and r.stderr.count("medseg: error:") == 1 and "labels.json" in r.stderr
    assert not (tmp_path / "bad").exists()

"""``medseg evaluate`` end to end on real MS lesion cases and KiTS labels (IPL, anisotropic)."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from medseg.io import read_label, write_volume
from medseg.measure import evaluate
from medseg.report import wilson_interval, write_evaluation

METRICS = {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "HD95", "NSD"}


def test_cli_evaluate_folders_writes_summary_csv_and_report(ms_eval_dirs, cli, tmp_path, render_dom):
    root, expected = ms_eval_dirs
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"1": "lesion", "2": "absent"}))
    out = tmp_path / "out"
    proc = cli("evaluate", "--pred", root / "pred", "--ref", root / "ref", "-o", out, "--labels", labels,
               "--images", root / "img")
    assert proc.returncode == 0, proc.stderr
    text = (out / "summary.json").read_text()
    summary = json.loads(text)
    # nnU-Net's summary.json keys, and ours.
    assert {"metric_per_case", "mean", "foreground_mean", "lesions", "labels"} <= set(summary)
    assert [c["case"] for c in summary["metric_per_case"]] == ["patient07", "patient19"]
    for case in summary["metric_per_case"]:
        assert case["reference_file"].endswith(f"ref/{case['case']}.nii.gz")
        assert case["prediction_file"].endswith(f"pred/{case['case']}.nii.gz")
        assert set(case["metrics"]) == {"1", "2"} and set(case["metrics"]["1"]) == METRICS
        n_ref, n_det, n_fp = expected[case["case"]]
        les = case["lesions"]["1"]
        assert (les["n_ref"], les["n_detected"], les["n_false_positive"], les["n_pred"]) == (n_ref, n_det, n_fp, n_det + n_fp)
        m = case["metrics"]["1"]
        assert m["FP"] == 2 * 27 and m["n_ref"] == m["TP"] + m["FN"] and 0.9 < m["Dice"] < 1
        # Label 2 is in neither map: NaN Dice, written as nnU-Net writes it.
        assert math.isnan(case["metrics"]["2"]["Dice"]) and case["metrics"]["2"]["TN"] == 182 * 218 * 182
    assert '"Dice": NaN' in text
    total_ref = sum(v[0] for v in expected.values())
    total_det = sum(v[1] for v in expected.values())
    pooled = summary["lesions"]["1"]
    assert (pooled["n_ref"], pooled["n_detected"], pooled["n_false_positive"]) == (total_ref, total_det, 4)
    assert pooled["recall"] == total_det / total_ref and pooled["precision"] == total_det / (total_det + 4)
    assert sum(b["n_ref"] for b in pooled["by_size"]) == total_ref
    assert summary["mean"]["1"]["Dice"] == pytest.approx(np.mean([c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"]]))
    assert math.isnan(summary["mean"]["2"]["Dice"])
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    assert len(rows) == total_ref and sum(r["detected"] == "False" for r in rows) == 8
    assert set(rows[0]) >= {"case", "label", "lesion_id", "volume_ml", "centroid_x_mm", "detected", "covered_fraction"}
    # The recall report in a real browser: not blank, the headline numbers present.
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    dom = render_dom(out / "report.html")
    lo, hi = wilson_interval(total_det, total_ref)
    headline = (f"Lesion recall {100 * total_det / total_ref:.1f}% (95% CI {100 * lo:.1f}%–{100 * hi:.1f}%): "
                f"{total_det} of {total_ref} reference lesions detected")
    assert headline in dom
    assert "Missed lesions (8)" in dom and dom.count("data:image/png;base64,") >= 1 + 8


def test_evaluate_rejects_mismatched_grid_and_missing_prediction(shared_data, cli, tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    src = shared_data / "ct_abdomen" / "example_ct_sm_seg.nii.gz"
    shutil.copy(src, ref_dir / "ct.nii.gz")
    seg = read_label(src)
    moved = seg.affine.copy()
    moved[:3, 3] += 3.0
    write_volume(type(seg)(seg.array, moved), pred_dir / "ct.nii.gz")
    proc = cli("evaluate", "--pred", pred_dir, "--ref", ref_dir, "-o", tmp_path / "out")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert str(pred_dir / "ct.nii.gz") in proc.stderr and "geometry" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
    (pred_dir / "ct.nii.gz").unlink()
    proc = cli("evaluate", "--pred", pred_dir, "--ref", ref_dir, "-o", tmp_path / "out")
    assert proc.returncode == 1 and "no prediction for reference ct.nii.gz" in proc.stderr


def test_kits_tumour_components_on_ipl_grid(shared_data, tmp_path):
    """KiTS case 1 (611×512×512 IPL, 0.5×0.92×0.92 mm): tumour of 7.3 mL in 3 components."""
    path = shared_data / "kits19_labels" / "case_00001" / "segmentation.nii.gz"
    summary, cases = evaluate(path, path, labels={1: "kidney", 2: "tumour"})
    write_evaluation(summary, cases, tmp_path / "out")
    m = summary["metric_per_case"][0]["metrics"]
    assert m["1"]["Dice"] == 1.0 and m["2"]["HD95"] == 0.0 and m["2"]["NSD"] == 1.0
    les = summary["lesions"]["2"]
    assert les["n_ref"] == 3 and les["recall"] == 1.0 and les["precision"] == 1.0
    rows = list(csv.DictReader((tmp_path / "out" / "lesions.csv").open()))
    tumour_ml = sum(float(r["volume_ml"]) for r in rows if r["label"] == "2")
    assert tumour_ml == pytest.approx(7.3, abs=0.1)


def test_a_bad_prediction_among_folders_is_recorded_and_the_others_evaluated(ms_eval_dirs, cli, tmp_path):
    import shutil

    root, expected = ms_eval_dirs
    pred = tmp_path / "pred"
    shutil.copytree(root / "pred", pred)
    (pred / "patient19.nii.gz").write_bytes((pred / "patient19.nii.gz").read_bytes()[:5000])  # truncated
    out = tmp_path / "out"
    proc = cli("evaluate", "--pred", pred, "--ref", root / "ref", "-o", out)
    assert proc.returncode != 0  # something failed: a script can tell
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medseg: error: {pred / 'patient19.nii.gz'}:"), proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in summary["metric_per_case"]] == ["patient07"]
    [failure] = summary["failures"]
    assert failure["case"] == "patient19" and "truncated" in failure["error"]
    assert (out / "report.html").is_file() and (out / "lesions.csv").is_file()

"""The evaluation and volume-report Prefect flows on a real (temporary) Prefect engine."""

from __future__ import annotations

import csv
import json
import shutil


def test_evaluate_flow_over_folders_and_manifest(prefect_server, ms_eval_dirs, tmp_path):
    from flows.evaluate import evaluate_flow, evaluate_manifest_flow

    root, expected = ms_eval_dirs
    summary = evaluate_flow(str(root / "pred"), str(root / "ref"), str(tmp_path / "out"), images=str(root / "img"))
    total_ref = sum(v[0] for v in expected.values())
    total_det = sum(v[1] for v in expected.values())
    assert summary["lesions"]["1"]["n_ref"] == total_ref and summary["lesions"]["1"]["n_detected"] == total_det
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["lesions"]["1"]["n_false_positive"] == 4 and (tmp_path / "out" / "report.html").stat().st_size > 10_000
    # The same through a manifest (DESIGN.md CSV; paths relative to it) and a predictions folder.
    data = tmp_path / "archive"
    shutil.copytree(root, data)
    (data / "manifest.csv").write_text("case_id,image,label,split\n"
                                       "patient07,img/patient07.nii.gz,ref/patient07.nii.gz,test\n"
                                       "patient19,img/patient19.nii.gz,ref/patient19.nii.gz,train\n")
    summary = evaluate_manifest_flow(str(data / "manifest.csv"), str(data / "pred"), str(tmp_path / "m_out"), split="test")
    assert [c["case"] for c in summary["metric_per_case"]] == ["patient07"]
    assert summary["lesions"]["1"]["n_detected"] == expected["patient07"][1]


def test_volumes_flow_over_folder(prefect_server, shared_data, tmp_path):
    from flows.volumes import volumes_flow

    ct = shared_data / "ct_abdomen"
    segs, imgs = tmp_path / "segs", tmp_path / "imgs"
    segs.mkdir()
    imgs.mkdir()
    for name in ("a", "b"):
        shutil.copy(ct / "example_ct_sm_seg.nii.gz", segs / f"{name}.nii.gz")
        shutil.copy(ct / "example_ct_sm.nii.gz", imgs / f"{name}.nii.gz")
    out = volumes_flow(str(segs), str(tmp_path / "out"), labels_file=str(ct / "labels.json"), images=str(imgs))
    theirs = json.loads((ct / "example_ct_sm_statistics.json").read_text())
    for name in ("a", "b"):
        report = json.loads((tmp_path / "out" / "studies" / f"{name}.json").read_text())
        assert report["case_id"] == name
        assert report["structures"]["liver"]["voxels"] * 27 == theirs["liver"]["volume"]
        assert abs(report["structures"]["liver"]["intensity_mean"] - theirs["liver"]["intensity"]) < 1e-3
    rows = list(csv.DictReader(open(out["csv"])))
    assert len(rows) == 2 * 117 and {r["study"] for r in rows} == {"a", "b"}
    assert "<html" in open(out["html"]).read()

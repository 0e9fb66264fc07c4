"""The segment-archive flow on a real Prefect engine (the session's prefect_server)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_volume

from tests.flows.batch_helpers import tiny_study, write_tiny_archive


def _outputs(out: Path) -> dict[str, int]:
    """mtime (ns) of every file under OUT/studies and OUT/state."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for sub in ("studies", "state") for p in sorted((out / sub).rglob("*")) if p.is_file()}


@pytest.fixture()
def mixed_archive(tmp_path, shared_data) -> Path:
    """Good NIfTI studies (one oblique LPS, with a reference label), a real DICOM series folder,
    a truncated .nii.gz and a non-image file."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    root = tmp_path / "archive"
    write_tiny_archive(root, 2, labels=True)
    oblique = make_phantom(7, shape=(30, 30, 22), spacing=(6.5, 6.0, 7.0), orientation="LPS",
                           rotation_deg=(10.0, -6.0, 12.0), n_tumours=1)
    write_volume(oblique.image, root / "oblique_lps.nii.gz")
    shutil.copytree(shared_data / "ct_abdomen" / "dicom", root / "ct_dicom")
    data = (root / "study_00.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "scan_notes.dat").write_text("a scanned consent form, not an image\n")
    return root


def test_flow_outputs_failures_and_no_repeated_work(prefect_server, mixed_archive, phantom_model, tmp_path):
    import flows.segment_archive as fsa
    from medseg.inference.pipeline import predictor_loads

    out = tmp_path / "out"
    loads_before = predictor_loads()
    record = fsa.segment_archive(str(mixed_archive), str(phantom_model), str(out))
    good = ["ct_dicom", "oblique_lps", "study_00", "study_01"]
    assert record["processed"] == good
    assert record["failed"] == ["scan_notes.dat", "truncated"]
    assert record["skipped"] == []
    # the model was loaded once for the four studies (once per worker process: here, this one)
    assert predictor_loads() - loads_before <= 1
    assert record["workers"] == [os.getpid()]

    sources = {"ct_dicom": mixed_archive / "ct_dicom", "oblique_lps": mixed_archive / "oblique_lps.nii.gz",
               "study_00": mixed_archive / "study_00.nii.gz", "study_01": mixed_archive / "study_01.nii.gz"}
    for sid, src in sources.items():
        seg = read_volume(out / "studies" / sid / "segmentation.nii.gz")
        image = read_volume(src)
        assert seg.shape == image.shape  # exactly the input's grid, DICOM (LAS) and oblique LPS included
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        assert seg.array.dtype == np.uint8
        report = json.loads((out / "studies" / sid / "volumes.json").read_text())
        assert set(report["structures"]) == {"liver", "spleen", "kidney_right", "kidney_left", "tumour"}
        counts = np.bincount(seg.array.ravel(), minlength=6)
        for name, rec in report["structures"].items():
            assert rec["voxels"] == counts[rec["label"]]
        state = json.loads((out / "state" / f"{sid}.json").read_text())
        assert state["status"] == "done"

    with open(out / "failures.csv", newline="") as f:
        failures = {r["study"]: r for r in csv.DictReader(f)}
    assert set(failures) == {"truncated", "scan_notes.dat"}
    assert failures["truncated"]["stage"] == "ingest"
    assert "truncated or corrupt gzip" in failures["truncated"]["error"]
    assert failures["truncated"]["source"] == str(mixed_archive / "truncated.nii.gz")
    assert "not a supported image" in failures["scan_notes.dat"]["error"]

    # aggregated volume report: every good study, every structure
    with open(out / "volumes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["study"] for r in rows} == set(good)
    assert (out / "volumes.html").is_file()
    # references exist for study_00/01 (labels/ matched by name): the evaluation was written
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    assert summary["labels"]["5"] == "tumour" and summary["lesions"]["5"]["n_ref"] >= 2

    # second run: nothing is redone, nothing is rewritten
    before = _outputs(out)
    reports_before = {n: (out / n).stat().st_mtime_ns for n in ("volumes.csv", "volumes.html", "failures.csv")}
    again = fsa.segment_archive(str(mixed_archive), str(phantom_model), str(out))
    assert again["processed"] == [] and again["failed"] == []
    assert again["skipped"] == sorted(good + ["scan_notes.dat", "truncated"])
    assert _outputs(out) == before
    assert {n: (out / n).stat().st_mtime_ns for n in reports_before} == reports_before
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2 and json.loads(runs[-1].read_text())["processed"] == []

    # a changed study is redone, and only it
    s = tiny_study(55)
    from medseg.io import write_volume

    write_volume(s.image, mixed_archive / "study_01.nii.gz")
    third = fsa.segment_archive(str(mixed_archive), str(phantom_model), str(out))
    assert third["processed"] == ["study_01"]
    after = _outputs(out)
    assert {k: v for k, v in after.items() if "study_01" not in k} == {k: v for k, v in before.items()
                                                                        if "study_01" not in k}


def test_transient_errors_are_retried(prefect_server, tmp_path, phantom_model, monkeypatch):
    """An OSError that is not bad input is retried by Prefect; the study then succeeds."""
    import flows.segment_archive as fsa
    import medseg.io
    from flows.runner import study_task

    archive = tmp_path / "a"
    write_tiny_archive(archive, 1)
    calls = {"n": 0}
    real = medseg.io.read_channels

    def flaky(paths, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error (network share)")
        return real(paths, **kwargs)

    monkeypatch.setattr(medseg.io, "read_channels", flaky)
    monkeypatch.setattr(study_task, "retry_delay_seconds", 0)
    record = fsa.segment_archive(str(archive), str(phantom_model), str(tmp_path / "out"))
    assert calls["n"] == 2
    assert record["processed"] == ["study_00"]


def test_flow_runs_an_nnunet_folder_with_the_folds_asked_for(prefect_server, tmp_path):
    """The flow takes the model options: an nnU-Net folder with --folds runs those folds, and the
    labels are what medseg segment gives with the same folds."""
    import flows.segment_archive as fsa
    from medseg.inference import Predictor
    from tests.support_nnunet import write_nnunet_folder

    archive = tmp_path / "archive"
    write_tiny_archive(archive, 2)
    model = write_nnunet_folder(tmp_path / "nn", labels={"background": 0, "organ": 1}, patch=(16, 16, 16),
                                spacing=(6.0, 6.0, 6.0), folds=(0, 1))
    out = tmp_path / "out"
    record = fsa.segment_archive(str(archive), str(model), str(out), folds=[1])
    assert record["processed"] == ["study_00", "study_01"] and record["failed"] == []
    fold1 = Predictor.from_model_dir(model, device="cpu", folds=[1])
    both = Predictor.from_model_dir(model, device="cpu")
    for sid in record["processed"]:
        image = read_volume(archive / f"{sid}.nii.gz")
        seg = read_volume(out / "studies" / sid / "segmentation.nii.gz").array
        assert np.array_equal(seg, fold1.predict(image).labels.array)
        assert not np.array_equal(fold1.predict(image, keep_probabilities=True).probabilities(),
                                  both.predict(image, keep_probabilities=True).probabilities())

"""`medseg ingest` and `medseg.ingest.ingest_sources`: recursive discovery, case ids, manifests,
idempotency by content hash, bad sources reported while the others go on, inputs never touched."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.batch.state import read_state
from medseg.batch.studies import safe_id
from medseg.ingest import ingest_sources
from medseg.io import read_volume, write_volume
from medseg.phantoms import make_phantom, write_phantom_archive

SHAPE = (20, 18, 12)


def _phantom(seed: int, **kw):
    return make_phantom(seed, shape=SHAPE, spacing=(8.0, 8.0, 10.0), n_tumours=1, **kw)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def archive(tmp_path, real_dicom_copy) -> Path:
    """A folder tree: NIfTI, NRRD and MHA files at several depths, a DICOM series folder, a
    same-named file in two folders, an odd file name, a non-image file and one corrupt scan."""
    root = tmp_path / "archive"
    write_volume(_phantom(1).image, root / "site A" / "scan.nii.gz")
    write_volume(_phantom(2, orientation="LPS", rotation_deg=(10.0, 0.0, 5.0)).image, root / "site B" / "scan.nii.gz")
    write_volume(_phantom(3, orientation="LAS").image, root / "site B" / "deep" / "My scan (1).nrrd")
    write_volume(_phantom(4).image, root / "mr.mha")
    shutil.copytree(real_dicom_copy, root / "patient 7" / "CT")
    (root / "notes.txt").write_text("not a scan")
    (root / "site A" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    return root


@pytest.fixture(scope="session")
def real_dicom_copy(shared_data) -> Path:
    return shared_data / "ct_abdomen" / "dicom"


def test_folder_tree_partial_failure_and_idempotent_rerun(cli, tmp_path, archive):
    before = _tree_digest(archive)
    out = tmp_path / "out"
    res = cli("ingest", archive, "--out", out)
    assert res.returncode == 3, res.stderr  # one source failed
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if not line.startswith("medseg: warning:")]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0] and "gzip" in errors[0]
    # the shared DICOM series has empty Study/Series UIDs: its provenance JSON gets generated ones, said once
    assert len(lines) == 2 and "patient 7/CT: empty StudyInstanceUID, SeriesInstanceUID" in lines[0]
    assert res.stdout.strip().startswith("ingested 5, skipped 0 (unchanged), failed 1")
    names = sorted(p.name for p in out.glob("*.nii.gz"))
    assert names == ["mr.nii.gz", "patient_7__CT.nii.gz", "site_A__scan.nii.gz", "site_B__deep__My_scan_1.nii.gz",
                     "site_B__scan.nii.gz"]
    rows = _read_csv(out / "manifest.csv")
    assert sorted(r["case_id"] for r in rows) == [n.removesuffix(".nii.gz") for n in names]
    assert all(r["split"] == "test" and r["image"] == f"{r['case_id']}.nii.gz" for r in rows)
    assert {r["case_id"]: r["modality"] for r in rows}["patient_7__CT"] == "CT"
    failures = _read_csv(out / "failures.csv")
    assert [(f["source"], f["study"], f["stage"]) for f in failures] == [
        (str(archive / "site A" / "broken.nii.gz"), "site_A__broken", "ingest")]
    # geometry and voxels exactly as read
    for src, case in [(archive / "site B" / "scan.nii.gz", "site_B__scan"),
                      (archive / "site B" / "deep" / "My scan (1).nrrd", "site_B__deep__My_scan_1")]:
        a, b = read_volume(src), read_volume(out / f"{case}.nii.gz")
        assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-9)
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]

    # re-run: nothing rewritten, the bad one still reported
    stamps = _mtimes(out)
    res = cli("ingest", archive, "--out", out)
    assert res.returncode == 3
    assert res.stdout.strip().startswith("ingested 0, skipped 5 (unchanged), failed 1")
    assert _mtimes(out) == stamps

    # change one source (new content, same name) and fix the broken one: only those two are written
    write_volume(_phantom(11).image, archive / "site A" / "scan.nii.gz")
    write_volume(_phantom(12).image, archive / "site A" / "broken.nii.gz")
    res = cli("ingest", archive, "--out", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("ingested 2, skipped 4 (unchanged), failed 0")
    after = _mtimes(out)
    changed = sorted(k for k in after if after[k] != stamps.get(k))
    assert changed == ["site_A__broken.nii.gz", "site_A__scan.nii.gz"]
    assert np.array_equal(read_volume(out / "site_A__scan.nii.gz").array, _phantom(11).image.array)
    assert _read_csv(out / "failures.csv") == []
    assert len(_read_csv(out / "manifest.csv")) == 6
    # inputs never touched (apart from the two the test itself rewrote)
    now = _tree_digest(archive)
    assert {k: v for k, v in now.items() if "site A" not in k} == {k: v for k, v in before.items() if "site A" not in k}


def test_study_that_turns_bad_loses_its_outputs(tmp_path):
    src = tmp_path / "in" / "a.nii.gz"
    write_volume(_phantom(1).image, src)
    out = tmp_path / "out"
    assert ingest_sources([src], out)["processed"] == ["a"]
    assert (out / "a.nii.gz").is_file()
    src.write_bytes(src.read_bytes()[:200])  # truncated: the source changed and is now bad
    record = ingest_sources([src], out)
    assert record["failed"] == ["a"] and record["failures_total"] == 1
    assert "truncated or corrupt gzip" in read_state(out, "a")["error"]
    assert not (out / "a.nii.gz").exists()  # the old output no longer describes its source
    assert not (out / "manifest.csv").exists()


def test_metaimage_with_detached_data_is_reingested_when_its_voxels_change(tmp_path):
    import SimpleITK as sitk

    from medseg.io import volume_to_sitk

    vol = _phantom(1).image
    header = tmp_path / "in" / "ct.mhd"
    header.parent.mkdir()
    sitk.WriteImage(volume_to_sitk(vol), str(header))  # ct.mhd + ct.raw
    out = tmp_path / "out"
    assert ingest_sources([header], out)["processed"] == ["ct"]
    assert ingest_sources([header], out)["skipped"] == ["ct"]
    sitk.WriteImage(volume_to_sitk(vol.with_array(vol.array + np.int16(1))), str(header))  # same header bytes
    assert ingest_sources([header], out)["processed"] == ["ct"]
    assert np.array_equal(read_volume(out / "ct.nii.gz").array, vol.array + 1)


def test_case_ids_are_safe_unique_and_stable(tmp_path):
    assert safe_id(["My scan (1)"]) == "My_scan_1"
    assert safe_id(["..", "..", "etc", "passwd"]) == "etc__passwd"
    assert safe_id(["..."]) == "study"
    assert safe_id(["Ünïcode naïve"]) == "Ünïcode_naïve"
    a, b = tmp_path / "x" / "scan.nii.gz", tmp_path / "y" / "SCAN.nii.gz"
    write_volume(_phantom(1).image, a)
    write_volume(_phantom(2).image, b)
    out = tmp_path / "out"
    first = ingest_sources([a, b], out)
    ids = first["processed"]
    assert len(ids) == 2 and "scan" in ids  # unique ignoring case: the other is SCAN~<hash>
    other = next(i for i in ids if i != "scan")
    assert other.startswith("SCAN~") and len(other) == len("SCAN~") + 6
    assert read_state(out, "scan")["source"] == str(a) and read_state(out, other)["source"] == str(b)
    again = ingest_sources([b, a], out)  # other order: each study keeps its id
    assert again["skipped"] == sorted(ids) and again["processed"] == []
    alone = ingest_sources([b], out)  # alone, b still does not take a's id
    assert alone["skipped"] == [other]


def test_out_that_is_or_holds_an_input_is_refused(cli, tmp_path):
    folder = tmp_path / "scans"
    src = folder / "a.nii.gz"
    write_volume(_phantom(1).image, src)
    before = _tree_digest(folder)
    for out in (folder, tmp_path):
        res = cli("ingest", src, "--out", out)
        assert res.returncode == 1
        assert res.stderr.startswith(f"medseg: error: {out}: output folder") and len(res.stderr.splitlines()) == 1
    res = cli("ingest", folder, "--out", folder)
    assert res.returncode == 1 and "output folder is also an input" in res.stderr
    res = cli("ingest", src, "--out", tmp_path / "o", "--manifest", src)
    assert res.returncode == 1 and "manifest to write is an input" in res.stderr
    assert _tree_digest(folder) == before
    assert not (tmp_path / "o").exists()


def test_out_inside_a_source_folder_is_not_searched(cli, tmp_path):
    folder = tmp_path / "scans"
    write_volume(_phantom(1).image, folder / "a.nii.gz")
    out = folder / "ingested"
    res = cli("ingest", folder, "--out", out)
    assert res.returncode == 0, res.stderr
    res = cli("ingest", folder, "--out", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ingested 0, skipped 1")  # its own outputs are not new sources
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz"]


def test_quiet_when_piped(cli, tmp_path):
    src = tmp_path / "a.nii.gz"
    write_volume(_phantom(1).image, src)
    res = cli("ingest", src, "--out", tmp_path / "out")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.count("\n") == 1  # one summary line, no progress lines


def test_progress_lines_on_a_terminal(tmp_path):
    """On a terminal (a pty here) each study gets a progress line on stderr."""
    import os
    import pty
    import subprocess
    import sys

    src = tmp_path / "a.nii.gz"
    write_volume(_phantom(1).image, src)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "medseg", "ingest", str(src), "--out", str(tmp_path / "out")],
                              stdout=subprocess.PIPE, stderr=follower, text=True, timeout=120)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO once the terminal has no writer left
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    text = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "[medseg] searching 1 source(s)" in text and "[medseg] [1/1] a: ingested" in text


def test_single_dicom_file_points_to_its_folder(cli, tmp_path, shared_data):
    one = next(p for p in sorted((shared_data / "ct_abdomen" / "dicom").iterdir()))
    res = cli("ingest", one, "--out", tmp_path / "out")
    assert res.returncode == 1
    assert f"{one}: is a single DICOM file: a DICOM series is read from the folder that holds it" in res.stderr


def test_manifest_source_keeps_splits_and_checks_labels(tmp_path):
    manifest = write_phantom_archive(tmp_path / "archive", 3, shape=SHAPE, spacing=(8.0, 8.0, 10.0), variants=False,
                                     splits={"train": 2, "val": 1})
    out = tmp_path / "out"
    record = ingest_sources([manifest], out)
    assert record["failures_total"] == 0 and len(record["processed"]) == 3
    rows = _read_csv(out / "manifest.csv")
    assert [(r["case_id"], r["image"], r["label"], r["split"], r["modality"]) for r in rows] == [
        ("phantom_000", "phantom_000.nii.gz", "labels/phantom_000.nii.gz", "train", "CT"),
        ("phantom_001", "phantom_001.nii.gz", "labels/phantom_001.nii.gz", "train", "CT"),
        ("phantom_002", "phantom_002.nii.gz", "labels/phantom_002.nii.gz", "val", "CT"),
    ]
    for r in rows:
        a = read_volume(tmp_path / "archive" / "labels" / f"{r['case_id']}.nii.gz")
        b = read_volume(out / r["label"])
        assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    # the written manifest is valid for read_manifest
    from medseg.manifest import read_manifest

    assert [r.case_id for r in read_manifest(out / "manifest.csv")] == ["phantom_000", "phantom_001", "phantom_002"]


def test_nnunet_dataset_json_source_with_two_channels(tmp_path):
    ds = tmp_path / "Dataset001_Test"
    for case, seed in (("brain_001", 1), ("brain_002", 2)):
        study = _phantom(seed)
        write_volume(study.image, ds / "imagesTr" / f"{case}_0000.nii.gz")
        write_volume(study.image.with_array((study.image.array // 2).astype(np.int16)), ds / "imagesTr" / f"{case}_0001.nii.gz")
        write_volume(study.label, ds / "labelsTr" / f"{case}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "T1"},
                                                 "labels": {"background": 0, "lesion": 1},
                                                 "numTraining": 2, "file_ending": ".nii.gz"}))
    out = tmp_path / "out"
    record = ingest_sources([ds / "dataset.json"], out)
    assert record["failures_total"] == 0, (out / "failures.csv").read_text()
    rows = _read_csv(out / "manifest.csv")
    assert rows[0] == {"case_id": "brain_001", "image": "brain_001_0000.nii.gz;brain_001_0001.nii.gz",
                       "label": "labels/brain_001.nii.gz", "split": "train", "modality": "MR"}
    assert np.array_equal(read_volume(out / "brain_002_0001.nii.gz").array, _phantom(2).image.array // 2)


def test_folder_with_nnunet_channel_files_gives_multichannel_studies(tmp_path):
    """``case_0000`` / ``case_0001`` in a folder are one two-channel study; channels off the first's grid are refused."""
    folder = tmp_path / "imagesTs"
    study = _phantom(1)
    write_volume(study.image, folder / "brain_0000.nii.gz")
    write_volume(study.image.with_array((study.image.array // 2).astype(np.int16)), folder / "brain_0001.nii.gz")
    write_volume(study.image, folder / "odd_0000.nii.gz")
    write_volume(_phantom(2, orientation="LPS").image, folder / "odd_0001.nii.gz")  # another grid
    out = tmp_path / "out"
    record = ingest_sources([folder], out)
    assert record["processed"] == ["brain"] and record["failed"] == ["odd"]
    rows = _read_csv(out / "manifest.csv")
    assert [(r["case_id"], r["image"]) for r in rows] == [("brain", "brain_0000.nii.gz;brain_0001.nii.gz")]
    assert np.array_equal(read_volume(out / "brain_0001.nii.gz").array, study.image.array // 2)
    [failure] = _read_csv(out / "failures.csv")
    assert failure["study"] == "odd" and failure["error"].startswith(f"{folder / 'odd_0001.nii.gz'}: channel")
    assert str(folder / "odd_0000.nii.gz") in failure["error"]


def test_a_manifest_row_with_a_missing_file_is_its_own_failure(tmp_path):
    manifest = write_phantom_archive(tmp_path / "archive", 3, shape=SHAPE, spacing=(8.0, 8.0, 10.0), variants=False)
    (tmp_path / "archive" / "images" / "phantom_001.nii.gz").unlink()
    out = tmp_path / "out"
    record = ingest_sources([manifest], out)
    assert record["processed"] == ["phantom_000", "phantom_002"] and record["failed"] == ["phantom_001"]
    [row] = _read_csv(out / "failures.csv")
    assert row["study"] == "phantom_001" and row["error"].endswith("phantom_001.nii.gz: does not exist")
    assert [r["case_id"] for r in _read_csv(out / "manifest.csv")] == ["phantom_000", "phantom_002"]

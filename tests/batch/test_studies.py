"""medseg.batch.studies: what a study is in a folder tree or manifest, and its id."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.batch import discover_studies
from medseg.errors import InputError
from medseg.io import content_hash, write_volume
from medseg.phantoms import make_phantom, write_phantom_archive


def _tiny(seed: int):
    return make_phantom(seed, shape=(24, 24, 16), spacing=(8.0, 8.0, 9.0), n_tumours=1)


@pytest.fixture()
def tree_archive(tmp_path, shared_data) -> Path:
    """A folder tree: two NIfTI studies (one nested), a DICOM series folder, a truncated file,
    a non-image file, side files that are not studies, and labels/ with a reference."""
    root = tmp_path / "archive"
    (root / "ward_b").mkdir(parents=True)
    (root / "labels").mkdir()
    a, b = _tiny(1), _tiny(2)
    write_volume(a.image, root / "case_a.nii.gz")
    write_volume(b.image, root / "ward_b" / "case_b.nii.gz")
    write_volume(a.label, root / "labels" / "case_a.nii.gz")
    shutil.copytree(shared_data / "ct_abdomen" / "dicom", root / "ward_b" / "ct_series")
    data = (root / "case_a.nii.gz").read_bytes()
    (root / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "scan_notes.dat").write_text("not an image\n")
    (root / "README.txt").write_text("archive side file\n")
    (root / ".hidden.nii.gz").write_bytes(data)
    return root


def test_scan_folder_tree(tree_archive):
    studies = {s.study_id: s for s in discover_studies([tree_archive])}
    assert set(studies) == {"case_a", "ward_b__case_b", "ward_b__ct_series", "broken", "scan_notes.dat"}
    assert studies["ward_b__ct_series"].kind == "dicom"
    assert studies["ward_b__ct_series"].sources == (str(tree_archive / "ward_b" / "ct_series"),)
    assert studies["scan_notes.dat"].kind == "invalid" and "not a supported image" in studies["scan_notes.dat"].problem
    assert studies["broken"].kind == "file"
    assert studies["case_a"].label == str(tree_archive.resolve() / "labels" / "case_a.nii.gz")
    assert studies["ward_b__case_b"].label is None


def test_scan_excludes_output_folder(tree_archive):
    out = tree_archive / "out"
    (out / "studies" / "x").mkdir(parents=True)
    write_volume(_tiny(3).image, out / "studies" / "x" / "segmentation.nii.gz")
    ids = {s.study_id for s in discover_studies([tree_archive], exclude=(out,))}
    assert not any(i.startswith("out") for i in ids)


def test_scan_manifest_archive(tmp_path):
    manifest = write_phantom_archive(tmp_path / "ph", 3, shape=(24, 24, 16), spacing=(8.0, 8.0, 9.0), variants=False)
    for archive in (manifest, manifest.parent):  # the CSV, or a folder holding manifest.csv
        studies = discover_studies([archive])
        assert [s.study_id for s in studies] == ["phantom_000", "phantom_001", "phantom_002"]
        assert all(s.label and Path(s.label).is_file() for s in studies)
        assert all(s.kind == "file" and s.modality == "CT" for s in studies)


def test_scan_missing_archive(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover_studies([tmp_path / "nope"])
    [bad] = discover_studies([tmp_path / "nope"], on_error="record")  # ingest: a failure row, the rest go on
    assert bad.kind == "invalid" and bad.problem == "does not exist"


def test_nnunet_channel_files_make_one_study(tmp_path):
    """case_0000/case_0001 are the two channels of one study; a gap is reported; a date is not a channel."""
    s = _tiny(1)
    for name in ("brain_0000", "brain_0001", "gap_0000", "gap_0002", "scan_2023"):
        write_volume(s.image, tmp_path / f"{name}.nii.gz")
    write_volume(s.label, tmp_path / "labels" / "brain.nii.gz")
    studies = {x.study_id: x for x in discover_studies([tmp_path])}
    assert set(studies) == {"brain", "gap", "scan_2023"}
    assert studies["brain"].sources == (str(tmp_path / "brain_0000.nii.gz"), str(tmp_path / "brain_0001.nii.gz"))
    assert studies["brain"].label == str(tmp_path.resolve() / "labels" / "brain.nii.gz")
    assert studies["gap"].kind == "invalid" and "gap_0001 missing" in studies["gap"].problem
    assert studies["scan_2023"].sources == (str(tmp_path / "scan_2023.nii.gz"),)


def test_metaimage_pair_is_one_study_whose_hash_covers_the_voxels(tmp_path):
    import SimpleITK as sitk

    from medseg.io import volume_to_sitk

    vol = _tiny(1).image
    sitk.WriteImage(volume_to_sitk(vol), str(tmp_path / "scan.mhd"))  # scan.mhd + scan.raw
    assert (tmp_path / "scan.raw").is_file()
    [study] = discover_studies([tmp_path])
    assert study.study_id == "scan" and study.kind == "file" and study.sources == (str(tmp_path / "scan.mhd"),)
    before = content_hash(study.sources)
    sitk.WriteImage(volume_to_sitk(vol.with_array(vol.array + np.int16(1))), str(tmp_path / "scan.mhd"))
    assert content_hash(study.sources) != before  # same header bytes, new voxels


@pytest.mark.parametrize("names", [("山田.nii.gz", "田中.nii.gz"), ("x.nii", "x.nii.gz"), ("a b.nii.gz", "a_b.nii.gz"),
                                   ("Scan.nii.gz", "scan.nrrd")])
def test_ids_are_unique_readable_and_stable(tmp_path, names):
    for name in names:
        write_volume(_tiny(1).image, tmp_path / name)
    ids = [s.study_id for s in discover_studies([tmp_path])]
    assert len(ids) == 2 and len({i.casefold() for i in ids}) == 2
    assert ids == [s.study_id for s in discover_studies([tmp_path])]  # deterministic
    if names[0] == "山田.nii.gz":
        assert ids == ["山田", "田中"]  # letters of any script are kept
    if names == ("a b.nii.gz", "a_b.nii.gz"):
        by_source = {Path(s.sources[0]).name: s.study_id for s in discover_studies([tmp_path])}
        assert by_source["a_b.nii.gz"] == "a_b" and by_source["a b.nii.gz"].startswith("a_b~")


def test_content_hash(tree_archive):
    f = tree_archive / "case_a.nii.gz"
    h1 = content_hash([str(f)])
    assert h1 == content_hash([str(f)]) and len(h1) == 32
    dicom = tree_archive / "ward_b" / "ct_series"
    hd = content_hash([str(dicom)])
    assert hd == content_hash([str(dicom)])
    first = sorted(dicom.iterdir())[0]
    first.rename(dicom / ("renamed_" + first.name))  # same bytes, another name: another series content
    assert content_hash([str(dicom)]) != hd
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    assert content_hash([str(f)]) != h1

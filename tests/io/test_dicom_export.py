"""DICOM-SEG and RTSTRUCT export of the real CT series' segmentation (31 structures on its grid).

The shared series has empty dataset-level UIDs; most tests use a UID-complete copy made with
pydicom (instance/class UIDs from the file meta, one study and series UID), as a PACS series has.
The SEG is read back twice: with highdicom, and independently with pydicom alone (frames mapped
to source slices by ReferencedSOPInstanceUID, checked against ImagePositionPatient).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"


def _uid_complete_copy(src: Path, dst: Path, series_uid: str = SERIES_UID) -> Path:
    import pydicom

    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = "ANON1"
        ds.save_as(dst / f.name, enforce_file_format=True)
    return dst


@pytest.fixture(scope="module")
def ct(shared_data):
    root = shared_data / "ct_abdomen"
    names = {int(k): v for k, v in json.loads((root / "labels.json").read_text()).items()}
    return {"dicom": root / "dicom", "seg": root / "dicom_seg.nii.gz", "labels": root / "labels.json", "names": names}


@pytest.fixture(scope="module")
def exported(ct, tmp_path_factory, cli):
    """The UID-complete series, its slices in k order, and a BINARY SEG, a LABELMAP SEG and an RTSTRUCT of dicom_seg."""
    import pydicom

    tmp = tmp_path_factory.mktemp("dicom_export")
    series = _uid_complete_copy(ct["dicom"], tmp / "series")
    out = tmp / "out"
    r = cli("export", ct["seg"], "--dicom", series, "--labels", ct["labels"], "--seg", out / "seg.dcm",
            "--rtstruct", out / "rt.dcm")
    assert r.returncode == 0, r.stderr
    r = cli("export", ct["seg"], "--dicom", series, "--labels", ct["labels"], "--seg", out / "labelmap.dcm",
            "--seg-type", "labelmap")
    assert r.returncode == 0, r.stderr
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.iterdir())]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    return {"series": series, "slices": slices, "out": out}


def _reference_on_series_axes(ct, slices) -> np.ndarray:
    """dicom_seg.nii.gz as (column, row, slice) of the series, reoriented with nibabel from the
    series' own header geometry (not medseg's)."""
    ds = slices[0]
    o = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = o[:3] * dc, o[3:] * dr
    lps[:3, 2] = (np.asarray(slices[-1].ImagePositionPatient, float) - np.asarray(ds.ImagePositionPatient, float)) / (len(slices) - 1)
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, float)
    series_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    img = nib.load(ct["seg"])
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                                nib.orientations.io_orientation(series_affine))
    arr = nib.orientations.apply_orientation(np.asarray(img.dataobj).astype(np.int64), transform)
    assert np.allclose(img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape), series_affine, atol=1e-3)
    return arr


def test_seg_reads_back_with_highdicom_voxel_for_voxel(ct, exported):
    import highdicom as hd

    reference = _reference_on_series_axes(ct, exported["slices"])
    uids = [ds.SOPInstanceUID for ds in exported["slices"]]
    by_name = {v: k for k, v in ct["names"].items()}
    for name in ("seg.dcm", "labelmap.dcm"):
        seg = hd.seg.segread(exported["out"] / name)
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                   skip_overlap_checks=True)  # (slices, rows, columns)
        lut = np.zeros(len(seg.SegmentSequence) + 1, dtype=np.int64)
        for d in seg.SegmentSequence:
            if d.SegmentNumber:
                lut[d.SegmentNumber] = by_name[d.SegmentLabel]
        rebuilt = lut[pixels].transpose(2, 1, 0)
        assert rebuilt.shape == reference.shape
        assert np.array_equal(rebuilt, reference), name
    assert seg.SegmentationType == "LABELMAP"


def test_seg_reads_back_with_pydicom_alone(ct, exported):
    """Frames → source slices by ReferencedSOPInstanceUID; their ImagePositionPatient agrees."""
    import pydicom

    seg = pydicom.dcmread(exported["out"] / "seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    k_of = {ds.SOPInstanceUID: k for k, ds in enumerate(exported["slices"])}
    label_of = {d.SegmentNumber: {v: k for k, v in ct["names"].items()}[d.SegmentLabel] for d in seg.SegmentSequence}
    frames = seg.pixel_array  # (frames, rows, columns), 0/1
    rebuilt = np.zeros((int(seg.Columns), int(seg.Rows), len(k_of)), dtype=np.int64)
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = k_of[uid]
        position = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, np.asarray(exported["slices"][k].ImagePositionPatient, float), atol=1e-3)
        number = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        rebuilt[:, :, k][frames[i].T.astype(bool)] = label_of[number]
    assert np.array_equal(rebuilt, _reference_on_series_axes(ct, exported["slices"]))


def test_seg_segments_carry_names_codes_and_references(ct, exported):
    import pydicom

    seg = pydicom.dcmread(exported["out"] / "seg.dcm")
    present = sorted(int(v) for v in np.unique(np.asarray(nib.load(ct["seg"]).dataobj)) if v)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [ct["names"][v] for v in present]
    by_label = {d.SegmentLabel: d for d in seg.SegmentSequence}
    liver = by_label["liver"]
    assert (liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            liver.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("123037004", "10200004")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    rib = by_label["rib_left_6"].SegmentedPropertyTypeCodeSequence[0]
    assert rib.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert all(len(d.RecommendedDisplayCIELabValue) == 3 for d in seg.SegmentSequence)
    source = exported["slices"]
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != SERIES_UID
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == SERIES_UID
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence} == {ds.SOPInstanceUID for ds in source}


def test_rtstruct_reads_back_with_rt_utils(ct, exported):
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_from(str(exported["series"]), str(exported["out"] / "rt.dcm"))
    reference = _reference_on_series_axes(ct, exported["slices"]).transpose(1, 0, 2)  # rows, columns, slices
    present = sorted(int(v) for v in np.unique(reference) if v)
    assert sorted(rt.get_roi_names()) == sorted(ct["names"][v] for v in present)
    colours = {r.ReferencedROINumber: list(r.ROIDisplayColor) for r in rt.ds.ROIContourSequence}
    numbers = {r.ROIName: r.ROINumber for r in rt.ds.StructureSetROISequence}
    from medseg.io import structure_code

    large = 0
    for v in present:
        name = ct["names"][v]
        assert colours[numbers[name]] == list(structure_code(name).rgb)
        truth = reference == v
        if truth.sum() <= 1000:
            continue
        mask = rt.get_roi_mask_by_name(name)
        dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
        assert dice >= 0.95, (name, dice)
        large += 1
    assert large >= 20
    assert rt.ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == exported["slices"][0].FrameOfReferenceUID


def test_empty_segments_kept_or_dropped(ct, exported, cli):
    import pydicom

    out = exported["out"] / "keep.dcm"
    r = cli("export", ct["seg"], "--dicom", exported["series"], "--labels", ct["labels"], "--seg", out,
            "--seg-type", "labelmap", "--empty-segments", "keep")
    assert r.returncode == 0, r.stderr
    kept = [d.SegmentLabel for d in pydicom.dcmread(out, stop_before_pixels=True).SegmentSequence if d.SegmentNumber]
    dropped = [d.SegmentLabel for d in pydicom.dcmread(exported["out"] / "labelmap.dcm",
                                                       stop_before_pixels=True).SegmentSequence if d.SegmentNumber]
    assert len(kept) == len(ct["names"]) == 117 and len(dropped) == 31
    assert set(dropped) < set(kept)


def test_series_with_empty_uids_exports_with_generated_uids_and_says_so(ct, tmp_path, cli):
    """The shared series as it is: instance/class UIDs from the file meta, study/series UIDs
    generated (the same on every export) and a warning; its files are left untouched."""
    import pydicom

    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in ct["dicom"].iterdir()}
    uids = []
    for n in (1, 2):
        r = cli("export", ct["seg"], "--dicom", ct["dicom"], "--labels", ct["labels"], "--seg", tmp_path / f"{n}.dcm")
        assert r.returncode == 0, r.stderr
        assert "generated" in r.stderr and "StudyInstanceUID" in r.stderr
        seg = pydicom.dcmread(tmp_path / f"{n}.dcm", stop_before_pixels=True)
        uids.append((seg.StudyInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
        refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        meta = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                for f in ct["dicom"].iterdir()}
        assert refs == meta
    assert uids[0] == uids[1] and all(uids[0])
    assert before == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in ct["dicom"].iterdir()}


def test_validator_finds_no_errors(exported):
    """dicom3tools' dciodvfy (Debian package dicom3tools), where it is installed. Its 2022 release
    predates the Label Map Segmentation IOD, so the BINARY SEG and the RTSTRUCT are checked."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for name in ("seg.dcm", "rt.dcm"):
        r = subprocess.run(["dciodvfy", str(exported["out"] / name)], capture_output=True, text=True)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (name, errors[:10])


# ------------------------------------------------------------------ bad input: one line, nothing written


def _refused(r, out: Path, *words: str) -> None:
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("medseg: error:")]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_segmentation_off_the_series_grid_is_refused_with_the_distance(ct, exported, tmp_path, cli):
    img = nib.load(ct["seg"])
    shifted = img.affine.copy()
    shifted[:3, 3] += [1.5, 0.0, 0.0]
    path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), path)
    out = tmp_path / "out"
    r = cli("export", path, "--dicom", exported["series"], "--labels", ct["labels"], "--seg", out / "s.dcm",
            "--rtstruct", out / "r.dcm")
    _refused(r, out, str(path), "1.5 mm")


def test_folder_with_several_series_lists_them(ct, exported, tmp_path, cli):
    both = tmp_path / "both"
    shutil.copytree(exported["series"], both)
    other = _uid_complete_copy(ct["dicom"], tmp_path / "other", series_uid="1.2.826.0.1.3680043.8.498.1003")
    import pydicom

    for f in other.iterdir():  # a second series: new instance UIDs
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(both / f"second_{f.name}", enforce_file_format=True)
    out = tmp_path / "out"
    r = cli("export", ct["seg"], "--dicom", both, "--labels", ct["labels"], "--seg", out / "s.dcm")
    _refused(r, out, str(both), SERIES_UID, "1.2.826.0.1.3680043.8.498.1003")


def test_labels_missing_from_labels_json_are_named(ct, exported, tmp_path, cli):
    names = json.loads(ct["labels"].read_text())
    del names["5"]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(names))
    out = tmp_path / "out"
    r = cli("export", ct["seg"], "--dicom", exported["series"], "--labels", labels, "--seg", out / "s.dcm",
            "--rtstruct", out / "r.dcm")
    _refused(r, out, str(labels), "label(s) 5")


def test_dicom_outputs_of_a_nifti_input_are_refused(ct, tmp_path, cli):
    out = tmp_path / "out"
    r = cli("export", ct["seg"], "--dicom", ct["seg"], "--labels", ct["labels"], "--seg", out / "s.dcm")
    assert r.returncode != 0 and r.stderr.count("medseg: error:") == 1
    assert not out.exists()

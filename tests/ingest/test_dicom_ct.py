"""Issue 2, "Done when": the real DICOM series becomes one NIfTI on the world grid of the
segmentation made on it (dicom_seg.nii.gz, stored LAS by dcm2niix), with GDCM's voxels, and the
CT and that segmentation overlay (organs on soft tissue, bones on bone), not only the headers."""

from __future__ import annotations

import json

import numpy as np
import pytest

SOFT_TISSUE = ("spleen", "liver", "stomach", "pancreas", "aorta", "inferior_vena_cava", "autochthon_left",
               "autochthon_right")
BONE = ("vertebrae_T12", "vertebrae_T11", "humerus_left", "humerus_right", "rib_left_8", "rib_right_9")


@pytest.fixture(scope="module")
def ingested(shared_data, tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("dicom_ingest") / "X"
    res = cli("ingest", shared_data / "ct_abdomen" / "dicom", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


def _overlay_ok(ct: np.ndarray, seg: np.ndarray, names: dict[int, str]) -> list[str]:
    """Problems with the overlay of ``seg`` on ``ct`` (HU); empty when it is anatomically right."""
    problems = []
    fg = seg > 0
    if not -200 <= np.median(ct[fg]) <= 300:
        problems.append(f"segmented voxels median {np.median(ct[fg])} HU is not soft tissue")
    by_name = {v: k for k, v in names.items()}
    for name in SOFT_TISSUE:
        med = float(np.median(ct[seg == by_name[name]]))
        if not -200 <= med <= 300:
            problems.append(f"{name} median {med} HU")
    for name in BONE:
        med = float(np.median(ct[seg == by_name[name]]))
        if med < 150:
            problems.append(f"{name} (bone) median {med} HU")
    return problems


def test_dicom_ingest_matches_segmentation_grid(ingested, shared_data):
    import nibabel as nib
    import SimpleITK as sitk

    outputs = sorted(p.name for p in ingested.glob("*.nii.gz"))
    assert outputs == ["dicom.nii.gz"]
    ct_img = nib.load(ingested / "dicom.nii.gz")
    seg_img = nib.load(shared_data / "ct_abdomen" / "dicom_seg.nii.gz")
    assert "".join(nib.aff2axcodes(seg_img.affine)) == "LAS"
    # brought to one orientation, shape and affine agree within 1e-3 mm
    ct_c, seg_c = nib.as_closest_canonical(ct_img), nib.as_closest_canonical(seg_img)
    assert ct_c.shape == seg_c.shape == (512, 512, 20)
    np.testing.assert_allclose(ct_c.affine, seg_c.affine, atol=1e-3, rtol=0)
    np.testing.assert_allclose(nib.affines.voxel_sizes(ct_img.affine), (0.9765625, 0.9765625, 2.0), atol=1e-6)

    # voxels exactly as GDCM decodes them (ITK array (z, y, x) → our (x, y, z), LPS storage kept)
    reader = sitk.ImageSeriesReader()
    folder = str(shared_data / "ct_abdomen" / "dicom")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    gdcm = sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)
    ours = np.asarray(ct_img.dataobj)
    assert ours.dtype == gdcm.dtype == np.int16
    assert np.array_equal(ours, gdcm)
    assert (int(ours.min()), int(ours.max())) == (-1024, 1839)

    # the overlay: CT and segmentation agree voxel by voxel in anatomy
    names = {int(k): v for k, v in json.loads((shared_data / "ct_abdomen" / "labels.json").read_text()).items()}
    ct = np.asarray(ct_c.dataobj)
    seg = np.asarray(seg_c.dataobj)
    assert _overlay_ok(ct, seg, names) == []
    # ...and the check can tell a wrong overlay: a left-right or front-back flip fails it
    assert _overlay_ok(ct[::-1], seg, names)
    assert _overlay_ok(ct[:, ::-1], seg, names)
    manifest = (ingested / "manifest.csv").read_text().splitlines()
    assert manifest == ["case_id,image,label,split,modality", "dicom,dicom.nii.gz,,test,CT"]


def test_dicom_with_its_segmentation_as_label(shared_data, tmp_path):
    """`--label` accepts a segmentation stored in another axis order on the same world grid and
    writes it on the image's grid (a permutation/flip of axes, no resampling)."""
    import nibabel as nib

    from medseg.ingest import ingest_sources

    seg_path = shared_data / "ct_abdomen" / "dicom_seg.nii.gz"
    report = ingest_sources([shared_data / "ct_abdomen" / "dicom"], tmp_path / "out", label=seg_path, split="train")
    assert report["failures_total"] == 0 and report["processed"] == ["dicom"]
    ct = nib.load(tmp_path / "out" / "dicom.nii.gz")
    lab = nib.load(tmp_path / "out" / "labels" / "dicom.nii.gz")
    assert lab.shape == ct.shape
    assert np.array_equal(lab.affine, ct.affine)
    seg = nib.load(seg_path)
    # the same labels at the same world positions
    back = nib.as_closest_canonical(lab)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(nib.as_closest_canonical(seg).dataobj))
    assert (tmp_path / "out" / "manifest.csv").read_text().splitlines()[1] == "dicom,dicom.nii.gz,labels/dicom.nii.gz,train,CT"

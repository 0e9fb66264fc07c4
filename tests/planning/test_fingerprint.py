"""The dataset fingerprint against independent computations (SimpleITK, numpy, scipy) and known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.planning import compute_fingerprint, read_dataset
from medseg.planning import fingerprint as fingerprint_module
from tests.planning.conftest import phantom_cases, write_manifest_dataset


def _sitk_array(path) -> np.ndarray:
    """Voxels read by SimpleITK, in (i, j, k) order (SimpleITK gives (k, j, i))."""
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))


def _sitk_components(mask: np.ndarray) -> int:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8)))
    return int(sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True)).max())


def _shared_manifest(tmp_path: Path, rows: list[tuple[str, list[str], str]], modality: str) -> Path:
    """A manifest of shared-data files (paths relative to the shared data folder)."""
    lines = ["case_id,image,label,split,modality"]
    for case, images, label in rows:
        lines.append(",".join([case, ";".join("${MEDSEG_SHARED_DATA}/" + p for p in images),
                               "${MEDSEG_SHARED_DATA}/" + label, "train", modality]))
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _independent_intensity(images: list[np.ndarray], labels: list[np.ndarray]) -> dict:
    values = np.concatenate([img[lab > 0].astype(np.float64) for img, lab in zip(images, labels)])
    lo, hi = np.percentile(values, (0.5, 99.5))
    return {"voxels": values.size, "mean": values.mean(), "std": values.std(), "percentile_00_5": lo,
            "percentile_99_5": hi, "min": values.min(), "max": values.max(), "median": np.median(values)}


def _assert_channel(stats, expected: dict, rel: float = 1e-6) -> None:
    assert stats.voxels == expected["voxels"]
    for key in ("mean", "std", "percentile_00_5", "percentile_99_5", "min", "max", "median"):
        assert getattr(stats, key) == pytest.approx(expected[key], rel=rel, abs=1e-6), key


# ------------------------------------------------------------------------------------------------ phantoms


def test_phantoms_give_their_known_geometry_volumes_and_components(tmp_path):
    from scipy import ndimage

    iso = phantom_cases(2)
    lps = phantom_cases(1, seed=5, shape=(36, 40, 12), spacing=(4.0, 4.0, 8.0), orientation="LPS")
    ipl = phantom_cases(1, seed=7, shape=(12, 40, 36), spacing=(8.0, 4.0, 4.0), orientation="IPL")
    studies = iso + lps + ipl
    manifest = write_manifest_dataset(tmp_path, [{"id": s.case_id + str(i), "images": [s.image], "label": s.label}
                                                 for i, s in enumerate(studies)],
                                      labels={1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"})
    fp = compute_fingerprint(read_dataset(manifest))
    assert [c.orientation for c in fp.cases] == ["RAS", "RAS", "LPS", "IPL"]
    assert [c.spacing for c in fp.cases] == [(4.0, 4.0, 4.0)] * 2 + [(4.0, 4.0, 8.0), (8.0, 4.0, 4.0)]
    assert [c.shape for c in fp.cases] == [(40, 36, 24)] * 2 + [(36, 40, 12), (12, 40, 36)]
    # on the training grid's axes (R, A, S) the IPL case's 8 mm axis is the last one
    assert fp.cases[3].oriented(fp.cases[3].spacing) == (4.0, 4.0, 8.0)
    assert fp.cases[3].oriented(fp.cases[3].shape) == (36, 40, 12)
    for study, case in zip(studies, fp.cases):
        for lid, name in fp.labels.items():
            assert case.classes[lid].volume_ml == pytest.approx(study.volumes_ml[name], rel=1e-12)
            mask = study.label.array == lid
            assert case.classes[lid].voxels == int(mask.sum())
            assert case.classes[lid].components == ndimage.label(mask, np.ones((3, 3, 3)))[1]
        # air (-1000 HU) is nonzero: nothing to crop
        assert case.shape_after_crop == case.shape
    _assert_channel(fp.channels[0], _independent_intensity([s.image.array for s in studies],
                                                           [s.label.array for s in studies]))
    assert fp.channels[0].name == "CT" and fp.channels[0].modality == "CT"
    doc = fp.to_dict()
    assert doc["classes"]["5"]["cases"] == 4 and doc["median_relative_size_after_cropping"] == 1.0
    assert json.loads(json.dumps(doc)) == doc  # plain JSON


def test_the_nonzero_crop_box_and_labels_named_from_the_maps(tmp_path):
    """An MR-like image that is zero outside a box; no labels file: the ids found, named label_<id>."""
    from medseg.io import Volume

    image = np.zeros((30, 20, 10), np.float32)
    image[5:25, 4:14, 2:9] = 1.0 + np.arange(20 * 10 * 7).reshape(20, 10, 7) / 100
    label = np.zeros((30, 20, 10), np.uint8)
    label[6:9, 5:8, 3:5] = 2
    label[20:22, 10:12, 6:8] = 2
    vol = lambda a: Volume(a, np.diag([1.0, 1.0, 2.0, 1.0]))  # noqa: E731
    manifest = write_manifest_dataset(tmp_path, [{"id": "a", "images": [vol(image)], "label": vol(label)},
                                                 {"id": "b", "images": [vol(image)], "label": vol(label)}], modality="MR")
    ds = read_dataset(manifest)
    assert ds.labels is None and ds.modalities == ("MR",) and ds.channels == ("MR",)
    fp = compute_fingerprint(ds)
    assert fp.labels == {1: "label_1", 2: "label_2"}
    case = fp.cases[0]
    assert case.shape_after_crop == (20, 10, 7)
    assert case.relative_size_after_crop == pytest.approx(20 * 10 * 7 / (30 * 20 * 10))
    assert case.classes[1].voxels == 0 and case.classes[1].components == 0
    assert case.classes[2].voxels == 18 + 8 and case.classes[2].components == 2
    assert case.classes[2].volume_ml == pytest.approx(26 * 2.0 / 1000)
    assert case.background == (0.0,)
    # an image normalised before it came: its background is a constant -5, which counts as zero
    shifted = write_manifest_dataset(tmp_path / "shifted", [{"id": "a", "images": [vol(image - 5)], "label": vol(label)},
                                                            {"id": "b", "images": [vol(image)], "label": vol(label)}])
    cases = compute_fingerprint(read_dataset(shifted)).cases
    assert cases[0].background == (-5.0,) and cases[1].background == (0.0,)
    assert cases[0].shape_after_crop == cases[1].shape_after_crop == (20, 10, 7)
    # a border the image's minimum does not fill (air with noise around a CT phantom): no background
    assert compute_fingerprint(read_dataset(write_manifest_dataset(
        tmp_path / "ct", [{"id": s.case_id, "images": [s.image], "label": s.label} for s in phantom_cases(2)])
    )).cases[0].background == (None,)


def test_intensity_pooling_takes_a_seeded_sample_beyond_the_cap(tmp_path, monkeypatch):
    studies = phantom_cases(2)
    manifest = write_manifest_dataset(tmp_path, [{"id": s.case_id, "images": [s.image], "label": s.label} for s in studies])
    exact = compute_fingerprint(read_dataset(manifest)).channels[0]
    monkeypatch.setattr(fingerprint_module, "MAX_INTENSITY_SAMPLES", 2000)
    a = compute_fingerprint(read_dataset(manifest)).channels[0]
    b = compute_fingerprint(read_dataset(manifest)).channels[0]
    assert a == b and a.voxels == 2000 < exact.voxels
    assert a.mean == pytest.approx(exact.mean, rel=0.02)


def test_dataset_json_channels_modalities_and_labels(tmp_path):
    """nnU-Net v2 layout: channel_names give names and modalities, labels name -> id."""
    from medseg.io import write_volume
    from medseg.planning.fingerprint import read_dataset

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for s in phantom_cases(2):
        write_volume(s.image, tmp_path / "imagesTr" / f"{s.case_id}_0000.nii.gz")
        write_volume(s.image, tmp_path / "imagesTr" / f"{s.case_id}_0001.nii.gz")
        write_volume(s.label, tmp_path / "labelsTr" / f"{s.case_id}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "T2"}, "file_ending": ".nii.gz", "numTraining": 2,
        "labels": {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "tumour": 5}}))
    ds = read_dataset(tmp_path)  # the folder holding dataset.json
    assert ds.kind == "dataset.json" and ds.channels == ("CT", "T2") and ds.modalities == ("CT", "T2")
    assert ds.labels == {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}
    assert [r.case_id for r in ds.rows] == ["ph0", "ph1"]


# ------------------------------------------------------------------------------------------------ real data


def test_totalsegmentator_ct_against_simpleitk_and_its_own_statistics(tmp_path, shared_data):
    import SimpleITK as sitk

    manifest = _shared_manifest(tmp_path, [("ct", ["ct_abdomen/example_ct_sm.nii.gz"],
                                            "ct_abdomen/example_ct_sm_seg.nii.gz")], "CT")
    fp = compute_fingerprint(read_dataset(manifest, shared_data / "ct_abdomen" / "labels.json"))
    case = fp.cases[0]
    ref = sitk.ReadImage(str(shared_data / "ct_abdomen" / "example_ct_sm.nii.gz"))
    assert case.spacing == pytest.approx(ref.GetSpacing()) and case.shape == ref.GetSize() == (122, 101, 30)
    assert case.orientation == "RAS"
    image = _sitk_array(shared_data / "ct_abdomen" / "example_ct_sm.nii.gz")
    seg = _sitk_array(shared_data / "ct_abdomen" / "example_ct_sm_seg.nii.gz")
    _assert_channel(fp.channels[0], _independent_intensity([image], [seg]))
    stats = json.loads((shared_data / "ct_abdomen" / "example_ct_sm_statistics.json").read_text())
    assert len(fp.labels) == 117
    for lid, name in fp.labels.items():
        assert case.classes[lid].volume_ml * 1000 == pytest.approx(stats[name]["volume"], rel=1e-9, abs=1e-6), name
        if case.classes[lid].voxels:
            assert case.classes[lid].components == _sitk_components(seg == lid), name


def test_brats_two_channels_against_simpleitk(tmp_path, shared_data):
    case_dir = "brats_glioma/brats_2013_pat0004_1"
    files = [f"{case_dir}/Flair_subtrMeanDivStd.nii.gz", f"{case_dir}/T1c_subtrMeanDivStd.nii.gz"]
    manifest = _shared_manifest(tmp_path, [("pat4", files, f"{case_dir}/OTMultiClass.nii.gz")], "MR")
    ds = read_dataset(manifest)
    assert ds.channels == ("Flair", "T1c")
    fp = compute_fingerprint(ds)
    case = fp.cases[0]
    assert case.orientation == "LPS" and case.spacing == (1.0, 1.0, 1.0) and case.shape == (240, 240, 155)
    label = _sitk_array(shared_data / case_dir / "OTMultiClass.nii.gz").astype(np.int64)  # stored as float
    for c, f in enumerate(files):
        _assert_channel(fp.channels[c], _independent_intensity([_sitk_array(shared_data / f)], [label]), rel=1e-5)
    counts = np.bincount(label.ravel(), minlength=5)
    for lid in (1, 2, 3, 4):
        assert case.classes[lid].voxels == counts[lid]
        assert case.classes[lid].volume_ml == pytest.approx(counts[lid] / 1000)
        assert case.classes[lid].components == _sitk_components(label == lid)


def test_brats_manifest_channel_names_come_from_the_files(shared_data):
    ds = read_dataset(Path(__file__).resolve().parents[2] / "data_manifests" / "brats_glioma.csv")
    assert ds.channels == ("Flair", "T1c") and ds.modalities == ("MR", "MR") and len(ds.rows) == 4


def test_ms_lesions_give_the_readme_lesion_count_and_volume(tmp_path, shared_data):
    files = ["ms_lesions/patient07/FLAIR_MNI.nii.gz", "ms_lesions/patient07/T1_MNI.nii.gz"]
    manifest = _shared_manifest(tmp_path, [("p07", files, "ms_lesions/patient07/GOLD_STANDARD_MNI.nii.gz")], "FLAIR;T1")
    ds = read_dataset(manifest)
    assert ds.channels == ("FLAIR", "T1") and ds.modalities == ("FLAIR", "T1")
    fp = compute_fingerprint(ds)
    lesion = fp.cases[0].classes[1]
    assert lesion.components == 37 and round(lesion.volume_ml, 2) == 1.30
    assert fp.cases[0].orientation == "LAS" and fp.cases[0].shape == (182, 218, 182)
    # skull-stripped: the nonzero box is the brain's, smaller than the MNI grid
    flair = _sitk_array(shared_data / files[0])
    t1 = _sitk_array(shared_data / files[1])
    nonzero = np.argwhere((flair != 0) | (t1 != 0))
    assert fp.cases[0].shape_after_crop == tuple(int(v) for v in nonzero.max(0) - nonzero.min(0) + 1)


def test_kits_slice_first_ipl_geometry_and_tumour_volume(tmp_path, shared_data):
    """KiTS ships labels only: the label map (cropped around the kidneys) doubles as the image."""
    import nibabel as nib

    img = nib.load(str(shared_data / "kits19_labels" / "case_00002" / "segmentation.nii.gz"))
    crop = img.slicer[40:210, 300:420, 120:370]
    nib.save(nib.Nifti1Image(np.asarray(crop.dataobj).astype(np.int16), crop.affine, crop.header), tmp_path / "ct.nii.gz")
    nib.save(crop, tmp_path / "seg.nii.gz")
    (tmp_path / "manifest.csv").write_text("case_id,image,label,split\nk2,ct.nii.gz,seg.nii.gz,train\n")
    (tmp_path / "labels.json").write_text('{"1": "kidney", "2": "tumour"}')
    fp = compute_fingerprint(read_dataset(tmp_path / "manifest.csv"))
    case = fp.cases[0]
    zooms = img.header.get_zooms()
    assert case.orientation == "IPL" and case.spacing == pytest.approx(tuple(float(z) for z in zooms))
    assert case.oriented(case.spacing) == pytest.approx((zooms[2], zooms[1], zooms[0]))
    assert round(case.classes[2].volume_ml, 1) == 35.0 and case.classes[2].components == 1


# ------------------------------------------------------------------------------------------------ bad input


def test_a_label_value_outside_the_labels_names_the_file_and_value(tmp_path):
    studies = phantom_cases(2)
    manifest = write_manifest_dataset(tmp_path, [{"id": s.case_id, "images": [s.image], "label": s.label} for s in studies],
                                      labels={1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"})
    with pytest.raises(InputError) as err:
        compute_fingerprint(read_dataset(manifest))
    assert err.value.path == str(tmp_path / "labels" / "ph0.nii.gz")
    assert "label value 5 is not in the labels list" in err.value.problem and "labels.json" in err.value.problem


def test_channels_on_different_grids_name_the_case_and_channels(tmp_path):
    from medseg.io import Volume

    s = phantom_cases(1)[0]
    moved = Volume(s.image.array, s.image.affine @ np.diag([1.0, 1.0, 1.5, 1.0]))
    manifest = write_manifest_dataset(tmp_path, [{"id": "x", "images": [s.image, moved], "label": s.label}],
                                      modality="T1;T2")
    with pytest.raises(InputError) as err:
        compute_fingerprint(read_dataset(manifest))
    assert err.value.path.endswith("x_0001.nii.gz")
    assert err.value.problem.startswith("case 'x': channel T2 is not on the grid of channel T1")


def test_a_train_case_without_label_and_uneven_channels_are_refused(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "m.csv").write_text("case_id,image,label,split\na,a.nii.gz,,train\n")
    with pytest.raises(InputError, match="case 'a' \\(train\\) has no label"):
        read_dataset(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("case_id,image,label,split\na,a.nii.gz,a.nii.gz,train\nb,a.nii.gz;a.nii.gz,a.nii.gz,val\n")
    with pytest.raises(InputError, match="case 'b' has 2 channel image\\(s\\), case 'a' has 1"):
        read_dataset(tmp_path / "m.csv")

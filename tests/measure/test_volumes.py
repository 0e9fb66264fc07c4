"""Volumes: TotalSegmentator's statistics reproduced; one-pass numbers equal per-label numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.io import Volume, read_label, write_nifti_array
from medseg.measure import compute_volumes


def test_cli_reproduces_totalsegmentator_statistics(shared_data, cli, tmp_path):
    ct = shared_data / "ct_abdomen"
    out = tmp_path / "R.json"
    proc = cli("volumes", ct / "example_ct_sm_seg.nii.gz", "--image", ct / "example_ct_sm.nii.gz",
               "--labels", ct / "labels.json", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    theirs = json.loads((ct / "example_ct_sm_statistics.json").read_text())
    assert len(theirs) == 117 and set(report["structures"]) == set(theirs)
    assert report["spacing_mm"] == [3.0, 3.0, 3.0]
    for name, ref in theirs.items():
        ours = report["structures"][name]
        assert ours["volume_ml"] * 1000.0 == pytest.approx(ref["volume"], abs=1e-6), name  # theirs is mm³
        assert ours["voxels"] * 27 == ref["volume"], name
        if ref["volume"] > 0:
            assert abs(ours["intensity_mean"] - ref["intensity"]) <= 1e-3, name
        else:
            assert ours["intensity_mean"] is None and ours["centroid_mm"] is None and ours["touches_border"] is False
    # A 30-slice crop of an abdomen: the liver is cut by the field of view and says so.
    assert report["structures"]["liver"]["touches_border"] is True


def _naive(seg: np.ndarray, img: np.ndarray, affine: np.ndarray, label: int) -> dict:
    """The per-label-mask loop of the field, for comparison."""
    mask = seg == label
    vals = img[mask].astype(np.float64)
    idx = np.argwhere(mask)
    return {"voxels": int(mask.sum()), "mean": vals.mean(), "std": vals.std(), "min": vals.min(), "max": vals.max(),
            "median": float(np.median(vals)), "centroid": (affine @ np.append(idx.mean(axis=0), 1.0))[:3],
            "lo": idx.min(axis=0), "hi": idx.max(axis=0)}


@pytest.mark.parametrize("image_dtype", [np.int16, np.float32])
def test_one_pass_matches_per_label_loop_on_oblique_anisotropic_grid(image_dtype):
    rng = np.random.default_rng(0)
    shape = (40, 33, 21)
    seg = np.zeros(shape, np.uint8)
    seg[3:20, 5:30, 2:10] = 1
    seg[10:39, 0:7, 5:21] = 2  # touches the border (j = 0 and k = 20)
    seg[25:30, 20:28, 3:8] = 7
    seg[rng.random(shape) < 0.02] = 4  # scattered voxels
    img = rng.normal(30, 50, shape).astype(image_dtype)
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0]) @ np.diag([-1, 1, 1])
    affine[:3, 3] = [10.0, -20.0, 35.0]
    labels = {1: "a", 2: "b", 4: "c", 7: "d", 9: "absent"}
    report = compute_volumes(Volume(seg, affine, "seg"), Volume(img, affine, "img"), labels)
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert report["voxel_volume_ml"] == pytest.approx(0.8 * 1.2 * 3.0 / 1000)
    for label, name in labels.items():
        rec = report["structures"][name]
        assert rec["label"] == label
        if label == 9:
            assert rec["voxels"] == 0 and rec["volume_ml"] == 0.0 and rec["intensity_mean"] is None
            continue
        ref = _naive(seg, img, affine, label)
        assert rec["voxels"] == ref["voxels"]
        assert rec["volume_ml"] == pytest.approx(ref["voxels"] * vox_ml, rel=1e-12)
        for key in ("mean", "std", "min", "max", "median"):
            assert rec[f"intensity_{key}"] == pytest.approx(ref[key], rel=1e-9, abs=1e-9), (name, key)
        np.testing.assert_allclose(rec["centroid_mm"], ref["centroid"], atol=1e-9)
        assert rec["bbox_voxels"] == [ref["lo"].tolist(), ref["hi"].tolist()]
        corners = np.array([[i, j, k, 1] for i in (ref["lo"][0], ref["hi"][0]) for j in (ref["lo"][1], ref["hi"][1])
                            for k in (ref["lo"][2], ref["hi"][2])], float)
        world = (affine @ corners.T)[:3]
        np.testing.assert_allclose(rec["bbox_mm"], [world.min(axis=1), world.max(axis=1)], atol=1e-9)
    assert report["structures"]["b"]["touches_border"] is True
    assert report["structures"]["a"]["touches_border"] is False


def test_default_labels_are_the_ids_present_and_soft_volumes():
    seg = np.zeros((10, 12, 8), np.uint8)
    seg[2:5, 2:5, 2:5] = 3
    seg[6:9, 6:10, 1:4] = 1
    probs = np.zeros((4,) + seg.shape, np.float32)
    probs[0] = 1.0
    probs[3][seg == 3] = 0.75
    probs[1][seg == 1] = 0.5
    probs[1, 0, 0, 0] = 0.25
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    report = compute_volumes(Volume(seg, affine), labels=None, probabilities=probs)
    assert list(report["structures"]) == ["1", "3"]
    vox_ml = 0.01
    assert report["structures"]["3"]["volume_ml"] == pytest.approx(27 * vox_ml)
    assert report["structures"]["3"]["volume_ml_soft"] == pytest.approx(27 * 0.75 * vox_ml)
    assert report["structures"]["1"]["volume_ml_soft"] == pytest.approx((36 * 0.5 + 0.25) * vox_ml)
    with pytest.raises(ValueError, match="probabilities"):
        compute_volumes(Volume(seg, affine), probabilities=probs[:, :5])


def test_cli_soft_volumes_and_errors(shared_data, cli, tmp_path):
    ct = shared_data / "ct_abdomen"
    seg = read_label(ct / "example_ct_sm_seg.nii.gz")
    # Soft volumes through the CLI from a real 4D probabilities file.
    probs = np.zeros(seg.shape + (6,), np.float32)
    probs[..., 5] = (seg.array == 5) * 0.5
    write_nifti_array(probs, seg.affine, tmp_path / "p.nii.gz")
    proc = cli("volumes", ct / "example_ct_sm_seg.nii.gz", "--labels", ct / "labels.json",
               "--probabilities", tmp_path / "p.nii.gz", "-o", tmp_path / "soft.json")
    assert proc.returncode == 0, proc.stderr
    soft = json.loads((tmp_path / "soft.json").read_text())["structures"]
    assert soft["liver"]["volume_ml_soft"] == pytest.approx(soft["liver"]["volume_ml"] / 2)
    assert soft["spleen"]["volume_ml_soft"] == 0.0 and soft["colon"]["volume_ml_soft"] is None
    # An image of another shape: one line naming the segmentation, then the image and both shapes.
    proc = cli("volumes", ct / "example_ct_sm_seg.nii.gz", "--image", ct / "example_ct.nii.gz", "-o", tmp_path / "x.json")
    assert proc.returncode == 1 and not (tmp_path / "x.json").exists()
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"medseg: error: {ct / 'example_ct_sm_seg.nii.gz'}: ")
    assert f"({ct / 'example_ct.nii.gz'})" in proc.stderr and "shape" in proc.stderr
    proc = cli("volumes", ct / "example_ct_sm_seg.nii.gz", "--probabilities", ct / "example_ct_sm.nii.gz",
               "-o", tmp_path / "x.json")
    assert proc.returncode == 1 and "example_ct_sm.nii.gz" in proc.stderr and "4D" in proc.stderr
    proc = cli("volumes", tmp_path / "missing.nii.gz", "-o", tmp_path / "x.json")
    assert proc.returncode == 1 and "missing.nii.gz" in proc.stderr and proc.stderr.count("\n") == 1


def test_segmentation_on_another_affine_is_named_with_the_distance(cli, tmp_path):
    """Same shape, affine shifted 2.5 mm: the message names the segmentation and the image it is
    not on, and gives the distance in mm, not the (equal) shapes."""
    shape = (8, 9, 10)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    moved = affine.copy()
    moved[:3, 3] = [1.5, 2.0, 0.0]
    image = write_nifti_array(np.zeros(shape, np.int16), affine, tmp_path / "img.nii.gz")
    seg = write_nifti_array(np.ones(shape, np.uint8), moved, tmp_path / "seg.nii.gz")
    proc = cli("volumes", seg, "--image", image, "-o", tmp_path / "r.json")
    assert proc.returncode == 1 and not (tmp_path / "r.json").exists()
    assert proc.stderr == (f"medseg: error: {seg}: label map geometry differs from its image's ({image}): "
                           "affines differ by up to 2.5 mm\n")
    with pytest.raises(ValueError, match="affines differ by up to 2.5 mm"):
        compute_volumes(read_label(seg), Volume(np.zeros(shape, np.int16), affine, source=str(image)))


def test_float_label_map_on_real_lps_grid(shared_data, tmp_path):
    """A label map in another orientation (BraTS, LPS): volumes and centroids in world mm."""
    case = shared_data / "brats_glioma" / "brats_2013_pat0003_1"
    seg = read_label(case / "OTMultiClass.nii.gz")
    report = compute_volumes(seg, labels={1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"})
    total = sum(s["volume_ml"] for s in report["structures"].values())
    assert total == pytest.approx(np.count_nonzero(seg.array) * seg.voxel_volume_ml)
    assert 63 <= total <= 217  # README: whole tumour 63–217 mL
    assert report["orientation"] == seg.orientation
    for rec in report["structures"].values():
        if rec["voxels"]:
            idx = np.argwhere(seg.array == rec["label"]).mean(axis=0)
            np.testing.assert_allclose(rec["centroid_mm"], (seg.affine @ np.append(idx, 1))[:3], atol=1e-6)


def test_huge_label_ids_need_no_huge_tables():
    from medseg.measure.metrics import confusion_counts

    seg = np.zeros((20, 20, 20), np.uint32)
    seg[2:5, 2:5, 2:5] = 4_000_000_000  # instance-style ids: no 16 GiB lookup table
    seg[10:12] = 7
    report = compute_volumes(Volume(seg, np.eye(4)), labels={7: "slab", 4_000_000_000: "big", 5: "none"})
    assert [report["structures"][k]["voxels"] for k in ("slab", "big", "none")] == [800, 27, 0]
    assert report["structures"]["slab"]["touches_border"] and not report["structures"]["big"]["touches_border"]
    counts = confusion_counts(seg, seg, [4_000_000_000, 7])
    assert counts[4_000_000_000]["TP"] == 27 and counts[7]["FP"] == 0


def test_find_volume_inputs_from_manifest_and_folder(tmp_path):
    from medseg.errors import InputError
    from medseg.measure import find_volume_inputs

    for name in ("s1_seg.nii.gz", "s1.nii.gz", "s2_seg.nii.gz", "s2.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "m.csv").write_text("case_id,image,label,split\ns1,s1.nii.gz,s1_seg.nii.gz,test\n"
                                    "s2,s2.nii.gz,s2_seg.nii.gz,train\ns3,s1.nii.gz,,test\n")
    jobs = find_volume_inputs(tmp_path / "m.csv")
    assert [(c, s.name, i.name) for c, s, i in jobs] == [("s1", "s1_seg.nii.gz", "s1.nii.gz"), ("s2", "s2_seg.nii.gz", "s2.nii.gz")]
    assert [c for c, _, _ in find_volume_inputs(tmp_path / "m.csv", split="train")] == ["s2"]
    (tmp_path / "bad.csv").write_text("case_id,image,label,split\ns1,s1.nii.gz,../../etc/passwd,test\n")
    with pytest.raises(InputError, match="escapes"):
        find_volume_inputs(tmp_path / "bad.csv")
    segs = tmp_path / "segs"
    segs.mkdir()
    (segs / "a.nii.gz").write_bytes(b"")
    assert find_volume_inputs(segs, tmp_path) == [("a", segs / "a.nii.gz", None)]
    (tmp_path / "a_0000.nii.gz").write_bytes(b"")  # nnU-Net's name of channel 0 of case a
    assert find_volume_inputs(segs, tmp_path) == [("a", segs / "a.nii.gz", tmp_path / "a_0000.nii.gz")]
    assert find_volume_inputs(segs / "a.nii.gz", tmp_path) == [("a", segs / "a.nii.gz", tmp_path / "a_0000.nii.gz")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label maps"):
        find_volume_inputs(tmp_path / "empty")

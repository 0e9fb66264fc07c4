"""Lesion-wise detection on the real MS lesion gold standards (26-connectivity, 10% overlap rule)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.io import read_label
from medseg.measure.lesions import connected_components, match_lesions, summarize_lesions


@pytest.fixture(scope="module")
def ms_gold(shared_data):
    return {p: read_label(shared_data / "ms_lesions" / p / "GOLD_STANDARD_MNI.nii.gz") for p in ("patient07", "patient19")}


def test_gold_standard_against_itself(ms_gold):
    expected = {"patient07": (37, 1.30), "patient19": (98, 49.8)}  # ../shared/data/README.md
    for patient, vol in ms_gold.items():
        m = vol.array > 0
        res = match_lesions(m, m, vol.affine)
        n, total_ml = expected[patient]
        assert res.n_ref == res.n_pred == res.n_detected == n
        assert res.n_false_positive == 0
        s = res.scores()
        assert s["recall"] == 1.0 and s["precision"] == 1.0 and s["f1"] == 1.0
        assert sum(les.volume_ml for les in res.lesions) == pytest.approx(total_ml, abs=0.05)
        assert all(les.covered_fraction == 1.0 for les in res.lesions)
    # 6-connectivity would split patient07 into more lesions: 26 is what is used.
    m07 = ms_gold["patient07"].array > 0
    assert ndimage.label(m07)[1] > 37 == connected_components(m07)[1]


@pytest.mark.parametrize("k", [1, 5, 12])
def test_k_smallest_removed_gives_counted_recall(ms_gold, k):
    results = []
    for vol in ms_gold.values():
        ref = vol.array > 0
        ids, n = connected_components(ref)
        sizes = np.bincount(ids.ravel())[1:]
        smallest = np.argsort(sizes, kind="stable")[:k] + 1
        pred = ref & ~np.isin(ids, smallest)
        res = match_lesions(pred, ref, vol.affine)
        assert res.n_ref == n and res.n_detected == n - k and res.n_pred == n - k
        assert res.scores()["recall"] == (n - k) / n and res.scores()["precision"] == 1.0
        missed = {les.lesion_id for les in res.lesions if not les.detected}
        assert missed == set(int(i) for i in smallest)
        results.append(res)
    pooled = summarize_lesions(results)
    assert pooled["n_ref"] == 37 + 98 and pooled["n_detected"] == 37 + 98 - 2 * k
    assert pooled["recall"] == (135 - 2 * k) / 135
    assert sum(b["n_ref"] for b in pooled["by_size"]) == 135
    assert sum(b["n_detected"] for b in pooled["by_size"]) == 135 - 2 * k


def test_added_false_components_are_counted(ms_gold):
    vol = ms_gold["patient07"]
    ref = vol.array > 0
    pred = ref.copy()
    # Three 3×3×3 blobs far from any lesion (checked), one touching a lesion (not a false positive).
    dist = ndimage.distance_transform_edt(~ref)
    far = np.argwhere(dist > 10)
    rng = np.random.default_rng(0)
    added = []
    while len(added) < 3:
        c = far[rng.integers(len(far))]
        if all(np.abs(c - a).max() > 6 for a in added) and np.all(c > 2) and np.all(c < np.array(ref.shape) - 3):
            added.append(c)
    for c in added:
        pred[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = True
    touching = np.argwhere(ref)[0]
    pred[touching[0] + 1, touching[1], touching[2]] = True
    res = match_lesions(pred, ref, vol.affine)
    assert res.n_false_positive == 3 and res.n_pred == 37 + 3 and res.n_detected == 37
    assert res.scores()["precision"] == 37 / 40
    assert sorted(fp["voxels"] for fp in res.false_positives) == [27, 27, 27]
    assert all(fp["volume_ml"] == pytest.approx(0.027) for fp in res.false_positives)


def test_overlap_threshold(ms_gold):
    vol = ms_gold["patient19"]
    ref = vol.array > 0
    ids, n = connected_components(ref)
    largest = int(np.argmax(np.bincount(ids.ravel())[1:])) + 1
    voxels = np.argwhere(ids == largest)
    keep = voxels[: int(0.07 * len(voxels))]  # 7% of the confluent lesion predicted
    pred = np.zeros_like(ref)
    pred[tuple(keep.T)] = True
    res = match_lesions(pred, ref, vol.affine, overlap=0.1)
    rec = next(les for les in res.lesions if les.lesion_id == largest)
    assert not rec.detected and rec.covered_fraction == pytest.approx(0.07, abs=1e-3)
    assert match_lesions(pred, ref, vol.affine, overlap=0.05).n_detected == 1
    with pytest.raises(ValueError, match="overlap"):
        match_lesions(pred, ref, vol.affine, overlap=0.0)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_lesion_slice_is_radiological_and_owns_its_arrays(orientation):
    """Anterior at the top, the patient's right on the left, whatever the voxel order; pixel aspect in mm."""
    from medseg.measure.lesions import lesion_slice

    shape = (40, 30, 10)
    ref = np.zeros(shape, bool)
    ref[10:20, 8:14, 3:6] = True
    ref[15, 8:14, 7] = True  # a thinner slab above: the slice chosen is one through the bulk
    pred = np.zeros(shape, bool)
    sign = 1.0 if orientation == "RAS" else -1.0
    affine = np.diag([sign * 0.5, sign * 2.0, 3.0, 1.0])
    # The lesion's most anterior, most right voxel is marked in the prediction.
    right_i = 19 if orientation == "RAS" else 10  # RAS: i grows toward the right; LPS: toward the left
    anterior_j = 13 if orientation == "RAS" else 8
    pred[right_i, anterior_j, 3:6] = True
    image = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    view = lesion_slice(ref, pred, affine, [[10, 8, 3], [19, 13, 7]], image=image, margin_vox=2)
    # Rows: j (y, anterior up), columns: i (x); the box with a 2-voxel margin.
    assert view.ref.shape == view.pred.shape == view.image.shape == (6 + 4, 10 + 4)
    assert view.aspect == 4.0  # 2 mm rows / 0.5 mm columns
    assert view.ref.dtype == bool and view.image.dtype == np.int16
    assert np.argwhere(view.pred).tolist() == [[2, 2]]  # top-left corner of the lesion
    assert view.ref[2:8, 2:12].all() and view.ref.sum() == 60
    assert all(a.flags.owndata for a in (view.ref, view.pred, view.image))  # no view of the volume
    # The first of the slices holding most of the lesion (k = 3), rows j and columns i, flipped for RAS.
    expected = image[8:22, 6:16, 3].T
    np.testing.assert_array_equal(view.image, expected[::-1, ::-1] if orientation == "RAS" else expected)

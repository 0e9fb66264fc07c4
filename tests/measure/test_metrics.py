"""Metrics on shapes with known answers (mm, anisotropic spacing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.measure.metrics import case_metrics, confusion_counts, hd95, label_metrics, nsd, surface_distances
from tests.measure.shapes import sphere


@pytest.mark.parametrize("d_mm", [3.0, 6.0, 9.0])
def test_two_spheres_offset_by_d_give_hd95_about_d(d_mm):
    sp = (1.0, 1.0, 1.0)
    a = sphere((64, 64, 64), (32, 32, 32), 14, sp)
    b = sphere((64, 64, 64), (32 + d_mm, 32, 32), 14, sp)
    d_ab, d_ba = surface_distances(a, b, sp)
    # The farthest surface point is exactly d away (the shift direction); the 95th percentile of
    # |d cos θ| over a sphere is 0.95 d, hence HD95 slightly below d.
    assert max(d_ab.max(), d_ba.max()) == pytest.approx(d_mm, abs=0.5)
    assert 0.85 * d_mm <= hd95(a, b, sp) <= d_mm + 0.5


@pytest.mark.parametrize("spacing,shift_axis", [((0.5, 1.0, 3.0), 2), ((0.5, 1.0, 3.0), 0), ((2.0, 0.7, 0.7), 1)])
def test_anisotropic_spacing_measures_in_mm(spacing, shift_axis):
    shape = tuple(int(round(60 / s)) for s in spacing)
    centre = [n / 2 for n in shape]
    shift_vox = 2 if spacing[shift_axis] >= 2 else int(round(6 / spacing[shift_axis]))
    d_mm = shift_vox * spacing[shift_axis]
    other = list(centre)
    other[shift_axis] += shift_vox
    a = sphere(shape, centre, 15, spacing)
    b = sphere(shape, other, 15, spacing)
    d_ab, d_ba = surface_distances(a, b, spacing)
    assert max(d_ab.max(), d_ba.max()) == pytest.approx(d_mm, abs=max(spacing) / 2)
    assert 0.8 * d_mm <= hd95(a, b, spacing) <= d_mm + max(spacing) / 2
    # The same voxels read with isotropic 1 mm spacing give another (wrong) answer: spacing is used.
    assert hd95(a, b, (1.0, 1.0, 1.0)) != pytest.approx(hd95(a, b, spacing), abs=0.1)
    # A tolerance of the shift makes every surface voxel a match.
    assert nsd(a, b, spacing, tolerance_mm=d_mm + 1e-6) == 1.0
    assert nsd(a, b, spacing, tolerance_mm=0.0) < 0.5


def test_identical_masks_and_empty_masks():
    sp = (0.8, 0.8, 2.5)
    a = sphere((40, 40, 20), (20, 20, 10), 9, sp)
    m = label_metrics(a, a, sp)
    assert m["Dice"] == 1.0 and m["IoU"] == 1.0 and m["HD95"] == 0.0 and m["NSD"] == 1.0
    assert m["TP"] == m["n_pred"] == m["n_ref"] == int(a.sum()) and m["FP"] == m["FN"] == 0
    assert m["TN"] == a.size - int(a.sum())
    empty = np.zeros_like(a)
    e = label_metrics(empty, empty, sp)
    assert math.isnan(e["Dice"]) and math.isnan(e["IoU"]) and math.isnan(e["HD95"]) and math.isnan(e["NSD"])
    assert e["TN"] == a.size and e["TP"] == e["FP"] == e["FN"] == 0
    one = label_metrics(a, empty, sp)
    assert one["Dice"] == 0.0 and one["NSD"] == 0.0 and math.isnan(one["HD95"]) and one["FP"] == int(a.sum())


def test_case_metrics_counts_match_brute_force_and_border_surfaces():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (30, 20, 10)).astype(np.uint8)
    pred = ref.copy()
    flip = rng.random(ref.shape) < 0.2
    pred[flip] = rng.integers(0, 4, int(flip.sum()))
    pred_f = np.asfortranarray(pred)  # memory layout must not pair the wrong voxels
    out = case_metrics(pred_f, ref, (1.0, 2.0, 3.0), [1, 2, 3, 5])
    for label in (1, 2, 3):
        p, r = pred == label, ref == label
        tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
        assert (out[label]["TP"], out[label]["FP"], out[label]["FN"]) == (tp, fp, fn)
        assert out[label]["TN"] == ref.size - tp - fp - fn
        assert out[label]["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert out[label]["HD95"] == pytest.approx(hd95(p, r, (1.0, 2.0, 3.0)))
    assert math.isnan(out[5]["Dice"])
    counts = confusion_counts(pred, ref, [0, 1])
    assert counts[0]["TP"] == int(((pred == 0) & (ref == 0)).sum())
    # A mask filling the whole array: its surface is the array border, and identical → HD95 0.
    full = np.ones((5, 5, 5), bool)
    assert hd95(full, full, (1, 1, 1)) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        hd95(full, full, (1, 1))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice inside get_mask_edges
def test_hd95_and_nsd_equal_monai():
    """HD95 and NSD follow MONAI's definitions (surface voxels, 95th percentile, counted surface voxels)."""
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch

    rng = np.random.default_rng(0)
    for spacing, shift in [((1.0, 1.0, 1.0), (3, 0, 0)), ((0.5, 1.0, 3.0), (4, 2, 1)), ((2.0, 0.7, 0.7), (1, 5, 3))]:
        shape = tuple(int(round(40 / s)) for s in spacing)
        centre = [n / 2 for n in shape]
        a = sphere(shape, centre, 10, spacing)
        b = sphere(shape, [c + s for c, s in zip(centre, shift)], 9, spacing) | (rng.random(shape) < 0.0005)
        ta, tb = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b))
        theirs_hd = monai_metrics.compute_hausdorff_distance(ta, tb, include_background=True, percentile=95,
                                                             spacing=list(spacing)).item()
        theirs_nsd = monai_metrics.compute_surface_dice(ta, tb, class_thresholds=[2.0], include_background=True,
                                                        spacing=list(spacing)).item()
        assert hd95(a, b, spacing) == pytest.approx(theirs_hd, rel=1e-6)
        assert nsd(a, b, spacing, tolerance_mm=2.0) == pytest.approx(theirs_nsd, rel=1e-6)
        assert 0 < theirs_nsd < 1 and theirs_hd > 1

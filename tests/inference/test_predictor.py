"""Predictor on real files: outputs lie exactly on their input's grid (RAS, LAS DICOM, LPS, IPL)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import Volume, read_volume, write_volume


def _fg_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _to_ras(array: np.ndarray, affine: np.ndarray):
    """Array and affine brought to RAS voxel order with nibabel's orientation tools (exact)."""
    import nibabel as nib

    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(array, t), affine @ nib.orientations.inv_ornt_aff(t, array.shape)


def test_example_ct_nifti_keeps_shape_affine_and_header(shared_data, phantom_predictor, tmp_path):
    path = shared_data / "ct_abdomen" / "example_ct.nii.gz"
    image = read_volume(path)
    pred = phantom_predictor.predict(image)
    assert pred.labels.shape == image.shape
    assert pred.labels.array.dtype == np.uint8
    np.testing.assert_array_equal(pred.labels.affine, image.affine)
    assert set(pred.timings) >= {"preprocess", "windows", "invert", "total"}
    out = write_volume(pred.labels, tmp_path / "seg.nii.gz")
    back = read_volume(out)
    assert back.shape == image.shape
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)
    assert int(back.meta["nifti_header"]["sform_code"]) == int(image.meta["nifti_header"]["sform_code"])
    # a model that never saw real CT still finds soft-tissue organs in it, not nothing
    assert 0 < (pred.labels.array > 0).mean() < 0.5


def test_dicom_folder_output_on_the_series_grid(shared_data, phantom_predictor, tmp_path):
    from medseg.inference import segment_file

    out = tmp_path / "dicom_seg_pred.nii.gz"
    pred = segment_file(shared_data / "ct_abdomen" / "dicom", phantom_predictor, out)
    ours = read_volume(out)
    ref = read_volume(shared_data / "ct_abdomen" / "dicom_seg.nii.gz")
    assert pred.labels.shape == pred.image.shape
    a, aff_a = _to_ras(ours.array, ours.affine)
    b, aff_b = _to_ras(ref.array, ref.affine)
    assert a.shape == b.shape == (512, 512, 20)
    np.testing.assert_allclose(aff_a, aff_b, atol=1e-3)


def test_lps_mr_file(shared_data, phantom_predictor):
    path = next((shared_data / "brats_glioma").glob("*/T1c_subtrMeanDivStd.nii.gz"))
    image = read_volume(path)
    assert image.orientation == "LPS"
    pred = phantom_predictor.predict(image)
    assert pred.labels.shape == image.shape == (240, 240, 155)
    np.testing.assert_array_equal(pred.labels.affine, image.affine)


def test_ipl_file_on_kits_geometry(shared_data, phantom_predictor, tmp_path):
    import nibabel as nib

    from medseg.phantoms import make_phantom

    kits = nib.load(shared_data / "kits19_labels" / "case_00002" / "segmentation.nii.gz")  # header only
    assert "".join(nib.aff2axcodes(kits.affine)) == "IPL"
    spacing = tuple(float(z) for z in kits.header.get_zooms()[:3])
    study = make_phantom(5, shape=(120, 150, 150), spacing=spacing, orientation="IPL", n_tumours=1)
    # the same voxels on KiTS19's exact affine (its zero origin translates the anatomy rigidly)
    image = Volume(study.image.array, kits.affine.copy())
    path = write_volume(image, tmp_path / "ipl.nii.gz")
    image = read_volume(path)
    assert image.orientation == "IPL"
    pred = phantom_predictor.predict(image)
    assert pred.labels.shape == image.shape
    np.testing.assert_array_equal(pred.labels.affine, image.affine)
    assert _fg_dice(pred.labels.array, study.label.array) >= 0.8


def test_permuted_and_flipped_file_gives_the_same_world_segmentation(phantom_archive, phantom_predictor, tmp_path):
    import nibabel as nib

    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    # same anatomy, other storage order: axes permuted and flipped exactly (nibabel orientation tools)
    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                        nib.orientations.axcodes2ornt("SLP"))
    arr = nib.orientations.apply_orientation(image.array, t)
    aff = image.affine @ nib.orientations.inv_ornt_aff(t, image.shape)
    other = read_volume(write_volume(Volume(np.ascontiguousarray(arr), aff), tmp_path / "slp.nii.gz"))
    assert other.orientation != image.orientation and other.shape != image.shape
    a = phantom_predictor.predict(image).labels
    b = phantom_predictor.predict(other).labels
    assert b.shape == other.shape
    np.testing.assert_array_equal(b.affine, other.affine)
    back = nib.orientations.apply_orientation(b.array, nib.orientations.ornt_transform(
        nib.orientations.io_orientation(b.affine), nib.orientations.io_orientation(a.affine)))
    assert back.shape == a.shape
    assert (back == a.array).mean() >= 0.99


def test_probabilities_lazy_and_consistent_with_labels(phantom_archive, phantom_predictor):
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    pred = phantom_predictor.predict(image, keep_probabilities=True)
    probs = pred.probabilities()
    assert probs.shape == image.shape + (6,) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=5e-3)
    # labels are the argmax of the same (float32) scores: float16 rounding may only flip near-ties
    assert (probs.argmax(-1) == pred.labels.array).mean() > 0.995
    lean = phantom_predictor.predict(image, keep_probabilities=False)
    np.testing.assert_array_equal(lean.labels.array, pred.labels.array)
    with pytest.raises(ValueError, match="keep_probabilities=True"):
        lean.probabilities()


def test_tta_averages_mirrored_windows(phantom_archive, phantom_predictor):
    from medseg.inference.mirroring import flip_sets

    p = phantom_predictor
    flips = flip_sets(range(2, 5), True)
    assert len(flips) == 8 and () in flips
    rng = np.random.default_rng(3)
    batch = rng.random((1, 1) + p.window).astype(np.float32)
    tta = p.window_scores(batch, tta=True)
    # reference: each mirrored copy through the plain path, mirrored back, averaged (the Gaussian
    # window weights are symmetric, so mirroring weighted scores is the same as weighting mirrored ones)
    ref = np.zeros_like(tta)
    for dims in flips:
        axes = tuple(d for d in dims)
        flipped = np.flip(batch, axes).copy() if axes else batch
        out = p.window_scores(flipped, tta=False)
        ref += np.flip(out, axes) if axes else out
    ref /= len(flips)
    np.testing.assert_allclose(tta, ref, atol=1e-5)
    assert np.abs(tta - p.window_scores(batch, tta=False)).max() > 1e-4
    # end to end: labels on the input grid
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    pred = p.predict(image, tta=True)
    assert pred.labels.shape == image.shape
    np.testing.assert_array_equal(pred.labels.affine, image.affine)


def test_fp16_on_cpu_refused_at_load(phantom_model):
    from medseg.inference import Predictor

    with pytest.raises(ValueError, match="fp16"):
        Predictor.from_model_dir(phantom_model, device="cpu", autocast="fp16")


def test_bf16_agrees_with_fp32(phantom_model, phantom_archive):
    from medseg.inference import Predictor

    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    fp32 = Predictor.from_model_dir(phantom_model, device="cpu").predict(image).labels.array
    bf16_predictor = Predictor.from_model_dir(phantom_model, device="cpu", autocast="bf16")
    assert not bf16_predictor.nets[0].training  # eval mode set at load
    assert bf16_predictor.runtime.autocast_mode == "bf16" and bf16_predictor.device.type == "cpu"
    bf16 = bf16_predictor.predict(image).labels.array
    assert (fp32 == bf16).mean() >= 0.98


def _thread_recorder(net):
    """``net`` wrapped in a module that records torch's CPU thread count at every forward pass (``.seen``)."""
    import torch

    class ThreadRecorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net
            self.seen: list[int] = []

        def forward(self, x):
            self.seen.append(torch.get_num_threads())
            return self.inner(x)

    return ThreadRecorder()


def test_threads_are_the_runtimes_inside_predict_and_the_callers_outside(phantom_model, phantom_archive):
    import torch

    from medseg.inference import Predictor
    from medseg.runtime import default_threads

    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        predictor = Predictor.from_model_dir(phantom_model, device="cpu", num_threads=1, backend="torch")
        assert torch.get_num_threads() == 3  # loading sets nothing process-wide
        plain = predictor.predict(image).labels.array
        recorder = _thread_recorder(predictor.nets[0])
        predictor.nets = [recorder]
        predictor.use_backend("torch")
        pred = predictor.predict(image, keep_probabilities=True)
        assert recorder.seen and set(recorder.seen) == {1}
        assert torch.get_num_threads() == 3
        pred.probabilities()
        predictor.window_scores(np.zeros((1, 1) + predictor.window, np.float32))
        assert set(recorder.seen) == {1} and torch.get_num_threads() == 3
        np.testing.assert_array_equal(pred.labels.array, plain)
        assert Predictor.from_model_dir(phantom_model, device="cpu").runtime.threads == default_threads()
    finally:
        torch.set_num_threads(before)


def test_predictor_checks_its_runtime_and_network(phantom_predictor):
    from medseg.inference import Predictor
    from medseg.runtime import resolve_runtime

    p = phantom_predictor
    with pytest.raises(TypeError, match="medseg.runtime.Runtime"):
        Predictor(p.nets, p.plans, runtime="cpu")
    built = Predictor(p.nets, p.plans, runtime=resolve_runtime("cpu", threads=1))
    assert built.device.type == "cpu" and built.window == p.window


def test_2d_model_runs_slice_by_slice(tmp_path, phantom_archive, make_plans):
    """A 2D model directory: windows are single slices along slice_axis; each slice's scores are
    exactly the softmax of the network on that (padded) slice."""
    import torch

    from medseg.inference import Predictor
    from medseg.models import create_model
    from medseg.plans import save_plans
    from medseg.preprocess import preprocess_case

    torch.manual_seed(0)
    plans = make_plans(spatial_dims=2, patch_size=(80, 80), slice_axis=2, out_channels=3)
    net = create_model("unet", 2, 1, 3, **plans.model.options)
    model_dir = tmp_path / "unet2d"
    model_dir.mkdir()
    torch.save(net.state_dict(), model_dir / "model.pt")
    save_plans(plans, model_dir)
    predictor = Predictor.from_model_dir(model_dir, device="cpu", window_batch=8)
    assert predictor.window == (80, 80, 1)
    image = read_volume(phantom_archive / "images" / "phantom_001.nii.gz")  # oblique LPS
    pred = predictor.predict(image, keep_probabilities=True)
    assert pred.labels.shape == image.shape
    np.testing.assert_array_equal(pred.labels.affine, image.affine)
    case = preprocess_case([image], plans.preprocess)
    x, y, z = case.image.shape[1:]
    assert x <= 80 and y <= 80  # one window per slice: the scores are the network's own
    net.eval()
    k = z // 2
    sl = np.zeros((1, 1, 80, 80), np.float32)
    ox, oy = (80 - x) // 2, (80 - y) // 2
    sl[0, 0, ox:ox + x, oy:oy + y] = case.image[0, :, :, k]
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(sl)), 1)[0, :, ox:ox + x, oy:oy + y].numpy()
    np.testing.assert_allclose(pred._network_scores[..., k].astype(np.float32), ref, atol=2e-3)


@pytest.mark.parametrize("crop", [False, True])
def test_labels_equal_whole_volume_inversion(phantom_model, phantom_archive, tmp_path, crop):
    """Streamed windows + slab-wise resampling give what whole-volume buffers and
    ``invert_spatial`` give, with and without a foreground crop in the model's preprocessing."""
    import shutil

    from medseg.inference import Predictor
    from medseg.inference.sliding_window import sliding_window_probabilities
    from medseg.plans import load_plans, save_plans
    from medseg.preprocess import ForegroundCropConfig, invert_spatial, preprocess_case

    model_dir = phantom_model
    if crop:
        model_dir = tmp_path / "cropped"
        shutil.copytree(phantom_model, model_dir)
        plans = load_plans(model_dir)
        plans.preprocess.crop_foreground = ForegroundCropConfig(threshold=-500.0, margin_vox=2)
        save_plans(plans, model_dir)
    predictor = Predictor.from_model_dir(model_dir, device="cpu")
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    pred = predictor.predict(image, keep_probabilities=True)
    case = preprocess_case([image], predictor.plans.preprocess)
    if crop:
        assert case.inverse.crop_box is not None and case.image.shape[1:] != case.inverse.resampled_shape
    full = sliding_window_probabilities(case.image, predictor.window_scores, predictor.n_classes, predictor.window,
                                        overlap=predictor.overlap, window_batch=predictor.window_batch)
    pad = [1.0] + [0.0] * (predictor.n_classes - 1)
    ref = invert_spatial(full, case.inverse, "linear", pad_value=pad)
    assert pred.labels.shape == image.shape
    assert (ref.argmax(0) == pred.labels.array).mean() >= 0.999
    probs = pred.probabilities(np.float32)
    np.testing.assert_allclose(probs, np.moveaxis(ref, 0, -1), atol=2e-3)

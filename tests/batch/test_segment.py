"""The segmentation job: the study pipeline through the batch, the same labels as `medseg segment`,
features that change the result when on (TTA, CRF, components), channels and MetaImage pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.batch import BatchOptions, run_batch
from medseg.io import read_volume, write_volume
from medseg.phantoms import make_phantom


def _seg(out, sid):
    return read_volume(out / "studies" / sid / "segmentation.nii.gz").array


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """Two small phantoms (one oblique LPS), each with 3 tumours."""
    root = tmp_path_factory.mktemp("small_archive")
    write_volume(make_phantom(801, shape=(48, 44, 30), spacing=(4.0, 4.0, 5.0), n_tumours=3).image, root / "a.nii.gz")
    write_volume(make_phantom(802, shape=(48, 44, 30), spacing=(4.0, 4.0, 5.0), orientation="LPS",
                              rotation_deg=(6.0, 0.0, 9.0), n_tumours=3).image, root / "b.nii.gz")
    return root


@pytest.fixture(scope="module")
def plain_run(small_archive, phantom_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    record = run_batch(small_archive, phantom_model, out, BatchOptions(), device="cpu")
    assert record["processed"] == ["a", "b"]
    return out


@pytest.mark.parametrize("option", [{"tta": True}, {"crf": True},
                                    {"components": {"largest_component": True, "min_size_mm3": 500.0}}],
                         ids=["tta", "crf", "components"])
def test_each_option_changes_the_labels_and_is_what_the_pipeline_gives(option, small_archive, phantom_model,
                                                                      phantom_predictor, plain_run, tmp_path):
    """A feature that silently did nothing would fail: on and off give other labels, and the batch's
    labels are the study pipeline's (the one `medseg segment` runs)."""
    from medseg.inference import StudyOptions, run_study

    out = tmp_path / "out"
    record = run_batch(small_archive, phantom_model, out, BatchOptions(**option), device="cpu")
    assert record["processed"] == ["a", "b"] and record["failed"] == []
    changed = sum(int((_seg(out, s) != _seg(plain_run, s)).sum()) for s in ("a", "b"))
    assert changed > 0
    image = read_volume(small_archive / "b.nii.gz")
    opts = StudyOptions.for_model(phantom_predictor.info, **option)
    expected = run_study(image, phantom_predictor, opts, volumes=False).labels.array
    assert np.array_equal(_seg(out, "b"), expected)
    state = json.loads((out / "state" / "b.json").read_text())
    assert state["config_key"] != json.loads((plain_run / "state" / "b.json").read_text())["config_key"]


def test_batch_and_segment_give_the_same_labels_on_a_two_channel_mr_model(mr_model, prefect_server, cli, tmp_path):
    """`medseg batch --crf --tta` over nnU-Net-named channel files and `medseg segment A B --crf --tta`
    agree voxel for voxel, with the MR intensity kernel (estimated from the image, not 12 HU)."""
    from medseg.inference import StudyOptions
    from medseg.inference.kinds import describe_model

    model, archive = mr_model / "model", mr_model / "archive"
    assert StudyOptions.for_model(describe_model(model), crf=True).crf.intensity_sigma is None  # MR: from the image
    env = {**prefect_server, "MEDSEG_THREADS": "1"}
    out = tmp_path / "batch"
    r = cli("batch", archive, "--model", model, "--out", out, "--crf", "--tta", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (out / "studies").iterdir()) == ["mr_00", "mr_01"]
    seg = tmp_path / "segment.nii.gz"
    r = cli("segment", archive / "mr_01_0000.nii.gz", archive / "mr_01_0001.nii.gz", "--model", model, "-o", seg,
            "--crf", "--tta", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    single, batched = read_volume(seg), read_volume(out / "studies" / "mr_01" / "segmentation.nii.gz")
    image = read_volume(archive / "mr_01_0000.nii.gz")
    assert np.array_equal(single.array, batched.array)
    assert np.allclose(single.affine, image.affine, atol=1e-6) and single.shape == image.shape
    assert (single.array > 0).sum() > 100  # the model found its organs
    # the same study without the CRF is another segmentation: the CRF ran in both
    plain = tmp_path / "plain.nii.gz"
    r = cli("segment", archive / "mr_01_0000.nii.gz", archive / "mr_01_0001.nii.gz", "--model", model, "-o", plain,
            "--tta", env=env)
    assert r.returncode == 0 and not np.array_equal(read_volume(plain).array, single.array)


def test_segment_names_the_channels_it_needs(mr_model, cli, tmp_path):
    archive = mr_model / "archive"
    r = cli("segment", archive / "mr_00_0000.nii.gz", "--model", mr_model / "model", "-o", tmp_path / "s.nii.gz")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "takes 2 channel(s) (T1, T2): give one INPUT per channel in that order, not 1" in r.stderr
    other = make_phantom(3, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0)).image  # another grid
    write_volume(other.with_array(other.array.astype(np.float32)), tmp_path / "other.nii.gz")
    r = cli("segment", archive / "mr_00_0000.nii.gz", tmp_path / "other.nii.gz", "--model", mr_model / "model",
            "-o", tmp_path / "s.nii.gz")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'other.nii.gz'}: channel" in r.stderr and str(archive / "mr_00_0000.nii.gz") in r.stderr
    assert not (tmp_path / "s.nii.gz").exists()


def test_metaimage_pair_is_one_study_redone_when_its_voxels_change(phantom_model, tmp_path):
    import SimpleITK as sitk

    from medseg.io import volume_to_sitk

    vol = make_phantom(5, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0), n_tumours=1).image
    archive = tmp_path / "archive"
    archive.mkdir()
    sitk.WriteImage(volume_to_sitk(vol), str(archive / "scan.mhd"))  # scan.mhd + scan.raw
    out = tmp_path / "out"
    first = run_batch(archive, phantom_model, out, device="cpu")
    assert first["processed"] == ["scan"] and first["failed"] == [] and first["n_studies"] == 1
    assert run_batch(archive, phantom_model, out, device="cpu")["skipped"] == ["scan"]
    sitk.WriteImage(volume_to_sitk(vol.with_array(np.flip(vol.array, 0).copy())), str(archive / "scan.mhd"))
    assert run_batch(archive, phantom_model, out, device="cpu")["processed"] == ["scan"]  # same header, new voxels


def test_an_nnunet_folder_runs_in_batch_loaded_once_with_folds_in_the_key(small_archive, tmp_path):
    """An nnU-Net model folder is a batch model like medseg's own: loaded once for all studies,
    labels on each study's grid equal to `medseg segment`'s, a re-run does nothing, and another
    fold selection redoes the studies."""
    from medseg.inference import Predictor, segment_file
    from medseg.inference.pipeline import predictor_loads
    from tests.support_nnunet import write_nnunet_folder

    model = write_nnunet_folder(tmp_path / "nn", labels={"background": 0, "liver": 1, "tumour": 2},
                                patch=(16, 16, 16), spacing=(6.0, 5.0, 5.0), folds=(0, 1))
    out = tmp_path / "out"
    before = predictor_loads()
    record = run_batch(small_archive, model, out, BatchOptions(), device="cpu")
    assert record["processed"] == ["a", "b"] and predictor_loads() - before == 1
    for sid in ("a", "b"):
        seg = read_volume(out / "studies" / sid / "segmentation.nii.gz")
        src = read_volume(small_archive / f"{sid}.nii.gz")
        assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
        single = segment_file(small_archive / f"{sid}.nii.gz", Predictor.from_model_dir(model, device="cpu"),
                              tmp_path / f"{sid}.nii.gz")
        assert np.array_equal(seg.array, single.labels.array)
    report = json.loads((out / "studies" / "a" / "volumes.json").read_text())
    assert set(report["structures"]) == {"liver", "tumour"}
    assert run_batch(small_archive, model, out, BatchOptions(), device="cpu")["processed"] == []
    again = run_batch(small_archive, model, out, BatchOptions(folds=[1]), device="cpu")
    assert again["processed"] == ["a", "b"]


def test_batch_writes_previews_dicom_outputs_for_dicom_studies_and_a_lesion_report(phantom_model, shared_data,
                                                                                    tmp_path):
    """A DICOM series (UID-complete copy of the shared CT) and a phantom with a reference: every
    study gets preview.png (thumbnails in volumes.html), only the DICOM one seg.dcm and
    rtstruct.dcm; the evaluation's report headlines the tumours only."""
    import pydicom

    from tests.io.test_dicom_export import SERIES_UID, _uid_complete_copy

    archive = tmp_path / "archive"
    _uid_complete_copy(shared_data / "ct_abdomen" / "dicom", archive / "ct")
    study = make_phantom(803, shape=(48, 44, 30), spacing=(4.0, 4.0, 5.0), n_tumours=3)
    write_volume(study.image, archive / "a.nii.gz")
    write_volume(study.label, archive / "labels" / "a.nii.gz")
    out = tmp_path / "out"
    record = run_batch(archive, phantom_model, out, BatchOptions(dicom_seg=True, rtstruct=True), device="cpu")
    assert sorted(record["processed"]) == ["a", "ct"], record
    assert sorted(p.name for p in (out / "studies" / "ct").iterdir()) == [
        "preview.png", "rtstruct.dcm", "seg.dcm", "segmentation.nii.gz", "volumes.json"]
    assert sorted(p.name for p in (out / "studies" / "a").iterdir()) == [
        "preview.png", "segmentation.nii.gz", "volumes.json"]
    seg = pydicom.dcmread(out / "studies" / "ct" / "seg.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    html = (out / "volumes.html").read_text()
    assert 'href="studies/ct/preview.png"' in html and 'src="studies/a/preview.png"' in html
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["lesion_labels"] == ["5"]
    report = (out / "evaluation" / "report.html").read_text()
    assert report.count('<div class="headline">') == 1 and "<b>tumour</b>" in report
    # a second run with the same options redoes nothing
    assert run_batch(archive, phantom_model, out, BatchOptions(dicom_seg=True, rtstruct=True),
                     device="cpu")["processed"] == []


def test_unknown_lesion_label_is_refused_before_any_study(phantom_model, small_archive, tmp_path, cli):
    out = tmp_path / "out"
    r = cli("batch", small_archive, "--model", phantom_model, "--out", out, "--lesion-labels", "pancreas")
    assert r.returncode == 1 and r.stderr.count("medseg: error:") == 1
    assert "'pancreas' is not a label name" in r.stderr and not out.exists()

"""medseg.batch without Prefect: archive scanning, content hashing, per-study state and planning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medseg.batch import BatchOptions, Study, StudyPlan, content_hash, plan_studies, scan_archive
from medseg.errors import InputError
from medseg.io import write_volume
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
    studies = {s.study_id: s for s in scan_archive(tree_archive)}
    assert set(studies) == {"case_a", "ward_b__case_b", "ward_b__ct_series", "broken", "scan_notes.dat"}
    assert studies["ward_b__ct_series"].kind == "dicom"
    assert studies["ward_b__ct_series"].sources == (str(tree_archive.resolve() / "ward_b" / "ct_series"),)
    assert studies["scan_notes.dat"].kind == "unknown"
    assert studies["broken"].kind == "file"
    assert studies["case_a"].label == str(tree_archive.resolve() / "labels" / "case_a.nii.gz")
    assert studies["ward_b__case_b"].label is None


def test_scan_excludes_output_folder(tree_archive):
    out = tree_archive / "out"
    (out / "studies" / "x").mkdir(parents=True)
    write_volume(_tiny(3).image, out / "studies" / "x" / "segmentation.nii.gz")
    ids = {s.study_id for s in scan_archive(tree_archive, exclude=(out,))}
    assert not any(i.startswith("out") for i in ids)


def test_scan_manifest_archive(tmp_path):
    manifest = write_phantom_archive(tmp_path / "ph", 3, shape=(24, 24, 16), spacing=(8.0, 8.0, 9.0), variants=False)
    for archive in (manifest, manifest.parent):  # the CSV, or a folder holding manifest.csv
        studies = scan_archive(archive)
        assert [s.study_id for s in studies] == ["phantom_000", "phantom_001", "phantom_002"]
        assert all(s.label and Path(s.label).is_file() for s in studies)
        assert all(s.kind == "file" for s in studies)


def test_scan_missing_archive(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        scan_archive(tmp_path / "nope")


def test_duplicate_study_ids_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    write_volume(_tiny(1).image, tmp_path / "a" / "x.nii.gz")
    write_volume(_tiny(1).image, tmp_path / "a" / "x.nrrd")
    with pytest.raises(InputError, match="map to the id"):
        scan_archive(tmp_path)


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


def _state(out: Path, plan: StudyPlan, key: str, status: str, permanent: bool = True, outputs=None):
    (out / "state").mkdir(parents=True, exist_ok=True)
    (out / "state" / f"{plan.study.study_id}.json").write_text(json.dumps(
        {"study": plan.study.study_id, "content_hash": plan.content_hash, "config_key": key, "status": status,
         "permanent": permanent, "outputs": outputs or {}}))


def test_plan_follows_state(tmp_path):
    src = tmp_path / "a.nii.gz"
    write_volume(_tiny(1).image, src)
    study = Study("a", (str(src),), "file")
    out = tmp_path / "out"
    [plan] = plan_studies([study], out, "k1")
    assert plan.todo and plan.reason == "new"
    _state(out, plan, "k1", "done", outputs={"segmentation": "studies/a/segmentation.nii.gz"})
    [again] = plan_studies([study], out, "k1")
    assert again.todo and again.reason == "incomplete"  # state says done but the output is gone
    (out / "studies" / "a").mkdir(parents=True)
    (out / "studies" / "a" / "segmentation.nii.gz").write_bytes(b"x")
    assert not plan_studies([study], out, "k1")[0].todo
    assert plan_studies([study], out, "k2")[0].reason == "model or options changed"
    write_volume(_tiny(2).image, src)
    assert plan_studies([study], out, "k1")[0].reason == "content changed"
    [plan] = plan_studies([study], out, "k1")
    _state(out, plan, "k1", "failed", permanent=True)
    assert not plan_studies([study], out, "k1")[0].todo  # a corrupt file stays corrupt until it changes
    _state(out, plan, "k1", "failed", permanent=False)
    assert plan_studies([study], out, "k1")[0].todo  # a transient failure is tried again


def test_batch_options_forbid_unknown():
    with pytest.raises(ValueError):
        BatchOptions(crf=True, colour="red")


def test_run_lock_refuses_a_second_run(tmp_path):
    from medseg.batch import run_lock
    from medseg.errors import MedsegError

    with run_lock(tmp_path):
        with pytest.raises(MedsegError, match="another batch run"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released: the next run goes ahead
        pass


def test_run_batch_plain_loop(tmp_path):
    """The library alone (no Prefect): a plain loop with the real Predictor, then nothing to redo."""
    import numpy as np

    from medseg.batch import DEFAULT_COMPONENTS, run_batch
    from medseg.inference import Predictor
    from medseg.io import read_volume
    from medseg.training import quick_train_phantom_model

    model = quick_train_phantom_model(tmp_path / "train", steps=2)
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in (1, 2):
        write_volume(_tiny(i).image, archive / f"s{i}.nii.gz")
    predictor = Predictor.from_model_dir(model)
    opts = BatchOptions(crf=True, components=DEFAULT_COMPONENTS)
    record = run_batch(archive, predictor, tmp_path / "out", opts, model_dir=model)
    assert record["processed"] == ["s1", "s2"] and record["failed"] == []
    seg = read_volume(tmp_path / "out" / "studies" / "s1" / "segmentation.nii.gz")
    img = read_volume(archive / "s1.nii.gz")
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
    again = run_batch(archive, predictor, tmp_path / "out", opts, model_dir=model)
    assert again["processed"] == [] and again["skipped"] == ["s1", "s2"]
    # other options are another configuration: the studies are redone
    third = run_batch(archive, predictor, tmp_path / "out", BatchOptions(), model_dir=model)
    assert third["processed"] == ["s1", "s2"]

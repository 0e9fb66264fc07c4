"""medseg.batch.engine without Prefect: per-study state, planning, the lock, the plain-loop run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.batch import BatchOptions, SegmentJob, Study, StudyPlan, plan_studies
from medseg.io import write_volume
from medseg.phantoms import make_phantom


def _tiny(seed: int):
    return make_phantom(seed, shape=(24, 24, 16), spacing=(8.0, 8.0, 9.0), n_tumours=1)


def _state(out: Path, plan: StudyPlan, key: str, status: str, permanent: bool = True, outputs=None):
    (out / "state").mkdir(parents=True, exist_ok=True)
    (out / "state" / f"{plan.study.study_id}.json").write_text(json.dumps(
        {"study": plan.study.study_id, "content_hash": plan.content_hash, "config_key": key, "status": status,
         "permanent": permanent, "outputs": outputs or {}}))


def test_plan_follows_state(tmp_path):
    src = tmp_path / "a.nii.gz"
    write_volume(_tiny(1).image, src)
    study = Study("a", (str(src),), "file", key=str(src))
    job = SegmentJob(str(tmp_path), str(tmp_path / "model"))
    out = tmp_path / "out"
    [plan] = plan_studies(job, [study], out, "k1")
    assert plan.todo and plan.reason == "new"
    _state(out, plan, "k1", "done", outputs={"segmentation": "studies/a/segmentation.nii.gz"})
    [again] = plan_studies(job, [study], out, "k1")
    assert again.todo and again.reason == "incomplete"  # state says done but the output is gone
    (out / "studies" / "a").mkdir(parents=True)
    (out / "studies" / "a" / "segmentation.nii.gz").write_bytes(b"x")
    assert not plan_studies(job, [study], out, "k1")[0].todo
    assert plan_studies(job, [study], out, "k2")[0].reason == "model or options changed"
    write_volume(_tiny(2).image, src)
    assert plan_studies(job, [study], out, "k1")[0].reason == "content changed"
    [plan] = plan_studies(job, [study], out, "k1")
    _state(out, plan, "k1", "failed", permanent=True)
    assert not plan_studies(job, [study], out, "k1")[0].todo  # a corrupt file stays corrupt until it changes
    _state(out, plan, "k1", "failed", permanent=False)
    assert plan_studies(job, [study], out, "k1")[0].todo  # a transient failure is tried again


def test_batch_options_forbid_unknown():
    with pytest.raises(ValueError):
        BatchOptions(crf=True, colour="red")


def test_run_lock_refuses_a_second_run(tmp_path):
    from medseg.batch import run_lock
    from medseg.errors import MedsegError

    with run_lock(tmp_path):
        with pytest.raises(MedsegError, match="another run"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released: the next run goes ahead
        pass


def test_run_batch_plain_loop(tmp_path, phantom_model):
    """The library alone (no Prefect): a plain loop with the real Predictor, then nothing to redo."""
    import numpy as np

    from medseg.batch import run_batch
    from medseg.inference import DEFAULT_COMPONENTS
    from medseg.io import read_volume

    archive = tmp_path / "archive"
    archive.mkdir()
    for i in (1, 2):
        write_volume(_tiny(i).image, archive / f"s{i}.nii.gz")
    opts = BatchOptions(crf=True, components=DEFAULT_COMPONENTS)
    record = run_batch(archive, phantom_model, tmp_path / "out", opts)
    assert record["processed"] == ["s1", "s2"] and record["failed"] == []
    seg = read_volume(tmp_path / "out" / "studies" / "s1" / "segmentation.nii.gz")
    img = read_volume(archive / "s1.nii.gz")
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
    again = run_batch(archive, phantom_model, tmp_path / "out", opts)
    assert again["processed"] == [] and again["skipped"] == ["s1", "s2"]
    # other options are another configuration: the studies are redone
    third = run_batch(archive, phantom_model, tmp_path / "out", BatchOptions())
    assert third["processed"] == ["s1", "s2"]

"""The ingest flow on a real Prefect engine (the session's `prefect_server`): one task per study,
a study that fails, studies skipped on re-run, the same outputs as the CLI's library call."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medseg.io import read_volume, write_volume
from medseg.phantoms import make_phantom


@pytest.fixture()
def sources(tmp_path):
    folder = tmp_path / "in"
    for i, orientation in enumerate(("RAS", "LPS")):
        study = make_phantom(i, shape=(20, 18, 12), spacing=(8.0, 8.0, 10.0), orientation=orientation, n_tumours=1)
        write_volume(study.image, folder / f"case{i}.nii.gz")
    (folder / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage")
    return folder


def _task_runs(names):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=list(names))))
    return {r.name: r.state.type.value for r in runs}


def test_ingest_flow_fails_one_and_skips_on_rerun(prefect_server, sources, tmp_path):
    from flows.ingest import ingest_flow

    out = tmp_path / "out"
    state = ingest_flow([str(sources)], str(out), split="train", return_state=True)
    assert state.is_completed()
    record = state.result()
    assert record["processed"] == ["case0", "case1"] and record["failed"] == ["bad"]
    runs = _task_runs(["ingest-bad", "ingest-case0", "ingest-case1"])
    assert runs == {"ingest-bad": "COMPLETED", "ingest-case0": "COMPLETED", "ingest-case1": "COMPLETED"}
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["study"], r["stage"]) for r in rows] == [(str(sources / "bad.nii.gz"), "bad", "ingest")]
    assert "truncated or corrupt gzip" in rows[0]["error"]
    with open(out / "manifest.csv", newline="") as f:
        assert [(r["case_id"], r["split"]) for r in csv.DictReader(f)] == [("case0", "train"), ("case1", "train")]
    for i in range(2):
        a, b = read_volume(sources / f"case{i}.nii.gz"), read_volume(out / f"case{i}.nii.gz")
        assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "runs" not in p.parts and p.name != ".batch.lock"}

    again = ingest_flow([str(sources)], str(out), split="train")
    assert again["processed"] == [] and again["skipped"] == ["bad", "case0", "case1"]
    assert again["failures_total"] == 1
    # nothing rewritten: images, state, manifest, failures
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "runs" not in p.parts and p.name != ".batch.lock"} == stamps

    # the CLI's library call agrees with the flow on the same folder: nothing to do
    from medseg.ingest import ingest_sources

    lib = ingest_sources([sources], out, split="train")
    assert lib["processed"] == [] and lib["skipped"] == ["bad", "case0", "case1"]


def test_retry_condition_is_transient_io_only():
    from prefect.states import Failed

    from flows.runner import retry_condition
    from medseg.errors import InputError

    assert retry_condition(None, None, Failed(data=FileNotFoundError(2, "vanished", "x.nii.gz")))
    assert retry_condition(None, None, Failed(data=OSError(28, "No space left on device")))
    assert not retry_condition(None, None, Failed(data=InputError("x.nii.gz", "not a NIfTI file")))
    assert not retry_condition(None, None, Failed(data=ValueError("bug")))

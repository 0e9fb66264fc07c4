"""The batch flow with its per-study tasks on a local Dask cluster of two worker processes."""

from __future__ import annotations

import json
import os
import time

from batch_helpers import write_tiny_archive


def test_batch_on_two_dask_workers(prefect_harness, tmp_path, tiny_model):
    import flows.segment_archive as fsa

    archive = tmp_path / "archive"
    ids = write_tiny_archive(archive, 4, seed=300, prefix="dask")  # task run names unique in the session
    out = tmp_path / "out"
    record = fsa.segment_archive(str(archive), str(tiny_model), str(out), workers=2)
    assert record["processed"] == ids and record["failed"] == []
    for sid in ids:
        assert (out / "studies" / sid / "segmentation.nii.gz").is_file()
        state = json.loads((out / "state" / f"{sid}.json").read_text())
        assert state["status"] == "done"
    # the studies ran in worker processes, not in this one, and each worker loaded the model once
    pids = {int(p) for p in record["predictor_loads"]}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(n == 1 for n in record["predictor_loads"].values())
    assert record["workers"] == sorted(pids)
    # the workers reported their task runs to this session's Prefect API (not to servers of their own)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    names = [f"segment-{sid}" for sid in ids]
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=names)))
            if sorted(r.name for r in runs if r.state and r.state.is_completed()) == names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert sorted(r.name for r in runs if r.state and r.state.is_completed()) == names
    # and a re-run on the cluster does nothing again
    again = fsa.segment_archive(str(archive), str(tiny_model), str(out), workers=2)
    assert again["processed"] == [] and again["skipped"] == ids

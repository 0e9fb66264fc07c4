"""The batch flow with its per-study tasks on a local Dask cluster of two worker processes."""

from __future__ import annotations

import json
import os
import time

from tests.flows.batch_helpers import write_tiny_archive


def test_batch_on_two_dask_workers(prefect_server, tmp_path, phantom_model):
    import flows.segment_archive as fsa

    archive = tmp_path / "archive"
    ids = write_tiny_archive(archive, 4, seed=300, prefix="dask")  # task run names unique in the session
    out = tmp_path / "out"
    from distributed import Client, LocalCluster

    from flows.runner import prefect_api_url
    from medseg.inference.pipeline import predictor_loads

    env = {"PREFECT_API_URL": prefect_api_url()}
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, env=env) as cluster, \
            Client(cluster) as client:
        record = fsa.segment_archive(str(archive), str(phantom_model), str(out), dask_address=cluster.scheduler_address)
        assert record["processed"] == ids and record["failed"] == []
        # the studies ran in the worker processes, not in this one, and each worker loaded the model once
        worker_pids = set(client.run(os.getpid).values())
        loads = client.run(predictor_loads)
    for sid in ids:
        assert (out / "studies" / sid / "segmentation.nii.gz").is_file()
        state = json.loads((out / "state" / f"{sid}.json").read_text())
        assert state["status"] == "done"
    assert set(record["workers"]) <= worker_pids and os.getpid() not in record["workers"]
    assert sorted(loads.values()) in ([1, 1], [0, 1])  # once per worker that ran a study
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
    # a re-run with a local cluster of its own (--workers 2) does only the study that changed
    from tests.flows.batch_helpers import tiny_study
    from medseg.io import write_volume

    write_volume(tiny_study(999).image, archive / f"{ids[0]}.nii.gz")
    again = fsa.segment_archive(str(archive), str(phantom_model), str(out), workers=2)
    assert again["processed"] == ids[:1] and again["skipped"] == ids[1:]
    assert os.getpid() not in again["workers"]

"""The training flow on a real Prefect engine: one model, and cross-validation folds as tasks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.training.conftest import tiny_config, write_config


def test_training_flow_on_a_real_prefect_engine(prefect_server, phantom_manifest, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train import train_flow

    config = write_config(tiny_config(steps=4, data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    state = train_flow(str(config), str(tmp_path / "run"), return_state=True)
    assert state.is_completed()
    model_dir = Path(state.result())
    assert (model_dir / "model.pt").is_file() and (model_dir / "plans.json").is_file()
    assert json.loads((model_dir / "training_log.json").read_text())["summary"]["steps_done"] == 4

    import anyio

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    recorded = anyio.run(runs)
    assert len(recorded) == 1 and recorded[0].state.is_completed()



def test_training_flow_runs_two_folds_as_tasks_then_the_cross_validation(prefect_server, phantom_manifest, tmp_path):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train import train_flow
    from medseg.training.folds import make_splits, read_splits

    config = write_config(tiny_config(steps=4, steps_per_epoch=4, cross_validation={"folds": 2, "seed": 0},
                                      data={"manifest": str(phantom_manifest)}), tmp_path / "tiny.yaml")
    out = tmp_path / "cv"
    state = train_flow(str(config), str(out), device="cpu", folds="all", return_state=True)
    assert state.is_completed()
    assert Path(state.result()) == out
    ids = ["phantom_010", "phantom_011", "phantom_012", "phantom_013"]
    assert read_splits(out / "splits.json") == make_splits(ids, 2, seed=0)
    for k in range(2):
        assert (out / f"fold_{k}" / "model.pt").is_file()
        assert len(list((out / f"fold_{k}" / "validation").glob("*.nii.gz"))) == 2
    summary = json.loads((out / "cv_summary.json").read_text())
    assert sorted(c["case"] for c in summary["metric_per_case"]) == ids
    assert set(json.loads((out / "postprocessing.json").read_text())["largest_component"]) == {"1", "2", "3", "4", "5"}

    async def task_runs():
        async with get_client() as client:
            flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            return await client.read_task_runs(flow_run_filter=flow_run)

    runs = anyio.run(task_runs)
    assert sorted(r.name for r in runs if r.state.is_completed()) == ["cross-validation", "prepare-folds",
                                                                      "train-fold-0", "train-fold-1"]
    # a re-run of fold 1 alone skips it (trained) and leaves the summary as it was
    before = (out / "cv_summary.json").read_bytes()
    again = train_flow(str(config), str(out), device="cpu", folds=[1], return_state=True)
    assert again.is_completed()
    assert (out / "cv_summary.json").read_bytes() == before

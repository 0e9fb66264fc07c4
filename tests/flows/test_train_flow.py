"""The training flow on a real Prefect engine."""

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


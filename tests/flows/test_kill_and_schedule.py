"""Real processes: a batch killed part-way and resumed; a scheduled deployment on a real Prefect server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.flows.batch_helpers import write_tiny_archive
from tests.support import stop_process_group


def _done(out: Path) -> set[str]:
    return {p.stem for p in (out / "state").glob("*.json") if not p.name.startswith(".")} if (out / "state").is_dir() else set()


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for sub in ("studies", "state") for p in (out / sub).rglob("*")
            if p.is_file() and not p.name.startswith(".")}  # not the partial files and study markers of the killed run


def test_killed_batch_resumes_exactly_the_rest(prefect_server, tmp_path, phantom_model):
    archive = tmp_path / "archive"
    ids = write_tiny_archive(archive, 9, seed=500)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medseg", "batch", str(archive), "--model", str(phantom_model), "--out", str(out)]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=prefect_server, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(_done(out)) < 3:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no study finished in 180 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # a real crash: no clean-up code runs
        proc.wait(timeout=30)
    finally:
        stop_process_group(proc)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    finished = _done(out)
    assert 3 <= len(finished) < len(ids), f"the kill came too late to test anything: {sorted(finished)}"
    assert not (out / "volumes.csv").exists()  # the run never got to its reports
    before = _files(out)

    rerun = subprocess.run(cmd, env=prefect_server, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 1  # the killed run left no record; this is the re-run's
    record = json.loads(runs[0].read_text())
    assert record["processed"] == sorted(set(ids) - finished)
    assert sorted(record["skipped"]) == sorted(finished)
    after = _files(out)
    assert {k: after[k] for k in before} == before  # finished studies untouched
    assert _done(out) == set(ids)
    assert not list((out / "studies").glob(".*.partial-*"))  # no half-written study left behind
    assert not list((out / "state").glob(".*.inflight.json"))  # the killed run's study marker is gone
    assert "processed: " + str(len(ids) - len(finished)) in rerun.stdout


def test_scheduled_deployment_on_a_real_server(prefect_server, tmp_path, phantom_model):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    archive = tmp_path / "archive"
    ids = write_tiny_archive(archive, 2, seed=700)
    out = tmp_path / "out"
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "medseg", "schedule", str(archive), "--model", str(phantom_model),
                              "--out", str(out), "--cron", "0 2 * * *", "--name", "nightly-test"],
                             env=prefect_server, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            from prefect.client.orchestration import get_client

            deadline = time.monotonic() + 120
            deployment = None
            with get_client(sync_client=True) as client:
                while deployment is None:
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the deployment did not appear in 120 s"
                    try:
                        deployment = client.read_deployment_by_name("segment-archive/nightly-test")
                    except Exception:  # noqa: BLE001 - not registered yet
                        time.sleep(0.5)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
            assert all(s.active for s in deployment.schedules)
            assert deployment.parameters["out_dir"] == str(out.resolve())
            flow_run = run_deployment("segment-archive/nightly-test", timeout=240, poll_interval=1)
            assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
        for sid in ids:
            assert (out / "studies" / sid / "segmentation.nii.gz").is_file()
            assert (out / "studies" / sid / "volumes.json").is_file()
        assert (out / "volumes.csv").is_file()
    finally:
        stop_process_group(serve)  # SIGTERM: serve shuts down cleanly
        log.close()
    assert serve.returncode is not None

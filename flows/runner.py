"""The Prefect runner of :func:`medseg.batch.engine.run_job`: run-level steps as tasks, studies as
tasks on a task runner (threads here, or Dask workers), with the orchestrator's retry policy.

Every flow that runs a study-wise job (``segment-archive``, ``medseg-ingest``) calls
``run_job(job, out, runner=PrefectRunner(...))`` inside its ``@flow``: the sequence of steps is
the library's, only the mapping of studies is Prefect's.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from medseg.batch.engine import (
    RETRIES,
    RETRY_DELAY_S,
    Job,
    StudyPlan,
    StudyResult,
    is_transient,
    process_study,
    record_transient_failure,
)

__all__ = ["PrefectRunner", "make_task_runner", "prefect_api_url", "retry_condition", "study_task"]


def retry_condition(task, task_run, state) -> bool:
    """Retry a study task only for what may succeed next time (:func:`medseg.batch.is_transient`)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result gives no reason to retry
            return False
    return isinstance(exc, BaseException) and is_transient(exc)


def _study_run_name() -> str:
    from prefect.runtime import task_run

    params = task_run.parameters
    job, plan = params.get("job"), params.get("plan")
    if job is None or plan is None:
        return "study"
    return f"{job.name}-{plan.study.study_id}"


@task(name="study", task_run_name=_study_run_name, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      retry_condition_fn=retry_condition, cache_policy=NO_CACHE)
def study_task(job: Job, plan: StudyPlan, out_dir: str, key: str) -> StudyResult:
    """One study through ``job`` (:func:`medseg.batch.engine.process_study`)."""
    result = process_study(job, plan, out_dir, key)
    logger = get_run_logger()
    if result.status == "done":
        logger.info("%s: done in %.1f s", result.study_id, result.seconds)
    else:
        logger.warning("%s: failed at %s: %s", result.study_id, result.stage, result.error)
    return result


@flow(name="studies", task_runner=ThreadPoolTaskRunner(max_workers=1), validate_parameters=False)
def studies_flow(job: Any, plans: list, out_dir: str, key: str) -> list:
    """Every planned study (:class:`~medseg.batch.engine.StudyPlan` of a
    :class:`~medseg.batch.engine.Job`) as a task on this flow's task runner. A study whose task
    failed after its retries (a transient error that persisted) is recorded and tried again next
    run."""
    logger = get_run_logger()
    futures = [study_task.submit(job, p, out_dir, key) for p in plans]
    results = []
    for plan, future in zip(plans, futures):
        future.wait()
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - a persisting transient error: record it, go on
            logger.warning("%s: failed after retries: %s", plan.study.study_id, exc)
            results.append(record_transient_failure(plan, out_dir, key, exc))
    return results


class PrefectRunner:
    """Run-level steps as Prefect tasks (``scan-archive``, ``write-reports``) and each study as a
    task of a ``studies`` subflow on ``task_runner`` (one study at a time in this process by
    default; :func:`make_task_runner` for Dask)."""

    def __init__(self, task_runner=None):
        self.task_runner = task_runner

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return task(name=name, cache_policy=NO_CACHE)(fn)(*args)

    def map_studies(self, job: Job, plans: list[StudyPlan], out_dir: str, key: str,
                    on_result: Callable[[StudyResult], None] | None = None) -> list[StudyResult]:
        sub = studies_flow.with_options(name=f"{job.name}-studies",
                                        **({"task_runner": self.task_runner} if self.task_runner else {}))
        results = sub(job, plans, out_dir, key)
        if on_result is not None:
            for r in results:
                on_result(r)
        return results


def prefect_api_url() -> str | None:
    """The Prefect API this process talks to: the configured one, or its temporary server.

    Local Dask workers get it in their environment, so that their task runs are reported to the
    same API (without it each worker process would start a temporary server of its own).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def make_task_runner(dask_address: str | None = None, workers: int = 0):
    """The task runner for the per-study tasks.

    - ``dask_address``: an existing Dask scheduler (``tcp://host:8786``): its workers, on any
      machine, run the studies (each loads the model once);
    - ``workers`` > 0: a local Dask cluster of that many single-threaded worker processes;
    - otherwise: one study at a time in this process (torch already uses every core).
    """
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers > 0:
        from prefect_dask import DaskTaskRunner

        env = {"PREFECT_API_URL": url} if (url := prefect_api_url()) else {}
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1,
                                              "dashboard_address": None, "env": env})
    return ThreadPoolTaskRunner(max_workers=1)

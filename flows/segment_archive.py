"""Prefect flow: segment what is new in a scan archive, measure it, report.

Thin tasks over :mod:`medseg.batch` (every step is also callable without Prefect):

1. ``scan-archive``: list the studies, hash their content, decide which are new or changed;
2. ``segment-study`` (one per study, on the flow's task runner: threads here, or a Dask
   cluster): ingest → segment → optional CRF and component clean-up → volumes, committed
   atomically with the study's state. The model is loaded once per worker process (module
   cache :func:`get_predictor`) and reused by every study that runs there. Transient errors
   (``OSError`` that is not an :class:`~medseg.errors.InputError`) are retried by Prefect;
   bad input is recorded in ``OUT/failures.csv`` and the run goes on;
3. ``write-reports``: failures table, aggregated volume report (CSV + HTML), tumour-recall
   evaluation when reference labels exist, and the run record.

Run it once: ``medseg batch ARCHIVE --model MODEL --out OUT [--crf]``; on a schedule:
``medseg schedule ... --cron "0 2 * * *"`` (needs ``prefect server start``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from medseg import batch
from medseg.errors import InputError

__all__ = ["segment_archive", "segment_studies", "get_predictor", "predictor_loads", "make_task_runner",
           "FLOW_NAME"]

FLOW_NAME = "segment-archive"

# ------------------------------------------------------------------ one model per worker process

_PREDICTORS: dict[tuple, Any] = {}
_PREDICTOR_LOCK = threading.Lock()
_LOADS = {"count": 0}


def get_predictor(model_dir: str | Path, device: str = "auto", tta: bool = False):
    """The :class:`medseg.inference.Predictor` for ``model_dir`` in this process, loaded on first use.

    Keyed by (resolved folder, weights mtime, device, tta): every study task that runs in this
    worker process reuses it; new weights in the same folder are loaded again.
    """
    from medseg.inference import Predictor
    from medseg.plans import WEIGHTS_FILE

    folder = Path(model_dir).resolve()
    weights = folder / WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    key = (str(folder), stamp, device, tta)
    with _PREDICTOR_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            predictor = Predictor.from_model_dir(folder, device=device, tta=tta)
            _PREDICTORS.clear()  # one model per process: drop an older one
            _PREDICTORS[key] = predictor
            _LOADS["count"] += 1
    return predictor


def predictor_loads() -> int:
    """How many times this process has loaded a model (for tests and logs)."""
    return _LOADS["count"]


# ------------------------------------------------------------------------------------------ tasks


def _is_transient(task, task_run, state) -> bool:
    """Retry only what may succeed next time: an OSError that is not bad input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result: do not retry blindly
            return False
    return isinstance(exc, OSError) and not isinstance(exc, InputError)


@task(name="scan-archive", cache_policy=NO_CACHE)
def scan_archive_task(archive: str, out_dir: str, model_dir: str, options: batch.BatchOptions):
    """Studies of the archive, their plans (hash, todo, reason), the configuration key and labels."""
    from medseg.plans import LABELS_FILE, read_labels

    studies = batch.scan_archive(archive, exclude=(out_dir,))
    key = batch.config_key(model_dir, options)
    plans = batch.plan_studies(studies, out_dir, key)
    labels = read_labels(Path(model_dir) / LABELS_FILE)
    return studies, plans, key, labels


def _study_run_name() -> str:
    from prefect.runtime import task_run

    plan = task_run.parameters.get("plan")
    return f"segment-{plan.study.study_id}" if plan is not None else "segment-study"


@task(name="segment-study", task_run_name=_study_run_name, retries=2, retry_delay_seconds=2,
      retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def segment_study_task(plan: batch.StudyPlan, model_dir: str, out_dir: str, options: batch.BatchOptions,
                       key: str, labels: dict[int, str], device: str = "auto") -> dict[str, Any]:
    """Ingest → segment → (CRF) → (components) → volumes for one study (see :func:`medseg.batch.process_study`)."""
    predictor = get_predictor(model_dir, device, options.tta)
    result = batch.process_study(plan, predictor, out_dir, options, key, labels)
    logger = get_run_logger()
    if result.status == "done":
        logger.info("%s: done in %.1f s", result.study_id, result.seconds)
    else:
        logger.warning("%s: failed at %s: %s", result.study_id, result.stage, result.error)
    return {**result.to_dict(), "predictor_loads": predictor_loads()}


@task(name="write-reports", cache_policy=NO_CACHE)
def write_reports_task(out_dir: str, studies, plans, results, labels, started: str,
                       extra: dict[str, Any]) -> dict[str, Any]:
    """Failures table, aggregated reports, evaluation and the run record (:func:`medseg.batch.finalize_batch`)."""
    return batch.finalize_batch(out_dir, studies, plans, results, labels, started=started, extra=extra)


# ------------------------------------------------------------------------------------------ flows


def _api_url() -> str | None:
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

        env = {"PREFECT_API_URL": url} if (url := _api_url()) else {}
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1,
                                              "dashboard_address": None, "env": env})
    return ThreadPoolTaskRunner(max_workers=1)


@flow(name="segment-studies", task_runner=ThreadPoolTaskRunner(max_workers=1))
def segment_studies(plans: list, model_dir: str, out_dir: str, options: batch.BatchOptions, key: str,
                    labels: dict[int, str], device: str = "auto") -> list[dict[str, Any]]:
    """Run ``segment-study`` for every planned study on this flow's task runner.

    A study whose task ended failed after its retries (a transient error that persisted) is
    recorded in the failures table and tried again on the next run; the others go on.
    """
    logger = get_run_logger()
    todo = [p for p in plans if p.todo]
    futures = [segment_study_task.submit(p, model_dir, out_dir, options, key, labels, device) for p in todo]
    results = []
    for plan, fut in zip(todo, futures):
        fut.wait()
        try:
            results.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - a persisting transient error: record it, go on
            logger.warning("%s: failed after retries: %s", plan.study.study_id, exc)
            results.append(batch.record_transient_failure(plan, out_dir, key, exc).to_dict())
    return results


@flow(name=FLOW_NAME)
def segment_archive(archive: str, model_dir: str, out_dir: str, crf: bool = False,
                    components: dict[str, Any] | None = None, crf_config: dict[str, Any] | None = None,
                    tta: bool = False, device: str = "auto", dask_address: str | None = None,
                    workers: int = 0) -> dict[str, Any]:
    """Segment the new or changed studies of ``archive`` with the model in ``model_dir`` into ``out_dir``.

    Args:
        archive: folder tree of NIfTI/NRRD files and DICOM series folders, or a manifest CSV.
        model_dir: a model directory (``medseg train`` output).
        out_dir: output folder (see :mod:`medseg.batch` for its layout).
        crf: dense 3D CRF on the network's probabilities.
        crf_config: ``CRFConfig`` fields overriding the CT defaults (e.g. ``{"iterations": 2}``).
        components: connected-component clean-up of the labels (``ComponentsConfig`` fields, e.g.
            :data:`medseg.batch.DEFAULT_COMPONENTS`), or ``None`` for none.
        tta: mirror test-time augmentation.
        device: ``auto``, ``cpu`` or ``cuda``.
        dask_address: run the studies on this Dask scheduler's workers.
        workers: otherwise, a local Dask cluster of this many worker processes (0: in process).

    Returns:
        The run record: ``processed``, ``failed``, ``skipped`` study ids, ``reports`` paths...
    """
    with batch.run_lock(out_dir):
        options = batch.BatchOptions(crf=crf, crf_config=crf_config, components=components, tta=tta)
        return _segment_archive_locked(archive, model_dir, out_dir, options, device, dask_address, workers)


def _segment_archive_locked(archive: str, model_dir: str, out_dir: str, options: batch.BatchOptions, device: str,
                            dask_address: str | None, workers: int) -> dict[str, Any]:
    logger = get_run_logger()
    started = batch.now_utc()
    studies, plans, key, labels = scan_archive_task(archive, out_dir, model_dir, options)
    n_todo = sum(p.todo for p in plans)
    logger.info("%d studies in %s: %d to do, %d already done", len(studies), archive, n_todo, len(plans) - n_todo)
    results: list[dict[str, Any]] = []
    if n_todo:
        runner = make_task_runner(dask_address, workers)
        results = segment_studies.with_options(task_runner=runner)(plans, model_dir, out_dir, options, key, labels,
                                                                   device)
    loads = {r["pid"]: r.get("predictor_loads", 0) for r in results}
    study_results = [batch.StudyResult(**{k: v for k, v in r.items() if k != "predictor_loads"}) for r in results]
    record = write_reports_task(out_dir, studies, plans, study_results, labels, started,
                                {"predictor_loads": {str(pid): n for pid, n in loads.items()}})
    logger.info("processed %d, failed %d, skipped %d", len(record["processed"]), len(record["failed"]),
                len(record["skipped"]))
    return record

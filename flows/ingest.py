"""Prefect flow: ingest sources into an output folder, one task per study.

The same library calls as ``medseg ingest``: :func:`medseg.ingest.plan_ingest` finds the
studies, :func:`medseg.ingest.ingest_study` runs once per study in a task (retried on transient
I/O errors: an ``OSError`` that is not a :class:`medseg.errors.InputError`), and
:func:`medseg.ingest.finish_ingest` writes the state, manifest and ``failures.csv``.

Run it without a server (Prefect starts a temporary one)::

    python -m flows.ingest SOURCE... --out DIR
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from medseg.errors import InputError
from medseg.ingest import IngestReport, Study, StudyResult, finish_ingest, ingest_study, plan_ingest

__all__ = ["ingest_flow", "ingest_study_task", "is_transient"]


def is_transient(task, task_run, state) -> bool:
    """Retry condition: the task raised an ``OSError`` that is not bad input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # a state whose result cannot be read gives no reason to retry
            return False
    return isinstance(exc, OSError) and not isinstance(exc, InputError)


@task(name="ingest-study", retries=2, retry_delay_seconds=1.0, retry_condition_fn=is_transient,
      cache_policy=NO_CACHE, task_run_name="ingest-{study.case_id}")
def ingest_study_task(study: Study, out_dir: str, previous: dict | None) -> StudyResult:
    """One study → ``out_dir/<case_id>.nii.gz`` (or skipped when unchanged); see :func:`ingest_study`."""
    logger = get_run_logger()
    result = ingest_study(study, out_dir, previous=previous)
    if result.status == "failed":
        logger.warning("%s: failed: %s", study.case_id, result.error)
    else:
        logger.info("%s: %s (%s)", study.case_id, result.status, study.source)
    return result


@flow(name="medseg-ingest")
def ingest_flow(sources: list[str], out_dir: str, manifest: str | None = None, series_uid: str | None = None,
                split: str = "test") -> IngestReport:
    """Ingest every study of ``sources`` into ``out_dir`` (see :func:`medseg.ingest.ingest_sources`).

    Returns the :class:`medseg.ingest.IngestReport`; the flow run itself completes even when
    studies failed (they are listed in ``out_dir/failures.csv`` and in ``report.failed``).
    """
    logger = get_run_logger()
    plan = plan_ingest(sources, out_dir, manifest=manifest, series_uid=series_uid, split=split)
    for failure in plan.failures:
        logger.warning("%s", failure.error)
    logger.info("%d studies in %d source(s)", len(plan.studies), len(sources))
    futures = [ingest_study_task.submit(study, str(plan.out_dir), plan.previous(study)) for study in plan.studies]
    results: list[StudyResult] = []
    for study, future in zip(plan.studies, futures):
        try:
            results.append(future.result())
        except Exception as exc:  # retries exhausted on a transient error: report it, keep the rest
            results.append(StudyResult(study=study, status="failed", error=f"{study.source}: {exc}", transient=True))
    report = finish_ingest(plan, results)
    logger.info("%s", report.summary())
    return report


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest")
    parser.add_argument("--series")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    args = parser.parse_args(argv)
    report = ingest_flow(args.sources, args.out, manifest=args.manifest, series_uid=args.series, split=args.split)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(_main())

"""Study-wise runs over archives: one orchestrator for ``medseg batch`` and ``medseg ingest``.

- :mod:`medseg.batch.studies`: what a study is and how sources are listed (ids, channels, DICOM).
- :mod:`medseg.batch.engine`: lock → scan → plan → process → record → finalize, for any job,
  with a runner that maps the studies (in this process, or as Prefect tasks in ``flows/``).
- :mod:`medseg.batch.state`: per-study state, ``failures.csv``, run records, the lock.
- :mod:`medseg.batch.segment`: the segmentation job (``medseg batch``), :func:`run_batch`.

The ingestion job lives in :mod:`medseg.ingest`.
"""

from medseg.batch.engine import (
    RETRIES,
    Job,
    LocalRunner,
    Runner,
    RunPlan,
    StudyPlan,
    StudyResult,
    is_transient,
    plan_studies,
    process_study,
    record_transient_failure,
    run_job,
)
from medseg.batch.segment import BatchOptions, SegmentJob, run_batch
from medseg.batch.state import FAILURE_COLUMNS, read_state, read_states, run_lock
from medseg.batch.studies import Study, discover_studies

__all__ = [
    "BatchOptions",
    "FAILURE_COLUMNS",
    "Job",
    "LocalRunner",
    "RETRIES",
    "RunPlan",
    "Runner",
    "SegmentJob",
    "Study",
    "StudyPlan",
    "StudyResult",
    "discover_studies",
    "is_transient",
    "plan_studies",
    "process_study",
    "read_state",
    "read_states",
    "record_transient_failure",
    "run_batch",
    "run_job",
    "run_lock",
]

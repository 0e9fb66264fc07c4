"""Prefect flow: ingest sources into an output folder, one task per study.

The same job as ``medseg ingest`` (:class:`medseg.ingest.IngestJob`), run by the library's
orchestrator (:func:`medseg.batch.run_job`) with the studies mapped as Prefect tasks
(``ingest-<study>``, retried on transient I/O errors).

Run it without a server (Prefect starts a temporary one)::

    python -m flows.ingest SOURCE... --out DIR
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import PrefectRunner
from medseg.batch import run_job
from medseg.ingest import IngestJob

__all__ = ["ingest_flow"]


@flow(name="medseg-ingest")
def ingest_flow(sources: list[str], out_dir: str, manifest: str | None = None, series_uid: str | None = None,
                split: str = "test", resample_tilt: bool = False) -> dict[str, Any]:
    """Ingest every study of ``sources`` into ``out_dir`` (see :mod:`medseg.ingest`).

    Returns the run record; the flow run completes even when studies failed (they are in
    ``out_dir/failures.csv`` and in the record's ``failed``).
    """
    job = IngestJob(list(sources), out_dir, manifest, series_uid, split, resample_tilt=resample_tilt)
    return run_job(job, job.out_dir, runner=PrefectRunner())


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest")
    parser.add_argument("--series")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--resample-tilt", action="store_true")
    args = parser.parse_args(argv)
    record = ingest_flow(args.sources, args.out, manifest=args.manifest, series_uid=args.series, split=args.split,
                         resample_tilt=args.resample_tilt)
    print(f"ingested {len(record['processed'])}, failed {record['failures_total']}")
    return 0 if not record["failures_total"] else 1


if __name__ == "__main__":
    raise SystemExit(_main())

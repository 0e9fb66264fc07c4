"""Prefect flow: volume reports over a manifest or a folder of segmentations.

Thin orchestration: one task per study (:func:`medseg.measure.compute_volumes`, written to
``OUT/studies/<case>.json`` by :func:`medseg.report.write_volume_report`) and one over all of them
(:func:`medseg.report.write_batch_volume_reports`: ``OUT/volumes.csv``, one row per study × structure,
and ``OUT/volumes.html``, distributions per structure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

__all__ = ["volumes_flow", "volume_report_task", "batch_volume_report_task"]


@task(name="volume-report", task_run_name="volumes-{case}")
def volume_report_task(case: str, segmentation: str, image: str | None, labels: dict[int, str] | None,
                       out_path: str) -> dict[str, Any]:
    from medseg.io import read_label, read_volume
    from medseg.measure import compute_volumes
    from medseg.report import write_volume_report

    seg = read_label(segmentation)
    img = read_volume(image) if image else None
    report = compute_volumes(seg, img, labels)  # checks that the image is on the segmentation's grid
    report["case_id"] = case
    write_volume_report(report, out_path)
    return report


@task(name="batch-volume-report")
def batch_volume_report_task(reports: list[dict[str, Any]], csv_path: str, html_path: str) -> None:
    from medseg.report import write_batch_volume_reports

    write_batch_volume_reports(reports, csv_path, html_path)


@flow(name="medseg-volumes")
def volumes_flow(source: str, out_dir: str, labels_file: str | None = None, images: str | None = None,
                 split: str | None = None) -> dict[str, Any]:
    """Volume reports of every segmentation of ``source`` (manifest CSV or folder) into ``out_dir``.

    Returns ``{"studies": {case: json path}, "csv": path, "html": path}``.
    """
    from medseg.measure import find_volume_inputs
    from medseg.plans import read_labels

    logger = get_run_logger()
    labels = read_labels(labels_file) if labels_file else None
    jobs = find_volume_inputs(source, images, split=split)
    out = Path(out_dir)
    futures = {case: volume_report_task.submit(case, str(seg), str(img) if img else None, labels,
                                               str(out / "studies" / f"{case}.json"))
               for case, seg, img in jobs}
    reports = [f.result() for f in futures.values()]
    batch_volume_report_task(reports, str(out / "volumes.csv"), str(out / "volumes.html"))
    logger.info("volume reports of %d studies in %s", len(reports), out)
    return {"studies": {case: str(out / "studies" / f"{case}.json") for case in futures},
            "csv": str(out / "volumes.csv"), "html": str(out / "volumes.html")}

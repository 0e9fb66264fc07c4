"""Prefect flow: segment what is new in a scan archive, measure it, report.

The job is :class:`medseg.batch.SegmentJob` and the sequence is the library's
(:func:`medseg.batch.run_job`: lock → ``scan-archive`` → one ``segment-<study>`` task per new or
changed study → ``write-reports``); this flow only chooses where the studies run
(:class:`flows.runner.PrefectRunner`: one at a time in this process, or on Dask workers, each
loading the model once). Transient errors are retried by Prefect; bad input is recorded in
``OUT/failures.csv`` and the run goes on.

Run it once: ``medseg batch ARCHIVE --model MODEL --out OUT [--crf]``; on a schedule:
``medseg schedule ... --cron "0 2 * * *"`` (needs ``prefect server start``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import PrefectRunner, make_task_runner
from medseg.batch import BatchOptions, SegmentJob, run_job

__all__ = ["segment_archive", "FLOW_NAME"]

FLOW_NAME = "segment-archive"


@flow(name=FLOW_NAME)
def segment_archive(archive: str, model_dir: str, out_dir: str, crf: bool = False,
                    components: dict[str, Any] | None = None, crf_config: dict[str, Any] | None = None,
                    tta: bool = False, device: str = "auto", dask_address: str | None = None,
                    workers: int = 0, verify: bool = False, folds: list[int] | None = None,
                    checkpoint: str = "final", task: str | None = None,
                    step_size: float | None = None, backend: str = "auto", precision: str = "f32",
                    calibration: list[list[str]] | None = None,
                    resample_tilt: bool = False, dicom_seg: bool = False, rtstruct: bool = False,
                    seg_type: str = "binary", empty_segments: str = "drop",
                    lesion_labels: list[str] | None = None) -> dict[str, Any]:
    """Segment the new or changed studies of ``archive`` with the model in ``model_dir`` into ``out_dir``.

    Args:
        archive: folder tree of NIfTI/NRRD files and DICOM series folders, or a manifest CSV.
        model_dir: a model folder of any kind (:mod:`medseg.inference.kinds`: ``medseg train``
            output, an nnU-Net v2 trained-model folder, a TotalSegmentator weights folder with
            ``task``, a MONAI bundle).
        out_dir: output folder (see :mod:`medseg.batch.segment` for its layout).
        crf: dense 3D CRF on the network's probabilities (the model modality's defaults).
        crf_config: ``CRFConfig`` fields overriding those defaults (e.g. ``{"iterations": 2}``).
        components: connected-component clean-up of the labels (``ComponentsConfig`` fields, e.g.
            :data:`medseg.inference.DEFAULT_COMPONENTS`), or ``None`` for none.
        tta: mirror test-time augmentation.
        device: ``auto``, ``cpu`` or ``cuda``.
        dask_address: run the studies on this Dask scheduler's workers.
        workers: otherwise, a local Dask cluster of this many worker processes (0: in process).
        verify: hash every study's bytes (by default a study whose files kept their size, mtime
            and inode keeps its recorded hash).
        folds, checkpoint, task, step_size, backend, precision, calibration: how to run the model
            folder (:class:`~medseg.inference.kinds.ModelOptions`; ``calibration``: the int8
            calibration studies, each a list of channel paths).
        resample_tilt: resample gantry-tilted DICOM stacks onto a regular grid instead of
            failing them.
        dicom_seg, rtstruct, seg_type, empty_segments: DICOM-SEG / RTSTRUCT of each study read
            from a DICOM series (:class:`~medseg.batch.BatchOptions`).
        lesion_labels: the evaluation's lesion classes (names or ids; ``None``: from the names).

    Returns:
        The run record: ``processed``, ``failed``, ``skipped`` study ids, ``reports`` paths...
    """
    options = BatchOptions(crf=crf, crf_config=crf_config, components=components, tta=tta, folds=folds,
                           checkpoint=checkpoint, task=task, step_size=step_size, backend=backend,
                           precision=precision, calibration=calibration,
                           resample_tilt=resample_tilt, dicom_seg=dicom_seg, rtstruct=rtstruct,
                           seg_type=seg_type, empty_segments=empty_segments, lesion_labels=lesion_labels)
    job = SegmentJob(archive, model_dir, options, device)
    return run_job(job, out_dir, runner=PrefectRunner(make_task_runner(dask_address, workers)), verify=verify)

"""``medseg batch`` (segment an archive once) and ``medseg schedule`` (serve it on a cron schedule)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from medseg.cli.app import LESION_LABELS, RESAMPLE_TILT, app, handle_errors, stage
from medseg.cli.model_options import (
    BACKEND,
    CALIBRATE,
    CHECKPOINT,
    FOLDS,
    MODEL_HELP,
    PRECISION,
    STEP_SIZE,
    TASK,
    describe,
    model_options,
)
from medseg.cli.export import EMPTY_SEGMENTS, SEG_TYPE

__all__ = ["batch_command", "schedule_command", "run_batch_flow"]


def _prefect_env() -> None:
    """Prefect defaults for a command line run: no analytics, patience with a busy machine."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _quiet_prefect_console() -> None:
    """Keep Prefect's console output to what a person needs: no traceback or failed-state line for
    the error that stops a run (it ends as one ``medseg: error:`` line; the Prefect server's log
    keeps the traceback), and only warnings and errors when stderr is not a terminal.
    ``--debug`` shows everything."""
    import logging
    import sys

    from medseg.cli.app import is_debug
    from medseg.errors import MedsegError

    if is_debug():
        return

    class ExpectedErrors(logging.Filter):
        """Drop what the flow and task engines log when a run stops on an error (the exception
        and its traceback, "Finished in state Failed(…)"): the command prints that error as its
        one line. Study failures stay: the flow logs them as warnings."""

        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            engine = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
            return not (isinstance(exc, MedsegError) or (engine and record.levelno >= logging.ERROR))

    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            if not any(isinstance(f, ExpectedErrors) for f in handler.filters):
                handler.addFilter(ExpectedErrors())
            if not sys.stderr.isatty():
                handler.setLevel(max(handler.level, logging.WARNING))
    # Prefect's own shutdown chatter ("Still processing items") is not the user's business
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


def _check_inputs(archive: Path, model: Path, options, crf: bool, lesion_labels: list[str] | None = None) -> None:
    from medseg.errors import InputError

    if not archive.exists():
        raise InputError(archive, "archive does not exist (expected a folder of scans or a manifest CSV)")
    info = describe(model, options, crf=crf)  # InputError when it is not a model folder of a known kind
    from medseg.inference.backends import require_backend

    require_backend(options.backend)
    if lesion_labels is not None:
        from medseg.measure.lesions import resolve_lesion_labels

        try:
            resolve_lesion_labels(lesion_labels, dict(info.labels))
        except ValueError as exc:
            raise InputError(model, f"--lesion-labels: {exc}") from None


def _flow_parameters(archive: Path, model: Path, out: Path, *, crf: bool, components: bool, tta: bool, device: str,
                     dask_address: str | None, workers: int, verify: bool = False, options=None,
                     resample_tilt: bool = False, outputs: dict | None = None) -> dict:
    """The ``segment-archive`` flow's parameters for the CLI's options (one place for batch and schedule)."""
    from medseg.inference.pipeline import DEFAULT_COMPONENTS

    params = {"archive": str(archive.resolve()), "model_dir": str(model.resolve()), "out_dir": str(out.resolve()),
              "crf": crf, "components": DEFAULT_COMPONENTS if components else None, "tta": tta, "device": device,
              "dask_address": dask_address, "workers": workers, "verify": verify, "resample_tilt": resample_tilt}
    if options is not None:
        params.update(folds=None if options.folds is None else list(options.folds), checkpoint=options.checkpoint,
                      task=options.task, step_size=options.step_size, backend=options.backend,
                      precision=options.precision,
                      calibration=[list(s) for s in options.calibration] if options.calibration else None)
    params.update(outputs or {})
    return params


def run_batch_flow(archive: Path, model: Path, out: Path, *, crf: bool = False, components: bool = False,
                   tta: bool = False, device: str = "auto", dask_address: str | None = None,
                   workers: int = 0, verify: bool = False, options=None, resample_tilt: bool = False,
                   outputs: dict | None = None) -> dict:
    """Run the ``segment-archive`` flow once (on the configured Prefect API, or a temporary one).

    ``options``: :class:`~medseg.inference.kinds.ModelOptions` (folds, checkpoint, task, step size);
    ``outputs``: the flow's DICOM output and lesion-label parameters (:func:`_output_parameters`).
    """
    from flows.segment_archive import segment_archive

    _quiet_prefect_console()
    return segment_archive(**_flow_parameters(archive, model, out, crf=crf, components=components, tta=tta,
                                              device=device, dask_address=dask_address, workers=workers,
                                              verify=verify, options=options, resample_tilt=resample_tilt,
                                              outputs=outputs))


def _output_parameters(dicom_seg: bool, rtstruct: bool, seg_type: str, empty_segments: str,
                       lesion_labels: str) -> dict:
    """The flow's DICOM output and lesion-label parameters of the command line's values."""
    from medseg.cli.export import dicom_export_options

    options = dicom_export_options(seg_type, empty_segments)
    labels = None if lesion_labels.strip().lower() == "auto" else [t.strip() for t in lesion_labels.split(",") if t.strip()]
    return {"dicom_seg": dicom_seg, "rtstruct": rtstruct, "seg_type": options.seg_type,
            "empty_segments": options.empty, "lesion_labels": labels}


def _print_record(record: dict, out: Path) -> None:
    typer.echo(f"studies: {record['n_studies']}  processed: {len(record['processed'])}  "
               f"failed: {len(record['failed'])}  skipped (already done): {len(record['skipped'])}")
    if record.get("failures_total"):
        typer.echo(f"failures ({record['failures_total']}): {out / 'failures.csv'}")
    for name, path in record.get("reports", {}).items():
        typer.echo(f"{name}: {path}")


@app.command("batch")
@handle_errors
def batch_command(
    archive: Path = typer.Argument(..., help="Folder of NIfTI/NRRD files and DICOM series folders, or a manifest CSV."),
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder (studies/, state/, failures.csv, volumes.csv/html)."),
    crf: bool = typer.Option(False, "--crf", help="Refine each segmentation with the dense 3D CRF."),
    components: bool = typer.Option(False, "--components", help="Remove blobs under 0.1 mL and fill enclosed holes."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address",
                                               help="Run studies on this Dask scheduler's workers (tcp://host:8786)."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="Without --dask-address: a local Dask cluster of N worker processes (0: in process)."),
    verify: bool = typer.Option(False, "--verify", help="Hash every study's bytes (by default a study whose files "
                                "kept their size, modification time and inode keeps its recorded hash)."),
    resample_tilt: bool = RESAMPLE_TILT,
    folds: Optional[str] = FOLDS,
    checkpoint: str = CHECKPOINT,
    task: Optional[str] = TASK,
    step_size: Optional[float] = STEP_SIZE,
    backend: str = BACKEND,
    precision: str = PRECISION,
    calibrate: Optional[List[Path]] = CALIBRATE,
    dicom_seg: bool = typer.Option(False, "--dicom-seg", help="Also write studies/<id>/seg.dcm (DICOM-SEG) for "
                                   "each study read from a DICOM series."),
    rtstruct: bool = typer.Option(False, "--rtstruct", help="Also write studies/<id>/rtstruct.dcm (RTSTRUCT) for "
                                  "each study read from a DICOM series."),
    seg_type: str = SEG_TYPE,
    empty_segments: str = EMPTY_SEGMENTS,
    lesion_labels: str = LESION_LABELS,
) -> None:
    """Segment the new or changed studies of ARCHIVE once (a Prefect flow run).

    Exit code 0 when every study of the archive is done, 3 when some failed (see OUT/failures.csv),
    1 when the run could not start (bad model or options), 4 when another run holds OUT.
    """
    options = model_options(folds, checkpoint, task, step_size, backend, precision, calibrate)
    outputs = _output_parameters(dicom_seg, rtstruct, seg_type, empty_segments, lesion_labels)
    _check_inputs(archive, model, options, crf, outputs["lesion_labels"])
    _prefect_env()
    stage(f"segmenting {archive} with {model} into {out}")
    record = run_batch_flow(archive, model, out, crf=crf, components=components, tta=tta, device=device,
                            dask_address=dask_address, workers=workers, verify=verify, options=options,
                            resample_tilt=resample_tilt, outputs=outputs)
    _print_record(record, out)
    from medseg.errors import run_exit_code

    raise typer.Exit(int(run_exit_code(record["failures_total"])))


@app.command("schedule")
@handle_errors
def schedule_command(
    archive: Path = typer.Argument(..., help="Folder of scans or a manifest CSV."),
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 2 * * *" (every night at 02:00).'),
    name: str = typer.Option("nightly", "--name", help="Deployment name (runs as segment-archive/NAME)."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help="Time zone of the cron schedule (default UTC)."),
    crf: bool = typer.Option(False, "--crf", help="Refine each segmentation with the dense 3D CRF."),
    components: bool = typer.Option(False, "--components", help="Remove blobs under 0.1 mL and fill enclosed holes."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Dask scheduler for the studies."),
    workers: int = typer.Option(0, "--workers", min=0, help="Local Dask cluster of N worker processes."),
    resample_tilt: bool = RESAMPLE_TILT,
    folds: Optional[str] = FOLDS,
    checkpoint: str = CHECKPOINT,
    task: Optional[str] = TASK,
    step_size: Optional[float] = STEP_SIZE,
    backend: str = BACKEND,
    precision: str = PRECISION,
    calibrate: Optional[List[Path]] = CALIBRATE,
) -> None:
    """Serve the batch as a Prefect deployment on a cron schedule (needs `prefect server start`).

    Runs until stopped (Ctrl-C or SIGTERM). Trigger a run by hand with
    `prefect deployment run segment-archive/NAME`; see runs at the server's UI.
    """
    from medseg.errors import MedsegError

    options = model_options(folds, checkpoint, task, step_size, backend, precision, calibrate)
    _check_inputs(archive, model, options, crf)
    _prefect_env()
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL

    try:
        schedule = CronSchedule(cron=cron, timezone=timezone) if timezone else CronSchedule(cron=cron)
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda: [])()
        detail = errors[0]["msg"] if errors else str(exc).splitlines()[0]
        raise MedsegError(f"--cron {cron!r}: not a valid cron schedule ({detail}); e.g. \"0 2 * * *\"") from None

    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        raise MedsegError("schedules need a Prefect server: start one with `prefect server start` and point "
                          "medseg at it with `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`")
    from prefect.types.entrypoint import EntrypointType

    from flows.segment_archive import segment_archive

    _quiet_prefect_console()
    parameters = _flow_parameters(archive, model, out, crf=crf, components=components, tta=tta, device=device,
                                  dask_address=dask_address, workers=workers, options=options,
                                  resample_tilt=resample_tilt)
    stage(f"serving segment-archive/{name} on {cron!r} (Ctrl-C to stop)")
    segment_archive.serve(name=name, schedules=[schedule], parameters=parameters,
                          entrypoint_type=EntrypointType.MODULE_PATH,
                          description=f"Nightly segmentation of {archive} with {model}")

"""``medseg segment``: one study through a model, the result on the study's own grid.

Only typer and the standard library at module level: torch and friends load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medseg.cli.app import RESAMPLE_TILT, app, handle_errors, stage
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
from medseg.cli.export import EMPTY_SEGMENTS, SEG_TYPE, dicom_export_options
from medseg.errors import MedsegError

__all__ = ["segment"]

@app.command("segment")
@handle_errors
def segment(
    inputs: List[Path] = typer.Argument(
        ..., metavar="INPUT...",
        help="The study: a NIfTI/NRRD/MHA file or a folder holding one DICOM series; a multi-channel model takes "
             "one INPUT per channel, in the model's channel order (`medseg models --describe MODEL` lists them), "
             "e.g. FLAIR.nii.gz T1c.nii.gz."),
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Label map to write (.nii.gz), on the input's exact grid."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
    crf: bool = typer.Option(False, "--crf", help="Refine with the dense 3D CRF (the model modality's defaults)."),
    components: bool = typer.Option(False, "--components", help="Remove blobs under 0.1 mL and fill enclosed holes "
                                    "(as `medseg batch --components`)."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation (all flips averaged; 8x the work in 3D)."),
    volumes: Optional[Path] = typer.Option(None, "--volumes", help="Also write a volume report (.json/.csv/.html)."),
    probabilities: Optional[Path] = typer.Option(
        None, "--probabilities", help="Also write softmax probabilities: 4D NIfTI (X, Y, Z, C) on the input grid."),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when the folder holds several."),
    resample_tilt: bool = RESAMPLE_TILT,
    autocast: str = typer.Option("none", "--autocast", help="none (float32), bf16 (CPU/CUDA) or fp16 (CUDA)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", min=0.0, max=0.95,
                                            help="Window overlap fraction (default: the model's)."),
    window_batch: int = typer.Option(2, "--window-batch", min=1, help="Windows per forward pass."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: 2, or 1 on a busy machine)."),
    folds: Optional[str] = FOLDS,
    checkpoint: str = CHECKPOINT,
    task: Optional[str] = TASK,
    step_size: Optional[float] = STEP_SIZE,
    backend: str = BACKEND,
    precision: str = PRECISION,
    calibrate: Optional[List[Path]] = CALIBRATE,
    dicom_seg: Optional[Path] = typer.Option(None, "--dicom-seg", help="Also write a DICOM-SEG (.dcm) referring to "
                                             "the input DICOM series."),
    rtstruct: Optional[Path] = typer.Option(None, "--rtstruct", help="Also write an RTSTRUCT (.dcm) referring to "
                                            "the input DICOM series."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a QC preview (.png): label outlines "
                                           "on axial, coronal and sagittal planes."),
    seg_type: str = SEG_TYPE,
    empty_segments: str = EMPTY_SEGMENTS,
) -> None:
    """Segment the study INPUT... with MODEL and write OUTPUT (exactly the input's shape and affine)."""
    from medseg.errors import InputError
    from medseg.runtime import AUTOCAST_MODES, DEVICE_CHOICES

    dev = device.strip().lower()
    if dev not in DEVICE_CHOICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise MedsegError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if autocast not in AUTOCAST_MODES:
        raise MedsegError(f"--autocast must be one of {', '.join(AUTOCAST_MODES)}, not {autocast!r}")
    if overlap is not None and step_size is not None:
        raise MedsegError("give --overlap or --step-size, not both")
    from medseg.inference import StudyOptions, segment_file
    from medseg.inference.kinds import load_predictor
    from medseg.inference.segment import check_output_paths

    dicom_options = dicom_export_options(seg_type, empty_segments)
    check_output_paths(inputs, {"-o": output, "--probabilities": probabilities, "--volumes": volumes,
                                "--dicom-seg": dicom_seg, "--rtstruct": rtstruct, "--preview": preview})
    for path in inputs:
        if not path.exists():
            from medseg.io.files import missing_problem

            raise InputError(path, missing_problem(path))
    options_m = model_options(folds, checkpoint, task, step_size, backend, precision, calibrate)
    # the model folder's kind, channels and labels from its configuration, before torch loads
    info = describe(model, options_m, crf=crf, probabilities=probabilities is not None)
    n = len(info.channels)
    if len(inputs) != n:
        raise MedsegError(f"{model}: the model takes {n} channel(s) ({', '.join(info.channels)}): give one "
                          f"INPUT per channel in that order, not {len(inputs)}")
    from medseg.inference.pipeline import DEFAULT_COMPONENTS

    options = StudyOptions.for_model(info, crf=crf, tta=tta, components=DEFAULT_COMPONENTS if components else None)
    stage(f"loading {info.kind} model {model}")
    try:
        predictor = load_predictor(model, options=options_m, device=dev, autocast=autocast, overlap=overlap,
                                   window_batch=window_batch, num_threads=threads)
    except ValueError as exc:
        if isinstance(exc, MedsegError):
            raise
        raise MedsegError(str(exc)) from None
    stage(f"network on {predictor.backend}")
    prediction = segment_file(inputs, predictor, output, options=options, volumes_path=volumes,
                              probabilities_path=probabilities, series_uid=series,
                              resample_tilt=resample_tilt, progress=stage,
                              dicom_seg_path=dicom_seg, rtstruct_path=rtstruct, preview_path=preview,
                              dicom_options=dicom_options)
    t = prediction.timings
    stage("done in " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    from medseg.measure import present_labels

    present = [v for v in present_labels(prediction.labels.array) if v != 0]
    typer.echo(f"{output}: {'x'.join(map(str, prediction.labels.shape))} voxels, labels present: "
               f"{', '.join(predictor.label_names.get(v, str(v)) for v in present) or 'none'}")


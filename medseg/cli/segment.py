"""``medseg segment``: one study through a trained model, the result on the study's own grid.

Only typer and the standard library at module level: torch and friends load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, stage
from medseg.errors import MedsegError

__all__ = ["segment"]

_DEVICES = ("auto", "cpu", "cuda")
_AUTOCAST = ("none", "bf16", "fp16")


@app.command("segment")
@handle_errors
def segment(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, or a folder holding one DICOM series."),
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (plans.json + model.pt) from `medseg train`."),
    output: Path = typer.Option(..., "--output", "-o", help="Label map to write (.nii.gz), on the input's exact grid."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
    crf: bool = typer.Option(False, "--crf", help="Refine with the dense 3D CRF (medseg.postprocess.crf)."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation (all flips averaged; 8x the work in 3D)."),
    volumes: Optional[Path] = typer.Option(None, "--volumes", help="Also write a volume report (.json/.csv/.html)."),
    probabilities: Optional[Path] = typer.Option(
        None, "--probabilities", help="Also write softmax probabilities: 4D NIfTI (X, Y, Z, C) on the input grid."),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when the folder holds several."),
    autocast: str = typer.Option("none", "--autocast", help="none (float32), bf16 (CPU/CUDA) or fp16 (CUDA)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", min=0.0, max=0.95,
                                            help="Window overlap fraction (default: the model's)."),
    window_batch: int = typer.Option(2, "--window-batch", min=1, help="Windows per forward pass."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default 2 on CPU)."),
) -> None:
    """Segment INPUT with MODEL and write OUTPUT (exactly the input's shape and affine)."""
    dev = device.strip().lower()
    if dev not in _DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise MedsegError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if autocast not in _AUTOCAST:
        raise MedsegError(f"--autocast must be none, bf16 or fp16, not {autocast!r}")
    if not model.is_dir():
        from medseg.errors import InputError

        raise InputError(model, "model directory does not exist" if not model.exists() else "is not a folder")

    from medseg.inference import Predictor, segment_file
    from medseg.inference.segment import check_output_paths
    from medseg.plans import load_plans

    check_output_paths(input, {"-o": output, "--probabilities": probabilities, "--volumes": volumes})
    if not input.exists():
        from medseg.errors import InputError

        raise InputError(input, "does not exist")
    load_plans(model)  # a clear error for a folder that is not a model directory, before torch loads
    stage(f"loading model {model}")
    try:
        predictor = Predictor.from_model_dir(model, device=dev, autocast=autocast, tta=tta, overlap=overlap,
                                             window_batch=window_batch, num_threads=threads)
    except ValueError as exc:
        if isinstance(exc, MedsegError):
            raise
        raise MedsegError(str(exc)) from None
    prediction = segment_file(input, predictor, output, crf=crf, tta=tta, volumes_path=volumes,
                              probabilities_path=probabilities, series_uid=series, progress=stage)
    t = prediction.timings
    stage("done in " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    present = sorted(int(v) for v in _present_labels(prediction.labels.array))
    typer.echo(f"{output}: {'x'.join(map(str, prediction.labels.shape))} voxels, labels present: "
               f"{', '.join(prediction.label_names.get(v, str(v)) for v in present) or 'none'}")


def _present_labels(array):
    import numpy as np

    counts = np.bincount(array.ravel(), minlength=1)
    return [i for i in range(1, counts.size) if counts[i]]

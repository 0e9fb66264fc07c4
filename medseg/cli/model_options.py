"""The options that say how to run a model folder, shared by ``segment``, ``batch`` and ``schedule``.

Only typer and the standard library at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["MODEL_HELP", "FOLDS", "CHECKPOINT", "TASK", "STEP_SIZE", "BACKEND", "PRECISION", "CALIBRATE",
           "model_options", "describe"]

MODEL_HELP = ("Model folder: a medseg model directory (`medseg train`) or a folder of its fold_*/ directories "
              "(`medseg train --folds`), an nnU-Net v2 trained-model folder (<Trainer>__<Plans>__<configuration>/), "
              "a TotalSegmentator weights folder with --task, or a MONAI bundle.")

FOLDS: Optional[str] = typer.Option(
    None, "--folds",
    help="Folds to run and average, e.g. 0,1 (default: every fold present): the fold_K/ folders of a medseg model "
         "folder (softmax probabilities averaged) or of an nnU-Net folder (logits averaged).")
CHECKPOINT: str = typer.Option(
    "final", "--checkpoint", help="nnU-Net checkpoint: final (checkpoint_final.pth) or best (checkpoint_best.pth).")
TASK: Optional[str] = typer.Option(
    None, "--task", help="TotalSegmentator task when --model is its weights folder: total, total_fast, total_mr...")
STEP_SIZE: Optional[float] = typer.Option(
    None, "--step-size", min=0.05, max=1.0,
    help="Window step as a fraction of the window (nnU-Net's tile_step_size; default 0.5 for nnU-Net models, "
         "1 - the model's overlap for medseg models).")

BACKEND: str = typer.Option(
    "auto", "--backend",
    help="What runs the network: auto (CUDA torch on a GPU, else OpenVINO when the network converts, else torch), "
         "torch, openvino or onnxruntime. Conversions are cached in MEDSEG_CACHE_DIR (default ~/.cache/medseg).")
PRECISION: str = typer.Option(
    "f32", "--precision",
    help="f32, bf16 (OpenVINO on CPUs with bf16; torch bf16 autocast) or int8 (OpenVINO, calibrated on --calibrate).")
CALIBRATE: Optional[List[Path]] = typer.Option(
    None, "--calibrate", metavar="STUDY",
    help="With --precision int8: a study (image file, DICOM folder) or a folder/manifest of studies whose windows "
         "calibrate the quantisation; repeat for more. A few studies like those to segment.")


def model_options(folds: str | None, checkpoint: str, task: str | None, step_size: float | None,
                  backend: str = "auto", precision: str = "f32", calibrate: List[Path] | None = None):
    """The :class:`~medseg.inference.kinds.ModelOptions` of the command line's options
    (``--calibrate`` paths listed as studies as ``medseg batch`` lists an archive).

    Raises:
        MedsegError: an option that is not valid (one line).
        InputError: a ``--calibrate`` path that does not exist or holds no study.
    """
    from medseg.errors import MedsegError
    from medseg.inference.backends import check_backend
    from medseg.inference.kinds import ModelOptions, parse_folds

    backend, precision = backend.strip().lower(), precision.strip().lower()
    calibration: tuple[tuple[str, ...], ...] = ()
    try:
        check_backend(backend, precision, bool(calibrate))
    except ValueError as exc:
        raise MedsegError(f"--backend/--precision: {exc}") from None
    if calibrate:
        from medseg.batch.studies import discover_studies

        studies = discover_studies(calibrate)
        bad = [s for s in studies if s.kind == "invalid"]
        if bad:
            from medseg.errors import InputError

            raise InputError(bad[0].source, f"--calibrate: {bad[0].problem}")
        calibration = tuple(s.sources for s in studies)
    try:
        return ModelOptions(folds=parse_folds(folds), checkpoint=checkpoint.strip().lower(), task=task,
                            step_size=step_size, backend=backend, precision=precision, calibration=calibration)
    except ValueError as exc:
        raise MedsegError(f"--folds/--checkpoint/--step-size: {exc}") from None


def describe(model: Path, options, *, crf: bool = False, probabilities: bool = False):
    """The model's :class:`~medseg.inference.kinds.ModelInfo` (configuration files only), refusing
    ``--crf``/``--probabilities`` for models without class probabilities.

    Raises:
        InputError: not a model folder of a known kind.
        MedsegError: an option the model cannot honour.
    """
    from medseg.errors import InputError
    from medseg.inference.kinds import describe_model

    info = describe_model(model, options)
    if (crf or probabilities) and info.details.get("probabilities") is False:
        what = "a region-based model (one sigmoid score per region)" if info.details.get("region_based") else \
            f"a {info.kind} model"
        flag = "--crf" if crf else "--probabilities"
        raise InputError(model, f"{what} gives no class probabilities: {flag} does not apply")
    return info

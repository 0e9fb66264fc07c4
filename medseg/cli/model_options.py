"""The options that say how to run a model folder, shared by ``segment``, ``batch`` and ``schedule``.

Only typer and the standard library at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["MODEL_HELP", "FOLDS", "CHECKPOINT", "TASK", "STEP_SIZE", "model_options", "describe"]

MODEL_HELP = ("Model folder: a medseg model directory (`medseg train`), an nnU-Net v2 trained-model folder "
              "(<Trainer>__<Plans>__<configuration>/), a TotalSegmentator weights folder with --task, or a MONAI bundle.")

FOLDS: Optional[str] = typer.Option(
    None, "--folds", help="nnU-Net folds to run and average, e.g. 0,1 (default: every fold present).")
CHECKPOINT: str = typer.Option(
    "final", "--checkpoint", help="nnU-Net checkpoint: final (checkpoint_final.pth) or best (checkpoint_best.pth).")
TASK: Optional[str] = typer.Option(
    None, "--task", help="TotalSegmentator task when --model is its weights folder: total, total_fast, total_mr...")
STEP_SIZE: Optional[float] = typer.Option(
    None, "--step-size", min=0.05, max=1.0,
    help="Window step as a fraction of the window (nnU-Net's tile_step_size; default 0.5 for nnU-Net models, "
         "1 - the model's overlap for medseg models).")


def model_options(folds: str | None, checkpoint: str, task: str | None, step_size: float | None):
    """The :class:`~medseg.inference.kinds.ModelOptions` of the command line's options.

    Raises:
        MedsegError: an option that is not valid (one line).
    """
    from medseg.errors import MedsegError
    from medseg.inference.kinds import ModelOptions, parse_folds

    try:
        return ModelOptions(folds=parse_folds(folds), checkpoint=checkpoint.strip().lower(), task=task,
                            step_size=step_size)
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

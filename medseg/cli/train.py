"""``medseg train CONFIG.yaml [--manifest FILE.csv] [--out RUN_DIR] [--resume] [--device auto|cpu|cuda] [--max-minutes N]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, notice, stage

__all__ = ["train_command"]


def _positive_minutes(value: Optional[float]) -> Optional[float]:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be a positive number of minutes, not {value:g}")
    return value


@app.command("train")
@handle_errors
def train_command(
    config: Path = typer.Argument(..., help="Training config (YAML); see configs/ for examples."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest CSV (overrides data.manifest of the config)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run / model directory to write (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out exactly where it stopped "
                                "(from step 0 when it stopped before its first checkpoint)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    stop_after_steps: Optional[int] = typer.Option(None, "--stop-after-steps", min=1,
                                                   help="End after this many steps of the run (checkpointed); continue with --resume."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", metavar="N", callback=_positive_minutes,
        help="Time budget of this command in minutes (overrides max_minutes of the config): fewer steps when they "
             "do not fit, the learning-rate schedule shortened to them, the last step validated and the model "
             "directory written within it. With --resume, the budget of the resumed part."),
) -> None:
    """Train a segmentation model from a YAML config and write its model directory."""
    from medseg.errors import InputError, MedsegError
    from medseg.training import load_train_config, train

    cfg = load_train_config(config)
    run_dir = out if out is not None else Path("runs") / Path(config).name.split(".")[0]
    budget = max_minutes if max_minutes is not None else cfg.max_minutes
    within = f" (fewer if they do not fit in {budget:g} min)" if budget is not None else ""
    stage(f"training {cfg.model.name} ({cfg.model.spatial_dims}D) for {cfg.total_steps} steps{within} -> {run_dir}")
    try:
        model_dir = train(cfg, manifest=manifest, out_dir=run_dir, resume=resume, device=device, progress=True,
                          stop_after_steps=stop_after_steps, max_minutes=max_minutes, notify=notice)
    except MedsegError:  # an input file, or the device (DeviceError): each says what it is about
        raise
    except (ValueError, FloatingPointError) as exc:  # the config's settings (manifest, autocast, model options, lr)
        raise InputError(config, str(exc)) from None
    typer.echo(str(model_dir))

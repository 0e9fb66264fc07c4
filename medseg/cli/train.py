"""``medseg train CONFIG.yaml [--manifest FILE.csv] [--out RUN_DIR] [--resume] [--device auto|cpu|cuda]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, notice, stage

__all__ = ["train_command"]


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
) -> None:
    """Train a segmentation model from a YAML config and write its model directory."""
    from medseg.errors import InputError, MedsegError
    from medseg.training import load_train_config, train

    cfg = load_train_config(config)
    run_dir = out if out is not None else Path("runs") / Path(config).name.split(".")[0]
    stage(f"training {cfg.model.name} ({cfg.model.spatial_dims}D) for {cfg.total_steps} steps -> {run_dir}")
    try:
        model_dir = train(cfg, manifest=manifest, out_dir=run_dir, resume=resume, device=device, progress=True,
                          stop_after_steps=stop_after_steps, notify=notice)
    except MedsegError:  # an input file, or the device (DeviceError): each says what it is about
        raise
    except (ValueError, FloatingPointError) as exc:  # the config's settings (manifest, autocast, model options, lr)
        raise InputError(config, str(exc)) from None
    typer.echo(str(model_dir))

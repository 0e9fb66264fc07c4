"""``medseg train CONFIG.yaml [--manifest FILE.csv] [--out RUN_DIR] [--resume] [--device auto|cpu|cuda]
[--fold K | --folds all|0,2] [--max-minutes N]``."""

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
    fold: Optional[int] = typer.Option(None, "--fold", min=0,
                                       help="Train cross-validation fold K into OUT/fold_K (OUT/splits.json: made "
                                            "from cross_validation: of the config when absent, else used as it is)."),
    folds: Optional[str] = typer.Option(None, "--folds",
                                        help="Train these cross-validation folds one after the other: all, or fold "
                                             "numbers like 0,2 (folds already trained are skipped). Once every fold "
                                             "is trained: OUT/cv_summary.json and OUT/postprocessing.json."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", metavar="N", callback=_positive_minutes,
        help="Time budget of this command in minutes (overrides max_minutes of the config): fewer steps when they "
             "do not fit, the learning-rate schedule shortened to them, the last step validated and the model "
             "directory written within it. With --resume, the budget of the resumed part."),
) -> None:
    """Train a segmentation model from a YAML config and write its model directory (or k-fold cross-validation folds)."""
    from medseg.errors import InputError, MedsegError
    from medseg.training import load_train_config, train, train_folds

    if fold is not None and folds is not None:
        raise MedsegError("give --fold K or --folds LIST, not both")
    selection: tuple[int, ...] | None = None
    if folds is not None:
        from medseg.inference.kinds import parse_folds

        try:
            selection = parse_folds(folds)
        except ValueError as exc:
            raise MedsegError(str(exc)) from None
    elif fold is not None:
        selection = (fold,)
    cfg = load_train_config(config)
    run_dir = out if out is not None else Path("runs") / Path(config).name.split(".")[0]
    budget = max_minutes if max_minutes is not None else cfg.max_minutes
    within = f" (fewer if they do not fit in {budget:g} min)" if budget is not None else ""
    try:
        if fold is None and folds is None:
            stage(f"training {cfg.model.name} ({cfg.model.spatial_dims}D) for {cfg.total_steps} steps{within} -> {run_dir}")
            model_dir = train(cfg, manifest=manifest, out_dir=run_dir, resume=resume, device=device, progress=True,
                              stop_after_steps=stop_after_steps, max_minutes=max_minutes, notify=notice)
        else:
            which = "every fold" if selection is None else "fold " + ", ".join(map(str, selection))
            stage(f"training {cfg.model.name} ({cfg.model.spatial_dims}D), {which}, {cfg.total_steps} steps each"
                  f"{within.replace(' min)', ' min in all)')} -> {run_dir}")
            model_dir = train_folds(cfg, manifest=manifest, model_dir=run_dir, folds=selection, resume=resume,
                                    device=device, progress=True, stop_after_steps=stop_after_steps,
                                    max_minutes=max_minutes, notify=notice)
    except MedsegError:  # an input file, or the device (DeviceError): each says what it is about
        raise
    except (ValueError, FloatingPointError) as exc:  # the config's settings (manifest, autocast, model options, lr)
        raise InputError(config, str(exc)) from None
    typer.echo(str(model_dir))

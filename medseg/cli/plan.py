"""``medseg plan DATASET -o CONFIG.yaml [--device cpu|cuda] [--memory-gb N] [--minutes N] [--labels LABELS.json]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, notice, stage

__all__ = ["plan_command"]


@app.command("plan")
@handle_errors
def plan_command(
    dataset: Path = typer.Argument(..., help="A manifest CSV (case_id,image,label,split[,modality]) or an MSD / "
                                   "nnU-Net dataset.json (or the folder holding it)."),
    output: Path = typer.Option(..., "-o", "--output", help="Training config to write (YAML); an existing file is "
                                "never overwritten. NAME.fingerprint.json (and NAME.manifest.csv for a dataset.json) "
                                "go beside it."),
    device: str = typer.Option("auto", "--device", help="What the run is planned for: cpu or cuda (auto: cuda when "
                               "torch sees a GPU here, else cpu)."),
    memory_gb: float = typer.Option(8.0, "--memory-gb", help="Memory for training in GB: the GPU's on cuda, RAM on "
                                    "a cpu (nnU-Net's target: 8)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Time budget of one training run (one fold): "
                                            "written as max_minutes, the network and patch sized to fit it."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.json naming the classes of a manifest "
                                          "(default: labels.json beside it, else the ids found, named label_<id>)."),
) -> None:
    """Plan a training config from a dataset's fingerprint (nnU-Net's heuristics, sized to a device and budget)."""
    from medseg.errors import InputError
    from medseg.planning.plan import PlanBudget, plan_dataset

    choice = device.strip().lower()
    if choice == "auto":
        import torch

        choice = "cuda" if torch.cuda.is_available() else "cpu"
        notice(f"planning for {choice} (--device auto)")
    if choice not in ("cpu", "cuda"):
        raise InputError(None, f"--device must be cpu, cuda or auto, not {device!r}")
    try:
        budget = PlanBudget(device=choice, memory_gb=memory_gb, minutes=minutes)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    out = plan_dataset(dataset, output, budget, labels=labels, progress=stage)
    stage(f"fingerprint: {out.fingerprint}" + (f"; manifest: {out.manifest}" if out.manifest else ""))
    typer.echo(str(out.config))

"""``medseg models``: the registry of architectures, or ``--describe MODEL``: what a model folder expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors

__all__ = ["models"]


@app.command("models")
@handle_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
    describe: Optional[Path] = typer.Option(None, "--describe", metavar="MODEL",
                                            help="Describe a model folder instead: its input channels (the order "
                                                 "`medseg segment INPUT...` takes them in), labels, grid, window, "
                                                 "folds and post-processing, from its configuration files only "
                                                 "(no weights loaded)."),
    task: Optional[str] = typer.Option(None, "--task", help="With --describe: the TotalSegmentator task of a "
                                       "TotalSegmentator weights folder."),
) -> None:
    """List the registered architectures: name, spatial dims, parameters at default width, description.

    Parameter counts are for the 3D model with 1 input channel and 2 classes (default options);
    the models are built on PyTorch's meta device, so nothing is allocated.
    """
    if describe is not None:
        _describe(describe, as_json, task)
        return
    import torch

    from medseg.models import MODELS, create_model

    rows = []
    for name in sorted(MODELS):
        entry = MODELS[name]
        with torch.device("meta"):
            net = create_model(name, spatial_dims=3, in_channels=1, out_channels=2)
        rows.append({"name": name, "spatial_dims": list(entry.spatial_dims),
                     "parameters": sum(p.numel() for p in net.parameters()), "description": entry.description})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "dims", "params (3D)", "description")
    table = [header] + [(r["name"], ", ".join(f"{d}D" for d in r["spatial_dims"]), f"{r['parameters']:,}",
                         r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for i, row in enumerate(table):
        typer.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
        if i == 0:
            typer.echo(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * widths[2]}  {'-' * len(header[3])}")


def _describe(model_dir: Path, as_json: bool, task: str | None = None) -> None:
    """Print what ``medseg segment`` needs to know about a model folder of any kind (read from its
    configuration files only)."""
    from medseg.inference.kinds import ModelOptions, describe_model

    info = describe_model(model_dir, ModelOptions(task=task))
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    d = info.details
    what = {"medseg": lambda: f"{d.get('architecture')}, {d.get('spatial_dims')}D",
            "nnunet": lambda: f"nnU-Net v2 {d.get('configuration')}, {d.get('trainer')}, {d.get('plans')}, "
                              f"{d.get('architecture')}" + (", region-based" if d.get("region_based") else ""),
            "totalsegmentator": lambda: f"TotalSegmentator {d.get('totalsegmentator_version')} task {d.get('task')}, "
                                        f"{len(d.get('parts') or [])} part model(s) "
                                        f"({', '.join(str(p['dataset_id']) for p in d.get('parts') or [])}), {d.get('trainer')}",
            "monai-bundle": lambda: " ".join(str(x) for x in ("MONAI bundle", d.get("name"), d.get("version")) if x)
                                    + f", {d.get('network')}",
            }.get(info.kind, lambda: info.kind)()
    channels = " ".join(f"{i + 1}:{name}" for i, name in enumerate(info.channels))
    typer.echo(f"model:         {model_dir} ({info.kind}: {what}; {info.modality})")
    typer.echo(f"channels:      {channels}  (give `medseg segment` one INPUT per channel, in this order)")
    typer.echo(f"labels:        {len(info.labels)}: {', '.join(f'{k} {v}' for k, v in sorted(info.labels.items()))}")
    spacing = info.spacing_mm
    orientation = d.get("orientation")
    typer.echo(f"grid:          {orientation + ', ' if orientation else ''}"
               f"{'x'.join(f'{s:g}' for s in spacing) + ' mm' if spacing else 'native spacing'}; "
               f"window {'x'.join(map(str, info.patch_size))}"
               + (f", overlap {d['overlap']:g}" if d.get("overlap") is not None else "")
               + (f", step size {d['step_size']:g}" if d.get("step_size") is not None else ""))
    if info.folds is not None:
        averaged = " (each fold's softmax probabilities averaged)" if info.kind == "medseg" and len(info.folds) > 1 else ""
        typer.echo(f"folds:         {', '.join(map(str, info.folds)) or 'none trained'}{averaged}")
    if info.largest_component is not None:
        kept = ", ".join(f"{k} {info.labels.get(k, k)}" for k in info.largest_component)
        typer.echo("post-processing: " + (f"keep only the largest component of {kept}" if kept else
                                          "keep every component")
                   + " (chosen by cross-validation, postprocessing.json; applied by segment and batch)")

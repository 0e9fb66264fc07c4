"""``medseg models``: the registry of architectures, with parameter counts at default width."""

from __future__ import annotations

import json

import typer

from medseg.cli.app import app, handle_errors

__all__ = ["models"]


@app.command("models")
@handle_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
) -> None:
    """List the registered architectures: name, spatial dims, parameters at default width, description.

    Parameter counts are for the 3D model with 1 input channel and 2 classes (default options);
    the models are built on PyTorch's meta device, so nothing is allocated.
    """
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

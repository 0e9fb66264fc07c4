"""``medseg evaluate --pred PRED --ref REF -o OUT_DIR [--labels LABELS.json] [--lesion-overlap 0.1]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import LESION_LABELS, app, handle_errors, stage
from medseg.errors import MedsegError


@app.command("evaluate")
@handle_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Predicted label map, or a folder of them (matched to --ref by file name)."),
    ref: Path = typer.Option(..., "--ref", help="Reference label map, or a folder of them."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: summary.json, lesions.csv, report.html."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.json; default: every non-zero id present."),
    lesion_overlap: float = typer.Option(0.1, "--lesion-overlap", min=0.0, max=1.0,
                                         help="Fraction of a reference lesion that must be covered to count as detected."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", min=0.0, help="Normalised surface Dice tolerance (mm)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image file or folder (same names) drawn under the missed-lesion thumbnails."),
    lesion_labels: str = LESION_LABELS,
) -> None:
    """Dice, IoU, HD95, NSD per case and label; lesion-wise recall/precision; summary.json + report.html."""
    from medseg.errors import InputError
    from medseg.measure import evaluate as run_evaluation
    from medseg.plans import read_labels
    from medseg.report import write_evaluation

    if lesion_overlap <= 0:
        raise MedsegError(f"--lesion-overlap must be in (0, 1], not {lesion_overlap}")
    for src in (pred, ref):
        if src.exists() and output.exists() and output.resolve() == src.resolve():
            raise InputError(output, "the output folder is an input folder; choose another -o")
    names = read_labels(labels) if labels is not None else None
    lesion_ids = None
    if lesion_labels.strip().lower() != "auto":
        from medseg.measure.lesions import resolve_lesion_labels

        if names is None:
            raise MedsegError("--lesion-labels NAME,... needs --labels (the names to choose from)")
        try:
            lesion_ids = resolve_lesion_labels(lesion_labels, names)
        except ValueError as exc:
            raise InputError(labels, f"--lesion-labels: {exc}") from None
    stage(f"evaluating {pred} against {ref}")
    summary, cases = run_evaluation(pred, ref, labels=names, lesion_overlap=lesion_overlap,
                                    nsd_tolerance_mm=nsd_tolerance, images=images, lesion_labels=lesion_ids)
    write_evaluation(summary, cases, output)
    for failure in summary.get("failures", []):
        typer.echo(f"medseg: error: {failure['error']}", err=True)
    for label, les in summary["lesions"].items():
        name = summary["labels"].get(label, label)
        dice = summary["mean"][label]["Dice"]
        typer.echo(f"{name}: Dice {dice:.4f}, lesion recall {les['n_detected']}/{les['n_ref']}, "
                   f"false positives {les['n_false_positive']}")
    typer.echo(f"wrote {output / 'summary.json'}, {output / 'lesions.csv'}, {output / 'report.html'}")
    if summary.get("failures"):
        from medseg.errors import run_exit_code

        raise typer.Exit(int(run_exit_code(len(summary["failures"]))))

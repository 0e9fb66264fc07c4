"""``medseg volumes SEGMENTATION [--image IMAGE] [--labels LABELS.json] [--probabilities P] -o REPORT``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, stage


@app.command("volumes")
@handle_errors
def volumes(
    segmentation: Path = typer.Argument(..., help="Label map (NIfTI/NRRD/MHA file or DICOM folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Report file: .json, .csv or .html."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image on the same grid, for intensity statistics (HU for CT)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.json ({\"1\": \"spleen\", ...}); default: the ids present."),
    probabilities: Optional[Path] = typer.Option(None, "--probabilities",
                                                 help="4D softmax probabilities (X, Y, Z, C) on the same grid: adds soft volumes."),
) -> None:
    """Volume (mL), intensity statistics, centroid, bounding box and border contact per structure."""
    import numpy as np

    from medseg.errors import InputError
    from medseg.io import check_same_grid, read_label, read_volume
    from medseg.measure import compute_volumes
    from medseg.plans import read_labels
    from medseg.report import write_volume_report

    suffix = output.suffix.lower()
    if suffix not in (".json", ".csv", ".html", ".htm"):
        raise InputError(output, f"unknown report format {output.suffix!r} (use .json, .csv or .html)")
    for src in (segmentation, image, labels, probabilities):
        if src is not None and src.exists() and output.exists() and output.resolve() == src.resolve():
            raise InputError(output, "the report would overwrite an input file")
    stage(f"reading {segmentation}")
    seg = read_label(segmentation)
    img = None
    if image is not None:
        img = read_volume(image)
        check_same_grid(img, seg)  # names the segmentation, and the image it is not on
    names = read_labels(labels) if labels is not None else None
    probs = None
    if probabilities is not None:
        from medseg.io.probabilities import read_probabilities

        probs = np.moveaxis(read_probabilities(probabilities, seg, check_sums=False), -1, 0)
    stage("measuring")
    report = compute_volumes(seg, img, names, probs)
    write_volume_report(report, output)
    stage(f"wrote {output}")

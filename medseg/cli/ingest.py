"""``medseg ingest SOURCE... --out DIR [--manifest FILE.csv] [--series UID]``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medseg.cli.app import app, handle_errors, stage

__all__ = ["ingest"]


@app.command("ingest")
@handle_errors
def ingest(
    sources: List[Path] = typer.Argument(..., help="Image files (.nii, .nii.gz, .nrrd, .mha), DICOM series folders, "
                                         "folders to search recursively, manifests (.csv) or MSD/nnU-Net dataset.json."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <case_id>.nii.gz, manifest.csv, failures.csv."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest to write (default OUT/manifest.csv)."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID to pick in a folder holding "
                                         "several DICOM series."),
    label: Optional[Path] = typer.Option(None, "--label", help="Label map of the one study of a single SOURCE "
                                         "(checked against the image's grid, written to OUT/labels/)."),
    split: str = typer.Option("test", "--split", help="Split of studies not read from a manifest: train, val or test."),
) -> None:
    """Validate scans and write each as OUT/<case_id>.nii.gz plus a manifest row.

    Re-runs skip unchanged studies (content hash). A bad source is reported (one line here, a row in OUT/failures.csv) and the others go on; the exit code is 1 when any failed.
    """
    from medseg.errors import InputError
    from medseg.ingest import ingest_sources

    if split not in ("train", "val", "test"):
        raise InputError(None, f"--split must be train, val or test, not {split!r}")

    def progress(i: int, n: int, result) -> None:
        what = {"ingested": "ingested", "skipped": "unchanged, skipped", "failed": "FAILED"}[result.status]
        stage(f"[{i}/{n}] {result.study.case_id}: {what} ({result.study.source})")

    stage(f"searching {len(sources)} source(s)")
    report = ingest_sources(sources, out, manifest=manifest, series_uid=series, split=split, label=label,
                            progress=progress)
    for r in report.failed:
        typer.echo(f"medseg: error: {r.error}", err=True)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)

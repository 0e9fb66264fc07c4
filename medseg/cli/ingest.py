"""``medseg ingest SOURCE... --out DIR [--manifest FILE.csv] [--series UID] [--resample-tilt]``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medseg.cli.app import RESAMPLE_TILT, app, handle_errors, stage

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
    resample_tilt: bool = RESAMPLE_TILT,
) -> None:
    """Validate scans and write each as OUT/<case_id>.nii.gz plus a manifest row.

    Re-runs skip unchanged studies (content hash). A bad source is reported (one line here, a row in OUT/failures.csv) and the others go on; the exit code is 3 when any failed.
    """
    import csv

    from medseg.batch.state import FAILURES_FILE
    from medseg.ingest import ingest_sources

    total = {"n": 0, "i": 0}

    def on_plan(run) -> None:
        total["n"] = len(run.todo)

    def on_study(result) -> None:
        total["i"] += 1
        what = "ingested" if result.status == "done" else "FAILED"
        stage(f"[{total['i']}/{total['n']}] {result.study_id}: {what} ({result.source})")

    stage(f"searching {len(sources)} source(s)")
    record = ingest_sources(sources, out, manifest=manifest, series_uid=series, split=split, label=label,
                            resample_tilt=resample_tilt,
                            on_plan=on_plan, on_study=on_study)
    failures_csv = out / FAILURES_FILE
    with open(failures_csv, newline="", encoding="utf-8") as f:
        failures = list(csv.DictReader(f))
    for row in failures:
        typer.echo(f"medseg: error: {row['error']}", err=True)
    ingested = len(record["processed"])
    text = (f"ingested {ingested}, skipped {record['n_studies'] - ingested - len(failures)} (unchanged), "
            f"failed {len(failures)}")
    if record["reports"].get("manifest"):
        text += f"; manifest {record['reports']['manifest']}"
    if failures:
        text += f"; failures in {failures_csv}"
    typer.echo(text)
    from medseg.errors import run_exit_code

    raise typer.Exit(int(run_exit_code(len(failures))))

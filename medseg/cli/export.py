"""``medseg export SEGMENTATION --dicom SERIES_DIR [--labels labels.json] [--seg OUT.dcm] [--rtstruct OUT.dcm]``.

Also the DICOM output options that ``segment`` and ``batch`` share (:data:`SEG_TYPE`, :data:`EMPTY_SEGMENTS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, stage

__all__ = ["export_command", "SEG_TYPE", "EMPTY_SEGMENTS", "dicom_export_options"]

SEG_TYPE = typer.Option("binary", "--seg-type", metavar="binary|labelmap",
                        help="DICOM-SEG encoding: binary (one 1-bit frame per segment and slice; every SEG reader) or "
                             "labelmap (one frame per slice, the Label Map Segmentation IOD; smaller, fewer readers).")
EMPTY_SEGMENTS = typer.Option("drop", "--empty-segments", metavar="drop|keep",
                              help="Labels with no voxel: drop them, or keep them as empty segments/ROIs.")


def dicom_export_options(seg_type: str, empty: str):
    """:class:`~medseg.io.DicomExportOptions` of the command line's values (MedsegError when invalid)."""
    from medseg.errors import MedsegError
    from medseg.io.dicom_export import EMPTY_SEGMENTS as EMPTY, SEG_TYPES, DicomExportOptions

    if seg_type not in SEG_TYPES:
        raise MedsegError(f"--seg-type must be one of {', '.join(SEG_TYPES)}, not {seg_type!r}")
    if empty not in EMPTY:
        raise MedsegError(f"--empty-segments must be one of {', '.join(EMPTY)}, not {empty!r}")
    return DicomExportOptions(seg_type=seg_type, empty=empty)


@app.command("export")
@handle_errors
def export_command(
    segmentation: Path = typer.Argument(..., help="Label map (NIfTI/NRRD/MHA) on the series' grid (any axis order)."),
    dicom: Path = typer.Option(..., "--dicom", help="The DICOM series folder the segmentation was made from."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.json naming every label present "
                                          "(default: label N, generic tissue codes)."),
    seg: Optional[Path] = typer.Option(None, "--seg", help="DICOM-SEG file to write (.dcm)."),
    rtstruct: Optional[Path] = typer.Option(None, "--rtstruct", help="RTSTRUCT file to write (.dcm)."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several."),
    seg_type: str = SEG_TYPE,
    empty_segments: str = EMPTY_SEGMENTS,
) -> None:
    """Write SEGMENTATION as DICOM-SEG and/or RTSTRUCT referring to the series in --dicom."""
    from medseg.errors import MedsegError

    if seg is None and rtstruct is None:
        raise MedsegError("nothing to write: give --seg OUT.dcm and/or --rtstruct OUT.dcm")
    options = dicom_export_options(seg_type, empty_segments)
    from medseg.inference.pipeline import StudyOutput, write_study_outputs
    from medseg.inference.segment import check_output_paths
    from medseg.io import read_label, read_volume
    from medseg.plans import read_labels

    inputs = [segmentation, dicom] + ([labels] if labels is not None else [])
    outputs = check_output_paths(inputs, {"--seg": seg, "--rtstruct": rtstruct})
    names = read_labels(labels) if labels is not None else None
    stage(f"reading {dicom}")
    image = read_volume(dicom, series_uid=series)
    label_map = read_label(segmentation)
    if names is None:
        import numpy as np

        names = {int(v): f"label {int(v)}" for v in np.unique(label_map.array) if v != 0}
    stage("writing " + ", ".join(str(p) for p in outputs.values()))
    written = write_study_outputs(StudyOutput(labels=label_map, image=image, prediction=None, report=None),
                                  dicom_seg=outputs.get("--seg"), rtstruct=outputs.get("--rtstruct"), names=names,
                                  dicom_options=options, labels_file=labels)
    for path in written.values():
        typer.echo(f"wrote {path}")

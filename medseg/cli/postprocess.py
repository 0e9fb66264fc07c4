"""``medseg classical`` (split-and-merge, thresholds, Otsu) and ``medseg components`` (label clean-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, stage
from medseg.errors import InputError, MedsegError

__all__ = ["classical", "components"]


def _parse_numbers(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise MedsegError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise MedsegError(f"{option} takes comma-separated class ids, got {text!r}") from None


def _check_output(out: Path, *inputs: Path) -> None:
    if any(out.resolve() == p.resolve() for p in inputs):
        raise InputError(out, "output would overwrite an input; choose another name")
    name = str(out).lower()
    if not name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
        raise InputError(out, "output must be .nii.gz, .nii, .nrrd or .mha")


@app.command("classical")
@handle_errors
def classical(
    image: Path = typer.Argument(..., help="Image (NIfTI, NRRD/MHA or DICOM folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Label/region map to write, on the image's grid."),
    method: str = typer.Option(..., "--method", help="split-merge, threshold or otsu."),
    homogeneity: Optional[float] = typer.Option(None, "--homogeneity",
                                                help="split-merge: homogeneity limit t in image units (required)."),
    rule: str = typer.Option("range", "--rule", help="split-merge: 'range' (max-min ≤ t) or 'std' (std ≤ t)."),
    min_region_voxels: int = typer.Option(1, "--min-region-voxels", min=1,
                                          help="split-merge: absorb regions smaller than this into their closest neighbour."),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="threshold: increasing values, e.g. '-200,100'."),
    classes: Optional[int] = typer.Option(None, "--classes", min=2, max=255,
                                          help="otsu: number of classes (default 2); split-merge: label regions "
                                               "into this many classes by their mean (default: write region ids)."),
) -> None:
    """Classical segmentation without training: split-and-merge regions, fixed thresholds or Otsu."""
    import numpy as np

    from medseg.io import read_volume, write_volume
    from medseg.postprocess.classical import (otsu_segmentation, regions_to_labels, split_and_merge,
                                              threshold_segmentation)

    method = method.lower()
    if method not in ("split-merge", "threshold", "otsu"):
        raise MedsegError(f"--method must be split-merge, threshold or otsu, not {method!r}")
    _check_output(output, image)
    if method == "split-merge" and homogeneity is None:
        raise MedsegError("--method split-merge needs --homogeneity T (max-min or std limit in image units)")
    if method == "threshold" and not thresholds:
        raise MedsegError("--method threshold needs --thresholds, e.g. --thresholds -200,100")
    vol = read_volume(image)
    stage(f"{method} on {vol.shape}")
    try:
        if method == "split-merge":
            if rule not in ("range", "std"):
                raise MedsegError(f"--rule must be range or std, not {rule!r}")
            regions = split_and_merge(vol.array, homogeneity, rule=rule, min_region_voxels=min_region_voxels)
            if classes:
                out = regions_to_labels(regions, vol.array, classes)
            else:
                top = int(regions.max())
                out = regions.astype(np.uint16 if top < 65536 else np.uint32)
        elif method == "threshold":
            out = threshold_segmentation(vol.array, _parse_numbers(thresholds, "--thresholds"))
        else:
            out, th = otsu_segmentation(vol.array, classes or 2)
            stage("Otsu thresholds: " + ", ".join(f"{t:g}" for t in th))
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(image, str(exc)) from None
    write_volume(vol.with_array(out), output)
    typer.echo(str(output))


@app.command("components")
@handle_errors
def components(
    segmentation: Path = typer.Argument(..., help="Label map (integer classes, 0 background)."),
    output: Path = typer.Option(..., "-o", "--output", help="Cleaned label map to write (same grid and dtype)."),
    largest: bool = typer.Option(False, "--largest", help="Keep only the largest connected component of each class."),
    min_size_mm3: Optional[float] = typer.Option(None, "--min-size-mm3", min=0.0,
                                                 help="Remove components smaller than this volume (mm³)."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill enclosed background holes of each class."),
    classes: Optional[str] = typer.Option(None, "--classes",
                                          help="Limit --largest/--min-size-mm3/--fill-holes to these ids, e.g. '1,2'."),
    connectivity: int = typer.Option(26, "--connectivity", help="6 or 26 (3D neighbourhood)."),
) -> None:
    """Clean a label map: keep the largest component, drop small blobs, fill holes."""
    from medseg.io import read_label, write_volume
    from medseg.postprocess.components import ComponentsConfig, clean_labels

    if connectivity not in (6, 26):
        raise MedsegError(f"--connectivity must be 6 or 26, not {connectivity}")
    _check_output(output, segmentation)
    vol = read_label(segmentation)
    chosen = _parse_ints(classes, "--classes") if classes else None
    cfg = ComponentsConfig(
        largest_component=(chosen if chosen is not None else True) if largest else False,
        min_size_mm3=(None if min_size_mm3 is None else
                      ({c: min_size_mm3 for c in chosen} if chosen is not None else min_size_mm3)),
        fill_holes=(chosen if chosen is not None else True) if fill_holes else False,
        connectivity=connectivity,
    )
    stage(f"cleaning {segmentation}")
    out = clean_labels(vol.array, vol.spacing, cfg)
    write_volume(vol.with_array(out.astype(vol.array.dtype, copy=False)), output)
    typer.echo(str(output))

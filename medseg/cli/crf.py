"""``medseg crf IMAGE PROBABILITIES -o OUTPUT``: refine a probability map with the dense 3D CRF."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, handle_errors, stage

__all__ = ["crf", "guess_modality"]


def guess_modality(array) -> str:
    """``"CT"`` when the image looks like Hounsfield units (whole numbers reaching −500 or below), else ``"MR"``."""
    import numpy as np

    sample = np.asarray(array).ravel()[:: max(1, np.asarray(array).size // 200_000)]
    if sample.size and float(sample.min()) <= -500 and np.all(np.mod(sample, 1) == 0):
        return "CT"
    return "MR"


@app.command("crf")
@handle_errors
def crf(
    image: Path = typer.Argument(..., help="Image (NIfTI, NRRD/MHA or a DICOM folder) the probabilities belong to."),
    probabilities: Path = typer.Argument(..., help="4D NIfTI (X, Y, Z, C) softmax probabilities on the image's grid."),
    output: Path = typer.Option(..., "-o", "--output", help="Label map to write (NIfTI), on the image's grid."),
    modality: str = typer.Option("auto", "--modality", help="ct, mr or auto (HU-like integers → ct). Picks the defaults."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=0, max=100, help="Mean-field iterations (default 5)."),
    probabilities_out: Optional[Path] = typer.Option(None, "--probabilities-out",
                                                     help="Also write the refined 4D probabilities (float32)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Refine network probabilities with a fully connected 3D CRF; write the label map (argmax)."""
    import numpy as np

    from medseg.errors import InputError, MedsegError
    from medseg.io import read_volume, write_nifti_array, write_volume
    from medseg.postprocess.crf import CRFConfig, dense_crf
    from medseg.runtime import resolve_runtime

    modality = modality.lower()
    if modality not in ("ct", "mr", "auto"):
        raise MedsegError(f"--modality must be ct, mr or auto, not {modality!r}")
    runtime = resolve_runtime(device, threads=None)  # a misspelt or absent device fails before any reading
    for out in [output] + ([probabilities_out] if probabilities_out else []):
        if out.resolve() in (image.resolve(), probabilities.resolve()):
            raise InputError(out, "output would overwrite an input; choose another name")
        if not str(out).lower().endswith((".nii", ".nii.gz")):
            raise InputError(out, "output must be a NIfTI file (.nii.gz or .nii)")
    stage(f"reading {image}")
    vol = read_volume(image)
    from medseg.io.probabilities import read_probabilities

    probs = read_probabilities(probabilities, vol)
    mod = guess_modality(vol.array) if modality == "auto" else modality.upper()
    overrides = {} if iterations is None else {"iterations": iterations}
    cfg = CRFConfig.for_modality(mod, **overrides)
    stage(f"dense CRF ({mod}, {cfg.iterations} iterations, {probs.shape[3]} classes, {vol.shape})")
    with runtime.activate():  # medseg.runtime.default_threads: 2 CPU threads, 1 on a busy machine
        refined = dense_crf(vol.array, np.moveaxis(probs, -1, 0), vol.spacing, cfg, device=runtime.device)
    from medseg.inference.resample import class_argmax

    labels = class_argmax(refined)
    stage(f"writing {output}")
    header = vol.meta.get("nifti_header")
    write_volume(vol.with_array(labels), output)
    if probabilities_out:
        write_nifti_array(np.moveaxis(refined, 0, -1), vol.affine, probabilities_out, header=header)
    typer.echo(str(output))

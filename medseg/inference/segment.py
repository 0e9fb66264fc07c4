"""One study from files to files: what ``medseg segment`` calls (the study pipeline of
:mod:`medseg.inference.pipeline`, with the inputs read and the outputs written)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import InputError
from medseg.inference.pipeline import StudyOptions, StudyOutput, run_study, write_study_outputs
from medseg.inference.predictor import Predictor
from medseg.io import is_image_path, read_channels
from medseg.io.nifti import is_nifti_path

__all__ = ["segment_file", "check_output_paths"]

ProgressFn = Callable[[str], None]


def _check_writable(path: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be written (a read-only file
    system, a file where a folder should be, no permission)."""
    import errno
    import os

    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(path, f"cannot write: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(folder) else "permission denied"
        raise OSError(errno.EROFS if reason.startswith("read-only") else errno.EACCES, reason, str(path))


def _read_only(folder: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_paths(inputs: str | Path | Sequence[str | Path], outputs: dict[str, str | Path | None]) -> dict[str, Path]:
    """Refuse outputs that would overwrite an input, that collide, that have a wrong suffix, or
    whose folder cannot be written (checked before any work).

    ``inputs``: the input path(s); ``outputs`` maps an option name (``"-o"``,
    ``"--probabilities"``…) to a path or None.
    """
    ins = [Path(p).resolve() for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    seen: dict[Path, str] = {}
    out: dict[str, Path] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        p = Path(path)
        rp = p.resolve()
        for inp in ins:
            if rp == inp or inp in rp.parents:
                raise InputError(p, f"{flag} would overwrite the input {inp}")
        if rp in seen:
            raise InputError(p, f"{flag} and {seen[rp]} name the same file")
        if p.is_dir():
            raise InputError(p, f"{flag} is a folder, expected a file name")
        _check_writable(p)
        seen[rp] = flag
        out[flag] = p
    seg = out.get("-o")
    if seg is not None and not is_image_path(seg):
        raise InputError(seg, "output must be a .nii.gz, .nii, .nrrd or .mha file")
    probs = out.get("--probabilities")
    if probs is not None and not is_nifti_path(probs):
        raise InputError(probs, "the probabilities output must be a 4D NIfTI (.nii.gz or .nii)")
    vol = out.get("--volumes")
    if vol is not None and vol.suffix.lower() not in (".json", ".csv", ".html"):
        raise InputError(vol, "the volume report must be .json, .csv or .html")
    for flag in ("--dicom-seg", "--seg", "--rtstruct"):
        if out.get(flag) is not None and out[flag].suffix.lower() != ".dcm":
            raise InputError(out[flag], f"the {flag} output must be a DICOM file (.dcm)")
    png = out.get("--preview")
    if png is not None and png.suffix.lower() != ".png":
        raise InputError(png, "the preview must be a .png file")
    return out


def segment_file(inputs: str | Path | Sequence[str | Path], predictor_or_model_dir: Predictor | str | Path,
                 output_path: str | Path, *, options: StudyOptions | None = None,
                 volumes_path: str | Path | None = None, probabilities_path: str | Path | None = None,
                 series_uid: str | None = None, resample_tilt: bool = False,
                 progress: ProgressFn | None = None,
                 dicom_seg_path: str | Path | None = None, rtstruct_path: str | Path | None = None,
                 preview_path: str | Path | None = None, dicom_options=None) -> StudyOutput:
    """Segment one study and write the label map on the study's own grid.

    Args:
        inputs: NIfTI/NRRD/MHA file or DICOM series folder; or one per channel (same grid), in
            the model's channel order.
        predictor_or_model_dir: a loaded predictor of any model kind (several studies: load once;
            see :mod:`medseg.inference.kinds`) or a model folder.
        output_path: the label map (uint8; NIfTI keeps the input's header codes).
        options: CRF, components and TTA (:class:`StudyOptions`; default: none of them, and the
            model folder's own post-processing, :meth:`StudyOptions.for_model`).
        volumes_path: also write a volume report (``.json``, ``.csv`` or ``.html``) there.
        probabilities_path: also write the softmax probabilities, 4D NIfTI ``(X, Y, Z, C)`` on
            the input grid (after the CRF when it ran).
        series_uid: which DICOM series when a folder holds several.
        resample_tilt: resample a gantry-tilted DICOM stack onto a regular grid (the output is
            on that grid) instead of refusing it.
        progress: called with a short message at each stage.
        dicom_seg_path, rtstruct_path: also write a DICOM-SEG / RTSTRUCT referring to the input
            DICOM series (segments named by the model's labels; refused before the model runs
            when the input is no DICOM series).
        preview_path: also write the QC preview PNG (:mod:`medseg.report.preview`).
        dicom_options: :class:`~medseg.io.DicomExportOptions` (SEG encoding, empty segments).

    Returns:
        The :class:`StudyOutput` (labels on the input grid, timings per stage including
        ``read`` and ``write``).

    Every output is written to a temporary name and renamed only once all of them are complete:
    on any error, none appears.
    """
    say = progress or (lambda message: None)
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    outputs = check_output_paths(paths, {"-o": output_path, "--probabilities": probabilities_path,
                                         "--volumes": volumes_path, "--dicom-seg": dicom_seg_path,
                                         "--rtstruct": rtstruct_path, "--preview": preview_path})
    t0 = time.perf_counter()
    say(f"reading {', '.join(map(str, paths))}")
    images = read_channels(paths, series_uid=series_uid, resample_tilt=resample_tilt)
    if dicom_seg_path is not None or rtstruct_path is not None:
        from medseg.io.dicom_export import series_reference

        series_reference(images[0])  # refuse a non-DICOM input before the model runs
    t_read = time.perf_counter() - t0
    if isinstance(predictor_or_model_dir, (str, Path)):
        say(f"loading model {predictor_or_model_dir}")
        predictor = Predictor.from_model_dir(predictor_or_model_dir)
    else:
        predictor = predictor_or_model_dir
    if options is None:
        options = StudyOptions.for_model(predictor.info)
    image = images[0]
    steps = {"crf": "refining with the dense CRF", "components": "cleaning connected components",
             "volumes": "measuring volumes",
             "segment": f"segmenting {'x'.join(map(str, image.shape))} voxels ({image.orientation}, "
                        f"{'x'.join(f'{s:.3g}' for s in image.spacing)} mm) on {predictor.device}"
                        + (" with mirror TTA" if options.tta else "")}
    output = run_study(images, predictor, options, volumes=volumes_path is not None,
                       keep_probabilities=probabilities_path is not None, labels_path=output_path,
                       stage=lambda name: say(steps[name]))
    output.timings["read"] = t_read
    say(f"writing {output_path}")
    t1 = time.perf_counter()
    write_study_outputs(output, segmentation=outputs["-o"], volumes=outputs.get("--volumes"),
                        probabilities=outputs.get("--probabilities"), dicom_seg=outputs.get("--dicom-seg"),
                        rtstruct=outputs.get("--rtstruct"), preview=outputs.get("--preview"),
                        names=predictor.label_names, dicom_options=dicom_options)
    output.timings["write"] = time.perf_counter() - t1
    return output

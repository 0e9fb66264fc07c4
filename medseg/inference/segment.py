"""One study from file to files: what ``medseg segment`` and the batch flows call."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.errors import InputError, MedsegError
from medseg.inference.predictor import Prediction, Predictor
from medseg.io import atomic_path, is_image_path, read_volume, write_nifti_array, write_volume
from medseg.io.nifti import is_nifti_path

__all__ = ["segment_file", "check_output_paths"]

ProgressFn = Callable[[str], None]


def _feature(module: str, flag: str):
    """Import an optional medseg module (built by another part of the project) or fail clearly."""
    if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None or importlib.util.find_spec(module) is None:
        raise MedsegError(f"{flag} needs {module}, which this medseg installation does not have yet")
    return importlib.import_module(module)


def check_output_paths(input_path: str | Path, outputs: dict[str, str | Path | None]) -> dict[str, Path]:
    """Refuse outputs that would overwrite the input, that collide, or that have a wrong suffix.

    ``outputs`` maps an option name (``"-o"``, ``"--probabilities"``…) to a path or None.
    """
    inp = Path(input_path).resolve()
    seen: dict[Path, str] = {}
    out: dict[str, Path] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        p = Path(path)
        rp = p.resolve()
        if rp == inp or inp in rp.parents:
            raise InputError(p, f"{flag} would overwrite the input {input_path}")
        if rp in seen:
            raise InputError(p, f"{flag} and {seen[rp]} name the same file")
        if p.is_dir():
            raise InputError(p, f"{flag} is a folder, expected a file name")
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
    return out


def _modality(predictor: Predictor) -> str:
    kinds = {c.kind for c in predictor.plans.preprocess.intensity}
    return "CT" if kinds == {"ct"} else "MR"


def segment_file(input_path: str | Path, predictor_or_model_dir: Predictor | str | Path, output_path: str | Path, *,
                 crf: bool = False, tta: bool = False, volumes_path: str | Path | None = None,
                 probabilities_path: str | Path | None = None, series_uid: str | None = None,
                 progress: ProgressFn | None = None) -> Prediction:
    """Segment one study file (or DICOM folder) and write the label map on the study's own grid.

    Args:
        input_path: NIfTI/NRRD/MHA file or a folder holding one DICOM series.
        predictor_or_model_dir: a loaded :class:`Predictor` (batch: load once) or a model directory.
        output_path: the label map (uint8; NIfTI keeps the input's header codes).
        crf: refine the probabilities with :func:`medseg.postprocess.crf.dense_crf` (in mm).
        tta: mirror test-time augmentation for this study (in addition to the predictor's setting).
        volumes_path: also write a volume report (``medseg.measure.volumes``) there.
        probabilities_path: also write the softmax probabilities, 4D NIfTI ``(X, Y, Z, C)`` on
            the input grid (after the CRF when ``crf``).
        series_uid: which DICOM series when the folder holds several.
        progress: called with a short message at each stage.

    Returns:
        The :class:`Prediction` (labels on the input grid, timings per stage including ``read``
        and ``write``).

    Every output is written to a temporary name and renamed only once all of them are complete:
    on any error, none appears.
    """
    say = progress or (lambda message: None)
    outputs = check_output_paths(input_path, {"-o": output_path, "--probabilities": probabilities_path,
                                              "--volumes": volumes_path})
    crf_mod = _feature("medseg.postprocess.crf", "--crf") if crf else None
    volumes_mod = _feature("medseg.measure.volumes", "--volumes") if volumes_path is not None else None

    t0 = time.perf_counter()
    say(f"reading {input_path}")
    image = read_volume(input_path, series_uid=series_uid)
    t_read = time.perf_counter() - t0
    if isinstance(predictor_or_model_dir, Predictor):
        predictor = predictor_or_model_dir
    else:
        say(f"loading model {predictor_or_model_dir}")
        predictor = Predictor.from_model_dir(predictor_or_model_dir)
    say(f"segmenting {'x'.join(map(str, image.shape))} voxels ({image.orientation}, "
        f"{'x'.join(f'{s:.3g}' for s in image.spacing)} mm) on {predictor.device}"
        + (" with mirror TTA" if tta or predictor.tta else ""))
    prediction = predictor.predict(image, tta=(tta or predictor.tta),
                                   keep_probabilities=bool(crf or probabilities_path is not None))
    prediction.timings["read"] = t_read
    prediction.labels.source = str(output_path)
    if crf_mod is not None:
        say("refining with the dense CRF")
        t1 = time.perf_counter()
        probs = np.moveaxis(prediction.probabilities(np.float32), -1, 0)
        cfg = crf_mod.CRFConfig.for_modality(_modality(predictor))
        refined = crf_mod.dense_crf(np.asarray(image.array, dtype=np.float32), probs, image.spacing, cfg=cfg)
        del probs
        timings = prediction.timings
        prediction = prediction.with_probabilities(np.asarray(refined))
        prediction.timings.update(timings, crf=time.perf_counter() - t1)
    report = None
    if volumes_mod is not None:
        say("measuring volumes")
        report = volumes_mod.compute_volumes(prediction.labels, image, prediction.label_names)

    say(f"writing {output_path}")
    t2 = time.perf_counter()
    with contextlib.ExitStack() as stack:  # all temporaries renamed together at the end, or none
        probs_path = outputs.get("--probabilities")
        if probs_path is not None:
            probs = prediction.probabilities(np.float16)
            tmp = stack.enter_context(atomic_path(probs_path))
            write_nifti_array(probs, image.affine, tmp, header=image.meta.get("nifti_header"))
            del probs
        if report is not None:
            tmp = stack.enter_context(atomic_path(outputs["--volumes"]))
            volumes_mod.write_volume_report(report, tmp)
        tmp = stack.enter_context(atomic_path(outputs["-o"]))
        write_volume(prediction.labels, tmp)
    prediction.timings["write"] = time.perf_counter() - t2
    return prediction

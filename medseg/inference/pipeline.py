"""The study pipeline: predict → CRF → components → volumes, the same for every entry point.

``medseg segment`` (:func:`medseg.inference.segment_file`), ``medseg batch`` and its Prefect flow
(:mod:`medseg.batch.segment`) and ``medseg demo`` all run :func:`run_study` with a
:class:`StudyOptions`, so a study gives the same labels voxel for voxel whichever way it is run.

>>> options = StudyOptions.for_model(predictor.info, crf=True, tta=True)   # doctest: +SKIP
>>> output = run_study(read_channels(["flair.nii.gz", "t1c.nii.gz"]), predictor, options)
>>> write_study_outputs(output, segmentation="seg.nii.gz", volumes="volumes.json")
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from medseg.errors import MedsegError, validation_message
from medseg.io.volume import Volume
from medseg.postprocess.components import ComponentsConfig
from medseg.postprocess.crf import CRFConfig

__all__ = ["DEFAULT_COMPONENTS", "StudyOptions", "StudyOutput", "run_study", "write_study_outputs", "cached_predictor",
           "predictor_loads", "model_modality"]

StageFn = Callable[[str], None]

# ``--components`` without a config: drop blobs under 0.1 mL and fill enclosed holes, every class.
DEFAULT_COMPONENTS: dict[str, Any] = {"min_size_mm3": 100.0, "fill_holes": True}


def model_modality(plans) -> str:
    """``"CT"`` when every input channel of the model is normalised as CT (HU), else ``"MR"``:
    the defaults of the CRF's intensity kernel."""
    kinds = {c.kind for c in plans.preprocess.intensity}
    return "CT" if kinds == {"ct"} else "MR"


class StudyOptions(BaseModel):
    """What is done to a study after the network: validated once, when a run starts.

    Attributes:
        crf: the dense CRF's parameters (the model modality's defaults with any overrides), or
            ``None`` for no CRF.
        components: connected-component clean-up, or ``None`` for none.
        tta: mirror test-time augmentation (every flip combination, probabilities averaged).
    """

    model_config = ConfigDict(extra="forbid")

    crf: CRFConfig | None = None
    components: ComponentsConfig | None = None
    tta: bool = False

    @classmethod
    def for_model(cls, info, *, crf: bool = False, crf_config: dict[str, Any] | None = None,
                  components: dict[str, Any] | ComponentsConfig | None = None, tta: bool = False) -> "StudyOptions":
        """Options for a model (its :class:`~medseg.inference.kinds.ModelInfo`, e.g.
        ``predictor.info``): ``crf`` takes the defaults of the model's modality (``info.modality``:
        CT 12 HU, MR estimated from the image) with ``crf_config`` overrides; ``components``
        also keeps only the largest component of the classes the model folder's
        cross-validation chose (``info.largest_component``, a fold folder's ``postprocessing.json``).

        Raises:
            MedsegError: a ``crf_config`` or ``components`` setting that is not valid.
        """
        try:
            crf_cfg = CRFConfig.for_modality(info.modality, **(crf_config or {})) if crf else None
            comp = (components if isinstance(components, ComponentsConfig) or components is None
                    else ComponentsConfig.model_validate(components))
            if info.largest_component:
                comp = comp or ComponentsConfig()
                if comp.largest_component is not True:
                    chosen = sorted(set(comp.largest_component or ()) | set(info.largest_component))
                    comp = ComponentsConfig.model_validate({**comp.model_dump(), "largest_component": chosen})
        except (ValueError, TypeError) as exc:
            raise MedsegError(f"invalid CRF or components option: {validation_message(exc)}") from None
        return cls(crf=crf_cfg, components=comp, tta=tta)


@dataclass
class StudyOutput:
    """One study through the pipeline.

    Attributes:
        labels: class ids (uint8; uint16 beyond 255 classes) on the input's exact grid.
        image: the first channel (its grid is the labels' grid).
        prediction: the network's :class:`~medseg.inference.Prediction`; after the CRF its
            probabilities are the refined ones.
        report: the volume report (:func:`medseg.measure.volumes.compute_volumes`), or ``None``.
        timings: seconds per stage.
    """

    labels: Volume
    image: Volume
    prediction: Any
    report: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)


def _crf_image(images: Sequence[Volume], cfg: CRFConfig) -> np.ndarray:
    """The appearance kernel's intensities, float32: the first channel ``(X, Y, Z)``, or
    ``(Ci, X, Y, Z)`` when the config gives an intensity σ for each of several channels (every
    intensity channel multiplies the bilateral grid's size)."""
    n = len(cfg.intensity_sigma) if cfg.intensity_sigma is not None else 1
    chans = [np.asarray(v.array, dtype=np.float32) for v in images[:n]]
    return chans[0] if len(chans) == 1 else np.stack(chans)


def run_study(images: Volume | Sequence[Volume], predictor, options: StudyOptions, *, volumes: bool = True,
              keep_probabilities: bool = False, labels_path: str | Path | None = None,
              stage: StageFn | None = None) -> StudyOutput:
    """Segment one study and measure it: predict → (CRF) → (components) → (volumes).

    Args:
        images: the study, one :class:`Volume` per model channel (same grid), in the model's
            channel order.
        predictor: a loaded :class:`medseg.inference.Predictor`.
        options: :class:`StudyOptions`.
        volumes: also compute the volume report (first channel's intensities).
        keep_probabilities: keep the probabilities so that ``output.prediction.probabilities()``
            can be asked for (they are kept anyway for the CRF).
        labels_path: where the labels will be written (the volume report's ``segmentation``).
        stage: called with ``"segment"``, ``"crf"``, ``"components"``, ``"volumes"`` as each starts.

    Returns:
        :class:`StudyOutput`.
    """
    say = stage or (lambda name: None)
    vols = [images] if isinstance(images, Volume) else list(images)
    say("segment")
    prediction = predictor.predict(vols, tta=options.tta,
                                   keep_probabilities=bool(keep_probabilities or options.crf is not None))
    timings = dict(prediction.timings)
    if options.crf is not None:
        from medseg.postprocess.crf import dense_crf

        say("crf")
        t0 = time.perf_counter()
        probs = np.moveaxis(prediction.probabilities(np.float32), -1, 0)  # (K, X, Y, Z)
        with predictor.runtime.activate():
            refined = dense_crf(_crf_image(vols, options.crf), probs, vols[0].spacing, options.crf,
                                device=str(predictor.runtime.device))
        del probs
        prediction = prediction.with_probabilities(np.asarray(refined))
        timings["crf"] = time.perf_counter() - t0
    labels = prediction.labels
    labels.source = None if labels_path is None else str(labels_path)
    if options.components is not None:
        from medseg.postprocess.components import clean_labels

        say("components")
        t0 = time.perf_counter()
        cleaned = np.asarray(clean_labels(labels.array, vols[0].spacing, options.components))
        labels = labels.with_array(cleaned.astype(labels.array.dtype, copy=False))
        timings["components"] = time.perf_counter() - t0
    report = None
    if volumes:
        from medseg.measure.volumes import compute_volumes

        say("volumes")
        t0 = time.perf_counter()
        report = compute_volumes(labels, vols[0], predictor.label_names)
        timings["volumes"] = time.perf_counter() - t0
    return StudyOutput(labels=labels, image=vols[0], prediction=prediction, report=report, timings=timings)


def write_study_outputs(output: StudyOutput, *, segmentation: str | Path | None = None,
                        volumes: str | Path | None = None, probabilities: str | Path | None = None,
                        dicom_seg: str | Path | None = None, rtstruct: str | Path | None = None,
                        preview: str | Path | None = None, names: Mapping[int, str] | None = None,
                        dicom_options=None, labels_file: str | Path | None = None,
                        lesions_voxel: Sequence[Sequence[float]] = ()) -> dict[str, Path]:
    """Write a study's outputs, all or none: everything is computed first, each file goes to a
    temporary name, and they are renamed into place together once every one is complete.

    Args:
        segmentation: the label map (NIfTI keeps the input's header codes; or .nrrd/.mha).
        volumes: the volume report (``.json``, ``.csv`` or ``.html``).
        probabilities: 4D NIfTI ``(X, Y, Z, C)`` float16 probabilities on the input grid (after
            the CRF when it ran); the study must have been run with ``keep_probabilities``.
        dicom_seg, rtstruct: DICOM-SEG and RTSTRUCT referring to the DICOM series ``output.image``
            was read from (:mod:`medseg.io.dicom_export`), segments named by ``names``.
        preview: the QC preview PNG (:mod:`medseg.report.preview`), with an axial plane through
            each of ``lesions_voxel`` (voxel positions).
        names: label id → structure name (DICOM segments, preview colours).
        dicom_options: :class:`~medseg.io.DicomExportOptions` (SEG encoding, empty segments).
        labels_file: the file ``names`` came from (named when a label has no name).

    Returns:
        what was written, by name (``segmentation``, ``volumes``, ``probabilities``,
        ``dicom_seg``, ``rtstruct``, ``preview``).

    Raises:
        InputError: DICOM output for an image that is no DICOM series, labels not on its grid or
            without a name (nothing is written).
    """
    from medseg.io import atomic_path, write_nifti_array, write_volume

    names = dict(names or {})
    datasets: dict[str, tuple[Path, Any]] = {}
    if dicom_seg is not None or rtstruct is not None:
        from medseg.io.dicom_export import DicomExportOptions, dicom_seg_dataset, rtstruct_dataset, series_reference

        opts = dicom_options or DicomExportOptions()
        ref = series_reference(output.image)
        if dicom_seg is not None:
            datasets["dicom_seg"] = (Path(dicom_seg), dicom_seg_dataset(
                output.labels, ref, names, seg_type=opts.seg_type, empty=opts.empty, labels_file=labels_file))
        if rtstruct is not None:
            datasets["rtstruct"] = (Path(rtstruct), rtstruct_dataset(output.labels, ref, names, empty=opts.empty,
                                                                     labels_file=labels_file))
    png = None
    if preview is not None:
        from medseg.report.preview import preview_png

        png = preview_png(output.image, output.labels, names, lesions_voxel)
    written: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:
        if probabilities is not None:
            probs = output.prediction.probabilities(np.float16)
            tmp = stack.enter_context(atomic_path(probabilities))
            write_nifti_array(probs, output.image.affine, tmp, header=output.image.meta.get("nifti_header"))
            del probs
            written["probabilities"] = Path(probabilities)
        if volumes is not None:
            if output.report is None:
                raise ValueError("the study was run without volumes=True: there is no volume report to write")
            from medseg.report import write_volume_report

            tmp = stack.enter_context(atomic_path(volumes))
            write_volume_report(output.report, tmp)
            written["volumes"] = Path(volumes)
        for key, (path, dataset) in datasets.items():
            tmp = stack.enter_context(atomic_path(path))
            dataset.save_as(tmp, enforce_file_format=True)
            written[key] = path
        if png is not None:
            tmp = stack.enter_context(atomic_path(preview))
            tmp.write_bytes(png)
            written["preview"] = Path(preview)
        if segmentation is not None:
            tmp = stack.enter_context(atomic_path(segmentation))
            write_volume(output.labels, tmp)
            written["segmentation"] = Path(segmentation)
    return written


# ------------------------------------------------------------------ one model per process

_PREDICTORS: dict[tuple, Any] = {}
_PREDICTOR_LOCK = threading.Lock()
_LOADS = {"count": 0}


def cached_predictor(model_dir: str | Path, *, device: str = "auto", autocast: str = "none", options=None):
    """The predictor of the model folder ``model_dir`` (any kind of :mod:`medseg.inference.kinds`)
    in this process, loaded on first use.

    Keyed by (resolved folder, the modification times of the files that define the model
    (:func:`~medseg.inference.kinds.model_files`), device, autocast, ``options``): every study
    that runs in this process (a batch worker) reuses it; new weights in the same folder are
    loaded again. One model is kept per process.

    Args:
        options: :class:`~medseg.inference.kinds.ModelOptions` (folds, checkpoint, task, step size,
            backend, precision, calibration studies).

    Raises:
        InputError: not a loadable model folder.
    """
    from medseg.inference.kinds import ModelOptions, load_predictor, model_files

    options = options or ModelOptions()
    folder = Path(model_dir).resolve()
    stamps = []
    for path in model_files(folder, options):
        try:
            stamps.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(path), 0))
    key = (str(folder), tuple(stamps), device, autocast, options)
    with _PREDICTOR_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            predictor = load_predictor(folder, options=options, device=device, autocast=autocast)
            _PREDICTORS.clear()
            _PREDICTORS[key] = predictor
            _LOADS["count"] += 1
    return predictor


def predictor_loads() -> int:
    """How many models :func:`cached_predictor` has loaded in this process."""
    return _LOADS["count"]

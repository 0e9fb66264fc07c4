"""``medseg batch``: segment every new or changed study of an archive, measure it, report.

The job (:class:`SegmentJob`) for the orchestrator of :mod:`medseg.batch.engine`; each study runs
the study pipeline of :mod:`medseg.inference.pipeline` (the one ``medseg segment`` runs).

Outputs under ``OUT``::

    OUT/studies/<study>/segmentation.nii.gz   labels on the study's exact grid
    OUT/studies/<study>/volumes.json          the volume report (DESIGN.md format)
    OUT/studies/<study>/preview.png           QC preview: label outlines on three planes (and each missed lesion)
    OUT/studies/<study>/seg.dcm, rtstruct.dcm with --dicom-seg / --rtstruct, for studies read from DICOM
    OUT/volumes.csv, OUT/volumes.html         every finished study × structure
    OUT/evaluation/                           Dice/HD95/NSD and lesion-wise recall, when references exist
    OUT/state/, OUT/failures.csv, OUT/runs/   see :mod:`medseg.batch.state`

Without Prefect::

    from medseg.batch import BatchOptions, run_batch
    record = run_batch("archive/", "model/", "out/", BatchOptions(crf=True, tta=True))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from medseg.batch.engine import Runner, StageTracker, StudyResult, run_job
from medseg.batch.studies import Study, discover_studies
from medseg.errors import InputError
from medseg.io.files import update_hash

__all__ = ["BatchOptions", "SegmentJob", "run_batch", "STUDIES_DIR", "EVALUATION_DIR",
           "SEGMENTATION_FILE", "VOLUMES_FILE", "PREVIEW_FILE", "DICOM_SEG_FILE", "RTSTRUCT_FILE"]

STUDIES_DIR = "studies"
EVALUATION_DIR = "evaluation"
SEGMENTATION_FILE = "segmentation.nii.gz"
VOLUMES_FILE = "volumes.json"
PREVIEW_FILE = "preview.png"
DICOM_SEG_FILE = "seg.dcm"
RTSTRUCT_FILE = "rtstruct.dcm"


class BatchOptions(BaseModel):
    """What is done to each study besides the network (changing it redoes the studies).

    Attributes:
        crf: refine the network's probabilities with the dense 3D CRF before taking labels, with
            the defaults of the model's modality (CT: 12 HU intensity kernel; MR: from the image).
        crf_config: ``CRFConfig`` fields that override those defaults.
        components: connected-component clean-up (``ComponentsConfig`` fields), or ``None``; the
            model folder's own post-processing (``postprocessing.json``) applies either way.
        tta: mirror test-time augmentation.
        folds, checkpoint, task, step_size: how to run the model folder
            (:class:`~medseg.inference.kinds.ModelOptions`: the folds of an nnU-Net or medseg fold
            folder, the nnU-Net checkpoint, the TotalSegmentator task, the window step).
        backend, precision, calibration: what runs the network (``auto``, ``torch``,
            ``openvino``, ``onnxruntime``), at which precision (``f32``, ``bf16``, ``int8``), and
            for int8 the calibration studies (each a list of channel paths).
        resample_tilt: read gantry-tilted DICOM stacks resampled onto a regular grid
            (:func:`medseg.io.read_dicom_series`) instead of failing them.
        dicom_seg, rtstruct: also write ``seg.dcm`` / ``rtstruct.dcm`` for each study read from a
            DICOM series; ``seg_type`` and ``empty_segments`` as :class:`~medseg.io.DicomExportOptions`.
        lesion_labels: the lesion classes of the evaluation (label names or ids; ``None``: from
            the names, :func:`medseg.measure.lesions.default_lesion_labels`). The evaluation is
            redone at the end of every run, so changing it redoes no study.
    """

    model_config = ConfigDict(extra="forbid")

    crf: bool = False
    crf_config: dict[str, Any] | None = Field(
        None, description="CRFConfig fields overriding the modality's defaults (e.g. {'intensity_sigma': None} "
                          "to take the intensity kernel from the image's noise)")
    components: dict[str, Any] | None = Field(
        None, description="connected-component clean-up: the fields of medseg.postprocess.components."
                          "ComponentsConfig (e.g. {'min_size_mm3': 100, 'largest_component': [1, 2]}); None: off")
    tta: bool = False
    folds: list[int] | None = None
    checkpoint: str = "final"
    task: str | None = None
    step_size: float | None = None
    backend: str = "auto"
    precision: str = "f32"
    calibration: list[list[str]] | None = None
    resample_tilt: bool = False
    dicom_seg: bool = False
    rtstruct: bool = False
    seg_type: Literal["binary", "labelmap"] = "binary"
    empty_segments: Literal["drop", "keep"] = "drop"
    lesion_labels: list[str] | None = None

    def dicom_key(self) -> dict[str, Any]:
        """The DICOM outputs asked for (part of a run's configuration key; empty without them,
        so the keys of earlier output folders stay the same)."""
        if not (self.dicom_seg or self.rtstruct):
            return {}
        return {"dicom_seg": self.dicom_seg, "rtstruct": self.rtstruct, "seg_type": self.seg_type,
                "empty_segments": self.empty_segments}

    def model_options(self):
        """The :class:`~medseg.inference.kinds.ModelOptions` these options name.

        Raises:
            MedsegError: an invalid fold list, checkpoint, step size, backend or precision.
        """
        from medseg.errors import MedsegError
        from medseg.inference.kinds import ModelOptions

        try:
            return ModelOptions(folds=None if self.folds is None else tuple(self.folds), checkpoint=self.checkpoint,
                                task=self.task, step_size=self.step_size, backend=self.backend,
                                precision=self.precision,
                                calibration=tuple(tuple(s) for s in self.calibration or ()))
        except ValueError as exc:
            raise MedsegError(f"invalid model option: {exc}") from None

    def model_key(self) -> dict[str, Any]:
        """The model options that differ from the defaults (part of a run's configuration key;
        empty for a plain run, so the keys of earlier output folders stay the same). A backend or
        precision named explicitly is part of it (labels may differ in a few voxels between
        backends); int8's calibration studies count by their content hash."""
        defaults = {"folds": None, "checkpoint": "final", "task": None, "step_size": None, "backend": "auto",
                    "precision": "f32"}
        key = {k: getattr(self, k) for k, v in defaults.items() if getattr(self, k) != v}
        if self.calibration:
            from medseg.inference.backends import calibration_key

            key["calibration"] = calibration_key(self.calibration)
        return key


@dataclass
class SegmentJob:
    """Segment each study of ``archive`` with the model in ``model_dir`` (see the module docstring).

    Plain data: it travels to Dask workers, where the model is loaded once per process.
    """

    archive: str
    model_dir: str
    options: BatchOptions = field(default_factory=BatchOptions)
    device: str = "auto"
    name: str = "segment"
    _resolved: Any = field(default=None, repr=False, compare=False)
    _model_info: Any = field(default=None, repr=False, compare=False)

    @property
    def sources(self) -> list[str]:
        return [self.archive]

    # ---- run level ----------------------------------------------------------------------

    def discover(self, out_dir: Path) -> list[Study]:
        return discover_studies([self.archive], exclude=(out_dir,), on_error="raise")

    def _info(self):
        """The model's :class:`~medseg.inference.kinds.ModelInfo` (read once)."""
        from medseg.inference.kinds import describe_model

        if self._model_info is None:
            self._model_info = describe_model(self.model_dir, self.options.model_options())
        return self._model_info

    def study_options(self):
        """The validated :class:`~medseg.inference.pipeline.StudyOptions` for this model.

        Raises:
            MedsegError: an option that is not valid (checked when the run starts).
        """
        from medseg.inference.pipeline import StudyOptions

        if self._resolved is None:
            o = self.options
            info = self._info()
            if o.crf and info.details.get("probabilities") is False:
                raise InputError(self.model_dir, f"a {info.kind} model{' task' if info.kind == 'totalsegmentator' else ''} "
                                 "gives no class probabilities: --crf does not apply")
            self._resolved = StudyOptions.for_model(info, crf=o.crf, crf_config=o.crf_config,
                                                    components=o.components, tta=o.tta)
        return self._resolved

    def config_key(self, out_dir: Path) -> str:
        """Hash of the files that define the model (:func:`~medseg.inference.kinds.model_files`:
        a medseg model's plans and weights, an nnU-Net folder's plans, dataset and checkpoints…)
        and of the options (with the model's modality, which decides the CRF's defaults). The
        files are read only when their size, mtime or inode changed since the last run
        (:func:`medseg.batch.state.cached_by_stat`)."""
        from medseg.batch.state import cached_by_stat
        from medseg.inference.kinds import model_files

        files = model_files(self.model_dir, self.options.model_options())
        o = self.options
        # the JSON that keys the states of existing output folders (its last field has one value)
        fields = {"crf": o.crf, "crf_config": o.crf_config, "components": o.components, "tta": o.tta,
                  "modality": self._info().modality, "lesion_label": "tumour"}
        if o.model_key():
            fields["model"] = o.model_key()
        if o.resample_tilt:
            fields["resample_tilt"] = True
        if o.dicom_key():
            fields["dicom"] = o.dicom_key()
        keyed = json.dumps(fields, separators=(",", ":"))

        def compute() -> str:
            h = hashlib.blake2b(digest_size=16)
            for path in files:
                update_hash(h, path)
            h.update(keyed.encode())
            return h.hexdigest()

        return cached_by_stat(out_dir, "segment_config_key", files, keyed, compute)

    def prepare(self) -> None:
        """Load the model here (it must load before any study runs) and validate the options."""
        from medseg.inference.pipeline import cached_predictor

        self.study_options()
        cached_predictor(self.model_dir, device=self.device, options=self.options.model_options())

    def study_inputs(self, study: Study) -> tuple[str, ...]:
        return study.sources

    # ---- study level --------------------------------------------------------------------

    def process(self, study: Study, out_dir: Path, stage: StageTracker) -> tuple[dict[str, str], dict[str, Any]]:
        """Read → study pipeline → ``studies/<id>/`` (written in a hidden staging folder, renamed whole)."""
        from medseg.inference.pipeline import cached_predictor, run_study, write_study_outputs
        from medseg.io import read_channels

        stage("ingest")
        images = read_channels(study.sources, series_uid=study.series_uid, resample_tilt=self.options.resample_tilt)
        predictor = cached_predictor(self.model_dir, device=self.device, options=self.options.model_options())
        final = out_dir / STUDIES_DIR / study.study_id
        output = run_study(images, predictor, self.study_options(), labels_path=final / SEGMENTATION_FILE, stage=stage)
        output.report["study"] = study.study_id
        output.report["source"] = study.source
        stage("write")
        staging = final.with_name(f".{study.study_id}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        o = self.options
        from_dicom = images[0].meta.get("format") == "dicom"
        dicom_files = {"dicom_seg": DICOM_SEG_FILE if o.dicom_seg and from_dicom else None,
                       "rtstruct": RTSTRUCT_FILE if o.rtstruct and from_dicom else None}
        from medseg.io.dicom_export import DicomExportOptions

        try:
            written = write_study_outputs(
                output, segmentation=staging / SEGMENTATION_FILE, volumes=staging / VOLUMES_FILE,
                preview=staging / PREVIEW_FILE, names=predictor.label_names,
                dicom_seg=dicom_files["dicom_seg"] and staging / dicom_files["dicom_seg"],
                rtstruct=dicom_files["rtstruct"] and staging / dicom_files["rtstruct"],
                dicom_options=DicomExportOptions(seg_type=o.seg_type, empty=o.empty_segments))
            _commit_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        rel = f"{STUDIES_DIR}/{study.study_id}"
        warnings = [w for image in images for w in image.meta.get("warnings", [])]
        return ({key: f"{rel}/{path.name}" for key, path in written.items()},
                {"warnings": warnings} if warnings else {})

    def discard(self, out_dir: Path, state: dict[str, Any]) -> None:
        shutil.rmtree(out_dir / STUDIES_DIR / state["study"], ignore_errors=True)

    # ---- reports ------------------------------------------------------------------------

    def _done(self, studies: list[Study], states: dict[str, dict[str, Any]]) -> list[tuple[Study, dict]]:
        return [(s, states[s.study_id]) for s in studies if states.get(s.study_id, {}).get("status") == "done"]

    def finalize(self, out_dir: Path, studies: list[Study],
                 states: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, str]]]:
        """The aggregated volume report and the evaluation against reference labels."""
        from medseg.report import write_batch_volume_reports

        done = self._done(studies, states)
        files: dict[str, str] = {}
        if done:
            files = {"volumes_csv": str(out_dir / "volumes.csv"), "volumes_html": str(out_dir / "volumes.html")}
            reports = []
            for s, state in done:
                report = json.loads((out_dir / state["outputs"]["volumes"]).read_text(encoding="utf-8"))
                report.setdefault("study", s.study_id)
                reports.append(report)
            previews = {s.study_id: state["outputs"]["preview"] for s, state in done if "preview" in state["outputs"]}
            write_batch_volume_reports(reports, files["volumes_csv"], files["volumes_html"], previews=previews)
        else:
            for name in ("volumes.csv", "volumes.html"):
                (out_dir / name).unlink(missing_ok=True)
        labels = dict(self._info().labels)
        from medseg.measure.lesions import resolve_lesion_labels

        try:
            lesion_ids = resolve_lesion_labels(self.options.lesion_labels, labels)
        except ValueError as exc:
            raise InputError(self.model_dir, f"--lesion-labels: {exc}") from None
        evaluation, failures = _evaluate(out_dir, [(s, st) for s, st in done if s.label], labels, lesion_ids)
        if evaluation:
            files.update({f"evaluation_{name}": str(path) for name, path in evaluation.items()})
        else:
            shutil.rmtree(out_dir / EVALUATION_DIR, ignore_errors=True)
        return files, failures


def _evaluate(out_dir: Path, pairs: list[tuple[Study, dict]], labels: dict[int, str],
              lesion_ids: list[int]) -> tuple[dict[str, Path], list[dict]]:
    """Evaluate every finished study that has a reference into ``OUT/evaluation``; a reference
    that cannot be evaluated (missing, not on the study's grid…) is a failure row of its own
    (stage ``evaluate``) and the others are evaluated. Returns the files written (none when no
    study could be evaluated) and the failure rows."""
    from medseg.measure import CasePair, evaluate_pairs, summarize
    from medseg.report import write_evaluation

    case_pairs = [CasePair(s.study_id, out_dir / state["outputs"]["segmentation"], Path(s.label),
                           Path(s.sources[0]) if s.kind == "file" and len(s.sources) == 1 else None)
                  for s, state in pairs]
    cases, failed = evaluate_pairs(case_pairs, sorted(labels))
    failures = [{"study": f["case"], "source": f["reference"], "stage": "evaluate", "error": f["error"]}
                for f in failed]
    if not cases:
        return {}, failures
    summary = summarize(cases, labels, reference="per-study references (manifest labels or labels/ folder)",
                        prediction=str(out_dir / STUDIES_DIR), lesion_labels=lesion_ids)
    by_id = {s.study_id: (s, state) for s, state in pairs}
    for case in cases:  # the preview shows an axial plane through every missed lesion
        missed = [les.centroid_voxel for label in lesion_ids for les in case.lesions[label].lesions if not les.detected]
        study, state = by_id[case.entry["case"]]
        if missed and "preview" in state["outputs"]:
            _add_lesion_planes(out_dir, study, state, labels, missed)
    return write_evaluation(summary, cases, out_dir / EVALUATION_DIR), failures


def _add_lesion_planes(out_dir: Path, study: Study, state: dict, labels: dict[int, str],
                       missed: list[list[float]]) -> None:
    """Draw a study's preview again with an axial plane through each missed lesion (voxel
    centroids); the file is rewritten only when the picture changes."""
    from medseg.io import atomic_write_bytes, read_channels, read_label
    from medseg.report.preview import preview_png

    image = read_channels(study.sources, series_uid=study.series_uid)[0]
    seg = read_label(out_dir / state["outputs"]["segmentation"], image)
    png = preview_png(image, seg, labels, lesions_voxel=missed)
    path = out_dir / state["outputs"]["preview"]
    if not path.is_file() or path.read_bytes() != png:
        atomic_write_bytes(path, png)


def _commit_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place (replacing an older result whole)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.partial-{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_batch(archive: str | Path, model_dir: str | Path, out_dir: str | Path, options: BatchOptions | None = None,
              *, device: str = "auto", runner: Runner | None = None, verify: bool = False,
              on_study: Callable[[StudyResult], None] | None = None) -> dict[str, Any]:
    """Segment the new or changed studies of ``archive`` into ``out_dir``, in this process.

    The Prefect flow ``segment-archive`` (``flows/segment_archive.py``) runs the same job with
    its studies mapped as tasks.

    Args:
        archive: a folder tree or a manifest CSV (see :mod:`medseg.batch.studies`).
        model_dir: the model directory (loaded once per process).
        out_dir: the output folder.
        options: :class:`BatchOptions`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        runner: how studies are mapped (:class:`~medseg.batch.engine.LocalRunner` by default).
        verify: hash every study's bytes (not only those whose files' size/mtime/inode changed).
        on_study: called with each :class:`~medseg.batch.engine.StudyResult`.

    Returns:
        The run record (:func:`medseg.batch.engine.finalize_run`).
    """
    job = SegmentJob(str(archive), str(model_dir), options or BatchOptions(), device)
    return run_job(job, out_dir, runner=runner, verify=verify, on_result=on_study)

"""Batch segmentation of a scan archive, without Prefect (the flow in ``flows/`` orchestrates this).

An *archive* is a folder tree of NIfTI/NRRD/MHA files and DICOM series folders, or a manifest CSV
(a folder holding ``manifest.csv`` at its root is read through that manifest). Each image file,
each DICOM series folder, or each manifest row is one *study*. Reference labels come from the
manifest's ``label`` column, or from a ``labels/`` folder at the archive root holding a file with
the study's name (``labels/<name>.nii.gz``).

Outputs under ``OUT``::

    OUT/studies/<study>/segmentation.nii.gz   uint8 labels on the study's exact grid
    OUT/studies/<study>/volumes.json          the volume report (DESIGN.md format)
    OUT/state/<study>.json                    what was done, for which content hash and config
    OUT/failures.csv                          study,source,stage,error (every current failure)
    OUT/volumes.csv, OUT/volumes.html         aggregated volume report of every finished study
    OUT/evaluation/                           tumour-recall evaluation (when references exist)
    OUT/runs/<time>_<pid>.json                each run's record: processed, failed, skipped

A study is redone only when its content hash or the configuration (model weights and plans,
CRF/clean-up options) changed, or when it has no finished state. Per-study outputs are written
into a hidden staging folder and renamed into place whole; the state file is written last (an
atomic rename), so a crash at any point leaves either a finished study or nothing, and a re-run
does exactly the missing work.

Typical use without Prefect::

    from medseg.batch import BatchOptions, run_batch
    from medseg.inference import Predictor
    record = run_batch("archive/", Predictor.from_model_dir("model/"), "out/", BatchOptions(crf=True),
                       model_dir="model/")
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.io.sitk_io import is_dicom_file

__all__ = [
    "BatchOptions",
    "DEFAULT_COMPONENTS",
    "Study",
    "StudyResult",
    "StudyPlan",
    "scan_archive",
    "content_hash",
    "config_key",
    "plan_studies",
    "process_study",
    "record_transient_failure",
    "write_aggregate_reports",
    "evaluate_against_references",
    "finalize_batch",
    "run_batch",
    "read_state",
    "run_lock",
    "now_utc",
    "failures_path",
    "STATE_DIR",
    "STUDIES_DIR",
    "FAILURE_COLUMNS",
]

STATE_DIR = "state"
STUDIES_DIR = "studies"
RUNS_DIR = "runs"
EVALUATION_DIR = "evaluation"
SEGMENTATION_FILE = "segmentation.nii.gz"
VOLUMES_FILE = "volumes.json"
FAILURE_COLUMNS = ("study", "source", "stage", "error")

# Files an archive may hold beside its scans; they are neither studies nor failures.
SIDE_FILE_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".html", ".htm", ".log", ".yaml", ".yml")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_HASH_CHUNK = 1 << 20

# ``--components`` without a config: drop blobs under 0.1 mL and fill enclosed holes, every class.
DEFAULT_COMPONENTS: dict[str, Any] = {"min_size_mm3": 100.0, "fill_holes": True}


class BatchOptions(BaseModel):
    """What is done to each study (part of the configuration key: changing it redoes studies).

    Attributes:
        crf: refine the network's probabilities with the dense 3D CRF before taking labels.
        crf_config: ``CRFConfig`` fields that override ``CRFConfig.for_modality(modality)``.
        components: connected-component clean-up (``ComponentsConfig`` fields), or ``None``.
        tta: mirror test-time augmentation in the predictor.
        modality: CRF kernel defaults (``"CT"`` or ``"MR"``).
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
    modality: Literal["CT", "MR"] = "CT"
    lesion_label: str = Field("tumour", description="structure name whose lesions the evaluation reports")


@dataclass(frozen=True)
class Study:
    """One study of an archive.

    Attributes:
        study_id: file-system-safe identifier (output folder and state file name).
        sources: the image file(s) or DICOM series folder (several paths = channels).
        kind: ``"file"``, ``"dicom"`` or ``"unknown"`` (a file that is no known image: it
            fails at ingest and lands in the failures table).
        label: reference label map, when one exists.
    """

    study_id: str
    sources: tuple[str, ...]
    kind: str
    label: str | None = None

    @property
    def source(self) -> str:
        return ";".join(self.sources)


@dataclass
class StudyPlan:
    """A study with its content hash and whether it needs processing (and why)."""

    study: Study
    content_hash: str
    todo: bool
    reason: str


@dataclass
class StudyResult:
    """What processing one study gave (plain data: crosses process boundaries)."""

    study_id: str
    source: str
    status: Literal["done", "failed"]
    stage: str = ""
    error: str = ""
    permanent: bool = True
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------- scanning


def _strip_image_suffix(name: str) -> str:
    low = name.lower()
    for suf in _IMAGE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def _safe_id(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return text or "study"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _find_reference(labels_dir: Path, name: str) -> str | None:
    if not labels_dir.is_dir():
        return None
    for suf in _IMAGE_SUFFIXES:
        cand = labels_dir / f"{name}{suf}"
        if cand.is_file():
            return str(cand)
    return None


def scan_archive(archive: str | Path, *, exclude: tuple[str | Path, ...] = ()) -> list[Study]:
    """List the studies of ``archive`` (a folder tree or a manifest CSV), sorted by id.

    Folder trees: every NIfTI/NRRD/MHA file is a study, every folder whose files are DICOM
    (``.dcm`` or the ``DICM`` preamble) is one study, any other file (not hidden, not a side
    file such as ``.json``/``.csv``/``.txt``) is an ``"unknown"`` study that fails at ingest.
    The ``labels/`` folder at the root holds references and is not scanned; neither are
    hidden entries nor the folders in ``exclude`` (e.g. the output folder).

    Raises:
        InputError: the archive does not exist, or two studies would get the same id.
    """
    from medseg.manifest import read_manifest

    archive = Path(archive)
    if not archive.exists():
        raise InputError(archive, "archive does not exist")
    manifest = archive if archive.is_file() else archive / "manifest.csv"
    if archive.is_file() or manifest.is_file():
        rows = read_manifest(manifest, check_exists=False)
        studies = [Study(_safe_id(r.case_id), tuple(str(p) for p in r.images),
                         "dicom" if r.images[0].is_dir() else "file", str(r.label) if r.label else None)
                   for r in rows]
        return _unique(studies, manifest)

    root = archive.resolve()
    labels_dir = root / "labels"
    skip = {Path(p).resolve() for p in exclude} | {labels_dir}
    studies: list[Study] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip)
        files = sorted(f for f in filenames if not f.startswith("."))
        rel_dir = here.relative_to(root)
        dicom = [f for f in files if not _is_image_name(f) and is_dicom_file(here / f)]
        if dicom:
            name = here.name if here != root else root.name
            sid = _safe_id("__".join(rel_dir.parts) or name)
            studies.append(Study(sid, (str(here),), "dicom", _find_reference(labels_dir, name)))
        for f in files:
            if f in dicom or f.lower().endswith(SIDE_FILE_SUFFIXES):
                continue
            stem = _strip_image_suffix(f)
            kind = "file" if _is_image_name(f) else "unknown"
            sid = _safe_id("__".join(rel_dir.parts + ((stem if kind == "file" else f),)))
            ref = _find_reference(labels_dir, stem) if kind == "file" else None
            studies.append(Study(sid, (str(here / f),), kind, ref))
    return _unique(sorted(studies, key=lambda s: s.study_id), archive)


def _unique(studies: list[Study], where: Path) -> list[Study]:
    seen: dict[str, Study] = {}
    for s in studies:
        if s.study_id in seen:
            raise InputError(where, f"two studies map to the id {s.study_id!r}: {seen[s.study_id].source} "
                             f"and {s.source} (rename one)")
        seen[s.study_id] = s
    return sorted(studies, key=lambda s: s.study_id)


# ------------------------------------------------------------------------------------------ hashing


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)


def content_hash(sources: tuple[str, ...] | list[str]) -> str:
    """BLAKE2b (128-bit, hex) of a study's bytes: file contents; for a folder (DICOM series)
    its sorted file names and their contents. Hidden files are left out."""
    h = hashlib.blake2b(digest_size=16)
    for src in sources:
        p = Path(src)
        if p.is_dir():
            for f in sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith(".")):
                h.update(f.name.encode("utf-8") + b"\0")
                _hash_file(h, f)
        else:
            h.update(b"file\0")
            _hash_file(h, p)
        h.update(b"\1")
    return h.hexdigest()


def config_key(model_dir: str | Path, options: BatchOptions) -> str:
    """Hash of what decides a study's outputs besides its content: the model's weights and
    plans, and the batch options."""
    from medseg.plans import PLANS_FILE, WEIGHTS_FILE

    h = hashlib.blake2b(digest_size=16)
    for name in (PLANS_FILE, WEIGHTS_FILE):
        path = Path(model_dir) / name
        if not path.is_file():
            raise InputError(model_dir, f"not a model directory (no {name})")
        _hash_file(h, path)
    h.update(options.model_dump_json().encode())
    return h.hexdigest()


# -------------------------------------------------------------------------------------------- state


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``OUT/.batch.lock`` (an advisory ``flock``) for a whole run: two runs over one output
    folder (a cron run overlapping a long one) would redo each other's studies. The kernel
    releases the lock when the process dies, so a killed run never blocks the next.

    Raises:
        MedsegError: another run holds the lock.
    """
    import fcntl

    from medseg.errors import MedsegError

    path = Path(out_dir) / ".batch.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise MedsegError(f"{out_dir}: another batch run (pid {holder}) is writing this output folder; "
                              "wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _state_path(out_dir: Path, study_id: str) -> Path:
    return out_dir / STATE_DIR / f"{study_id}.json"


def read_state(out_dir: str | Path, study_id: str) -> dict[str, Any] | None:
    """The state record of a study (``None`` when it was never finished or the file is damaged)."""
    path = _state_path(Path(out_dir), study_id)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def failures_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "failures.csv"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def plan_studies(studies: list[Study], out_dir: str | Path, key: str) -> list[StudyPlan]:
    """Decide for each study whether it needs processing.

    Not needed when its state says ``done`` (or a permanent ``failed``: a corrupt file stays
    corrupt until its bytes change) for the same content hash and configuration key, and, for
    ``done``, its outputs exist. A study whose content cannot even be hashed (unreadable) is
    planned, so that processing records the failure.
    """
    out_dir = Path(out_dir)
    plans = []
    for s in studies:
        try:
            digest = content_hash(s.sources)
        except OSError as exc:
            plans.append(StudyPlan(s, "", True, f"unreadable ({exc.strerror or exc})"))
            continue
        state = read_state(out_dir, s.study_id)
        if state is None:
            todo, reason = True, "new"
        elif state.get("content_hash") != digest:
            todo, reason = True, "content changed"
        elif state.get("config_key") != key:
            todo, reason = True, "model or options changed"
        elif state.get("status") == "done" and all((out_dir / p).is_file() for p in state.get("outputs", {}).values()):
            todo, reason = False, "done"
        elif state.get("status") == "failed" and state.get("permanent", False):
            todo, reason = False, "failed before (unchanged)"
        else:
            todo, reason = True, "incomplete"
        plans.append(StudyPlan(s, digest, todo, reason))
    return plans


# ---------------------------------------------------------------------------------------- processing


def _stage_error(stage: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}"


def _read_study(study: Study):
    from medseg.io import read_volume

    if study.kind == "unknown":
        raise InputError(study.sources[0], "not a supported image (expected .nii, .nii.gz, .nrrd, .mha, .mhd "
                         "or a DICOM series folder)")
    images = [read_volume(p) for p in study.sources]
    for other in images[1:]:
        if not images[0].same_grid(other):
            raise InputError(other.source, f"channel is not on the grid of {images[0].source}")
    return images


def _segment(images, predictor, options: BatchOptions):
    """The network's prediction on the study's exact grid (probabilities kept only for the CRF)."""
    return predictor.predict(images if len(images) > 1 else images[0], keep_probabilities=options.crf)


def _apply_crf(image, prediction, options: BatchOptions):
    from medseg.postprocess.crf import CRFConfig, dense_crf

    probs = np.moveaxis(np.asarray(prediction.probabilities(np.float32)), -1, 0)  # (C, X, Y, Z)
    cfg = CRFConfig.for_modality(options.modality, **(options.crf_config or {}))
    refined = dense_crf(image.array, probs, image.spacing, cfg)
    return np.asarray(refined).argmax(axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def _clean(labels: np.ndarray, spacing, components: dict[str, Any]) -> np.ndarray:
    from medseg.postprocess.components import ComponentsConfig, clean_labels

    cfg = ComponentsConfig.model_validate(components)
    return np.asarray(clean_labels(labels, spacing, cfg)).astype(labels.dtype, copy=False)


def _commit_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place (replacing an older result whole)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_state(out_dir: Path, plan: StudyPlan, key: str, result: StudyResult) -> None:
    record = {"study": plan.study.study_id, "source": plan.study.source, "kind": plan.study.kind,
              "label": plan.study.label, "content_hash": plan.content_hash, "config_key": key,
              "status": result.status, "permanent": result.permanent, "stage": result.stage,
              "error": result.error, "outputs": result.outputs, "seconds": result.seconds,
              "finished_at": now_utc()}
    atomic_write_text(_state_path(out_dir, plan.study.study_id), json.dumps(record, indent=2))


def process_study(plan: StudyPlan, predictor, out_dir: str | Path, options: BatchOptions, key: str,
                  labels: dict[int, str]) -> StudyResult:
    """Ingest → segment → (CRF) → (components) → volumes for one study; commit outputs and state.

    ``predictor``: a :class:`medseg.inference.Predictor` (loaded once by the caller and reused).

    A bad input (:class:`InputError`, e.g. a truncated file) gives a ``failed`` result with the
    stage and the reason, recorded in the study's state: it is not retried until its bytes
    change. A transient error (``OSError`` that is not an InputError: a network share that
    hiccups, a full disk) is raised, with ``exc.medseg_stage`` set, so that the caller can retry.
    Any other exception also gives a ``failed`` result (recorded, retried on the next run).
    """
    import time

    from medseg.io import Volume, write_volume

    start = time.perf_counter()
    out_dir = Path(out_dir)
    study = plan.study
    final = out_dir / STUDIES_DIR / study.study_id
    staging = final.with_name(f".{study.study_id}.partial-{os.getpid()}")
    stage = "ingest"
    result = StudyResult(study.study_id, study.source, "done", pid=os.getpid())
    try:
        images = _read_study(study)  # a missing or corrupt source is an InputError (no retry)
        if not plan.content_hash:
            plan.content_hash = content_hash(study.sources)
        image = images[0]
        stage = "segment"
        prediction = _segment(images, predictor, options)
        seg_array = np.asarray(prediction.labels.array)
        if options.crf:
            stage = "crf"
            seg_array = _apply_crf(image, prediction, options)
        del prediction
        if options.components is not None:
            stage = "components"
            seg_array = _clean(seg_array, image.spacing, options.components)
        seg_volume = Volume(array=seg_array, affine=image.affine.copy(), source=None,
                            meta={k: v for k, v in image.meta.items() if k == "nifti_header"})
        stage = "volumes"
        from medseg.measure.volumes import compute_volumes, write_volume_report

        for stale in final.parent.glob(f".{study.study_id}.partial-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir(parents=True)
        seg_path = staging / SEGMENTATION_FILE
        write_volume(seg_volume, seg_path)
        seg_volume.source = str(final / SEGMENTATION_FILE)
        report = compute_volumes(seg_volume, image, labels)
        report["study"] = study.study_id
        report["source"] = study.source
        write_volume_report(report, staging / VOLUMES_FILE)
        stage = "write"
        _commit_dir(staging, final)
        result.outputs = {"segmentation": f"{STUDIES_DIR}/{study.study_id}/{SEGMENTATION_FILE}",
                          "volumes": f"{STUDIES_DIR}/{study.study_id}/{VOLUMES_FILE}"}
    except InputError as exc:
        result.status, result.stage, result.error, result.permanent = "failed", stage, _stage_error(stage, exc), True
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        exc.medseg_stage = stage  # type: ignore[attr-defined]
        raise
    except Exception as exc:  # noqa: BLE001 - a study must not stop the archive; recorded with its reason
        result.status, result.stage, result.error, result.permanent = "failed", stage, _stage_error(stage, exc), False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    _write_state(out_dir, plan, key, result)
    return result


def record_transient_failure(plan: StudyPlan, out_dir: str | Path, key: str, exc: BaseException) -> StudyResult:
    """Record a study whose transient error outlived its retries (it is tried again next run)."""
    stage = getattr(exc, "medseg_stage", "ingest")
    result = StudyResult(plan.study.study_id, plan.study.source, "failed", stage, _stage_error(stage, exc),
                         permanent=False, pid=os.getpid())
    _write_state(Path(out_dir), plan, key, result)
    return result


# ----------------------------------------------------------------------------------------- reports


def _write_failures(out_dir: Path, studies: list[Study]) -> list[dict[str, str]]:
    rows = []
    for s in studies:
        state = read_state(out_dir, s.study_id)
        if state is not None and state.get("status") == "failed":
            rows.append({"study": s.study_id, "source": s.source, "stage": state.get("stage", ""),
                         "error": state.get("error", "")})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FAILURE_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = failures_path(out_dir)
    if not path.is_file() or path.read_text() != buf.getvalue():
        atomic_write_text(path, buf.getvalue())
    return rows


def _done_studies(out_dir: Path, studies: list[Study]) -> list[tuple[Study, dict]]:
    done = []
    for s in studies:
        state = read_state(out_dir, s.study_id)
        if state is not None and state.get("status") == "done":
            done.append((s, state))
    return done


def write_aggregate_reports(out_dir: str | Path, studies: list[Study]) -> dict[str, str]:
    """Aggregated volume report (CSV + HTML) over every finished study of the archive."""
    from medseg.report import write_batch_volume_reports

    out_dir = Path(out_dir)
    reports = []
    for s, state in _done_studies(out_dir, studies):
        report = json.loads((out_dir / state["outputs"]["volumes"]).read_text())
        report.setdefault("study", s.study_id)
        reports.append(report)
    csv_path, html_path = out_dir / "volumes.csv", out_dir / "volumes.html"
    write_batch_volume_reports(reports, csv_path, html_path)
    return {"volumes_csv": str(csv_path), "volumes_html": str(html_path)}


def evaluate_against_references(out_dir: str | Path, studies: list[Study], labels: dict[int, str]) -> dict | None:
    """Evaluation (Dice, HD95, lesion-wise tumour recall) of every finished study that has a
    reference label map, written to ``OUT/evaluation/`` (summary.json, lesions.csv, report.html).

    Returns the summary (``summary.json``'s content), or ``None`` when no study has a reference.
    """
    from medseg.measure.evaluate import CasePair, evaluate_case, summarize, write_evaluation

    out_dir = Path(out_dir)
    pairs = [CasePair(s.study_id, out_dir / state["outputs"]["segmentation"], Path(s.label),
                      Path(s.sources[0]) if s.kind == "file" else None)
             for s, state in _done_studies(out_dir, studies) if s.label and Path(s.label).is_file()]
    if not pairs:
        return None
    ids = sorted(labels)
    cases = [evaluate_case(p, ids) for p in pairs]
    summary = summarize(cases, labels)
    summary["reference"] = "per-study references (manifest labels or labels/ folder)"
    summary["prediction"] = str(out_dir / STUDIES_DIR)
    write_evaluation(summary, cases, out_dir / EVALUATION_DIR)
    return summary


def finalize_batch(out_dir: str | Path, studies: list[Study], plans: list[StudyPlan], results: list[StudyResult],
                   labels: dict[int, str], *, started: str, evaluate_refs: bool = True,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Failures table, aggregated reports (only when something changed or they are missing),
    evaluation, and the run record ``OUT/runs/<time>_<pid>.json``; returns the record."""
    out_dir = Path(out_dir)
    failures = _write_failures(out_dir, studies)
    changed = bool(results)
    reports: dict[str, Any] = {}
    have = (out_dir / "volumes.csv").is_file() and (out_dir / "volumes.html").is_file()
    if changed or not have:
        if _done_studies(out_dir, studies):
            reports.update(write_aggregate_reports(out_dir, studies))
        if evaluate_refs:
            summary = evaluate_against_references(out_dir, studies, labels)
            if summary is not None:
                reports["evaluation"] = str(out_dir / EVALUATION_DIR)
    record = {
        "started": started,
        "finished": now_utc(),
        "n_studies": len(studies),
        "processed": sorted(r.study_id for r in results if r.status == "done"),
        "failed": sorted(r.study_id for r in results if r.status == "failed"),
        "skipped": sorted(p.study.study_id for p in plans if not p.todo),
        "failures_total": len(failures),
        "reports": reports,
        "workers": sorted({r.pid for r in results}),
        **(extra or {}),
    }
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    atomic_write_text(out_dir / RUNS_DIR / f"{stamp}_{os.getpid()}.json", json.dumps(record, indent=2))
    return record


def run_batch(archive: str | Path, predictor, out_dir: str | Path, options: BatchOptions | None = None, *,
              model_dir: str | Path, retries: int = 2,
              on_study: Callable[[StudyResult], None] | None = None) -> dict[str, Any]:
    """The whole batch as a plain Python loop (what the Prefect flow orchestrates).

    Args:
        archive: folder tree or manifest.
        predictor: a loaded :class:`medseg.inference.Predictor` (loaded once, reused).
        out_dir: output folder (created).
        options: :class:`BatchOptions`.
        model_dir: the predictor's model directory (its weights and plans enter the
            configuration key; its labels name the structures).
        retries: extra attempts for a study that raised a transient ``OSError``.
        on_study: called with each :class:`StudyResult`.

    Returns:
        The run record (see :func:`finalize_batch`).
    """
    options = options or BatchOptions()
    out_dir = Path(out_dir)
    with run_lock(out_dir):
        return _run_batch_locked(archive, predictor, out_dir, options, model_dir, retries, on_study)


def _run_batch_locked(archive, predictor, out_dir: Path, options: BatchOptions, model_dir, retries: int,
                      on_study) -> dict[str, Any]:
    from medseg.plans import LABELS_FILE, read_labels

    started = now_utc()
    studies = scan_archive(archive, exclude=(out_dir,))
    key = config_key(model_dir, options)
    labels = read_labels(Path(model_dir) / LABELS_FILE)
    plans = plan_studies(studies, out_dir, key)
    results = []
    for plan in plans:
        if not plan.todo:
            continue
        for attempt in range(retries + 1):
            try:
                result = process_study(plan, predictor, out_dir, options, key, labels)
                break
            except OSError as exc:
                if attempt == retries:
                    result = record_transient_failure(plan, out_dir, key, exc)
        results.append(result)
        if on_study is not None:
            on_study(result)
    return finalize_batch(out_dir, studies, plans, results, labels, started=started)


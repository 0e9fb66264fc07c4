"""Ingestion: files, folders and manifests → validated ``OUT/<case_id>.nii.gz`` plus a manifest.

One study is one image (a NIfTI/NRRD/MHA file or a folder holding one DICOM series), or one row
of an input manifest (``.csv``) or MSD / nnU-Net ``dataset.json`` (channels + optional label).
Every study is read and validated by :mod:`medseg.io` and written as NIfTI with exactly the
geometry it was read with (DICOM keeps ITK's LPS storage order; the affine is exact).

Output folder layout::

    OUT/<case_id>.nii.gz             image (multi-channel rows: <case_id>_0000.nii.gz, _0001, ...)
    OUT/labels/<case_id>.nii.gz      label map, when the study has one (on the image's grid)
    OUT/manifest.csv                 every study ingested into OUT (or --manifest FILE.csv)
    OUT/failures.csv                 source,case_id,error for the studies of the last run that failed
    OUT/.medseg_ingest.json          state: per study its source, content hash and outputs

Idempotent: a study whose source bytes (SHA-256 over its files) match the state and whose
outputs exist is skipped; a changed one is ingested again; a study that now fails loses its
old outputs and manifest row. Inputs are never overwritten: an ``OUT`` that is a source, or
that holds a source, is refused; a source folder that holds ``OUT`` is searched without it.

The CLI (``medseg ingest``) and the Prefect flow (``flows/ingest.py``) share
:func:`plan_ingest` → :func:`ingest_study` per study → :func:`finish_ingest`;
:func:`ingest_sources` runs the three in order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from medseg.errors import InputError
from medseg.io import (
    Volume,
    atomic_write_text,
    check_same_grid,
    is_dicom_file,
    is_image_path,
    read_label,
    read_volume,
    write_volume,
)
from medseg.manifest import SPLITS, ManifestRow, read_manifest, read_msd, write_manifest

__all__ = [
    "STATE_FILE",
    "FAILURES_FILE",
    "Study",
    "StudyResult",
    "IngestPlan",
    "IngestReport",
    "plan_ingest",
    "ingest_study",
    "finish_ingest",
    "ingest_sources",
    "safe_case_id",
    "align_label_to_image",
]

STATE_FILE = ".medseg_ingest.json"
FAILURES_FILE = "failures.csv"
STATE_VERSION = 1
_CHUNK = 1 << 20
_NAME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Study:
    """One study to ingest.

    Attributes:
        key: identity across runs (resolved source path, ``#series=UID`` or ``#case=ID`` added).
        source: the source as named in messages and in ``failures.csv``.
        images: one path per channel (a file or a DICOM folder); empty when discovery failed.
        label: label map path, or ``None``.
        case_id: output name (filesystem-safe, unique within the output folder).
        split: ``train``, ``val`` or ``test``.
        modality: manifest ``modality`` column (may be empty).
        series_uid: the DICOM SeriesInstanceUID to pick in a multi-series folder.
    """

    key: str
    source: str
    images: tuple[str, ...]
    label: str | None
    case_id: str
    split: str = "test"
    modality: str = ""
    series_uid: str | None = None


@dataclass
class StudyResult:
    """What became of one study: ``status`` ingested / skipped / failed, its outputs or error."""

    study: Study
    status: Literal["ingested", "skipped", "failed"]
    content_hash: str = ""
    images: tuple[str, ...] = ()
    label: str | None = None
    error: str = ""
    transient: bool = False
    modality: str = ""


@dataclass
class IngestPlan:
    """The studies found in the sources, the failures found on the way, and the previous state."""

    out_dir: Path
    manifest: Path
    studies: list[Study]
    failures: list[StudyResult]
    state: dict[str, dict]

    def previous(self, study: Study) -> dict | None:
        return self.state.get(study.key)


@dataclass
class IngestReport:
    """The outcome of one ingestion run (every result, and the files written)."""

    out_dir: Path
    manifest: Path | None
    failures_csv: Path
    results: list[StudyResult] = field(default_factory=list)

    def _with(self, status: str) -> list[StudyResult]:
        return [r for r in self.results if r.status == status]

    @property
    def ingested(self) -> list[StudyResult]:
        return self._with("ingested")

    @property
    def skipped(self) -> list[StudyResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[StudyResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"ingested {len(self.ingested)}, skipped {len(self.skipped)} (unchanged), failed {len(self.failed)}"
        if self.manifest is not None:
            text += f"; manifest {self.manifest}"
        if self.failed:
            text += f"; failures in {self.failures_csv}"
        return text


# ---------------------------------------------------------------------------------------------
# names, hashing, state


def safe_case_id(text: str) -> str:
    """A filesystem-safe case id from a file or folder name: image suffix dropped, accents
    dropped, runs of other characters turned into ``_`` (``[A-Za-z0-9._-]``, ≤ 100 chars)."""
    name = text
    lower = name.lower()
    for suffix in _NAME_SUFFIXES:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")  # "ï" → "i"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100].strip("._-")
    return name or "case"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``… so that it is unique among ``taken`` (case-insensitive)."""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate.lower())
    return candidate


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _content_hash(study: Study) -> str:
    """SHA-256 over the bytes of every file of the study (a DICOM folder: its direct files)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": STATE_VERSION, "series": study.series_uid, "channels": len(study.images)}).encode())
    for part in (*study.images, *((study.label,) if study.label else ())):
        p = Path(part)
        h.update(b"\0part\0")
        if p.is_dir():
            for f in sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith(".")):
                h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
                _hash_file(h, f)
        else:
            _hash_file(h, p)
            for data_file in _detached_data(p):
                h.update(b"\0data\0")
                _hash_file(h, data_file)
    return h.hexdigest()


def _detached_data(path: Path) -> list[Path]:
    """The voxel file a MetaImage (.mhd) or detached NRRD (.nhdr) header points to."""
    if path.suffix.lower() not in (".mhd", ".nhdr"):
        return []
    with open(path, "rb") as f:
        text = f.read(65536).decode("latin-1")
    m = re.search(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(\S+)\s*$", text, flags=re.M | re.I)
    if not m or m.group(1).upper() in ("LOCAL", "LIST"):
        return []
    data = path.parent / m.group(1)
    return [data] if data.is_file() else []


def _read_state(out_dir: Path) -> dict[str, dict]:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"ingest state file is unreadable ({exc}); delete it to ingest everything again") from None
    if not isinstance(data, dict) or not isinstance(data.get("studies"), dict):
        raise InputError(path, "ingest state file has no 'studies' table; delete it to ingest everything again")
    return data["studies"]


def _write_state(out_dir: Path, state: dict[str, dict]) -> None:
    atomic_write_text(out_dir / STATE_FILE, json.dumps({"version": STATE_VERSION, "studies": state}, indent=1))


# ---------------------------------------------------------------------------------------------
# discovery


def _walk(root: Path, out_dir: Path):
    """Yield ``(folder, image_files, holds_dicom)`` for ``root`` and every folder below it
    (sorted, hidden entries and ``out_dir`` left out, symlinked folders not followed)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != out_dir)
        images, dicom = [], False
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            if is_image_path(name):
                images.append(p)
            elif not dicom and is_dicom_file(p):
                dicom = True
        yield here, images, dicom


def _rel_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    parts = rel.parts if rel.parts else (root.name,)
    return safe_case_id("_".join(parts[:-1] + (safe_case_id(parts[-1]),)))


def _failed(source: str, key: str, case_id: str, exc: Exception | str) -> StudyResult:
    study = Study(key=key, source=source, images=(), label=None, case_id=case_id)
    return StudyResult(study=study, status="failed", error=str(exc))


def _rows_of(path: Path) -> list[ManifestRow]:
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    return read_msd(path)


def _discover(source: str, out_dir: Path, split: str, series_uid: str | None):
    """Candidate studies of one source: ``[(key, source, images, label, name, split, modality)]``."""
    p = Path(source)
    if not p.exists():
        raise InputError(p, "does not exist")
    rp = p.resolve()
    if p.is_file() and (p.suffix.lower() == ".csv" or p.name.lower().endswith(".json")):
        found = []
        for row in _rows_of(p):
            found.append((f"{rp}#case={row.case_id}", f"{p}#{row.case_id}", tuple(str(x) for x in row.images),
                          str(row.label) if row.label else None, row.case_id, row.split, row.modality))
        return found
    if p.is_file() and not is_image_path(p) and is_dicom_file(p):
        raise InputError(p, f"is a single DICOM file: ingest the folder that holds its series ({p.parent})")
    if p.is_file():
        return [(str(rp), str(p), (str(p),), None, safe_case_id(p.name), split, "")]
    found = []
    any_file = False
    for folder, images, dicom in _walk(p, out_dir):
        any_file = any_file or bool(images) or dicom or any(f.is_file() for f in folder.iterdir())
        for img in images:
            found.append((str(img.resolve()), str(img), (str(img),), None, _rel_id(img, p), split, ""))
        if dicom:
            key = str(folder.resolve()) + (f"#series={series_uid}" if series_uid else "")
            name = _rel_id(folder, p) if folder != p else safe_case_id(p.resolve().name)
            found.append((key, str(folder), (str(folder),), None, name, split, ""))
    if not found:
        if not any_file:
            raise InputError(p, "empty folder: no images or DICOM files to ingest")
        raise InputError(p, "no images (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM files found in this folder "
                         "or below it")
    return found


def _check_out_dir(sources: list[str], out_dir: Path, manifest: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output folder is an existing file (never overwritten): choose another --out")
    for s in sources:
        rp = Path(s).resolve()
        if rp == out_dir:
            raise InputError(out_dir, "output folder is also an input: choose an --out outside the sources")
        if rp.is_relative_to(out_dir):
            raise InputError(out_dir, f"output folder holds the input {s}: choose an --out outside the sources")
        if rp == manifest:
            raise InputError(manifest, "the manifest to write is an input: choose another --manifest")


def plan_ingest(sources: list[str | Path], out_dir: str | Path, *, manifest: str | Path | None = None,
                series_uid: str | None = None, split: str = "test", label: str | Path | None = None) -> IngestPlan:
    """Find the studies in ``sources`` and give each a stable, unique case id.

    Args:
        sources: files (image, manifest ``.csv``, ``dataset.json``) and folders (searched
            recursively: image files, and every folder that directly holds DICOM files).
        out_dir: output folder (created by :func:`ingest_study`).
        manifest: the manifest to write (default ``out_dir/manifest.csv``).
        series_uid: SeriesInstanceUID to pick in DICOM folders holding several series.
        split: split of the studies that do not come from a manifest (default ``test``).
        label: a label map for the single study of a single source.

    Raises:
        InputError: an ``out_dir`` or ``manifest`` that is (or holds) an input, a bad ``split``,
            ``label`` with more than one study, an unreadable state file. Bad sources are not
            raised: they come back in ``IngestPlan.failures``.
    """
    if not sources:
        raise ValueError("sources: expected at least one file or folder, got none")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    out = Path(out_dir).resolve()
    manifest_path = Path(manifest).resolve() if manifest is not None else out / "manifest.csv"
    srcs = [str(s) for s in sources]
    _check_out_dir(srcs + ([str(label)] if label else []), out, manifest_path)
    state = _read_state(out)
    taken = {e["case_id"].lower() for e in state.values() if "case_id" in e}
    found, failures = [], []
    for s in srcs:
        try:
            found += _discover(s, out, split, series_uid)
        except InputError as exc:
            failures.append(_failed(s, str(Path(s).resolve()), safe_case_id(Path(s).name), exc))
    if label is not None and not failures:
        if len(srcs) != 1 or len(found) != 1:
            raise InputError(label, f"--label needs exactly one source holding one study, got {len(found)} studies")
        key, source, images, _, name, sp, mod = found[0]
        found = [(key, source, images, str(label), name, sp, mod)]
    studies: list[Study] = []
    seen: set[str] = set()
    for key, source, images, lab, name, sp, mod in found:
        if key in seen:  # the same study named twice (a file and its folder) is ingested once
            continue
        seen.add(key)
        prev = state.get(key)
        case_id = prev["case_id"] if prev and "case_id" in prev else _unique(name, taken)
        studies.append(Study(key=key, source=source, images=images, label=lab, case_id=case_id, split=sp,
                             modality=mod, series_uid=series_uid))
    return IngestPlan(out_dir=out, manifest=manifest_path, studies=studies, failures=failures, state=state)


# ---------------------------------------------------------------------------------------------
# one study


def align_label_to_image(image: Volume, label: Volume, atol_mm: float = 1e-3) -> Volume:
    """Bring ``label`` onto ``image``'s voxel grid when it is the same grid stored in another axis
    order (e.g. DICOM's LPS against dcm2niix's LAS): a permutation/flip of axes, no resampling.

    Raises:
        InputError: (naming the label file) when no axis permutation/flip makes the grids agree
            within ``atol_mm``.
    """
    import nibabel as nib

    if image.same_grid(label, atol_mm):
        return Volume(array=label.array, affine=image.affine.copy(), source=label.source, meta=label.meta)
    lab_ornt = nib.orientations.io_orientation(label.affine)
    img_ornt = nib.orientations.io_orientation(image.affine)
    transform = nib.orientations.ornt_transform(lab_ornt, img_ornt)
    array = nib.orientations.apply_orientation(label.array, transform)
    affine = label.affine @ nib.orientations.inv_ornt_aff(transform, label.shape)
    moved = Volume(array=np.ascontiguousarray(array), affine=affine, source=label.source, meta=label.meta)
    check_same_grid(image, moved, atol_mm)  # raises naming the label file and the difference
    return Volume(array=moved.array, affine=image.affine.copy(), source=label.source, meta=label.meta)


def _channel_names(case_id: str, n: int) -> tuple[str, ...]:
    return (f"{case_id}.nii.gz",) if n == 1 else tuple(f"{case_id}_{c:04d}.nii.gz" for c in range(n))


def _outputs_exist(out_dir: Path, entry: dict) -> bool:
    names = list(entry.get("images", [])) + ([entry["label"]] if entry.get("label") else [])
    return bool(names) and all((out_dir / n).is_file() for n in names)


def ingest_study(study: Study, out_dir: str | Path, *, previous: dict | None = None) -> StudyResult:
    """Ingest one study into ``out_dir`` (skip it when ``previous`` says it is unchanged).

    Reads and validates every channel (and the label map, checked against the first channel's
    grid) before writing anything; each output is written to a temporary name and renamed.

    Returns:
        a :class:`StudyResult` (``failed`` with the one-line error for bad input).

    Raises:
        OSError: transient I/O trouble (a file vanishing or unreadable while hashing, a full
            disk): callers retry or report it. Bad input never raises, it is a failed result.
    """
    out = Path(out_dir).resolve()
    try:
        for part in (*study.images, *((study.label,) if study.label else ())):
            p = Path(part)
            if not p.exists():
                raise InputError(p, "does not exist")
            if p.resolve().is_relative_to(out):
                raise InputError(p, f"input lies inside the output folder {out}: choose another --out")
        if not study.images:
            raise InputError(study.source, "no image")
        digest = _content_hash(study)
        if previous and previous.get("hash") == digest and _outputs_exist(out, previous):
            return StudyResult(study=study, status="skipped", content_hash=digest,
                               images=tuple(previous["images"]), label=previous.get("label"),
                               modality=study.modality or previous.get("modality", ""))
        volumes = [read_volume(p, series_uid=study.series_uid) for p in study.images]
        for v in volumes[1:]:
            if not volumes[0].same_grid(v):
                check_same_grid(volumes[0], v)
                raise InputError(v.source, f"channel is not on the grid of {volumes[0].source}")
        label = None
        if study.label:
            raw = read_label(study.label)
            label = align_label_to_image(volumes[0], raw)
    except InputError as exc:
        return StudyResult(study=study, status="failed", error=str(exc))
    names = _channel_names(study.case_id, len(volumes))
    label_name = f"labels/{study.case_id}.nii.gz" if label is not None else None
    written: list[Path] = []
    try:
        for name, vol in zip(names, volumes):
            written.append(write_volume(vol, out / name))
        if label is not None:
            written.append(write_volume(label, out / label_name))
    except BaseException:
        for w in written:  # all or nothing: no image without its label (or other channels)
            w.unlink(missing_ok=True)
        raise
    modality = study.modality or str(volumes[0].meta.get("dicom", {}).get("modality", ""))
    return StudyResult(study=study, status="ingested", content_hash=digest, images=names, label=label_name,
                       modality=modality)


# ---------------------------------------------------------------------------------------------
# the run


def _apply(state: dict[str, dict], out_dir: Path, result: StudyResult) -> None:
    st = result.study
    if result.status in ("ingested", "skipped"):
        state[st.key] = {"case_id": st.case_id, "source": st.source, "hash": result.content_hash,
                         "images": list(result.images), "label": result.label, "split": st.split,
                         "modality": result.modality or st.modality}
    elif st.key in state and not result.transient:
        # the source changed and is now bad: its old outputs no longer describe it
        old = state.pop(st.key)
        for name in list(old.get("images", [])) + ([old["label"]] if old.get("label") else []):
            (out_dir / name).unlink(missing_ok=True)


def _write_failures(path: Path, results: list[StudyResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "case_id", "error"])
    for r in results:
        if r.status == "failed":
            w.writerow([r.study.source, r.study.case_id, r.error])
    atomic_write_text(path, buf.getvalue())


def _write_manifest(path: Path, out_dir: Path, state: dict[str, dict]) -> Path | None:
    rows = []
    for entry in sorted(state.values(), key=lambda e: e["case_id"]):
        rows.append(ManifestRow(case_id=entry["case_id"], images=tuple(out_dir / n for n in entry["images"]),
                                label=out_dir / entry["label"] if entry.get("label") else None,
                                split=entry.get("split", "test"), modality=entry.get("modality", "")))
    if not rows:  # a manifest with no cases is not a manifest: remove the stale one this folder had
        path.unlink(missing_ok=True)
        return None
    return write_manifest(rows, path)


def finish_ingest(plan: IngestPlan, results: list[StudyResult], *, state: dict[str, dict] | None = None) -> IngestReport:
    """Record ``results`` in the state file, write the manifest (every study in the output
    folder) and ``failures.csv`` (this run's failures, header only when none).

    ``state``: the state with ``results`` already applied (as :func:`ingest_sources` keeps it);
    by default they are applied to ``plan.state`` here.
    """
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if state is None:  # otherwise the caller applied the results as they came
        state = dict(plan.state)
        for r in results:
            _apply(state, out, r)
    every = list(plan.failures) + list(results)
    _write_state(out, state)
    manifest = _write_manifest(plan.manifest, out, state)
    failures = out / FAILURES_FILE
    _write_failures(failures, every)
    return IngestReport(out_dir=out, manifest=manifest, failures_csv=failures, results=every)


def ingest_sources(sources: list[str | Path], out_dir: str | Path, *, manifest: str | Path | None = None,
                   series_uid: str | None = None, split: str = "test", label: str | Path | None = None,
                   progress: Callable[[int, int, StudyResult], None] | None = None) -> IngestReport:
    """Ingest every study of ``sources`` into ``out_dir``; see the module docstring.

    A bad study is reported (``report.failed``, ``failures.csv``) and the others go on. The
    state file is updated after every study, so an interrupted run resumes where it stopped.

    Args:
        progress: called as ``progress(i, n, result)`` after each study (1-based ``i``).

    Returns:
        an :class:`IngestReport`; ``report.ok`` is False when any study failed.
    """
    plan = plan_ingest(sources, out_dir, manifest=manifest, series_uid=series_uid, split=split, label=label)
    state = dict(plan.state)
    results: list[StudyResult] = []
    n = len(plan.studies)
    for i, study in enumerate(plan.studies, start=1):
        try:
            result = ingest_study(study, plan.out_dir, previous=state.get(study.key))
        except OSError as exc:
            result = StudyResult(study=study, status="failed", error=f"{study.source}: I/O error ({exc})",
                                 transient=True)
        results.append(result)
        _apply(state, plan.out_dir, result)
        if result.status == "ingested":
            plan.out_dir.mkdir(parents=True, exist_ok=True)
            _write_state(plan.out_dir, state)
        if progress is not None:
            progress(i, n, result)
    return finish_ingest(plan, results, state=state)


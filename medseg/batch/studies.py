"""Studies: what ingest and batch find in their sources, with readable, unique, stable ids.

A *study* is one image file, the channel files of one case (nnU-Net naming ``case_0000.nii.gz``,
``case_0001.nii.gz``…, or a manifest row's ``;``-joined channels), or one folder holding a DICOM
series. Sources are folder trees, manifest CSVs, MSD / nnU-Net ``dataset.json`` files, single
image files, DICOM folders and multi-frame (enhanced) DICOM files.

In a folder tree:

- every NIfTI/NRRD/MetaImage file is a study, except the voxel file a ``.mhd``/``.nhdr``
  header names (it belongs to that header's study) and channel files, which are grouped;
- every folder whose files are DICOM (``.dcm`` or the ``DICM`` preamble) is one study;
- side files (``.json``, ``.csv``, ``.txt``…) and hidden entries are ignored; any other file,
  an empty folder, a broken symbolic link or a loop of links is an *invalid* study that fails
  with its reason (it is reported, never silently skipped);
- ``labels/`` at the root holds reference label maps (``labels/<name>.nii.gz``), not studies.

Ids: the path relative to the source, folders joined by ``__``, the image suffix dropped, every
run of characters other than letters (any script), digits, ``.``, ``-`` and ``_`` replaced by
``_``. Two studies whose ids are equal ignoring case (``x.nii`` beside ``x.nii.gz``, ``a b``
beside ``a_b``) are told apart deterministically: the one whose name needs no change (else the
first by path) keeps the id, the others get ``~`` and 6 hex digits of a hash of their path.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Literal

from medseg.errors import InputError
from medseg.io.files import (
    SIDE_FILE_SUFFIXES,
    channel_groups,
    detached_data_files,
    find_image,
    is_image_path,
    missing_problem,
    resolved_path,
    strip_image_suffix,
)
from medseg.io import single_dicom_file_problem
from medseg.io.sitk_io import is_dicom_file, is_multiframe_dicom

__all__ = ["Study", "discover_studies", "discover_source", "assign_ids", "safe_id", "LABELS_FOLDER"]

LABELS_FOLDER = "labels"
_MAX_ID = 100
_NOT_ID = re.compile(r"[^\w.-]+")


@dataclass(frozen=True)
class Study:
    """One study.

    Attributes:
        study_id: readable, file-system-safe, unique among the studies of a run (output folder
            and state file name).
        sources: the image file(s), one per channel, or the DICOM series folder.
        kind: ``"file"``, ``"dicom"`` or ``"invalid"`` (a file that is no image, channels with a
            gap…: it fails at the ``ingest`` stage with ``problem`` as its reason).
        label: reference label map, when one exists.
        key: identity across runs (the resolved source path; ``#case=ID`` for manifest rows).
        split: ``train``, ``val`` or ``test`` (manifest rows; ``test`` otherwise).
        modality: the manifest's ``modality`` column (may be empty).
        series_uid: the DICOM SeriesInstanceUID to read in a folder holding several.
        problem: why an ``invalid`` study cannot be read.
    """

    study_id: str
    sources: tuple[str, ...]
    kind: Literal["file", "dicom", "invalid"]
    label: str | None = None
    key: str = ""
    split: str = "test"
    modality: str = ""
    series_uid: str | None = None
    problem: str = ""

    @property
    def source(self) -> str:
        """The sources as one string (channels joined by ``;``), as in manifests and failures.csv."""
        return ";".join(self.sources)


def safe_id(parts: Iterable[str]) -> str:
    """A readable id from path parts: folders joined by ``__``, other characters than letters
    (any script), digits, ``.``, ``-``, ``_`` become ``_``; at most 100 characters."""
    cleaned = []
    for part in parts:
        text = _NOT_ID.sub("_", unicodedata.normalize("NFC", part)).strip("._-")
        if text:
            cleaned.append(text)
    sid = "__".join(cleaned)[:_MAX_ID].strip("._-")
    return sid or "study"


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=3).hexdigest()


def assign_ids(studies: list[Study], *, previous: dict[str, str] | None = None,
               reserve_previous: bool = False) -> list[Study]:
    """Give every study a unique id (ignoring case), keeping ids stable across runs.

    Each study arrives with its preferred id in ``study_id``. ``previous`` maps a study ``key``
    to the id an earlier run gave it, which it keeps while free; with ``reserve_previous`` the
    ids of earlier studies that are not listed now stay theirs (ingest: one output folder
    collects several sources over time). A study whose preferred id is taken gets
    ``<id>~<6 hex digits of a hash of its key>``; among studies that want one id, the one whose
    name needed no cleaning keeps it, else the first by key.

    Returns:
        the studies with their final ids, sorted by id.
    """
    previous = previous or {}
    listed = {s.key for s in studies}
    taken = {sid.casefold() for key, sid in previous.items() if reserve_previous and key not in listed}
    final: dict[str, str] = {}
    for s in sorted(studies, key=lambda s: s.key):
        old = previous.get(s.key)
        if old is not None and old.casefold() not in taken:
            final[s.key] = old
            taken.add(old.casefold())
    rest = [s for s in studies if s.key not in final]

    def exactness(s: Study) -> tuple[bool, str]:
        raw = strip_image_suffix(Path(s.sources[0]).name) if s.sources else ""
        return (raw != s.study_id, s.key)

    for s in sorted(rest, key=exactness):
        sid = s.study_id
        if sid.casefold() in taken:
            sid = f"{s.study_id[:_MAX_ID - 7]}~{_short_hash(s.key)}"
            n = 1
            while sid.casefold() in taken:  # practically never: a hash collision among one name's studies
                sid = f"{s.study_id[:_MAX_ID - 9]}~{_short_hash(f'{s.key}#{n}')}"
                n += 1
        final[s.key] = sid
        taken.add(sid.casefold())
    return sorted((replace(s, study_id=final[s.key]) for s in studies), key=lambda s: s.study_id)


def _invalid(path: Path, problem: str, parts: tuple[str, ...]) -> Study:
    return Study(safe_id(parts), (str(path),), "invalid", key=str(path.absolute()), problem=problem)


def _reference(labels_dir: Path | None, name: str) -> str | None:
    found = find_image(labels_dir, name) if labels_dir is not None else None
    return str(found) if found is not None else None


def _walk(root: Path, skip: set[Path], split: str, series_uid: str | None) -> list[Study]:
    """The studies of a folder tree. Symbolic links to folders are followed once: a loop, or a
    second link to a folder already searched, is a study of its own that fails with its reason,
    and so are broken links and empty folders."""
    labels_dir = root / LABELS_FOLDER if (root / LABELS_FOLDER).is_dir() else None
    studies: list[Study] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        rel = here.relative_to(root).parts
        st = os.stat(here)
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".") or resolved_path(sub) in skip or (here == root and d == LABELS_FOLDER):
                continue
            try:
                sst = os.stat(sub)
            except OSError:
                studies.append(_invalid(sub, missing_problem(sub), rel + (d,)))
                continue
            if (sst.st_dev, sst.st_ino) in seen:
                studies.append(_invalid(sub, f"symbolic link to a folder searched already ({resolved_path(sub)}): "
                                        "a loop of links, or a second link to one folder", rel + (d,)))
                continue
            seen.add((sst.st_dev, sst.st_ino))
            keep.append(d)
        dirnames[:] = keep
        names = sorted(f for f in filenames if not f.startswith("."))
        if here != root and not names and not keep:
            studies.append(_invalid(here, "empty folder: no images or DICOM series", rel))
            continue
        files = []
        for name in names:
            f = here / name
            if f.is_symlink() and not f.exists():
                studies.append(_invalid(f, missing_problem(f), rel + (strip_image_suffix(name),)))
            else:
                files.append(f)
        data_files = {d.name for f in files for d in detached_data_files(f)}
        images = [f for f in files if is_image_path(f.name) and f.name not in data_files]
        others = [f for f in files if not is_image_path(f.name) and f.name not in data_files
                  and not f.name.lower().endswith(SIDE_FILE_SUFFIXES)]
        dicom = [f for f in others if is_dicom_file(f)]
        if dicom:
            name = here.name if here != root else root.name
            studies.append(Study(safe_id(rel or (root.name,)), (str(here),), "dicom", _reference(labels_dir, name),
                                 key=str(resolved_path(here)) + (f"#series={series_uid}" if series_uid else ""),
                                 split=split, series_uid=series_uid))
        for f in others:
            if f not in dicom:
                studies.append(_invalid(f, "not a supported image (expected .nii, .nii.gz, .nrrd, .mha, .mhd "
                                        "or a folder holding a DICOM series)", rel + (f.name,)))
        groups, plain = channel_groups(images)
        for case, channels in groups.items():
            parts = rel + (case,)
            key = str(resolved_path(here) / case) + "#channels"
            gaps = [c for c in range(max(channels) + 1) if c not in channels]
            if gaps:
                missing = ", ".join(f"{case}_{c:04d}" for c in gaps)
                studies.append(Study(safe_id(parts), tuple(str(p) for p in channels.values()), "invalid", key=key,
                                     problem=f"channel file(s) {missing} missing (channels are numbered from 0000 "
                                             "without gaps)"))
                continue
            studies.append(Study(safe_id(parts), tuple(str(p) for p in channels.values()), "file",
                                 _reference(labels_dir, case), key=key, split=split))
        for f in plain:
            stem = strip_image_suffix(f.name)
            studies.append(Study(safe_id(rel + (stem,)), (str(f),), "file", _reference(labels_dir, stem),
                                 key=str(resolved_path(f)), split=split))
    return studies


def discover_source(source: str | Path, *, exclude: Iterable[str | Path] = (), series_uid: str | None = None,
                    split: str = "test") -> list[Study]:
    """The studies of one source, with their preferred ids (not yet made unique: see :func:`assign_ids`).

    Args:
        source: a folder tree, a manifest ``.csv``, an MSD / nnU-Net ``dataset.json``, an image
            file or a DICOM series folder.
        exclude: folders never searched (the output folder).
        series_uid: the DICOM series to read in folders holding several.
        split: the split of studies that do not come from a manifest.

    Raises:
        InputError: the source does not exist, is an empty folder, is a single DICOM file, or is
            a manifest / dataset.json that cannot be read. A file that is no image is not raised:
            it comes back as an ``invalid`` study.
    """
    from medseg.manifest import read_manifest, read_msd

    path = Path(source)
    if not path.exists():
        raise InputError(path, missing_problem(path))
    name = path.name
    if path.is_file() and name.lower().endswith((".csv", ".json")):
        if name.lower().endswith(".csv"):
            rows = read_manifest(path, check_exists=False)
        else:
            rows = read_msd(path)
        where = str(resolved_path(path))
        return [Study(safe_id([r.case_id]), tuple(str(p) for p in r.images),
                      "dicom" if r.images[0].is_dir() else "file", str(r.label) if r.label else None,
                      key=f"{where}#case={r.case_id}", split=r.split, modality=r.modality, series_uid=series_uid)
                for r in rows]
    if path.is_file():
        if is_image_path(name):
            return [Study(safe_id([strip_image_suffix(name)]), (str(path),), "file", key=str(resolved_path(path)),
                          split=split)]
        if is_dicom_file(path):
            if is_multiframe_dicom(path):
                return [Study(safe_id([path.stem]), (str(path),), "dicom", key=str(resolved_path(path)), split=split)]
            raise InputError(path, single_dicom_file_problem(path))
        return [_invalid(path, "not a supported image (expected .nii, .nii.gz, .nrrd, .mha, .mhd or a folder "
                         "holding a DICOM series)", (name,))]
    manifest = path / "manifest.csv"
    if manifest.is_file():
        return discover_source(manifest, exclude=exclude, series_uid=series_uid, split=split)
    skip = {resolved_path(Path(p)) for p in exclude}
    studies = _walk(resolved_path(path), skip, split, series_uid)
    if not studies:
        if not any(True for _ in path.iterdir()):
            raise InputError(path, "empty folder: no images or DICOM series to read")
        raise InputError(path, "no images (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series in this folder or "
                         "below it")
    # a study listed under the folder's resolved path is named by the path as given
    given, resolved = str(path), str(resolved_path(path))
    if given != resolved:
        studies = [replace(s, sources=tuple(given + p[len(resolved):] if p.startswith(resolved) else p
                                            for p in s.sources)) for s in studies]
    return studies


def discover_studies(sources: Iterable[str | Path], *, exclude: Iterable[str | Path] = (),
                     series_uid: str | None = None, split: str = "test", previous: dict[str, str] | None = None,
                     reserve_previous: bool = False, on_error: Literal["raise", "record"] = "raise") -> list[Study]:
    """Every study of ``sources``, with unique ids (see :func:`discover_source`, :func:`assign_ids`).

    The same study reached twice (a file and the folder holding it) is listed once.
    ``on_error="record"`` turns a source that cannot be listed into an ``invalid`` study that
    carries the reason (ingest reports it and goes on); ``"raise"`` raises it (batch: an archive
    that cannot be listed stops the run before any study).
    """
    exclude = tuple(exclude)
    found: dict[str, Study] = {}
    for src in sources:
        try:
            listed = discover_source(src, exclude=exclude, series_uid=series_uid, split=split)
        except InputError as exc:
            if on_error == "raise":
                raise
            p = Path(src)
            listed = [Study(safe_id([strip_image_suffix(p.name)]), (str(p),), "invalid", key=str(p.absolute()),
                            problem=exc.problem)]
        for s in listed:
            found.setdefault(s.key, s)
    return assign_ids(list(found.values()), previous=previous, reserve_previous=reserve_previous)

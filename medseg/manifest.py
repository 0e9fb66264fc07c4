"""Manifests: the CSV of ../shared/DESIGN.md (``case_id,image,label,split[,modality]``).

``image`` holds one path or several channel paths joined by ``;``; ``label`` may be empty;
``split`` is ``train``, ``val`` or ``test``. Relative paths are relative to the manifest's
folder and must stay inside ``root`` (default: that folder) unless ``allow_outside=True``.

A path may instead start with ``${MEDSEG_SHARED_DATA}/``: it is then relative to the shared
data folder of :func:`shared_data_dir` (the environment variable ``MEDSEG_SHARED_DATA``, else
``../shared/data`` beside the repository), which counts as an allowed root for such paths just
as the manifest's folder does for the others: ``${MEDSEG_SHARED_DATA}/../x`` is refused like
``../x`` is. Example manifests that point at the shared test data (``data_manifests/``) work
this way wherever the checkout lies.

:func:`import_msd` turns a Medical Segmentation Decathlon / nnU-Net ``dataset.json`` into a
manifest (paths confined to the dataset's folder in the same way).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError, read_text_input
from medseg.io.atomic import atomic_path
from medseg.io.files import strip_image_suffix

__all__ = ["ManifestRow", "read_manifest", "write_manifest", "read_msd", "read_msd_labels", "read_msd_channels", "import_msd",
           "shared_data_dir", "SPLITS", "MANIFEST_COLUMNS", "SHARED_DATA_ENV", "SHARED_DATA_PREFIX"]

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("case_id", "image", "label", "split", "modality")
SHARED_DATA_ENV = "MEDSEG_SHARED_DATA"
SHARED_DATA_PREFIX = "${" + SHARED_DATA_ENV + "}/"


def _repository_root() -> Path:
    """The main working tree of the git repository this package lies in (its checkout otherwise).

    A linked worktree (``git worktree add``, anywhere on disk) has a ``.git`` file pointing at
    ``<main>/.git/worktrees/<name>``, whose ``commondir`` leads back to ``<main>/.git``.
    """
    checkout = Path(__file__).resolve().parents[1]
    dot_git = checkout / ".git"
    if dot_git.is_file():
        try:
            text = dot_git.read_text(encoding="utf-8").strip()
        except OSError:
            return checkout
        if text.startswith("gitdir:"):
            gitdir = (checkout / text[len("gitdir:"):].strip()).resolve()
            common = gitdir / "commondir"
            if common.is_file():
                try:
                    main_git = (gitdir / common.read_text(encoding="utf-8").strip()).resolve()
                except OSError:
                    return checkout
                if main_git.name == ".git":
                    return main_git.parent
    return checkout


def shared_data_dir() -> Path:
    """The shared data folder (absolute): ``$MEDSEG_SHARED_DATA`` when set, else
    ``<repository root>/../shared/data``, the repository root being the main working tree even
    when this package runs from a linked git worktree elsewhere. It may not exist."""
    env = os.environ.get(SHARED_DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return (_repository_root().parent / "shared" / "data").resolve()


@dataclass(frozen=True)
class ManifestRow:
    """One case: absolute channel image paths, optional label path, split and modality."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    split: str
    modality: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def _resolve(manifest: Path, base: Path, root: Path, value: str, allow_outside: bool, line: int) -> Path:
    text = value.strip()
    if text.startswith(SHARED_DATA_PREFIX):
        shared = shared_data_dir()
        resolved = (shared / text[len(SHARED_DATA_PREFIX):]).resolve()
        if not allow_outside and not (resolved.is_relative_to(shared) or resolved.is_relative_to(root)):
            raise InputError(manifest, f"line {line}: path {value!r} escapes the shared data folder {shared}")
        return resolved
    p = Path(text)
    if p.is_absolute() and not allow_outside:
        raise InputError(manifest, f"line {line}: absolute path {value!r} not allowed "
                         "(use paths relative to the manifest, or allow absolute paths explicitly)")
    resolved = (base / p).resolve()
    if not allow_outside and not resolved.is_relative_to(root):
        raise InputError(manifest, f"line {line}: path {value!r} escapes the manifest root {root}")
    return resolved


def read_manifest(path: str | Path, *, root: str | Path | None = None, allow_outside: bool = False,
                  check_exists: bool = True) -> list[ManifestRow]:
    """Read and validate a manifest CSV.

    The file is UTF-8 text (a byte order mark is dropped; ``\n`` or ``\r\n`` line ends). Blank
    lines (and lines of empty fields only) are skipped; columns besides ``case_id, image, label,
    split, modality`` are kept in :attr:`ManifestRow.extra`; a path holding a comma is quoted
    (``"scans/a,b.nii.gz"``). Line numbers in messages are the file's own.

    Args:
        path: the CSV file.
        root: folder every relative path must stay inside (default: the manifest's folder);
            ``${MEDSEG_SHARED_DATA}/`` paths may also lie inside :func:`shared_data_dir`.
        allow_outside: accept absolute paths and paths outside ``root``.
        check_exists: require every image and label file to exist (training: every case must
            be there). With ``False`` a missing file is no error here: its row is returned, and
            the caller reports it as that case's failure (ingest, batch).

    Raises:
        InputError: naming the manifest (and the line): not UTF-8 text, missing or repeated
            columns, no cases, duplicate case ids, bad split, no image, an empty item in a ``;``
            channel list, more values than columns, a path that escapes the root, a missing file
            (only with ``check_exists``).
    """
    path = Path(path)
    text = read_text_input(path, "manifest")
    base = path.resolve().parent
    root_dir = Path(root).resolve() if root is not None else base
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header: list[str] | None = None
        for fields in reader:
            if any(f.strip() for f in fields):
                header = [f.strip() for f in fields]
                break
        if header is None:
            raise InputError(path, "empty manifest; expected the header case_id,image,label,split[,modality] "
                             "and one line per case")
        missing = [c for c in ("case_id", "image", "label", "split") if c not in header]
        if missing:
            raise InputError(path, f"manifest lacks column(s) {', '.join(missing)}; "
                             "expected case_id,image,label,split[,modality]")
        repeated = sorted({c for c in header if c and header.count(c) > 1})
        if repeated:
            raise InputError(path, f"line {reader.line_num}: column(s) {', '.join(repeated)} given twice")
        rows: list[ManifestRow] = []
        seen: set[str] = set()
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            rows.append(_manifest_row(path, reader.line_num, header, fields, base, root_dir, allow_outside,
                                      check_exists, seen))
    except csv.Error as exc:
        raise InputError(path, f"line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise InputError(path, "manifest has no cases")
    return rows


def _manifest_row(path: Path, line: int, header: list[str], fields: list[str], base: Path, root_dir: Path,
                  allow_outside: bool, check_exists: bool, seen: set[str]) -> ManifestRow:
    """One validated case of a manifest (``line``: where its record ends in the file)."""
    if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
        raise InputError(path, f"line {line}: {len(fields)} values for {len(header)} columns "
                         "(quote a path that holds a comma: \"scans/a,b.nii.gz\")")
    rec = {name: (fields[i].strip() if i < len(fields) else "") for i, name in enumerate(header) if name}
    case = rec["case_id"]
    if not case:
        raise InputError(path, f"line {line}: empty case_id")
    if case in seen:
        raise InputError(path, f"line {line}: duplicate case_id {case!r}")
    seen.add(case)
    split = rec["split"].lower()
    if split not in SPLITS:
        raise InputError(path, f"line {line}: split {rec['split']!r} is not one of {', '.join(SPLITS)}")
    if not rec["image"]:
        raise InputError(path, f"line {line}: case {case!r} has no image")
    channels = rec["image"].split(";")
    if any(not c.strip() for c in channels):
        raise InputError(path, f"line {line}: case {case!r}: empty item in the channel list {rec['image']!r} "
                         "(channel paths are joined by ';', one per channel)")
    images = tuple(_resolve(path, base, root_dir, c, allow_outside, line) for c in channels)
    label = _resolve(path, base, root_dir, rec["label"], allow_outside, line) if rec["label"] else None
    if check_exists:
        for p in images + ((label,) if label else ()):
            if not p.exists():
                raise InputError(path, f"line {line}: file not found: {p}")
    extra = {k: v for k, v in rec.items() if k not in MANIFEST_COLUMNS}
    return ManifestRow(case, images, label, split, rec.get("modality", ""), extra)


def write_manifest(rows: list[ManifestRow], path: str | Path) -> Path:
    """Write ``rows`` atomically, with paths relative to the manifest's folder where possible."""
    path = Path(path)
    base = path.resolve().parent

    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(base))
        except ValueError:
            return str(p)

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_COLUMNS)
            for r in rows:
                w.writerow([r.case_id, ";".join(rel(p) for p in r.images), rel(r.label) if r.label else "", r.split, r.modality])
    return path


# ---------------------------------------------------------------------------------------------
# MSD / nnU-Net dataset.json


def _load_dataset_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "dataset.json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable dataset.json ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "dataset.json must hold a JSON object")
    return data


def _modality(names: list[str]) -> str:
    """Manifest modality from MSD/nnU-Net channel names: ``CT`` when every channel is CT, else ``MR``
    for MR sequence names (T1, T2, FLAIR, ADC, DWI...), else the names joined by ``;``."""
    upper = [n.strip().upper() for n in names]
    if upper and all(u == "CT" or "CT" in u.split() for u in upper):
        return "CT"
    mr = re.compile(r"^(MR|MRI|T1|T1W|T1C|T1GD|T2|T2W|FLAIR|ADC|DWI|PD|T1CE|T2FLAIR|NONCONTRAST|CONTRAST)")
    if upper and all(mr.match(u.replace("-", "").replace(" ", "")) for u in upper):
        return "MR"
    return ";".join(n.strip() for n in names)


def _channel_names(path: Path, data: dict) -> list[str]:
    channels = data.get("channel_names", data.get("modality", {}))
    if not isinstance(channels, dict) or not channels:
        return []
    try:
        return [str(channels[k]) for k in sorted(channels, key=lambda k: int(k))]
    except (TypeError, ValueError):
        raise InputError(path, "channel_names/modality keys must be channel numbers \"0\", \"1\", ...") from None


def read_msd_channels(dataset_json: str | Path) -> list[str]:
    """The channel names of a ``dataset.json`` in channel order (nnU-Net v2 ``channel_names``, MSD
    ``modality``: ``{"0": "FLAIR", "1": "T1w"}`` gives ``["FLAIR", "T1w"]``); empty when it names none."""
    path = Path(dataset_json)
    return _channel_names(path, _load_dataset_json(path))


def read_msd_labels(dataset_json: str | Path) -> dict[int, str]:
    """The labels of a ``dataset.json`` as ``{id: name}`` (0/background dropped).

    MSD writes ``{"0": "background", "1": "liver"}``; nnU-Net v2 ``{"background": 0, "liver": 1}``
    (region-based nnU-Net labels, lists of ids, are refused).
    """
    path = Path(dataset_json)
    labels = _load_dataset_json(path).get("labels", {})
    if not isinstance(labels, dict):
        raise InputError(path, "'labels' must be an object")
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: name -> id
            key, name = v, str(k)
        elif isinstance(v, str) and str(k).lstrip("-").isdigit():  # MSD: id -> name
            key, name = int(k), v
        else:
            raise InputError(path, f"label {k!r}: {v!r} is neither id->name (MSD) nor name->id (nnU-Net v2)")
        if key != 0:
            out[key] = name
    return out


def read_msd(dataset_json: str | Path, *, allow_outside: bool = False) -> list[ManifestRow]:
    """Read a Medical Segmentation Decathlon or nnU-Net v2 ``dataset.json`` as manifest rows.

    - MSD: ``training: [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]`` (split
      ``train``) and ``test: ["./imagesTs/y.nii.gz"]`` (split ``test``, no label).
    - nnU-Net v2 (``channel_names`` + ``file_ending``): cases found in ``imagesTr/`` named
      ``<case>_<XXXX><file_ending>`` (one file per channel), labels ``labelsTr/<case><file_ending>``
      (split ``train``); ``imagesTs/`` cases become split ``test``.

    Paths are relative to the dataset.json's folder and must stay inside it unless
    ``allow_outside``. Files must exist.

    Raises:
        InputError: naming the dataset.json and the problem (unknown layout, an escaping path,
            a missing file or channel, duplicate case ids).
    """
    path = Path(dataset_json)
    data = _load_dataset_json(path)
    base = path.resolve().parent
    modality = _modality(_channel_names(path, data))
    rows: list[ManifestRow] = []

    def resolve(value: object, what: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise InputError(path, f"{what}: expected a path string, got {value!r}")
        raw = Path(value.strip())
        if raw.is_absolute() and not allow_outside:
            raise InputError(path, f"{what}: absolute path {value!r} not allowed (paths are relative to the dataset.json)")
        p = (base / raw).resolve()
        if not allow_outside and not p.is_relative_to(base):
            raise InputError(path, f"{what}: path {value!r} escapes the dataset folder {base}")
        if not p.is_file():
            raise InputError(path, f"{what}: file not found: {value}")
        return p

    if "training" in data or "test" in data:
        for i, entry in enumerate(data.get("training", []) or []):
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(path, f"training[{i}]: expected {{\"image\": ..., \"label\": ...}}, got {entry!r}")
            image = resolve(entry["image"], f"training[{i}].image")
            label = resolve(entry["label"], f"training[{i}].label") if entry.get("label") else None
            rows.append(ManifestRow(strip_image_suffix(image.name), (image,), label, "train", modality))
        for i, entry in enumerate(data.get("test", []) or []):
            value = entry.get("image") if isinstance(entry, dict) else entry
            image = resolve(value, f"test[{i}]")
            rows.append(ManifestRow(strip_image_suffix(image.name), (image,), None, "test", modality))
    elif "file_ending" in data:
        ending = str(data["file_ending"])
        n_channels = max(1, len(_channel_names(path, data)))
        for folder, split in (("imagesTr", "train"), ("imagesTs", "test")):
            rows += _nnunet_cases(path, base / folder, ending, n_channels, split, modality,
                                  base / "labelsTr" if split == "train" else None)
        if not rows:
            raise InputError(path, f"no cases found in imagesTr/ or imagesTs/ (files named <case>_0000{ending})")
    else:
        raise InputError(path, "neither an MSD dataset.json ('training'/'test' lists) nor an nnU-Net v2 one "
                         "('channel_names' and 'file_ending')")
    seen: set[str] = set()
    for r in rows:
        if r.case_id in seen:
            raise InputError(path, f"duplicate case id {r.case_id!r}")
        seen.add(r.case_id)
    if not rows:
        raise InputError(path, "dataset.json lists no cases")
    return rows


def _nnunet_cases(path: Path, folder: Path, ending: str, n_channels: int, split: str, modality: str,
                  labels: Path | None) -> list[ManifestRow]:
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = pattern.match(f.name)
        if m and not f.name.startswith("."):
            cases.setdefault(m["case"], {})[int(m["ch"])] = f.resolve()
    rows = []
    for case, channels in sorted(cases.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            raise InputError(path, f"case {case!r} in {folder.name}/ lacks channel file(s) "
                             + ", ".join(f"{case}_{c:04d}{ending}" for c in missing))
        label = None
        if labels is not None:
            label = labels / f"{case}{ending}"
            if not label.is_file():
                raise InputError(path, f"case {case!r}: label file not found: labelsTr/{case}{ending}")
        rows.append(ManifestRow(case, tuple(channels[c] for c in range(n_channels)), label, split, modality))
    return rows


def import_msd(dataset_json: str | Path, out_csv: str | Path, *, labels_json: str | Path | None = None,
               allow_outside: bool = False) -> Path:
    """Write the manifest of an MSD / nnU-Net ``dataset.json`` (see :func:`read_msd`) to ``out_csv``.

    Paths are written relative to ``out_csv``'s folder where possible (absolute otherwise, which
    :func:`read_manifest` then accepts only with ``allow_outside=True``). ``labels_json``: also
    write the dataset's labels as a medseg labels file (``{"1": "liver", ...}``).
    """
    rows = read_msd(dataset_json, allow_outside=allow_outside)
    if labels_json is not None:
        from medseg.plans import write_labels

        write_labels(read_msd_labels(dataset_json), labels_json)
    return write_manifest(rows, out_csv)

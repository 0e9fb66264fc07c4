"""Manifests: the CSV of ../shared/DESIGN.md (``case_id,image,label,split[,modality]``).

``image`` holds one path or several channel paths joined by ``;``; ``label`` may be empty;
``split`` is ``train``, ``val`` or ``test``. Relative paths are relative to the manifest's
folder and must stay inside ``root`` (default: that folder) unless ``allow_outside=True``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError
from medseg.io.atomic import atomic_path

__all__ = ["ManifestRow", "read_manifest", "write_manifest", "SPLITS", "MANIFEST_COLUMNS"]

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("case_id", "image", "label", "split", "modality")


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
    p = Path(value.strip())
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

    Args:
        path: the CSV file.
        root: folder every path must stay inside (default: the manifest's folder).
        allow_outside: accept absolute paths and paths outside ``root``.
        check_exists: require every image and label file to exist.

    Raises:
        InputError: missing columns, duplicate case ids, bad split, empty image, a path that
            escapes the root, a missing file (each names the manifest and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    base = path.resolve().parent
    root_dir = Path(root).resolve() if root is not None else base
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("case_id", "image", "label", "split") if c not in cols]
        if missing:
            raise InputError(path, f"manifest lacks column(s) {', '.join(missing)}; expected case_id,image,label,split[,modality]")
        rows: list[ManifestRow] = []
        seen: set[str] = set()
        for line, raw in enumerate(reader, start=2):
            rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
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
            images = tuple(_resolve(path, base, root_dir, v, allow_outside, line) for v in rec["image"].split(";") if v.strip())
            label = _resolve(path, base, root_dir, rec["label"], allow_outside, line) if rec["label"] else None
            if check_exists:
                for p in images + ((label,) if label else ()):
                    if not p.exists():
                        raise InputError(path, f"line {line}: file not found: {p}")
            extra = {k: v for k, v in rec.items() if k not in MANIFEST_COLUMNS}
            rows.append(ManifestRow(case, images, label, split, rec.get("modality", ""), extra))
    if not rows:
        raise InputError(path, "manifest has no cases")
    return rows


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

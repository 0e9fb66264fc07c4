"""What medseg calls an image file, which files belong to one study, and the content hash of a study.

The one vocabulary of file names that ingest, batch, evaluation and the CLI share:

- :data:`IMAGE_SUFFIXES`: the single-file image formats (NIfTI, NRRD, MetaImage);
- :func:`detached_data_files`: the voxel file(s) a MetaImage (``.mhd``) or detached NRRD
  (``.nhdr``) header names, which belong to that header's study and are never studies of their own;
- :func:`channel_groups`: nnU-Net's channel naming, ``case_0000.nii.gz``, ``case_0001.nii.gz``…
  (one study ``case``, one file per channel);
- :func:`content_hash`: BLAKE2b of every byte a study is made of (files, a DICOM folder's files,
  detached voxel files), the identity that decides whether a study changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

__all__ = [
    "IMAGE_SUFFIXES",
    "SIDE_FILE_SUFFIXES",
    "is_image_path",
    "resolved_path",
    "missing_problem",
    "strip_image_suffix",
    "find_image",
    "detached_data_files",
    "channel_groups",
    "content_hash",
    "content_signature",
    "update_hash",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Files an archive may hold beside its scans: neither studies nor failures.
SIDE_FILE_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".html", ".htm", ".log", ".yaml", ".yml", ".pdf")
_HASH_CHUNK = 1 << 20
_DETACHED = re.compile(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(.+?)\s*$", flags=re.M | re.I)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def resolved_path(path: str | Path) -> Path:
    """``path`` with symbolic links resolved, or made absolute where they cannot be (a loop of links)."""
    path = Path(path)
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def missing_problem(path: str | Path) -> str:
    """Why ``path`` cannot be opened: ``does not exist``, or that it is a broken symbolic link
    (naming its target) or a loop of links."""
    path = Path(path)
    if not path.is_symlink():
        return "does not exist"
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"broken symbolic link (to {target}: missing, or a loop of links)"


def is_image_path(path: str | Path) -> bool:
    """True for a file name medseg reads as one image (NIfTI, NRRD, MetaImage)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """``name`` without its image suffix (``scan.nii.gz`` → ``scan``); other names unchanged."""
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_image(folder: str | Path, stem: str) -> Path | None:
    """The image file ``<stem><image suffix>`` in ``folder`` (suffixes tried in
    :data:`IMAGE_SUFFIXES` order), or None."""
    folder = Path(folder)
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def detached_data_files(path: str | Path) -> list[Path]:
    """The voxel file(s) a MetaImage (``.mhd``) or detached NRRD (``.nhdr``) header points to.

    Returned whether or not they exist (a missing one is the header's problem to report).
    ``LOCAL`` (voxels inside the header file) gives none; ``LIST`` and printf-style file
    patterns are not resolved (none returned).
    """
    path = Path(path)
    if path.suffix.lower() not in (".mhd", ".nhdr"):
        return []
    try:
        with open(path, "rb") as f:
            text = f.read(65536).decode("latin-1")
    except OSError:
        return []
    m = _DETACHED.search(text)
    if not m:
        return []
    value = m.group(1).strip()
    if value.upper() in ("LOCAL", "LIST") or "%" in value or " " in value:
        return []
    return [path.parent / value]


def channel_groups(files: Iterable[Path]) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """Group image files by nnU-Net's channel naming (``<case>_<XXXX><suffix>``).

    A case is formed when its ``_0000`` file exists. Returns ``(groups, rest)``: ``groups`` maps
    the case name to ``{channel index: file}`` (the caller decides what a gap such as ``_0000``
    and ``_0002`` without ``_0001`` means), ``rest`` the other files, sorted. A lone
    ``scan_2023.nii.gz`` (no ``scan_0000``) is a plain file, not a channel.
    """
    by_case: dict[str, dict[int, Path]] = {}
    plain: list[Path] = []
    for f in files:
        m = _CHANNEL.match(strip_image_suffix(f.name))
        if m:
            by_case.setdefault(m["case"], {})[int(m["channel"])] = f
        else:
            plain.append(f)
    groups: dict[str, dict[int, Path]] = {}
    for case, channels in by_case.items():
        if 0 in channels:
            groups[case] = dict(sorted(channels.items()))
        else:
            plain.extend(channels.values())
    return groups, sorted(plain)


def update_hash(h, path: str | Path) -> None:
    """Feed a file's bytes to the hash object ``h`` (read in 1 MiB chunks)."""
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)


def _study_parts(sources: Iterable[str | Path]) -> list[tuple[bytes, Path | None]]:
    """What a study is made of, in hashing order: ``(tag, file)`` pairs; a ``None`` file is a
    missing detached voxel file (its name is in the tag)."""
    parts: list[tuple[bytes, Path | None]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            for f in sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith(".")):
                parts.append((f.name.encode("utf-8", "surrogateescape") + b"\0", f))
        else:
            parts.append((b"file\0", p))
            for data in detached_data_files(p):
                tag = b"\0data\0" + data.name.encode("utf-8", "surrogateescape") + b"\0"
                parts.append((tag, data) if data.is_file() else (tag + b"missing\0", None))
        parts.append((b"\1", None))
    return parts


def content_hash(sources: Iterable[str | Path]) -> str:
    """BLAKE2b (128-bit, hex) of a study's bytes.

    Per source: a file's bytes (and, for a ``.mhd``/``.nhdr`` header, its detached voxel file's
    bytes, or the name of a missing one); a folder (DICOM series): its sorted file names and
    their bytes. Hidden files are left out.

    Raises:
        OSError: a source that cannot be read.
    """
    h = hashlib.blake2b(digest_size=16)
    for tag, path in _study_parts(sources):
        h.update(tag)
        if path is not None:
            update_hash(h, path)
    return h.hexdigest()


def content_signature(sources: Iterable[str | Path]) -> list[list]:
    """What the file system says about every file of a study, without reading them:
    ``[path, size, mtime_ns, inode]`` per file (``[name, None, None, None]`` for a missing
    detached voxel file), in :func:`content_hash`'s order.

    When a study's signature equals the one recorded with its content hash, the hash still holds
    (the rule of rsync and make: a rewritten file gets a new mtime or inode); a run compares
    signatures and hashes only the studies whose signature changed.

    Raises:
        OSError: a source that cannot be listed or stat-ed.
    """
    sig: list[list] = []
    for tag, path in _study_parts(sources):
        if path is None:
            if tag != b"\1":
                sig.append([tag.decode("utf-8", "surrogateescape"), None, None, None])
            continue
        st = path.stat()
        sig.append([str(path), st.st_size, st.st_mtime_ns, st.st_ino])
    return sig

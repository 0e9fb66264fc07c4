"""Finding what to measure: label maps in folders, case names, the image of a case, prediction/reference pairs.

Folders are matched by file name: ``case_001.nii.gz`` is case ``case_001``; its image in an image
folder is ``case_001`` or nnU-Net's ``case_001_0000`` with any image suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError
from medseg.io.files import find_image, is_image_path, missing_problem, strip_image_suffix

__all__ = ["CasePair", "case_name", "image_files", "find_case_image", "match_cases", "find_volume_inputs"]

def case_name(path: str | Path) -> str:
    """A file's case name: its name without the image suffix (``case_001.nii.gz`` → ``case_001``)."""
    return strip_image_suffix(Path(path).name)


def image_files(folder: str | Path) -> dict[str, Path]:
    """The image files (NIfTI, NRRD, MetaImage) directly inside ``folder``, by file name, sorted; hidden files skipped."""
    folder = Path(folder)
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_path(p) and not p.name.startswith(".")}


def find_case_image(folder: str | Path, case: str) -> Path | None:
    """The file of ``case`` in ``folder``: ``<case><suffix>`` or nnU-Net's ``<case>_0000<suffix>`` (None when absent)."""
    return find_image(folder, case) or find_image(folder, f"{case}_0000")


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: prediction, reference, and optionally the image (for thumbnails)."""

    case: str
    pred: Path
    ref: Path
    image: Path | None = None


def _image_of(images: str | Path | None, case: str) -> Path | None:
    """``images`` itself when it is a file, the case's file in it when it is a folder, else None."""
    if images is None:
        return None
    images = Path(images)
    return find_case_image(images, case) if images.is_dir() else images


def match_cases(pred: str | Path, ref: str | Path, images: str | Path | None = None) -> list[CasePair]:
    """Pair predictions with references: two files, or two folders matched by file name.

    In folders, a reference ``X.nii.gz`` is matched with the prediction of the same file name, or
    failing that of the same case name (``X`` with another image suffix). Every reference needs a
    prediction (a missing one is an error naming it); predictions without a reference are ignored.
    ``images``: an optional image file/folder for thumbnails (``X.nii.gz`` or nnU-Net's ``X_0000.nii.gz``).

    Raises:
        InputError: a missing path, a folder without images, a reference without prediction.
    """
    pred, ref = Path(pred), Path(ref)
    for p, what in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise InputError(p, f"{what}: {missing_problem(p)}")
    if pred.is_dir() != ref.is_dir():
        raise InputError(pred, f"prediction is a {'folder' if pred.is_dir() else 'file'} but the reference {ref} is a "
                         f"{'folder' if ref.is_dir() else 'file'}: give two files or two folders")
    if not ref.is_dir():
        return [CasePair(case_name(ref), pred, ref, _image_of(images, case_name(ref)))]
    refs = image_files(ref)
    preds = image_files(pred)
    if not refs:
        raise InputError(ref, "no reference label files (.nii.gz, .nii, .nrrd, .mha) in this folder")
    by_case = {case_name(p): p for p in preds.values()}
    pairs = []
    for name, r in refs.items():
        p = preds.get(name) or by_case.get(case_name(name))
        if p is None:
            raise InputError(pred, f"no prediction for reference {name} (expected {pred / name})")
        img = find_case_image(images, case_name(name)) if images is not None else None
        pairs.append(CasePair(case_name(name), p, r, img))
    return pairs


def find_volume_inputs(source: str | Path, images: str | Path | None = None, *, split: str | None = None
                       ) -> list[tuple[str, Path, Path | None]]:
    """The ``(case, segmentation, image or None)`` triples of a manifest CSV or a folder of label maps.

    A manifest (DESIGN.md) gives the segmentation in its ``label`` column and the image as the
    first ``image`` path (rows without a label are skipped; ``split`` keeps one split). A folder
    gives every label map in it, with the image of the same file name (or nnU-Net's ``_0000``)
    from ``images`` when that folder is given.

    Raises:
        InputError: a missing source, a manifest error, a folder without label maps.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, missing_problem(source))
    if source.is_file() and source.suffix.lower() == ".csv":
        from medseg.manifest import read_manifest

        rows = read_manifest(source)
        out = [(r.case_id, r.label, r.images[0]) for r in rows if r.label is not None and (split is None or r.split == split)]
        if not out:
            raise InputError(source, "no manifest row has a label (segmentation)" + (f" in split {split!r}" if split else ""))
        return out
    if source.is_file():
        return [(case_name(source), source, _image_of(images, case_name(source)))]
    files = image_files(source)
    if not files:
        raise InputError(source, "no label maps (.nii.gz, .nii, .nrrd, .mha) in this folder")
    return [(case_name(p), p, find_case_image(images, case_name(p)) if images is not None else None)
            for p in files.values()]

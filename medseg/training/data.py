"""Loading the cases of a manifest into memory: training cases preprocessed once, validation cases as read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume
from medseg.manifest import ManifestRow, read_manifest
from medseg.preprocess import PreprocessConfig, SampleCase, fit_foreground_intensity, preprocess_case
from medseg.training.config import TrainConfig

__all__ = ["load_split_rows", "load_cases", "load_validation_cases", "resolve_preprocess", "ValidationCase"]


@dataclass(frozen=True)
class ValidationCase:
    """A validation case exactly as a user would evaluate it: the original volumes, on their own grid.

    ``images``: one :class:`Volume` per channel (the config's channel order); ``label``: the
    reference label map (integer class ids) on the images' grid.
    """

    case_id: str
    images: tuple[Volume, ...]
    label: Volume


def load_split_rows(cfg: TrainConfig, manifest: Path) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The manifest's training and validation rows (checked: channel count, labels present)."""
    manifest = Path(manifest)
    root = None
    if cfg.data.root is not None:
        root = cfg.data.root if cfg.data.root.is_absolute() else (manifest.resolve().parent / cfg.data.root).resolve()
    rows = read_manifest(manifest, root=root, allow_outside=cfg.data.allow_outside)
    n = len(cfg.data.channels)
    for r in rows:
        if r.split not in (cfg.data.train_split, cfg.data.val_split):
            continue
        if len(r.images) != n:
            raise InputError(manifest, f"case {r.case_id!r} has {len(r.images)} image(s) but the config expects "
                             f"{n} channel(s) ({', '.join(cfg.data.channels)})")
        if r.label is None:
            raise InputError(manifest, f"case {r.case_id!r} ({r.split}) has no label; training needs labels")
    train = [r for r in rows if r.split == cfg.data.train_split]
    val = [r for r in rows if r.split == cfg.data.val_split]
    if not train:
        raise InputError(manifest, f"no cases with split {cfg.data.train_split!r} to train on")
    return train, val


def _read_row(row: ManifestRow, max_label: int | None = None) -> tuple[list[Volume], Volume]:
    """The row's channel volumes and its label map on their grid.

    Raises:
        InputError: a label file holds a class id above ``max_label`` (names the file).
    """
    from medseg.io import read_label, read_volume

    images = [read_volume(p) for p in row.images]
    label = read_label(row.label, images[0])
    top = int(label.array.max()) if label.array.size else 0
    if max_label is not None and top > max_label:
        raise InputError(row.label, f"label value {top} is not one of the config's labels 0..{max_label}")
    return images, label


def resolve_preprocess(cfg: TrainConfig, train_rows: Sequence[ManifestRow]) -> PreprocessConfig:
    """The preprocessing config with CT ``foreground_percentiles`` fitted on the training cases."""
    pre = cfg.data.preprocess
    if not any(c.kind == "ct" and c.foreground_percentiles for c in pre.intensity):
        return pre
    samples = []
    for row in train_rows:
        images, label = _read_row(row)
        samples.append(([v.array for v in images], label.array))
    return fit_foreground_intensity(pre, samples, seed=cfg.seed)


def load_cases(rows: Sequence[ManifestRow], pre: PreprocessConfig, max_label: int) -> list[SampleCase]:
    """Read and preprocess each case once: ``image`` ``(C, X, Y, Z)`` float32, ``label`` uint8.

    Raises:
        InputError: a label file holds a class id above ``max_label`` (names the file).
    """
    cases = []
    for row in rows:
        images, label = _read_row(row, max_label)
        pc = preprocess_case(images, pre, label)
        cases.append(SampleCase(case_id=row.case_id, image=pc.image, label=np.ascontiguousarray(pc.label)))
    return cases


def load_validation_cases(rows: Sequence[ManifestRow], max_label: int) -> list[ValidationCase]:
    """Read each case's original volumes and label map (nothing resampled): what the predictor gets.

    Raises:
        InputError: a label file holds a class id above ``max_label`` (names the file).
    """
    out = []
    for row in rows:
        images, label = _read_row(row, max_label)
        out.append(ValidationCase(case_id=row.case_id, images=tuple(images), label=label))
    return out

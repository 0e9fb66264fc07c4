"""Loading the training and validation cases of a manifest into memory, preprocessed once."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import InputError
from medseg.manifest import ManifestRow, read_manifest
from medseg.preprocess import PreprocessConfig, SampleCase, fit_foreground_intensity, preprocess_case
from medseg.training.config import TrainConfig

__all__ = ["load_split_rows", "load_cases", "resolve_preprocess"]


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


def _read_row(row: ManifestRow):
    from medseg.io import read_label, read_volume

    images = [read_volume(p) for p in row.images]
    label = read_label(row.label, images[0])
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
        images, label = _read_row(row)
        top = int(label.array.max()) if label.array.size else 0
        if top > max_label:
            raise InputError(row.label, f"label value {top} is not one of the config's labels 0..{max_label}")
        pc = preprocess_case(images, pre, label)
        cases.append(SampleCase(case_id=row.case_id, image=pc.image, label=np.ascontiguousarray(pc.label)))
    return cases

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

__all__ = ["CaseSplit", "resolve_manifest", "labelled_rows", "load_split_rows", "load_cases", "load_validation_cases",
           "resolve_preprocess", "ValidationCase"]


@dataclass(frozen=True)
class ValidationCase:
    """A validation case exactly as a user would evaluate it: the original volumes, on their own grid.

    ``images``: one :class:`Volume` per channel (the config's channel order); ``label``: the
    reference label map (integer class ids) on the images' grid.
    """

    case_id: str
    images: tuple[Volume, ...]
    label: Volume


@dataclass(frozen=True)
class CaseSplit:
    """The case ids (manifest ``case_id``) a run trains on and validates on: one fold of a
    cross-validation (an entry of ``splits.json``)."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def resolve_manifest(cfg: TrainConfig, manifest: str | Path | None) -> Path:
    """The run's manifest: ``manifest`` when given (``--manifest``), else the config's ``data.manifest``.

    Raises:
        ValueError: neither is set.
    """
    if manifest is not None:
        return Path(manifest)
    if cfg.data.manifest is None:
        raise ValueError("no manifest: set data.manifest in the config or pass --manifest FILE.csv")
    return cfg.data.manifest


def labelled_rows(cfg: TrainConfig, manifest: Path) -> list[ManifestRow]:
    """The manifest's rows of the splits ``data.train_split`` and ``data.val_split``, in manifest
    order: the labelled cases a run (or a cross-validation) draws from.

    Raises:
        InputError: a case with another channel count than the config's, or without a label.
    """
    manifest = Path(manifest)
    root = None
    if cfg.data.root is not None:
        root = cfg.data.root if cfg.data.root.is_absolute() else (manifest.resolve().parent / cfg.data.root).resolve()
    rows = read_manifest(manifest, root=root, allow_outside=cfg.data.allow_outside)
    n = len(cfg.data.channels)
    out = []
    for r in rows:
        if r.split not in (cfg.data.train_split, cfg.data.val_split):
            continue
        if len(r.images) != n:
            raise InputError(manifest, f"case {r.case_id!r} has {len(r.images)} image(s) but the config expects "
                             f"{n} channel(s) ({', '.join(cfg.data.channels)})")
        if r.label is None:
            raise InputError(manifest, f"case {r.case_id!r} ({r.split}) has no label; training needs labels")
        out.append(r)
    return out


def load_split_rows(cfg: TrainConfig, manifest: Path, cases: CaseSplit | None = None
                    ) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The training and validation rows (checked: channel count, labels present): by the
    manifest's ``split`` column, or, given ``cases``, the labelled rows of those case ids in
    the order ``cases`` lists them.

    Raises:
        InputError: no case to train on, a case id of ``cases`` that is no labelled case of the
            manifest's training and validation splits.
    """
    rows = labelled_rows(cfg, manifest)
    if cases is None:
        train = [r for r in rows if r.split == cfg.data.train_split]
        val = [r for r in rows if r.split == cfg.data.val_split]
    else:
        by_id = {r.case_id: r for r in rows}
        unknown = [c for c in cases.train + cases.val if c not in by_id]
        if unknown:
            raise InputError(manifest, f"no labelled case {unknown[0]!r} (splits {cfg.data.train_split}, "
                             f"{cfg.data.val_split}) for the fold's " + ("training" if unknown[0] in cases.train
                                                                          else "validation") + " cases")
        train = [by_id[c] for c in cases.train]
        val = [by_id[c] for c in cases.val]
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
    """The preprocessing config with CT ``foreground_percentiles`` fitted on ``train_rows``, in
    their order: the run's training cases, or for a cross-validation fold every labelled case
    (:func:`labelled_rows`), so that every fold has the same preprocessing."""
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

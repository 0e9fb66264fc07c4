"""k-fold cross-validation by case: ``splits.json``, one model directory per fold, out-of-fold label maps.

A cross-validated model folder (``medseg train CONFIG --out MODEL_DIR --fold K`` / ``--folds all``)::

    MODEL_DIR/
      splits.json            # [{"train": [case ids], "val": [case ids]}, ...]: one entry per fold
                             #   (nnU-Net's splits_final.json); made once, then used as it is (editable)
      fold_K/                # a complete model directory (medseg.training.train on the fold's cases)
        validation/<case_id>.nii.gz   # out-of-fold label maps of the fold's val cases, on their input grid
      cv_summary.json        # medseg evaluate's summary of every out-of-fold map (+ per fold)
      postprocessing.json    # largest component per label, kept where it raised the out-of-fold Dice

The cases are the manifest's labelled cases of the splits ``data.train_split`` and
``data.val_split`` (:func:`medseg.training.data.labelled_rows`). :func:`make_splits` cuts them
into folds as nnU-Net does (its splits for the same ids and seed). Every fold's preprocessing
(the CT intensity statistics included) comes from all those cases, so the folds' ``plans.json``
are identical and their networks can be averaged. ``cv_summary.json`` and ``postprocessing.json``
are written by :func:`medseg.training.crossval.evaluate_cross_validation` once every fold has its
out-of-fold maps.

>>> from medseg.training import load_train_config                     # doctest: +SKIP
>>> from medseg.training.folds import train_folds
>>> train_folds(load_train_config("configs/brats_unet3d.yaml"), model_dir="runs/brats_cv")   # every fold
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medseg.errors import InputError, read_text_input
from medseg.io.atomic import atomic_write_text
from medseg.plans import FOLD_PREFIX, PLANS_FILE, WEIGHTS_FILE
from medseg.training.config import TrainConfig
from medseg.training.data import CaseSplit, labelled_rows, resolve_manifest

__all__ = ["SPLITS_FILE", "VALIDATION_DIR", "make_splits", "read_splits", "write_splits", "fold_splits", "fold_dir",
           "fold_finished", "prepare_folds", "train_fold", "write_validation_maps", "validation_map", "train_folds"]

SPLITS_FILE = "splits.json"
VALIDATION_DIR = "validation"

Notify = Callable[[str], None]


def make_splits(case_ids: Sequence[str], folds: int, seed: int = 0) -> list[CaseSplit]:
    """Deterministic k-fold split by case: nnU-Net's ``generate_crossval_split``.

    The ids are sorted, their order shuffled by ``numpy.random.RandomState(seed)`` and cut into
    ``folds`` consecutive parts (the first ``n % folds`` parts one case larger): fold ``k``
    validates on part ``k`` and trains on the others, both lists in sorted order. The same as
    scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)`` over the sorted ids.

    Raises:
        ValueError: repeated ids, fewer than two ids, or fewer ids than folds.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique")
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {folds}")
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} case(s) cannot be split into training and validation cases")
    if folds > len(ids):
        raise ValueError(f"{len(ids)} cases cannot make {folds} folds (each fold validates on at least one case)")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(ids) // folds)
    sizes[: len(ids) % folds] += 1
    out, start = [], 0
    for size in sizes:
        val = set(order[start:start + size].tolist())
        start += int(size)
        out.append(CaseSplit(train=tuple(c for i, c in enumerate(ids) if i not in val),
                             val=tuple(c for i, c in enumerate(ids) if i in val)))
    return out


def read_splits(path: str | Path, case_ids: Sequence[str] | None = None) -> list[CaseSplit]:
    """Read a ``splits.json`` (a list of ``{"train": [ids], "val": [ids]}``, one per fold).

    Checked: the shape, each list without repeats, no case in both lists of a fold or in the
    validation lists of two folds, at least one case in each list, and (given ``case_ids``)
    every id one of them.

    Raises:
        InputError: one line naming the file and the problem.
    """
    path = Path(path)
    text = read_text_input(path, "splits file")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    shape = 'a splits file is a list of {"train": [case ids], "val": [case ids]}, one per fold'
    if not isinstance(raw, list) or not raw:
        raise InputError(path, shape)
    known = None if case_ids is None else set(case_ids)
    out = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != {"train", "val"}:
            raise InputError(path, f"fold {k}: {shape}")
        lists = {}
        for key in ("train", "val"):
            ids = entry[key]
            if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
                raise InputError(path, f"fold {k}: {key!r} must be a list of case ids (text)")
            if not ids:
                raise InputError(path, f"fold {k} has no {'training' if key == 'train' else 'validation'} cases")
            repeated = sorted({c for c in ids if ids.count(c) > 1})
            if repeated:
                raise InputError(path, f"fold {k}: case {repeated[0]!r} is listed twice in {key!r}")
            if known is not None:
                unknown = [c for c in ids if c not in known]
                if unknown:
                    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                    raise InputError(path, f"fold {k}: unknown case {unknown[0]!r}{more} in {key!r}: not a labelled "
                                     "case of the manifest's training and validation splits")
            lists[key] = tuple(ids)
        both = sorted(set(lists["train"]) & set(lists["val"]))
        if both:
            raise InputError(path, f"fold {k}: case {both[0]!r} is in both 'train' and 'val'")
        for earlier, other in enumerate(out):
            again = [c for c in lists["val"] if c in other.val]
            if again:
                raise InputError(path, f"case {again[0]!r} is in 'val' of folds {earlier} and {k}; each case is "
                                 "validated (out of fold) in one fold")
        out.append(CaseSplit(train=lists["train"], val=lists["val"]))
    return out


def write_splits(splits: Sequence[CaseSplit], path: str | Path) -> Path:
    """Write ``splits`` as ``splits.json`` (atomically)."""
    data = [{"train": list(s.train), "val": list(s.val)} for s in splits]
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def fold_splits(config: TrainConfig, manifest: str | Path, model_dir: str | Path) -> list[CaseSplit]:
    """The folds of ``model_dir``: its ``splits.json`` when there is one (checked against the
    manifest's labelled cases), else :func:`make_splits` of those cases with the config's
    ``cross_validation`` (not written: :func:`prepare_folds` writes it).

    Raises:
        InputError: a bad ``splits.json``; fewer than two labelled cases or fewer cases than
            ``cross_validation.folds`` (naming the manifest).
    """
    manifest = Path(manifest)
    ids = [r.case_id for r in labelled_rows(config, manifest)]
    path = Path(model_dir) / SPLITS_FILE
    if path.exists():
        return read_splits(path, ids)
    n, k = len(ids), config.cross_validation.folds
    splits_named = f"splits {config.data.train_split}, {config.data.val_split}"
    if n == 0:
        raise InputError(manifest, f"no labelled cases ({splits_named}) to cross-validate")
    if n == 1:
        raise InputError(manifest, f"only one labelled case ({ids[0]!r}, {splits_named}): cannot split it into "
                         "cross-validation folds; cross-validation needs at least two cases")
    if n < k:
        raise InputError(manifest, f"{n} labelled cases ({splits_named}) cannot make {k} cross-validation folds "
                         f"(each validates on at least one case): set cross_validation.folds to at most {n}")
    return make_splits(ids, k, config.cross_validation.seed)


def fold_dir(model_dir: str | Path, fold: int) -> Path:
    """``MODEL_DIR/fold_K``: the model directory of fold ``K``."""
    return Path(model_dir) / f"{FOLD_PREFIX}{int(fold)}"


def validation_map(model_dir: str | Path, fold: int, case_id: str) -> Path:
    """``MODEL_DIR/fold_K/validation/<case_id>.nii.gz``: an out-of-fold label map."""
    return fold_dir(model_dir, fold) / VALIDATION_DIR / f"{case_id}.nii.gz"


def fold_finished(fold_path: str | Path, config: TrainConfig) -> bool:
    """Whether the model directory ``fold_path`` holds a finished run: trained for all of
    ``config``'s steps (``training_log.json``'s ``steps_done``), or ended by its time budget
    (``stopped_by: budget``, the schedule shortened to the steps done), with its ``model.pt``
    written after its last checkpoint."""
    from medseg.training.trainer import CHECKPOINT_DIR, LAST_CHECKPOINT

    fold_path = Path(fold_path)
    weights, log = fold_path / WEIGHTS_FILE, fold_path / "training_log.json"
    if not (weights.is_file() and log.is_file()):
        return False
    try:
        summary = json.loads(log.read_text())["summary"]
        steps = summary["steps_done"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(steps, int) or (steps < config.total_steps and summary.get("stopped_by") != "budget"):
        return False
    last = fold_path / CHECKPOINT_DIR / LAST_CHECKPOINT
    return not last.is_file() or weights.stat().st_mtime_ns >= last.stat().st_mtime_ns


def prepare_folds(config: TrainConfig, *, manifest: str | Path | None = None, model_dir: str | Path,
                  folds: Sequence[int] | None = None, device: str = "auto") -> list[int]:
    """Check everything fold training needs before any fold starts, then write ``splits.json``
    when the folder has none yet. Nothing is written when a check fails.

    Args:
        folds: the fold numbers to train; ``None``: every fold.
        device: checked with the config's ``autocast`` and ``num_threads``.

    Returns:
        The fold numbers to train, in the order given (every fold, ascending, for ``None``).

    Raises:
        InputError: ``model_dir`` holds a single model; a bad ``splits.json``; too few labelled
            cases (:func:`fold_splits`); a fold number the splits do not have.
        DeviceError: a misspelt or absent device.
        ValueError: no manifest; an autocast impossible on the device.
    """
    from medseg.runtime import resolve_runtime

    model_dir = Path(model_dir)
    manifest = resolve_manifest(config, manifest)
    if model_dir.exists() and not model_dir.is_dir():
        raise InputError(model_dir, "not a folder; cross-validation writes a folder of folds")
    if (model_dir / WEIGHTS_FILE).exists() or (model_dir / PLANS_FILE).exists():
        raise InputError(model_dir, f"holds a single model ({WEIGHTS_FILE}, {PLANS_FILE}): cross-validation folds "
                         "go to a folder of their own; choose another --out")
    resolve_runtime(device, config.autocast, None if config.num_threads == "auto" else config.num_threads)
    splits = fold_splits(config, manifest, model_dir)
    n = len(splits)
    selected = list(range(n)) if folds is None else [int(k) for k in folds]
    for k in selected:
        if not 0 <= k < n:
            if (model_dir / SPLITS_FILE).exists():
                raise InputError(model_dir / SPLITS_FILE, f"fold {k} asked for, but it holds "
                                 f"{n} fold{'s' if n != 1 else ''} (0 to {n - 1})")
            raise InputError(None, f"fold {k} asked for, but cross_validation.folds is {n} (folds 0 to {n - 1})")
    if not (model_dir / SPLITS_FILE).exists():
        write_splits(splits, model_dir / SPLITS_FILE)
    return selected


def write_validation_maps(config: TrainConfig, *, manifest: str | Path | None = None, model_dir: str | Path,
                          fold: int, device: str = "auto", overwrite: bool = False) -> list[Path]:
    """Segment fold ``fold``'s validation cases with the fold's model (best validation weights)
    into ``fold_K/validation/<case_id>.nii.gz``, each on its input grid.

    Through the study pipeline a user gets (:func:`medseg.inference.segment_file`: no CRF, no
    component clean-up, no TTA), with the device, autocast, threads and window batch the trainer
    validated with, so the maps are the ones the fold's validation Dice was measured on.

    Args:
        overwrite: segment every case; otherwise only those without a map yet.

    Returns:
        The out-of-fold maps of the fold (all of them, written now or before).
    """
    from medseg.inference import Predictor, segment_file

    manifest = resolve_manifest(config, manifest)
    split = fold_splits(config, manifest, model_dir)[fold]
    rows = {r.case_id: r for r in labelled_rows(config, manifest)}
    todo = [c for c in split.val if overwrite or not validation_map(model_dir, fold, c).is_file()]
    if todo:
        predictor = Predictor.load_own_model(
            fold_dir(model_dir, fold), device=device, autocast=config.autocast,
            window_batch=config.validation.sw_batch_size,
            num_threads=None if config.num_threads == "auto" else config.num_threads)
        for case in todo:
            segment_file(list(rows[case].images), predictor, validation_map(model_dir, fold, case))
    return [validation_map(model_dir, fold, c) for c in split.val]


def train_fold(config: TrainConfig, *, manifest: str | Path | None = None, model_dir: str | Path, fold: int,
               resume: bool = False, device: str = "auto", progress: bool = False,
               stop_after_steps: int | None = None, max_minutes: float | None = None,
               notify: Notify | None = None) -> Path:
    """Train fold ``fold`` into ``MODEL_DIR/fold_K`` and write its out-of-fold label maps.

    The fold's model directory is :func:`medseg.training.train`'s, on the fold's cases of
    ``splits.json`` (made first when absent: :func:`prepare_folds`). A fold already trained for
    all its steps is not trained again (``notify`` says so); its missing out-of-fold maps are
    written. A fold stopped early (``stop_after_steps``) continues with ``resume``.

    Args:
        resume, device, progress, stop_after_steps, max_minutes, notify: as
            :func:`medseg.training.train` (``max_minutes``: this fold's training budget).

    Returns:
        The fold's model directory.
    """
    from medseg.training.trainer import train

    manifest = resolve_manifest(config, manifest)
    prepare_folds(config, manifest=manifest, model_dir=model_dir, folds=[fold], device=device)
    split = fold_splits(config, manifest, model_dir)[fold]
    path = fold_dir(model_dir, fold)
    trained = False
    if fold_finished(path, config):
        if notify is not None:
            notify(f"fold {fold} is already trained ({path}): skipped")
    else:
        train(config, manifest=manifest, out_dir=path, resume=resume, device=device, progress=progress,
              stop_after_steps=stop_after_steps, max_minutes=max_minutes, notify=notify, cases=split)
        trained = True
    if fold_finished(path, config):
        write_validation_maps(config, manifest=manifest, model_dir=model_dir, fold=fold, device=device,
                              overwrite=trained)
    return path


def train_folds(config: TrainConfig, *, manifest: str | Path | None = None, model_dir: str | Path,
                folds: Sequence[int] | None = None, resume: bool = False, device: str = "auto",
                progress: bool = False, stop_after_steps: int | None = None,
                max_minutes: float | None = None, notify: Notify | None = None) -> Path:
    """Train folds one after the other (:func:`train_fold`), then, once every fold of the
    folder has its out-of-fold maps, write ``cv_summary.json`` and ``postprocessing.json``
    (:func:`medseg.training.crossval.evaluate_cross_validation`).

    Args:
        folds: fold numbers; ``None``: every fold. Finished folds are skipped, so a re-run
            continues where the last one stopped (with ``resume`` for a fold interrupted mid-way).
        resume, device, progress, stop_after_steps, notify: for each fold, as :func:`train_fold`.
        max_minutes: the whole call's time budget (``medseg train --folds ... --max-minutes``):
            each fold still to train gets an equal share of what is left when it starts (the
            out-of-fold maps of the folds before it included). ``None``: each fold has the
            config's ``max_minutes`` (a budget per training run, what ``medseg plan --minutes``
            writes), or none.

    Returns:
        ``model_dir``.

    Raises:
        InputError, DeviceError, ValueError: as :func:`prepare_folds` (before any fold starts)
            and :func:`medseg.training.train`.
    """
    from medseg.training.crossval import evaluate_cross_validation

    manifest = resolve_manifest(config, manifest)
    started = time.perf_counter()
    selected = prepare_folds(config, manifest=manifest, model_dir=model_dir, folds=folds, device=device)
    budget = max_minutes
    todo = [k for k in selected if not fold_finished(fold_dir(model_dir, k), config)]
    for k in selected:
        share = None
        if budget is not None and k in todo:
            left = budget - (time.perf_counter() - started) / 60.0
            share = left / (len(todo) - todo.index(k))
            if share <= 0:
                raise InputError(model_dir, f"the time budget of {budget:g} min is spent before fold {k}: "
                                 "continue with the same command (finished folds are skipped)")
        train_fold(config, manifest=manifest, model_dir=model_dir, fold=k, resume=resume, device=device,
                   progress=progress, stop_after_steps=stop_after_steps, max_minutes=share, notify=notify)
    evaluate_cross_validation(config, manifest=manifest, model_dir=model_dir)
    return Path(model_dir)

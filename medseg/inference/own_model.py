"""The ``medseg`` model kind: a model directory written by ``medseg train``, or a cross-validated
model folder of such directories (``fold_*/``, see :mod:`medseg.plans`) run as one ensemble.

A fold folder's networks share one plans file: a study is preprocessed once, every fold's network
runs on each window, and their softmax probabilities are averaged (with the mirror passes, when
TTA is on) before the windows are blended (:class:`medseg.inference.Predictor`). The folder's
``postprocessing.json`` (largest component per class, chosen by cross-validation) is applied by
the study pipeline (:meth:`medseg.inference.pipeline.StudyOptions.for_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medseg.errors import InputError
from medseg.inference.kinds import ModelInfo, ModelOptions

__all__ = ["ModelFolder", "read_model_folder", "describe", "load", "model_files", "info_from_plans"]


@dataclass(frozen=True)
class ModelFolder:
    """A medseg model folder as read from its configuration files (no weights loaded).

    Attributes:
        path: the folder.
        plans: its :class:`~medseg.plans.ModelPlans` (every fold's: they are identical).
        model_dirs: the model directories whose networks run: one per fold, or the folder itself.
        folds: the fold numbers that run, or ``None`` for a plain model directory.
        largest_component: the classes whose largest component alone is kept
            (:func:`medseg.plans.read_postprocessing`), or ``None`` (no ``postprocessing.json``).
    """

    path: Path
    plans: Any
    model_dirs: tuple[Path, ...]
    folds: tuple[int, ...] | None
    largest_component: tuple[int, ...] | None


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ: its dotted key (``preprocess.intensity[0].window[1]``)
    and the two values there (``"absent"`` for a missing key), or ``None`` when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            here = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return here, a.get(key, "absent"), b.get(key, "absent")
            found = _first_difference(a[key], b[key], here)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
        return None if len(a) == len(b) else (f"{where} (length)", len(a), len(b))
    return None if a == b else (where, a, b)


def read_model_folder(path: str | Path, folds: Sequence[int] | None = None) -> ModelFolder:
    """Read a medseg model directory, or a folder of ``fold_K/`` model directories.

    A folder without its own ``plans.json``/``model.pt`` and with ``fold_K/`` sub-folders is a
    fold folder: the folds that run are ``folds``, or every fold holding both ``plans.json`` and
    ``model.pt``.

    Raises:
        InputError: one line naming the file: no plans, ``folds`` given for a plain model
            directory, a fold asked for that is not trained, no trained fold, folds whose plans
            differ (naming the fold and the first differing key), an invalid ``postprocessing.json``.
    """
    from medseg.plans import FOLD_PREFIX, PLANS_FILE, WEIGHTS_FILE, fold_dirs, load_plans, read_postprocessing

    path = Path(path)
    found = {} if (path / PLANS_FILE).is_file() or (path / WEIGHTS_FILE).is_file() else fold_dirs(path)
    if not found:
        if folds is not None:
            raise InputError(path, "a medseg model directory without fold_*/ folders has no folds: leave out --folds")
        plans = load_plans(path)
        return ModelFolder(path, plans, (path,), None, read_postprocessing(path, plans.labels))
    trained = {k: d for k, d in found.items() if (d / PLANS_FILE).is_file() and (d / WEIGHTS_FILE).is_file()}
    if folds is None:
        if not trained:
            raise InputError(path, f"no trained fold: no fold_*/ holds both {PLANS_FILE} and {WEIGHTS_FILE}")
        chosen = trained
    else:
        chosen = {}
        for k in folds:
            k = int(k)
            if k not in trained:
                fold = path / f"{FOLD_PREFIX}{k}"
                missing = next((f for f in (WEIGHTS_FILE, PLANS_FILE) if not (fold / f).is_file()), WEIGHTS_FILE)
                raise InputError(fold / missing, "not found (--folds names a fold that is not trained)")
            chosen[k] = trained[k]
    (k0, dir0), *others = chosen.items()
    plans = load_plans(dir0)
    reference = plans.model_dump(mode="json")
    for k, fold_dir in others:
        found = _first_difference(reference, load_plans(fold_dir).model_dump(mode="json"))
        if found is not None:
            key, first, here = found
            raise InputError(fold_dir / PLANS_FILE, f"differs from {dir0.name}/{PLANS_FILE} at {key} ({here!r}, "
                             f"{dir0.name}: {first!r}): the folds of an ensemble must share one plans file")
    return ModelFolder(path, plans, tuple(chosen.values()), tuple(chosen),
                       read_postprocessing(path, plans.labels))


def info_from_plans(plans, path: str | Path | None = None, *, folds: Sequence[int] | None = None,
                    largest_component: Sequence[int] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a medseg model from its :class:`~medseg.plans.ModelPlans` (and,
    for a fold folder, the folds that run and the post-processing chosen by cross-validation)."""
    from medseg.inference.pipeline import model_modality

    pre = plans.preprocess
    return ModelInfo(
        kind="medseg", path=Path(path) if path is not None else Path("."),
        channels=tuple(plans.channel_names), labels=dict(plans.labels), modality=model_modality(plans),
        spacing_mm=tuple(float(s) for s in pre.target_spacing) if pre.target_spacing is not None else None,
        patch_size=tuple(int(p) for p in plans.inference.patch_size),
        folds=None if folds is None else tuple(int(f) for f in folds),
        largest_component=None if largest_component is None else tuple(int(c) for c in largest_component),
        details={"architecture": plans.model.name, "spatial_dims": plans.model.spatial_dims,
                 "orientation": pre.orientation, "overlap": plans.inference.overlap})


def _info(folder: ModelFolder) -> ModelInfo:
    return info_from_plans(folder.plans, folder.path, folds=folder.folds, largest_component=folder.largest_component)


def describe(path: Path, options: ModelOptions) -> ModelInfo:
    return _info(read_model_folder(path, options.folds))


def model_files(path: Path, options: ModelOptions) -> list[Path]:
    """Each running network's ``plans.json`` and ``model.pt`` (fold by fold), then the folder's
    ``postprocessing.json`` when there is one."""
    from medseg.plans import PLANS_FILE, POSTPROCESSING_FILE, WEIGHTS_FILE

    folder = read_model_folder(path, options.folds)
    files = []
    for model_dir in folder.model_dirs:
        for f in (model_dir / PLANS_FILE, model_dir / WEIGHTS_FILE):
            if not f.is_file():
                raise InputError(model_dir, f"not a complete model directory (no {f.name})")
            files.append(f)
    if folder.largest_component is not None:
        files.append(path / POSTPROCESSING_FILE)
    return files


def load(path: Path, options: ModelOptions, *, device: str, autocast: str, tta: bool, overlap: float | None,
         window_batch: int, num_threads: int | None):
    from medseg.inference.predictor import Predictor

    if options.step_size is not None:
        overlap = 1.0 - float(options.step_size)
    return Predictor.load_own_model(path, folds=options.folds, device=device, autocast=autocast, tta=tta,
                                    overlap=overlap, window_batch=window_batch, num_threads=num_threads)

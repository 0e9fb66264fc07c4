"""The ``medseg`` model kind: a model directory written by ``medseg train`` (see :mod:`medseg.plans`)."""

from __future__ import annotations

from pathlib import Path

from medseg.inference.kinds import ModelInfo, ModelOptions

__all__ = ["describe", "load", "model_files", "info_from_plans"]


def info_from_plans(plans, path: str | Path | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a medseg model from its :class:`~medseg.plans.ModelPlans`."""
    from medseg.inference.pipeline import model_modality

    pre = plans.preprocess
    return ModelInfo(
        kind="medseg", path=Path(path) if path is not None else Path("."),
        channels=tuple(plans.channel_names), labels=dict(plans.labels), modality=model_modality(plans),
        spacing_mm=tuple(float(s) for s in pre.target_spacing) if pre.target_spacing is not None else None,
        patch_size=tuple(int(p) for p in plans.inference.patch_size), folds=None,
        details={"architecture": plans.model.name, "spatial_dims": plans.model.spatial_dims,
                 "orientation": pre.orientation, "overlap": plans.inference.overlap})


def describe(path: Path, options: ModelOptions) -> ModelInfo:
    from medseg.plans import load_plans

    return info_from_plans(load_plans(path), path)


def model_files(path: Path, options: ModelOptions) -> list[Path]:
    from medseg.errors import InputError
    from medseg.plans import PLANS_FILE, WEIGHTS_FILE

    files = [path / PLANS_FILE, path / WEIGHTS_FILE]
    for f in files:
        if not f.is_file():
            raise InputError(path, f"not a complete model directory (no {f.name})")
    return files


def load(path: Path, options: ModelOptions, *, device: str, autocast: str, tta: bool, overlap: float | None,
         window_batch: int, num_threads: int | None):
    from medseg.inference.predictor import Predictor

    if options.step_size is not None:
        overlap = 1.0 - float(options.step_size)
    return Predictor.load_own_model(path, device=device, autocast=autocast, tta=tta, overlap=overlap,
                                    window_batch=window_batch, num_threads=num_threads)

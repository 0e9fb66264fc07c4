"""The ``monai-bundle`` model kind: a MONAI bundle folder (``configs/metadata.json``,
``configs/inference.json`` or ``.yaml``, ``models/model.pt`` or ``models/model.ts``), read as
data (:mod:`medseg.inference.bundle.config`) and run with MONAI's semantics
(:mod:`medseg.inference.bundle.predictor`)."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import InputError
from medseg.inference.kinds import ModelInfo, ModelOptions

__all__ = ["describe", "load", "model_files", "info_from_spec"]


def info_from_spec(spec, overlap: float | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a bundle from its :class:`~medseg.inference.bundle.config.BundleSpec`."""
    details = dict(spec.details)
    details["orientation"] = spec.orientation
    if overlap is not None:
        details["overlap"] = overlap
    return ModelInfo(kind="monai-bundle", path=Path(spec.root), channels=tuple(spec.channels),
                     labels=dict(spec.labels), modality=spec.modality,
                     spacing_mm=None if spec.spacing_mm is None else tuple(float(s) for s in spec.spacing_mm),
                     patch_size=tuple(int(r) for r in spec.window.roi_size), folds=None, details=details)


def describe(path: Path, options: ModelOptions) -> ModelInfo:
    from medseg.inference.bundle.config import read_bundle

    _check(path, options)
    return info_from_spec(read_bundle(path))


def model_files(path: Path, options: ModelOptions) -> list[Path]:
    from medseg.inference.bundle.config import read_bundle

    _check(path, options)
    spec = read_bundle(path)
    if spec.weights is None:
        raise InputError(path / "models", "no model.pt or model.ts: the bundle has no weights")
    return [spec.config_file, spec.meta_file, spec.weights]


def load(path: Path, options: ModelOptions, *, device: str, autocast: str, tta: bool, overlap: float | None,
         window_batch: int, num_threads: int | None):
    from medseg.inference.bundle.config import read_bundle
    from medseg.inference.bundle.predictor import BundlePredictor, load_bundle_network
    from medseg.runtime import resolve_runtime

    _check(path, options)
    runtime = resolve_runtime(device, autocast, num_threads)  # fail before the load
    spec = read_bundle(path)
    if options.step_size is not None:
        overlap = 1.0 - float(options.step_size)
    net = load_bundle_network(spec)
    net.to(runtime.device)
    return BundlePredictor(net, spec, runtime=runtime, tta=tta, overlap=overlap, window_batch=window_batch)


def _check(path: Path, options: ModelOptions) -> None:
    if options.task is not None:
        raise InputError(path, "a MONAI bundle has no tasks: leave out --task")

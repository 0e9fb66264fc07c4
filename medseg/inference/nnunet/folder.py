"""The ``nnunet`` model kind (:mod:`medseg.inference.kinds`): describe, fingerprint and load an
nnU-Net v2 trained-model folder."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import InputError
from medseg.inference.kinds import ModelInfo, ModelOptions
from medseg.inference.nnunet.config import CHECKPOINT_FILES, NnunetConfig, fold_folders, read_config

__all__ = ["describe", "model_files", "load", "select_folds", "info_from_config", "DEFAULT_STEP_SIZE"]

DEFAULT_STEP_SIZE = 0.5  # nnUNetv2_predict's default tile_step_size


def select_folds(folder: Path, options: ModelOptions) -> dict:
    """``{fold: checkpoint file}`` to run: ``options.folds``, or every fold present.

    Raises:
        InputError: no fold has the checkpoint, or an asked fold is missing (naming the file).
    """
    present = fold_folders(folder, options.checkpoint)
    name = CHECKPOINT_FILES[options.checkpoint]
    if options.folds is None:
        if not present:
            other = fold_folders(folder, "best" if options.checkpoint == "final" else "final")
            hint = (f" (there is {CHECKPOINT_FILES['best' if options.checkpoint == 'final' else 'final']}: "
                    f"--checkpoint {'best' if options.checkpoint == 'final' else 'final'})") if other else ""
            raise InputError(folder, f"no trained fold: no fold_*/{name}{hint}")
        return dict(sorted(present.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))
    chosen = {}
    for fold in options.folds:
        if fold not in present:
            raise InputError(folder / f"fold_{fold}" / name, "not found (--folds names a fold that is not trained)")
        chosen[fold] = present[fold]
    return chosen


def info_from_config(config: NnunetConfig, folds) -> ModelInfo:
    return ModelInfo(
        kind="nnunet", path=config.folder, channels=tuple(config.channels), labels=dict(config.labels),
        modality=config.modality, spacing_mm=tuple(config.spacing), patch_size=tuple(config.patch_size),
        folds=tuple(folds) if folds is not None else None,
        details={"dataset": config.dataset_name, "trainer": config.trainer, "plans": config.plans_name,
                 "configuration": config.configuration,
                 "architecture": config.architecture[0].rsplit(".", 1)[-1],
                 "normalization": list(config.normalization), "transpose_forward": list(config.transpose_forward),
                 "region_based": config.regions is not None, "probabilities": config.regions is None,
                 "step_size": DEFAULT_STEP_SIZE})


def describe(path: Path, options: ModelOptions) -> ModelInfo:
    config = read_config(path)
    present = fold_folders(path, options.checkpoint)
    folds = options.folds if options.folds is not None else tuple(sorted(present, key=lambda f: (isinstance(f, str), f)))
    return info_from_config(config, folds)


def model_files(path: Path, options: ModelOptions) -> list[Path]:
    read_config(path)
    return [path / "plans.json", path / "dataset.json"] + list(select_folds(path, options).values())


def _load_weights(net, state: dict, path: Path) -> None:
    """``state`` into ``net`` strictly; a mismatch names the first differing key."""
    own = net.state_dict()
    for key, value in state.items():
        if key not in own:
            raise InputError(path, f"weights do not fit the network in plans.json: unexpected key {key!r} "
                             "(a checkpoint from another plans file?)")
        if tuple(own[key].shape) != tuple(value.shape):
            raise InputError(path, f"weights do not fit the network in plans.json: {key} is "
                             f"{tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} in the network "
                             "(a checkpoint from another plans file?)")
    missing = [key for key in own if key not in state]
    if missing:
        raise InputError(path, f"weights do not fit the network in plans.json: {missing[0]!r} is missing")
    net.load_state_dict(state, strict=True)


def load(path: Path, options: ModelOptions, *, device: str, autocast: str, tta: bool, overlap: float | None,
         window_batch: int, num_threads: int | None):
    from medseg.inference.nnunet.config import build_network, load_checkpoint
    from medseg.inference.nnunet.predictor import NnunetPredictor
    from medseg.runtime import resolve_runtime

    runtime = resolve_runtime(device, autocast, num_threads)
    config = read_config(path)
    chosen = select_folds(path, options)
    nets = []
    mirror_axes = None
    for i, (fold, ckpt_path) in enumerate(chosen.items()):
        ckpt = load_checkpoint(ckpt_path)
        conf = (ckpt.get("init_args") or {}).get("configuration")
        if conf is not None and conf != config.configuration:
            raise InputError(ckpt_path, f"was trained for configuration {conf!r}, the folder is {config.configuration!r}")
        if i == 0:
            axes = ckpt.get("inference_allowed_mirroring_axes")
            mirror_axes = None if axes is None else tuple(int(a) for a in axes)
        net = build_network(config)
        _load_weights(net, ckpt["network_weights"], ckpt_path)
        net.to(runtime.device)
        nets.append(net)
    step = options.step_size if options.step_size is not None else (
        1.0 - overlap if overlap is not None else DEFAULT_STEP_SIZE)
    info = info_from_config(config, tuple(chosen))
    info.details["step_size"] = step
    info.details["mirror_axes"] = None if mirror_axes is None else list(mirror_axes)
    return NnunetPredictor(config, nets, folds=tuple(chosen), mirror_axes=mirror_axes, runtime=runtime, tta=tta,
                           step_size=step, window_batch=max(1, window_batch), info=info)

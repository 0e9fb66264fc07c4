"""Prefect training flow: one task around :func:`medseg.training.train` (the CLI's function), or,
with ``folds``, k-fold cross-validation as tasks around :mod:`medseg.training.folds`.

>>> from flows.train import train_flow
>>> model_dir = train_flow("configs/phantom_unet3d.yaml", out_dir="runs/phantom", manifest="phantoms/manifest.csv")
>>> cv_dir = train_flow("configs/brats_unet3d.yaml", out_dir="runs/brats_cv", folds="all")

With folds the sequence is ``prepare-folds`` (checks, ``splits.json``) → one ``train-fold-K``
task per fold, submitted to the flow's task runner → ``cross-validation`` (``cv_summary.json``,
``postprocessing.json``). The default task runner trains one fold at a time in this process
(torch already uses every core); on several machines give the flow a Dask task runner and the
folds train in parallel, one per worker::

    from prefect_dask import DaskTaskRunner
    train_flow.with_options(task_runner=DaskTaskRunner(address="tcp://scheduler:8786"))(config, out, folds="all")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

__all__ = ["train_task", "prepare_folds_task", "train_fold_task", "cross_validation_task", "train_flow"]


@task(name="train-model")
def train_task(config_path: str, out_dir: str, manifest: str | None = None, resume: bool = False,
               device: str = "auto", max_minutes: float | None = None) -> str:
    """Load the YAML config and train; returns the model directory."""
    from medseg.training import load_train_config, train

    cfg = load_train_config(config_path)
    return str(train(cfg, manifest=manifest, out_dir=out_dir, resume=resume, device=device, progress=False,
                     max_minutes=max_minutes, notify=get_run_logger().info))


@task(name="prepare-folds", task_run_name="prepare-folds", cache_policy=NO_CACHE)
def prepare_folds_task(config_path: str, out_dir: str, manifest: str | None, folds: list[int] | None,
                       device: str) -> list[int]:
    """:func:`medseg.training.folds.prepare_folds`: the fold numbers to train (``splits.json`` written)."""
    from medseg.training import load_train_config
    from medseg.training.folds import prepare_folds

    return prepare_folds(load_train_config(config_path), manifest=manifest, model_dir=out_dir, folds=folds,
                         device=device)


@task(name="train-fold", task_run_name="train-fold-{fold}", cache_policy=NO_CACHE)
def train_fold_task(config_path: str, out_dir: str, fold: int, manifest: str | None = None, resume: bool = False,
                    device: str = "auto", max_minutes: float | None = None) -> str:
    """:func:`medseg.training.folds.train_fold`: one fold and its out-of-fold maps (``max_minutes``:
    this fold's training budget); returns the fold's folder."""
    from medseg.training import load_train_config
    from medseg.training.folds import train_fold

    return str(train_fold(load_train_config(config_path), manifest=manifest, model_dir=out_dir, fold=fold,
                          resume=resume, device=device, max_minutes=max_minutes, notify=get_run_logger().info))


@task(name="cross-validation", task_run_name="cross-validation", cache_policy=NO_CACHE)
def cross_validation_task(config_path: str, out_dir: str, manifest: str | None = None) -> dict[str, Any] | None:
    """:func:`medseg.training.crossval.evaluate_cross_validation`: ``cv_summary.json`` and
    ``postprocessing.json`` once every fold is trained (``None`` before)."""
    from medseg.training import load_train_config
    from medseg.training.crossval import evaluate_cross_validation

    return evaluate_cross_validation(load_train_config(config_path), manifest=manifest, model_dir=out_dir)


@flow(name="medseg-train", task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_flow(config_path: str, out_dir: str, manifest: str | None = None, resume: bool = False,
               device: str = "auto", folds: str | list[int] | None = None, max_minutes: float | None = None) -> str:
    """Train a model from ``config_path`` into ``out_dir`` (paths, not objects, as parameters).

    ``folds``: cross-validation folds to train into ``out_dir/fold_K`` (``"all"``, ``"0,2"`` or
    a list of fold numbers; folds already trained are skipped); ``None``: one model in ``out_dir``.
    ``max_minutes``: the flow's time budget; with folds, each fold task gets an equal share of it,
    whether the task runner trains them in turn or in parallel. ``None``: each training run has
    the config's ``max_minutes`` (a budget per run, or none).
    """
    logger = get_run_logger()
    logger.info("training %s -> %s", config_path, out_dir)
    if folds is None:
        model_dir = train_task(config_path, out_dir, manifest, resume, device, max_minutes)
        summary = Path(model_dir) / "training_log.json"
        if summary.is_file():
            import json

            logger.info("summary: %s", json.loads(summary.read_text())["summary"])
        return model_dir
    from medseg.inference.kinds import parse_folds

    chosen = parse_folds(folds)
    selected = prepare_folds_task(config_path, out_dir, manifest, None if chosen is None else list(chosen), device)
    share = None if max_minutes is None or not selected else max_minutes / len(selected)
    futures = [train_fold_task.submit(config_path, out_dir, k, manifest, resume, device, share) for k in selected]
    for future in futures:
        logger.info("fold trained: %s", future.result())
    cv = cross_validation_task(config_path, out_dir, manifest)
    if cv is None:
        logger.info("cross-validation summary waits for the folds not trained yet")
    else:
        logger.info("cross-validation: out-of-fold Dice %s (mean over labels %.4f)",
                    {k: round(v["Dice"], 4) for k, v in cv["mean"].items()}, cv["foreground_mean"]["Dice"])
    return out_dir

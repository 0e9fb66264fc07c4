"""Prefect training flow: one task around :func:`medseg.training.train` (the CLI's function).

>>> from flows.train import train_flow
>>> model_dir = train_flow("configs/phantom_unet3d.yaml", out_dir="runs/phantom", manifest="phantoms/manifest.csv")
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

__all__ = ["train_task", "train_flow"]


@task(name="train-model")
def train_task(config_path: str, out_dir: str, manifest: str | None = None, resume: bool = False,
               device: str = "auto") -> str:
    """Load the YAML config and train; returns the model directory."""
    from medseg.training import load_train_config, train

    cfg = load_train_config(config_path)
    return str(train(cfg, manifest=manifest, out_dir=out_dir, resume=resume, device=device, progress=False,
                     notify=get_run_logger().info))


@flow(name="medseg-train")
def train_flow(config_path: str, out_dir: str, manifest: str | None = None, resume: bool = False,
               device: str = "auto") -> str:
    """Train a model from ``config_path`` into ``out_dir`` (paths, not objects, as parameters)."""
    logger = get_run_logger()
    logger.info("training %s -> %s", config_path, out_dir)
    model_dir = train_task(config_path, out_dir, manifest, resume, device)
    summary = Path(model_dir) / "training_log.json"
    if summary.is_file():
        import json

        logger.info("summary: %s", json.loads(summary.read_text())["summary"])
    return model_dir

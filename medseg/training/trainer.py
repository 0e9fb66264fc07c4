"""The trainer: :func:`train` turns a :class:`TrainConfig` and a manifest into a model directory.

Run directory (= the model directory, see :mod:`medseg.plans`)::

    RUN_DIR/
      model.pt             # best-validation weights (last weights when there is no val split)
      plans.json           # ModelPlans: model spec, resolved preprocessing, patch size, slice axis
      labels.json
      config.yaml          # the resolved training config
      training_log.csv     # one row per epoch: loss, lr, samples/s, validation Dice per class (and region)
      training_log.json    # the same rows plus a summary
      checkpoints/last.pt  # full training state (resume); written every checkpoint_every_steps
      checkpoints/best.pt  # best-validation weights, step and metric

Validation segments each ``val`` case from its original volumes with :class:`medseg.inference.Predictor`
around the network being trained, with the plans ``plans.json`` will hold (:func:`build_model_plans`):
exactly what ``medseg segment`` would do with the model directory at that step. Dice compares the
labels on the input's grid with the reference label map (:mod:`medseg.measure.metrics`); the best
``val_dice_mean`` (mean over the labels) picks ``model.pt``.

Device, autocast and torch CPU threads follow :mod:`medseg.runtime` (activated for the run,
the caller's thread count restored afterwards).

Every file is written atomically (temporary name, then ``os.replace``), so a kill at any
moment leaves the previous checkpoint whole and loses at most the steps since it.
Checkpoints are plain dicts of tensors and numbers: ``torch.load(path, weights_only=True)``.

Determinism: the batch of step ``s`` is a function of ``(seed, s)`` only
(:func:`medseg.preprocess.step_random_state`) and the checkpoint holds the model, optimiser,
scheduler, loss scaler and python/numpy/torch random states, so an interrupted run resumed
with ``resume=True`` ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, atomic_write_text
from medseg.plans import PLANS_FILE, WEIGHTS_FILE, ModelPlans
from medseg.preprocess import PreprocessConfig
from medseg.runtime import Runtime, resolve_runtime
from medseg.training.config import TrainConfig

__all__ = ["train", "CHECKPOINT_DIR", "LAST_CHECKPOINT", "BEST_CHECKPOINT", "make_lr_lambda", "build_model_plans"]

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
_CHECKPOINT_FORMAT = 1
# settings that may change between an interrupted run and its resumption
_RESUME_MUTABLE = {"steps", "epochs", "checkpoint_every_steps", "num_threads"}


def make_lr_lambda(cfg: TrainConfig):
    """Learning-rate factor per step for ``torch.optim.lr_scheduler.LambdaLR``."""
    sched = cfg.schedule
    total = cfg.total_steps
    warm = min(sched.warmup_steps, max(total - 1, 0))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched.name == "none":
            return 1.0
        t = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
        if sched.name == "poly":
            return (1.0 - t) ** sched.power
        return sched.min_lr_fraction + (1.0 - sched.min_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


# ----------------------------------------------------------------------------------------- state
def _rng_state() -> dict:
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(obj: dict, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say which and why
        raise InputError(path, f"not a readable medseg checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _config_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)


def _write_log(rows: list[dict], out_dir: Path, summary: dict) -> None:
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(out_dir / "training_log.csv", buf.getvalue())

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    data = {"summary": {k: clean(v) for k, v in summary.items()},
            "epochs": [{k: clean(v) for k, v in row.items()} for row in rows]}
    atomic_write_text(out_dir / "training_log.json", json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------ validation
def build_model_plans(config: TrainConfig, pre: PreprocessConfig) -> ModelPlans:
    """The run's :class:`~medseg.plans.ModelPlans`: what ``plans.json`` holds and validation predicts with.

    ``pre`` is the resolved preprocessing (CT windows fitted on the training cases). The patch
    size and overlap are the config's; 2D models record ``data.slice_axis``.
    """
    from medseg.plans import InferenceDefaults, ModelSpec

    spec = ModelSpec(name=config.model.name, spatial_dims=config.model.spatial_dims,
                     in_channels=len(config.data.channels), out_channels=config.num_classes,
                     options=config.model.options)
    inference = InferenceDefaults(patch_size=tuple(config.patch_size), overlap=config.validation.overlap,
                                  slice_axis=config.data.slice_axis if config.model.spatial_dims == 2 else None)
    return ModelPlans(model=spec, preprocess=pre, inference=inference, labels=dict(config.data.labels),
                      channel_names=list(config.data.channels))


def _dice(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice per label of two label maps (NaN where both are empty), from medseg's metrics."""
    from medseg.measure.metrics import confusion_counts, overlap_metrics

    counts = confusion_counts(pred, ref, labels)
    return {lab: float(overlap_metrics(c["TP"], c["FP"], c["FN"], c["TN"])["Dice"]) for lab, c in counts.items()}


def _validate(model, predictor, val_cases, cfg: TrainConfig) -> dict[str, float]:
    """Validation Dice of ``model`` (in eval mode meanwhile) through ``predictor`` on the original volumes.

    Columns: ``val_dice_<label name>`` (mean over cases), ``val_dice_mean`` (mean of those),
    ``val_dice_foreground`` (every label against background) and ``val_dice_<region>``.
    """
    labels = list(cfg.data.labels)
    per_class: dict[int, list[float]] = {lab: [] for lab in labels}
    fg: list[float] = []
    regions: dict[str, list[float]] = {name: [] for name in cfg.data.regions}
    model.eval()
    try:
        for case in val_cases:
            pred = predictor.predict(list(case.images), tta=False, keep_probabilities=False).labels.array
            ref = case.label.array
            for lab, d in _dice(pred, ref, labels).items():
                per_class[lab].append(d)
            fg.append(_dice((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), [1])[1])
            for name, ids in cfg.data.regions.items():
                regions[name].append(_dice(np.isin(pred, ids).astype(np.uint8), np.isin(ref, ids).astype(np.uint8),
                                           [1])[1])
    finally:
        model.train()

    def mean(v):
        v = [x for x in v if not math.isnan(x)]
        return float(np.mean(v)) if v else float("nan")

    out = {f"val_dice_{cfg.data.labels[lab]}": mean(v) for lab, v in per_class.items()}
    class_means = [out[f"val_dice_{cfg.data.labels[lab]}"] for lab in labels]
    out["val_dice_mean"] = mean(class_means)
    out["val_dice_foreground"] = mean(fg)
    for name, v in regions.items():
        out[f"val_dice_{name}"] = mean(v)
    return out


# ----------------------------------------------------------------------------------------- train
def _build_optimiser(cfg: TrainConfig, model):
    import torch

    o = cfg.optimiser
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)


def _wrap_crf_rnn(model, config: TrainConfig, pre):
    """``config.crf_rnn`` set: the network followed by a trainable CRF-as-RNN layer (input = image)."""
    from medseg.postprocess.crf_rnn import wrap_with_crf_rnn

    spacing = tuple(pre.target_spacing) if pre.target_spacing is not None else (1.0, 1.0, 1.0)
    if config.model.spatial_dims == 2:
        spacing = tuple(s for axis, s in enumerate(spacing) if axis != config.data.slice_axis)
    return wrap_with_crf_rnn(model, config.num_classes, spacing, config.crf_rnn)


def _split_crf_rnn_weights(weights: dict) -> tuple[dict, dict | None]:
    """Separate a CRF-wrapped state dict into the plain network's weights and the CRF's parameters."""
    if not any(k.startswith("crf.") for k in weights):
        return weights, None
    net = {k[len("net."):]: v for k, v in weights.items() if k.startswith("net.")}
    crf = {k[len("crf."):]: v for k, v in weights.items() if k.startswith("crf.")}
    return net, {k: v.tolist() for k, v in crf.items()}


def _write_model_dir(out_dir: Path, cfg: TrainConfig, plans: ModelPlans, weights: dict, log_rows: list[dict],
                     summary: dict) -> None:
    import torch

    weights, crf_params = _split_crf_rnn_weights(weights)
    if crf_params is not None:
        # the learned CRF, in the terms of medseg.postprocess.CRFConfig (usable with dense_crf)
        learned = {"spatial_weight": crf_params["spatial_weight"], "bilateral_weight": crf_params["bilateral_weight"],
                   "compatibility": crf_params["compatibility"]}
        atomic_write_text(out_dir / "crf_rnn.json", json.dumps(
            {"config": json.loads(cfg.crf_rnn.model_dump_json()), "learned": learned}, indent=2))

    from medseg.plans import save_plans

    buf = io.BytesIO()
    torch.save(weights, buf)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(buf.getvalue())
    save_plans(plans, out_dir)
    resolved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"preprocess": plans.preprocess})})
    atomic_write_text(out_dir / "config.yaml", _config_yaml(resolved))
    _write_log(log_rows, out_dir, summary)


def _check_resume_config(cfg: TrainConfig, saved_json: str, path: Path) -> None:
    saved = json.loads(saved_json)
    now = json.loads(cfg.model_dump_json())
    for key in now:
        if key in _RESUME_MUTABLE:
            continue
        if now.get(key) != saved.get(key):
            raise InputError(path, f"cannot resume: setting {key!r} differs from the interrupted run's "
                             "(only steps, epochs, checkpoint_every_steps and num_threads may change)")


def _check_nothing_to_resume(out_dir: Path) -> None:
    """``resume`` and no ``checkpoints/last.pt``: fine when ``out_dir`` is absent or holds nothing
    but what a run killed before its first checkpoint leaves (an empty ``checkpoints/``, hidden
    temporaries); refused when it holds a model or anything else (another run, other files)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(out_dir, "cannot resume: not a folder")
    if (out_dir / WEIGHTS_FILE).exists() or (out_dir / PLANS_FILE).exists():
        raise InputError(out_dir, f"cannot resume: holds a model directory but no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} "
                         "to continue from; choose another --out")
    ckpt_dir = out_dir / CHECKPOINT_DIR
    entries = [p for p in out_dir.iterdir() if p != ckpt_dir]
    if ckpt_dir.is_dir():
        entries += list(ckpt_dir.iterdir())
    other = sorted(str(p.relative_to(out_dir)) for p in entries if not p.name.startswith("."))
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise InputError(out_dir, f"cannot resume: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT}, and it holds {shown}: "
                         "not an interrupted medseg run; choose another --out")


def train(config: TrainConfig, *, manifest: str | Path | None = None, out_dir: str | Path, resume: bool = False,
          device: str = "auto", progress: bool = True, stop_after_steps: int | None = None,
          time_budget_s: float | None = None, notify: Callable[[str], None] | None = None) -> Path:
    """Train a model and write its model directory.

    Args:
        config: the validated training config.
        manifest: manifest CSV (overrides ``config.data.manifest``).
        out_dir: the run / model directory (created; must not already hold a run unless ``resume``).
        resume: continue from ``out_dir/checkpoints/last.pt`` exactly where it stopped. A run
            killed before its first checkpoint has none: then (``out_dir`` absent, or holding
            only an empty ``checkpoints/``) the run starts from step 0 and ``notify`` says so.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; with the config's
            ``autocast`` and ``num_threads`` it makes the run's :class:`medseg.runtime.Runtime`.
        progress: show a progress bar with loss and ETA (only when stderr is a terminal).
        stop_after_steps: end this call (with a checkpoint and the model directory written) once
            that many steps of the run are done, e.g. to fit a job's time slot; ``resume`` later.
        time_budget_s: likewise, end after this many seconds of training in this call.
        notify: called with a one-line message about a decision the user should know of (a
            ``resume`` that starts from step 0), e.g. to print it.

    Returns:
        The model directory (``out_dir``).

    Raises:
        InputError: bad manifest/data, a run already in ``out_dir`` without ``resume``; with
            ``resume``, no checkpoint in an ``out_dir`` that holds a model or other files (not an
            interrupted run), or a resumed config that changed more than its length.
        DeviceError: a misspelt device, or CUDA asked for and absent.
        ValueError: settings of the config: no manifest, an autocast impossible on the device,
            model options.
    """
    out_dir = Path(out_dir)
    manifest = Path(manifest) if manifest is not None else config.data.manifest
    if manifest is None:
        raise ValueError("no manifest: set data.manifest in the config or pass --manifest FILE.csv")
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / LAST_CHECKPOINT
    from_scratch = resume and not last_path.is_file()
    if from_scratch:
        _check_nothing_to_resume(out_dir)
        resume = False
    elif not resume and (last_path.exists() or (out_dir / WEIGHTS_FILE).exists()):
        raise InputError(out_dir, "already holds a training run; pass --resume to continue it or choose another --out")

    runtime = resolve_runtime(device, config.autocast, None if config.num_threads == "auto" else config.num_threads)
    if from_scratch and notify is not None:
        notify(f"no checkpoint in {out_dir} yet: starting from step 0")
    with runtime.activate():
        return _train(config, manifest, out_dir, resume, runtime, progress, stop_after_steps, time_budget_s)


def _train(config: TrainConfig, manifest: Path, out_dir: Path, resume: bool, runtime: Runtime, progress: bool,
           stop_after_steps: int | None, time_budget_s: float | None) -> Path:
    import torch

    from medseg.inference import Predictor
    from medseg.losses import create_loss
    from medseg.models import create_model
    from medseg.preprocess import PatchSampler
    from medseg.training.data import load_cases, load_split_rows, load_validation_cases, resolve_preprocess

    ckpt_dir = out_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / LAST_CHECKPOINT

    train_rows, val_rows = load_split_rows(config, manifest)
    state = _load_checkpoint(last_path) if resume else None
    if state is not None:
        _check_resume_config(config, state["config_json"], last_path)
        pre = PreprocessConfig.model_validate_json(state["preprocess_json"])
    else:
        pre = resolve_preprocess(config, train_rows)
    max_label = len(config.data.labels)
    train_cases = load_cases(train_rows, pre, max_label)
    val_cases = load_validation_cases(val_rows, max_label)
    plans = build_model_plans(config, pre)
    dev = runtime.device

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = create_model(config.model.name, config.model.spatial_dims, len(config.data.channels), config.num_classes,
                         **config.model.options)
    if config.crf_rnn is not None:
        model = _wrap_crf_rnn(model, config, pre)
    model = model.to(dev)
    # validation runs what model.pt will hold: the plain network (a CRF-as-RNN layer stays out of it)
    predictor = Predictor([model.net if config.crf_rnn is not None else model], plans, runtime=runtime,
                          window_batch=config.validation.sw_batch_size)
    loss_fn = create_loss(config.loss.name, **config.loss.options).to(dev)
    optimiser = _build_optimiser(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, make_lr_lambda(config))
    scaler = torch.amp.GradScaler(dev.type, enabled=runtime.autocast_dtype == torch.float16)
    sampler = PatchSampler(train_cases, config.patch_size, spatial_dims=config.model.spatial_dims,
                           slice_axis=config.data.slice_axis, sampling=config.data.sampling,
                           augment=config.data.augment, batch_size=config.batch_size, seed=config.seed)

    step = 0
    log_rows: list[dict] = []
    best = {"metric": -math.inf, "step": -1, "epoch": -1}
    acc = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step = int(state["step"])
        log_rows = list(state["log"])
        best = dict(state["best"])
        acc = dict(state["accumulators"])
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    total = config.total_steps
    spe = config.steps_per_epoch
    config_json = config.model_dump_json()
    pre_json = pre.model_dump_json()

    def checkpoint() -> None:
        _save_checkpoint({
            "format": _CHECKPOINT_FORMAT, "step": step, "epoch": step // spe, "model": model.state_dict(),
            "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": _rng_state(), "log": log_rows,
            "best": best, "accumulators": acc, "config_json": config_json, "preprocess_json": pre_json,
        }, last_path)

    def summary() -> dict:
        amp_dtype = runtime.autocast_dtype
        return {"steps_done": step, "total_steps": total, "epochs_done": step // spe, "device": str(dev),
                "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else "none", "threads": runtime.threads,
                "best_step": best["step"], "best_val_dice_mean": best["metric"] if best["step"] >= 0 else None,
                "model_pt": "best validation checkpoint" if best["step"] >= 0 else "last weights",
                "n_train_cases": len(train_cases), "n_val_cases": len(val_cases)}

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    show = progress and sys.stderr.isatty()
    bar = Progress(TextColumn("[bold]train[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=console, disable=not show, transient=False)
    call_start = time.perf_counter()
    model.train()
    with bar:
        task = bar.add_task("train", total=total, completed=step, epoch=step // spe + 1, loss="-")
        while step < total:
            if stop_after_steps is not None and step >= stop_after_steps:
                break
            if time_budget_s is not None and time.perf_counter() - call_start > time_budget_s:
                break
            t0 = time.perf_counter()
            x, y = sampler.batch(step)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with runtime.autocast():
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}; lower optimiser.lr or check the data")
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.optimiser.grad_clip is not None:
                scaler.unscale_(optimiser)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimiser.grad_clip)
            scaler.step(optimiser)
            scaler.update()
            lr = optimiser.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            acc["loss_sum"] += float(loss.item())
            acc["loss_n"] += 1
            acc["seconds"] += time.perf_counter() - t0
            bar.update(task, completed=step, epoch=(step - 1) // spe + 1, loss=f"{loss.item():.4f}")
            epoch_end = step % spe == 0 or step == total
            if epoch_end:
                epoch = (step - 1) // spe + 1
                row: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": acc["loss_sum"] / max(acc["loss_n"], 1),
                                       "lr": lr, "train_seconds": acc["seconds"],
                                       "samples_per_s": acc["loss_n"] * config.batch_size / max(acc["seconds"], 1e-9)}
                if val_cases and (epoch % config.validation.every_epochs == 0 or step == total):
                    tv = time.perf_counter()
                    metrics = _validate(model, predictor, val_cases, config)
                    row.update(metrics)
                    row["val_seconds"] = time.perf_counter() - tv
                    score = metrics["val_dice_mean"]
                    if not math.isnan(score) and score > best["metric"]:
                        best = {"metric": score, "step": step, "epoch": epoch}
                        _save_checkpoint({"format": _CHECKPOINT_FORMAT, "step": step, "epoch": epoch,
                                          "model": model.state_dict(), "val_dice_mean": score},
                                         ckpt_dir / BEST_CHECKPOINT)
                log_rows.append(row)
                acc = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0}
                _write_log(log_rows, out_dir, summary())
            if epoch_end or step % config.checkpoint_every_steps == 0 or step == total:
                checkpoint()
    if step % config.checkpoint_every_steps != 0 and step % spe != 0:
        checkpoint()  # stopped early between checkpoints: keep every step done
    if best["step"] >= 0:
        weights = _load_checkpoint(ckpt_dir / BEST_CHECKPOINT)["model"]
    else:
        weights = model.state_dict()
    _write_model_dir(out_dir, config, plans, {k: v.detach().cpu() for k, v in weights.items()}, log_rows, summary())
    return out_dir

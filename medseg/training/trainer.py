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

Time budget (``max_minutes``): the run is shortened to the steps that fit, measured on this
machine. Before anything is written, a copy of the model times a few training steps and one
validation case in memory (the run's own model, optimiser and random states untouched); a
budget that cannot hold one epoch is refused there. The schedule length (``schedule_steps``) is
then the configured total or the whole epochs that fit, whichever is fewer, and is estimated
again at each epoch end from the seconds per step and per validation measured so far, only ever
shrinking (the last planned epoch is finished when at least half of it still fits). The
learning-rate schedule spans ``schedule_steps``, so it still reaches its end, and the last step
is validated as usual. ``schedule_steps`` is kept in the checkpoint: a resumed
run continues the same shortened schedule (its budget is that of the resuming call). Without a
budget nothing is measured and the run is exactly the configured one.
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
from medseg.training.data import CaseSplit, resolve_manifest

__all__ = ["train", "CHECKPOINT_DIR", "LAST_CHECKPOINT", "BEST_CHECKPOINT", "make_lr_lambda", "build_model_plans"]

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
_CHECKPOINT_FORMAT = 1
# settings that may change between an interrupted run and its resumption (a fold's cases are
# checked on their own: cross_validation only makes splits.json)
_RESUME_MUTABLE = {"steps", "epochs", "checkpoint_every_steps", "num_threads", "cross_validation", "max_minutes"}


def make_lr_lambda(cfg: TrainConfig, total_steps: int | None = None):
    """Learning-rate factor per step for ``torch.optim.lr_scheduler.LambdaLR``.

    ``total_steps``: the steps the schedule spans (default ``cfg.total_steps``; a time budget
    passes the shortened run's length), so that the factor reaches its end value at step
    ``total_steps - 1``.
    """
    sched = cfg.schedule
    total = cfg.total_steps if total_steps is None else int(total_steps)
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
def _train_step(step: int, sampler, model, loss_fn, optimiser, scaler, runtime: Runtime, grad_clip: float | None):
    """One optimisation step on the batch of ``step`` (``sampler.batch``: images (B, C, *patch), labels
    (B, 1, *patch)); returns the loss (a 0-d tensor)."""
    import torch

    dev = runtime.device
    x, y = sampler.batch(step)
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    with runtime.autocast():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}; lower optimiser.lr or check the data")
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimiser)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimiser)
    scaler.update()
    return loss


def _measure_speed(config: TrainConfig, model, loss_fn, sampler, runtime: Runtime, plans: ModelPlans, val_cases,
                   step: int) -> dict[str, float]:
    """Seconds per training step, per validation (all ``val_cases``) and per checkpoint serialisation
    of this run on this machine, measured in memory on a copy of ``model`` with its own optimiser:
    one untimed warm-up step, then the fastest of three timed steps on the batches of ``step``,
    ``step + 1``, ... (the budget only ever shortens a run afterwards, so its first estimate leans
    to the fast side); the first validation case, times the number of cases. The run's model,
    optimiser and random states are left as they were; nothing is written.

    Returns:
        ``{"step_s", "val_s", "save_s"}`` in seconds.
    """
    import copy

    import torch

    from medseg.inference import Predictor

    rng = _rng_state()
    probe = copy.deepcopy(model)
    optimiser = _build_optimiser(config, probe)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    try:
        probe.train()
        seconds = []
        for i in range(4):
            t0 = time.perf_counter()
            _train_step(step + i, sampler, probe, loss_fn, optimiser, scaler, runtime, config.optimiser.grad_clip).item()
            seconds.append(time.perf_counter() - t0)
        val_s = 0.0
        if val_cases:
            predictor = Predictor([probe.net if config.crf_rnn is not None else probe], plans, runtime=runtime,
                                  window_batch=config.validation.sw_batch_size)
            t0 = time.perf_counter()
            _validate(probe, predictor, val_cases[:1], config)
            val_s = (time.perf_counter() - t0) * len(val_cases)
        t0 = time.perf_counter()
        torch.save({"model": probe.state_dict(), "optimizer": optimiser.state_dict()}, io.BytesIO())
        save_s = time.perf_counter() - t0
    finally:
        del probe, optimiser
        _set_rng_state(rng)
    return {"step_s": min(seconds[1:]), "val_s": val_s, "save_s": save_s}


def _steps_within(seconds: float, step: int, limit: int, *, step_s: float, val_s: float, finish_s: float,
                  steps_per_epoch: int, every_epochs: int, validates: bool, pending: bool) -> int:
    """The longest run, as a total step count ``E`` with ``step <= E <= limit``, whose remaining work
    fits in ``seconds``: ``E - step`` training steps of ``step_s`` s, the validations they reach
    (``val_s`` s each, when ``validates``: at the ends of every ``every_epochs``-th epoch, always at
    ``E``, and at ``step`` itself when its validation is ``pending``) and ``finish_s`` s to write
    the model. ``step`` when not even that fits."""
    due = steps_per_epoch * every_epochs  # validated epoch ends are the multiples of this step count
    first = step if pending else step + 1  # the first step whose validation is still to come

    def cost(end: int) -> float:
        n_val = 0
        if validates and end >= first:
            n_val = end // due - (first - 1) // due + (1 if end % due else 0)
        return (end - step) * step_s + n_val * val_s + finish_s

    if cost(step) > seconds:
        return step
    lo, hi = step, limit  # cost(lo) fits; find the largest end that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


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


def _cases_record(cases: CaseSplit | None) -> dict | None:
    return None if cases is None else {"train": list(cases.train), "val": list(cases.val)}


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
          max_minutes: float | None = None, notify: Callable[[str], None] | None = None,
          cases: CaseSplit | None = None) -> Path:
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
        max_minutes: time budget of this call in minutes of wall time, from the call to the
            written model directory (overrides ``config.max_minutes``, and is recorded in the
            model directory's ``config.yaml``): the run is shortened to the steps that fit, the
            learning-rate schedule spanning them (see the module docstring). A resumed run gets
            this call's budget for the steps it has left.
        notify: called with a one-line message about a decision the user should know of (a
            ``resume`` that starts from step 0), e.g. to print it.
        cases: train on ``cases.train`` and validate on ``cases.val`` (manifest case ids; a
            cross-validation fold, :mod:`medseg.training.folds`) instead of the manifest's
            ``train``/``val`` splits; the CT intensity statistics are then fitted on every
            labelled case (:func:`~medseg.training.data.labelled_rows`), so that all folds share
            one preprocessing. A resumed run must have the same cases.

    Returns:
        The model directory (``out_dir``). ``training_log.json``'s summary says how the run ended:
        ``stopped_by`` ``"steps"`` (the configured length), ``"budget"`` (the shortened length),
        ``"stop_after_steps"`` (paused), with ``schedule_steps`` (the length the schedule spans),
        ``budget_minutes`` (this call's budget or null) and ``elapsed_minutes`` (this call's wall time).

    Raises:
        InputError: bad manifest/data, a run already in ``out_dir`` without ``resume``; with
            ``resume``, no checkpoint in an ``out_dir`` that holds a model or other files (not an
            interrupted run), a resumed config that changed more than its length, or other
            ``cases`` than the interrupted run's; a time budget too small for one epoch
            (nothing written).
        DeviceError: a misspelt device, or CUDA asked for and absent.
        ValueError: settings of the config: no manifest, an autocast impossible on the device,
            model options, a budget that is not positive.
    """
    started = time.perf_counter()
    if max_minutes is not None:
        if not max_minutes > 0:
            raise ValueError(f"max_minutes must be a positive number of minutes, not {max_minutes}")
        config = config.model_copy(update={"max_minutes": float(max_minutes)})
    out_dir = Path(out_dir)
    manifest = resolve_manifest(config, manifest)
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
        return _train(config, manifest, out_dir, resume, runtime, progress, stop_after_steps, started, cases)


def _budget_too_small(config: TrainConfig, elapsed_s: float, epoch_steps: int, speed: dict[str, float],
                      need_s: float) -> InputError:
    minutes = config.max_minutes
    detail = f"{epoch_steps} steps of {speed['step_s']:.2f} s"
    if speed["val_s"]:
        detail += f", validation {speed['val_s']:.2f} s"
    return InputError(None, f"max_minutes {minutes:g} (--max-minutes, or max_minutes in the config) is too small for "
                      f"one epoch of this run: about {need_s / 60:.2g} min needed on this machine "
                      f"(setup {elapsed_s:.1f} s, {detail}); give more minutes or fewer steps_per_epoch")


def _train(config: TrainConfig, manifest: Path, out_dir: Path, resume: bool, runtime: Runtime, progress: bool,
           stop_after_steps: int | None, started: float, cases: CaseSplit | None) -> Path:
    import torch

    from medseg.inference import Predictor
    from medseg.losses import create_loss
    from medseg.models import create_model
    from medseg.preprocess import PatchSampler
    from medseg.training.data import (labelled_rows, load_cases, load_split_rows, load_validation_cases,
                                      resolve_preprocess)

    ckpt_dir = out_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / LAST_CHECKPOINT

    train_rows, val_rows = load_split_rows(config, manifest, cases)
    state = _load_checkpoint(last_path) if resume else None
    if state is not None:
        _check_resume_config(config, state["config_json"], last_path)
        if state.get("cases") != _cases_record(cases):
            raise InputError(last_path, "cannot resume: the interrupted run trained and validated on other cases "
                             "(a fold whose splits.json entry changed since)")
        pre = PreprocessConfig.model_validate_json(state["preprocess_json"])
    else:
        pre = resolve_preprocess(config, train_rows if cases is None else labelled_rows(config, manifest))
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
    if state is not None:
        model.load_state_dict(state["model"])
    # validation runs what model.pt will hold: the plain network (a CRF-as-RNN layer stays out of it)
    predictor = Predictor([model.net if config.crf_rnn is not None else model], plans, runtime=runtime,
                          window_batch=config.validation.sw_batch_size)
    loss_fn = create_loss(config.loss.name, **config.loss.options).to(dev)
    sampler = PatchSampler(train_cases, config.patch_size, spatial_dims=config.model.spatial_dims,
                           slice_axis=config.data.slice_axis, sampling=config.data.sampling,
                           augment=config.data.augment, batch_size=config.batch_size, seed=config.seed)

    total = config.total_steps
    spe = config.steps_per_epoch
    step = int(state["step"]) if state is not None else 0
    # the steps the schedule spans: the configured total, or fewer where a time budget shortened the run
    kept = state.get("schedule_steps") if state is not None else None
    schedule_total = kept_total = total if kept is None else min(total, int(kept))
    # with a time budget: seconds per step, per validation and to finish, measured, then as the run goes
    timing: dict[str, float] | None = None

    def steps_in_budget(pending: bool, share: float = 1.0) -> int:
        """The schedule length whose remaining work fits in ``share`` times the budget left: whole
        epochs (or the length as it is), so the last epoch ends with the schedule, validated."""
        left = (config.max_minutes * 60.0 - (time.perf_counter() - started)) * share
        fit = _steps_within(left, step, schedule_total, step_s=timing["step_s"], val_s=timing["val_s"],
                            finish_s=timing["finish_s"], steps_per_epoch=spe,
                            every_epochs=config.validation.every_epochs, validates=bool(val_cases), pending=pending)
        return schedule_total if fit >= schedule_total else max(step, fit // spe * spe)

    if config.max_minutes is not None and step < schedule_total:
        speed = _measure_speed(config, model, loss_fn, sampler, runtime, plans, val_cases, step)
        timing = {"step_s": speed["step_s"], "val_s": speed["val_s"], "finish_s": 2 * speed["save_s"]}
        fit = steps_in_budget(False)
        first_epoch_end = min((step // spe + 1) * spe, schedule_total)
        if fit < first_epoch_end:  # nothing written yet: refuse rather than leave a run without an epoch
            elapsed = time.perf_counter() - started
            need = elapsed + (first_epoch_end - step) * timing["step_s"] + timing["val_s"] + timing["finish_s"]
            raise _budget_too_small(config, elapsed, first_epoch_end - step, speed, need)
        schedule_total = fit

    optimiser = _build_optimiser(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, make_lr_lambda(config, schedule_total))
    scaler = torch.amp.GradScaler(dev.type, enabled=runtime.autocast_dtype == torch.float16)

    log_rows: list[dict] = []
    best = {"metric": -math.inf, "step": -1, "epoch": -1}
    acc = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0}
    if state is not None:
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        log_rows = list(state["log"])
        best = dict(state["best"])
        acc = dict(state["accumulators"])
        if schedule_total != kept_total:  # this call's budget shortened the run further
            _set_schedule_length(scheduler, optimiser, config, schedule_total)
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    config_json = config.model_dump_json()
    pre_json = pre.model_dump_json()
    stopped_by: str | None = None

    def checkpoint() -> None:
        _save_checkpoint({
            "format": _CHECKPOINT_FORMAT, "step": step, "epoch": step // spe, "model": model.state_dict(),
            "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": _rng_state(), "log": log_rows,
            "best": best, "accumulators": acc, "config_json": config_json, "preprocess_json": pre_json,
            "cases": _cases_record(cases),
            "schedule_steps": schedule_total if schedule_total < total else None,
        }, last_path)

    def summary() -> dict:
        amp_dtype = runtime.autocast_dtype
        return {"steps_done": step, "total_steps": total, "schedule_steps": schedule_total, "epochs_done": step // spe,
                "stopped_by": stopped_by, "budget_minutes": config.max_minutes,
                "elapsed_minutes": (time.perf_counter() - started) / 60.0, "device": str(dev),
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
    # this call's loop: steps, wall time and validation time, for the budget's seconds per step
    loop = {"start": time.perf_counter(), "first_step": step, "val_s": 0.0}
    model.train()
    with bar:
        task = bar.add_task("train", total=schedule_total, completed=step, epoch=step // spe + 1, loss="-")
        while step < schedule_total:
            if stop_after_steps is not None and step >= stop_after_steps:
                break
            t0 = time.perf_counter()
            loss = _train_step(step, sampler, model, loss_fn, optimiser, scaler, runtime, config.optimiser.grad_clip)
            lr = optimiser.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            acc["loss_sum"] += float(loss.item())
            acc["loss_n"] += 1
            acc["seconds"] += time.perf_counter() - t0
            bar.update(task, completed=step, epoch=(step - 1) // spe + 1, loss=f"{loss.item():.4f}")
            epoch_end = step % spe == 0 or step == schedule_total
            if epoch_end and timing is not None and step < schedule_total:
                # seconds per step so far in this call (checkpoints and logs included, validations apart)
                timing["step_s"] = (time.perf_counter() - loop["start"] - loop["val_s"]) / (step - loop["first_step"])
                fit = steps_in_budget(True)
                if fit == step and schedule_total <= step + spe and steps_in_budget(True, 2.0) == schedule_total:
                    fit = schedule_total  # the last planned epoch, at least half of which fits: finish it
                if fit < schedule_total:
                    schedule_total = fit
                    _set_schedule_length(scheduler, optimiser, config, schedule_total)
                    bar.update(task, total=schedule_total)
            if epoch_end:
                epoch = (step - 1) // spe + 1
                row: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": acc["loss_sum"] / max(acc["loss_n"], 1),
                                       "lr": lr, "train_seconds": acc["seconds"],
                                       "samples_per_s": acc["loss_n"] * config.batch_size / max(acc["seconds"], 1e-9)}
                if val_cases and (epoch % config.validation.every_epochs == 0 or step == schedule_total):
                    tv = time.perf_counter()
                    metrics = _validate(model, predictor, val_cases, config)
                    row.update(metrics)
                    row["val_seconds"] = time.perf_counter() - tv
                    loop["val_s"] += row["val_seconds"]
                    if timing is not None:
                        timing["val_s"] = row["val_seconds"]
                    score = metrics["val_dice_mean"]
                    if not math.isnan(score) and score > best["metric"]:
                        best = {"metric": score, "step": step, "epoch": epoch}
                        _save_checkpoint({"format": _CHECKPOINT_FORMAT, "step": step, "epoch": epoch,
                                          "model": model.state_dict(), "val_dice_mean": score},
                                         ckpt_dir / BEST_CHECKPOINT)
                log_rows.append(row)
                acc = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0}
                _write_log(log_rows, out_dir, summary())
            if epoch_end or step % config.checkpoint_every_steps == 0 or step == schedule_total:
                checkpoint()
    if step % config.checkpoint_every_steps != 0 and step % spe != 0:
        checkpoint()  # stopped early between checkpoints: keep every step done
    if step >= schedule_total:
        stopped_by = "steps" if schedule_total >= total else "budget"
    else:
        stopped_by = "stop_after_steps"
    if best["step"] >= 0:
        weights = _load_checkpoint(ckpt_dir / BEST_CHECKPOINT)["model"]
    else:
        weights = model.state_dict()
    _write_model_dir(out_dir, config, plans, {k: v.detach().cpu() for k, v in weights.items()}, log_rows, summary())
    return out_dir


def _set_schedule_length(scheduler, optimiser, config: TrainConfig, total_steps: int) -> None:
    """Make ``scheduler`` (a ``LambdaLR``) span ``total_steps`` steps from now on, and set the learning
    rate of the optimiser's next step (``scheduler.last_epoch``) from it."""
    factor = make_lr_lambda(config, total_steps)
    scheduler.lr_lambdas = [factor] * len(optimiser.param_groups)
    for group, base in zip(optimiser.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor(scheduler.last_epoch)

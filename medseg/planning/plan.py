"""From a dataset fingerprint to a training config: nnU-Net's heuristics, sized to a device and a budget.

:func:`plan_training` takes a :class:`~medseg.planning.fingerprint.Fingerprint` and returns a
:class:`TrainingPlan`: the config (what :func:`medseg.training.load_train_config` reads) with
a one-line reason beside every decision, rendered as commented YAML by
:meth:`TrainingPlan.to_yaml`.

What follows nnU-Net v2's ``ExperimentPlanner`` (3d_fullres configuration):

- target spacing: the median spacing; on anisotropic data (one axis over 3× coarser than the
  others and with over 3× fewer voxels), that axis takes the 10th percentile of its spacings
  instead, never finer than the other axes (:func:`fullres_target_spacing`);
- patch and topology: an initial patch with the target spacing's aspect ratio and the volume of
  256³, clipped to the median shape; pooling per axis while the axis is at most 2× coarser than
  the finest one and its feature map keeps at least 4 voxels (:func:`pool_and_conv_props`,
  nnU-Net's ``get_pool_and_conv_props``); then the axis largest relative to the median shape is
  shrunk until the run fits the memory (and, here, the time) budget;
- widths 32 doubling per level up to 320, instance norm; batch size from the memory left, at
  least 2 and at most 5% of the dataset's voxels per batch;
- normalisation: CT channels clipped to the foreground's 0.5–99.5 percentiles, then the
  foreground mean and std; other channels z-scored per image, inside the nonzero mask when
  cropping to it shrinks the median case below 3/4 of its size;
- crop to the nonzero box; Dice (without background) + cross-entropy; 1000 epochs of 250 steps
  with SGD (lr 0.01, Nesterov momentum 0.99, weight decay 3e-5) and the poly schedule on a GPU;
  5 folds; mirroring, rotation, scaling, intensity scaling and noise.

Where medseg departs, and why (each also said in the YAML's comments):

- the network is the registry's ``unet`` (MONAI's residual U-Net) with nnU-Net's widths and
  per-axis strides, not PlainConvUNet: medseg has one U-Net. Its kernels are 3 wide on every
  axis, and its first block already downsamples, so it has no full-resolution stage;
- only the 3d_fullres configuration is planned (no 2D, no low-resolution cascade, no choice
  among configurations by cross-validation);
- memory is estimated from this U-Net's feature maps with bytes per element measured here
  (:data:`BYTES_PER_ELEMENT`), not nnU-Net's reference constants; the network being cheaper
  than PlainConvUNet, a GPU patch is larger than nnU-Net's for the same memory. A step's time
  is estimated from its multiply-accumulates (:data:`SECONDS_PER_GMAC`: measured on a CPU, a
  rough figure for GPUs), and on a CPU the patch and widths are sized for about
  :data:`CPU_STEP_SECONDS` s per step (nnU-Net's GPU patch would take minutes per step there):
  widths 16 doubling up to 256;
- a CPU run is 100 epochs of 50 steps with AdamW (lr 3e-3, medseg's BraTS config); a run given
  ``--minutes`` has as many epochs of 50 steps as fit (at most nnU-Net's 250,000 steps), also with
  AdamW: SGD with momentum 0.99 needs nnU-Net's 250,000 steps;
- ``--minutes N`` writes ``max_minutes: N`` and sizes one training run (one fold) so that at
  least :data:`MIN_STEPS` steps fit: the patch shrinks (no axis under 16 voxels), and when it
  would get smaller than 48³ voxels the widths are halved first;
- short runs draw 2 of 3 patches around foreground (nnU-Net: 1 of 3) so that they see enough
  of it;
- classes that hold under 0.1% of their case's voxels (median over the cases) make the loss
  Dice + focal instead of Dice + CE;
- mirroring is off when label names say left/right (mirroring would swap them); rotation is off
  on anisotropic patches (nnU-Net rotates those in-plane only, medseg's affine rotates about
  every axis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.planning.fingerprint import Fingerprint

__all__ = ["PlanBudget", "Entry", "Items", "TrainingPlan", "PlanOutputs", "plan_training", "plan_dataset", "side_files",
           "fullres_target_spacing",
           "pool_and_conv_props", "unet_cost", "cross_validation_folds", "render_yaml",
           "ANISO_THRESHOLD", "SECONDS_PER_GMAC", "BYTES_PER_ELEMENT", "CPU_STEP_SECONDS", "MIN_STEPS",
           "TINY_CLASS_FRACTION"]

ANISO_THRESHOLD = 3.0  # nnU-Net: an axis is anisotropic when over 3x coarser than the others
FEATUREMAP_MIN_EDGE = 4  # nnU-Net: the deepest feature map keeps at least 4 voxels per pooled axis
NUM_RES_UNITS = 2  # convs per encoder level, as PlainConvUNet's 2 per stage
# Seconds of a training step (forward, backward, optimiser; bf16 autocast) per 10^9 multiply-accumulates
# of one sample's forward pass. CPU: measured on 2 shared cores (0.28-0.66 across patch shapes and
# machine load). CUDA: not measured; a rough figure for an A100-class GPU (nnU-Net's 3d_fullres network,
# about 400 GMAC per 128^3 sample, takes about 0.12 s per step of 2).
SECONDS_PER_GMAC = {"cpu": 0.4, "cuda": 1.5e-4}
# Bytes of training memory per element of the U-Net's conv outputs (activations kept for the backward
# pass: conv, norm and activation outputs, skip concatenations; weights and optimiser state), measured
# on the CPU with bf16 autocast (13-17 across patch sizes).
BYTES_PER_ELEMENT = 16.0
MEMORY_FRACTION = 0.85  # of --memory-gb available to activations (the rest: weights, optimiser, workspace)
CPU_STEP_SECONDS = 2.0  # a CPU step (batch 2) without a time budget
MIN_STEPS = 1000  # with --minutes: the network and patch shrink until this many steps fit
MIN_PATCH_VOXELS = 48 ** 3  # below this patch (or the median shape) the widths are halved instead
MIN_PATCH_SIDE = 16  # a time budget never shrinks a patch axis below this (or the median shape)
TRAIN_TIME_FRACTION = 0.85  # of --minutes spent on training steps (the rest: loading, validation)
VALIDATION_TIME_FRACTION = 0.1  # validation passes are spaced to take at most this share of the run
TINY_CLASS_FRACTION = 1e-3
LOWRES_COVERAGE = 0.25  # nnU-Net's lowres_creation_threshold: a patch under this share of the median case
LOWRES_STEP = 1.03  # nnU-Net's spacing_increase_factor for its 3d_lowres spacing
LOWRES_MAX_FACTOR = 4.0  # medseg: never coarser than this times the fullres spacing
WIDTHS = {"cuda": (32, 320), "cpu": (16, 256)}  # first width, largest width
LONG_RUN = (1000, 250)  # nnU-Net: epochs, steps per epoch
SHORT_RUN = (100, 50)
_LATERAL = re.compile(r"(^|[^a-z])(left|right|lt|rt)([^a-z]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class PlanBudget:
    """What the run may use: ``device`` (``cpu`` or ``cuda``), ``memory_gb`` (GPU memory on CUDA,
    RAM on a CPU) and ``minutes`` (a time budget for the whole run, or None)."""

    device: Literal["cpu", "cuda"] = "cpu"
    memory_gb: float = 8.0
    minutes: float | None = None

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, not {self.device!r}")
        if not (self.memory_gb > 0 and math.isfinite(self.memory_gb)):
            raise ValueError(f"--memory-gb must be a positive number of GB, not {self.memory_gb}")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"--minutes must be a positive number of minutes, not {self.minutes}")


# ------------------------------------------------------------------------------------------------
# nnU-Net's heuristics


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, int | None]:
    """nnU-Net's ``determine_fullres_target_spacing``.

    Args:
        spacings: ``(N, 3)`` mm per axis of each case (axes in one order, e.g. RAS).
        shapes: ``(N, 3)`` voxels per axis of each case after cropping to nonzero.

    Returns:
        The target spacing ``(3,)`` mm (the median, or with the anisotropic axis at the 10th
        percentile of its spacings) and that axis (None when the data is not anisotropic).
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min(target_size[i] for i in others)
    if not (aniso_spacing and aniso_voxels):
        return target, None
    axis_spacing = float(np.percentile(spacings[:, worst], 10))
    if axis_spacing < max(target[i] for i in others):
        axis_spacing = max(max(target[i] for i in others), axis_spacing) + 1e-5
    target[worst] = axis_spacing
    return target, worst


def _pad_shape(shape: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """Round each side up to a multiple of its divisor (nnU-Net's ``pad_shape``)."""
    return [int(math.ceil(s / d) * d) for s, d in zip(shape, divisor)]


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int],
                        min_feature_map_size: int = FEATUREMAP_MIN_EDGE, max_numpool: int = 999999):
    """nnU-Net's ``get_pool_and_conv_props``: pooling per axis from the spacing.

    At each level, the axes that are at most 2x coarser than the finest one and whose feature map
    still has at least ``2 * min_feature_map_size`` voxels are pooled by 2 (an axis pooled alone
    needs ``3 * min_feature_map_size``); conv kernels are 3 wide along axes within 2x of the
    finest spacing, 1 wide along coarser ones.

    Returns:
        ``(num_pool_per_axis, pool_op_kernel_sizes, conv_kernel_sizes, patch_size,
        must_be_divisible_by)``: pool kernels per level including the first ``[1, 1, 1]``, the
        patch rounded up to a multiple of ``2**num_pool`` per axis.
    """
    dim = len(spacing)
    current_spacing = list(map(float, spacing))
    current_size = list(map(float, patch_size))
    pool_op_kernel_sizes = [[1] * dim]
    conv_kernel_sizes = []
    num_pool_per_axis = [0] * dim
    kernel_size = [1] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        min_spacing = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / min_spacing < 2]
        valid = [i for i in valid if num_pool_per_axis[i] < max_numpool]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map_size:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel_size[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel_size[d] = 3
        pool = [1] * dim
        for v in valid:
            pool[v] = 2
            num_pool_per_axis[v] += 1
            current_spacing[v] *= 2
            current_size[v] = math.ceil(current_size[v] / 2)
        pool_op_kernel_sizes.append(pool)
        conv_kernel_sizes.append(list(kernel_size))
    divisor = [2 ** n for n in num_pool_per_axis]
    conv_kernel_sizes.append([3] * dim)
    return num_pool_per_axis, pool_op_kernel_sizes, conv_kernel_sizes, _pad_shape(patch_size, divisor), divisor


def _shrink_axis(spacing, patch, median_shape) -> list[int] | None:
    """nnU-Net's step: shrink the axis largest relative to the median shape by its divisibility.
    None when that would take it under :data:`MIN_PATCH_SIDE` voxels (or its median size)."""
    axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
    tmp = list(patch)
    _, _, _, _, div = pool_and_conv_props(spacing, tmp)
    tmp[axis] -= div[axis]
    _, _, _, _, div = pool_and_conv_props(spacing, tmp)
    patch = list(patch)
    patch[axis] -= div[axis]
    return patch if patch[axis] >= min(MIN_PATCH_SIDE, int(median_shape[axis])) and patch[axis] >= 1 else None


# ------------------------------------------------------------------------------------------------
# cost of the registry's U-Net


def unet_cost(patch: Sequence[int], strides: Sequence[Sequence[int]], channels: Sequence[int], in_channels: int,
              out_channels: int, num_res_units: int = NUM_RES_UNITS) -> tuple[float, float]:
    """Per sample, ``(elements, macs)`` of medseg's ``unet`` (MONAI's residual U-Net) on ``patch``.

    ``elements``: values of every conv output (the feature maps a training step keeps);
    ``macs``: multiply-accumulates of the forward pass (3-wide kernels). Level ``i`` works at the
    patch divided by ``strides[0..i]``: its down block has ``num_res_units`` convs plus a strided
    residual conv; the bottom block works at the deepest size; each up block is a transposed conv
    and one more conv, at the size of the level above (the last one at full size, with
    ``out_channels``).
    """
    levels = len(channels)

    def voxels(upto: int) -> float:
        size = [float(p) for p in patch]
        for s in strides[:upto + 1]:
            size = [a / b for a, b in zip(size, s)]
        return math.prod(size)

    r = num_res_units
    elements = macs = 0.0
    prev = in_channels
    for i in range(levels - 1):
        v, c = voxels(i), channels[i]
        elements += (r + 1) * c * v
        macs += 27 * v * c * (prev + c * (r - 1) + prev)
        prev = c
    v, c = voxels(levels - 2), channels[-1]
    elements += (r + 1) * c * v
    macs += v * c * (27 * prev + 27 * c * (r - 1) + prev)
    for i in range(levels - 2, -1, -1):
        v = voxels(i)
        up_in = channels[i] * 2 if i < levels - 2 else channels[i] + channels[-1]
        out = channels[i - 1] if i >= 1 else out_channels
        v_out = voxels(i - 1) if i >= 1 else float(math.prod(patch))
        elements += 2 * out * v_out
        macs += 27 * (v * up_in * out + v_out * out * out)
    return elements, macs


# ------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Entry:
    """One key of the YAML: a value (written in flow style) or a list of entries (a block
    mapping), or :class:`Items` (a block sequence), with a one-line comment above it."""

    key: str
    value: Any
    comment: str | None = None


@dataclass
class Items:
    """A block sequence: ``(value, comment)`` per item."""

    items: list[tuple[Any, str | None]]


def _flow(value: Any) -> str:
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, width=10**9, sort_keys=False).strip()[1:-1]


def _comment(text: str) -> str:
    return " ".join(str(text).split())


def render_yaml(entries: Sequence[Entry], header: Sequence[str] = (), indent: int = 0) -> str:
    """Entries as YAML text with their comments (``# ...`` lines above each key)."""
    lines = [f"# {_comment(h)}" if h else "#" for h in header]
    pad = " " * indent
    for e in entries:
        if e.comment:
            lines.append(f"{pad}# {_comment(e.comment)}")
        if isinstance(e.value, list) and e.value and all(isinstance(v, Entry) for v in e.value):
            lines.append(f"{pad}{e.key}:")
            lines.append(render_yaml(e.value, indent=indent + 2).rstrip("\n"))
        elif isinstance(e.value, Items):
            lines.append(f"{pad}{e.key}:")
            for value, comment in e.value.items:
                if comment:
                    lines.append(f"{pad}  # {_comment(comment)}")
                lines.append(f"{pad}  - {_flow(value)}")
        else:
            lines.append(f"{pad}{e.key}: {_flow(e.value)}")
    return "\n".join(lines) + "\n"


def _plain(entries: Sequence[Entry]) -> dict:
    out: dict = {}
    for e in entries:
        if isinstance(e.value, list) and e.value and all(isinstance(v, Entry) for v in e.value):
            out[e.key] = _plain(e.value)
        elif isinstance(e.value, Items):
            out[e.key] = [v for v, _ in e.value.items]
        else:
            out[e.key] = e.value
    return out


@dataclass
class TrainingPlan:
    """A planned training config: :attr:`entries` (values with reasons), :attr:`header` lines."""

    entries: list[Entry]
    header: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        """The config as plain data (what the YAML loads to)."""
        return _plain(self.entries)

    def to_yaml(self) -> str:
        """The config as YAML with a comment giving the reason of each decision; it loads back to
        :attr:`config` (checked)."""
        import yaml

        text = render_yaml(self.entries, self.header)
        if yaml.safe_load(text) != self.config:
            raise AssertionError("the planned YAML does not load back to the planned config")
        return text


def cross_validation_folds(n_cases: int, source: str | Path) -> int:
    """nnU-Net's 5 folds, or one per case with fewer than 5 cases.

    Raises:
        InputError: naming ``source``, for fewer than 2 labelled cases (no fold can hold both a
            training and a validation case).
    """
    if n_cases < 2:
        raise InputError(source, f"{n_cases} labelled train/val case: cross-validation needs at least 2 "
                         "(each fold trains on some cases and validates on others)")
    return min(5, n_cases)


def _r(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))


def _fmt_minutes(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


@dataclass
class _Topology:
    patch: list[int]
    strides: list[list[int]]
    channels: list[int]
    elements: float
    macs: float


def _topology(spacing, patch, widths: tuple[int, int], in_ch: int, out_ch: int) -> _Topology:
    _, pools, _, patch, _ = pool_and_conv_props(spacing, patch)
    if len(pools) < 2:
        pools = pools + [[1] * len(spacing)]  # a U-Net needs two levels; the patch allows no pooling
    channels = [min(widths[1], widths[0] * 2 ** i) for i in range(len(pools))]
    strides = pools[1:]
    elements, macs = unet_cost(patch, strides, channels, in_ch, out_ch)
    return _Topology(list(map(int, patch)), strides, channels, elements, macs)


@dataclass
class _Run:
    """The sized run: network, patch, batch and length, with the estimates behind them."""

    topo: _Topology
    widths: tuple[int, int]
    halved: int
    min_patch: float
    batch: int
    epochs: int
    steps_per_epoch: int
    long_run: bool
    step_target: float | None
    step_seconds: float

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def run_seconds(self) -> float:
        return self.total_steps * self.step_seconds


def _target_spacing(fp: Fingerprint) -> tuple[np.ndarray, np.ndarray, str]:
    """Target spacing (mm, R, A, S), the median shape on it (voxels) and the reason."""
    spacings = np.array([c.oriented(c.spacing) for c in fp.cases], dtype=np.float64)
    shapes = np.array([c.oriented(c.shape_after_crop) for c in fp.cases], dtype=np.float64)
    target, aniso_axis = fullres_target_spacing(spacings, shapes)
    median_shape = np.median(np.round(spacings / target * shapes), axis=0)
    if aniso_axis is None:
        reason = f"median spacing of the {len(fp.cases)} cases (mm, along R, A, S after orienting to RAS), as nnU-Net"
    else:
        reason = (f"anisotropic data (the {('R-L', 'A-P', 'S-I')[aniso_axis]} axis is over {ANISO_THRESHOLD:g}x "
                  f"coarser and has over {ANISO_THRESHOLD:g}x fewer voxels): the median spacing, but that axis at "
                  "the 10th percentile of its spacings, as nnU-Net decides it (mm, R, A, S)")
    return target, median_shape, reason


def _size_run(fp: Fingerprint, budget: PlanBudget, target: np.ndarray, median_shape: np.ndarray) -> _Run:
    """nnU-Net's patch and topology loop under the memory budget and, on a CPU or with
    ``--minutes``, a time per step; widths halved when the patch would get too small; then the
    batch size and the number of epochs."""
    device = budget.device
    in_ch, out_ch = len(fp.channels), len(fp.labels) + 1
    long_run = device == "cuda" and budget.minutes is None
    epochs, spe = LONG_RUN if long_run else SHORT_RUN
    rate = SECONDS_PER_GMAC[device]
    step_target = CPU_STEP_SECONDS if device == "cpu" else None
    train_seconds = budget.minutes * 60 * TRAIN_TIME_FRACTION if budget.minutes is not None else None
    if train_seconds is not None:
        fit = train_seconds / MIN_STEPS
        step_target = fit if step_target is None else min(step_target, fit)
    memory_bytes = budget.memory_gb * 1e9 * MEMORY_FRACTION

    def fits(t: _Topology) -> bool:
        if 2 * t.elements * BYTES_PER_ELEMENT > memory_bytes:
            return False
        return step_target is None or 2 * t.macs / 1e9 * rate <= step_target

    inv = 1.0 / target
    initial = [round(v) for v in inv * (256 ** 3 / np.prod(inv)) ** (1 / 3)]
    initial = [int(min(i, m)) for i, m in zip(initial, median_shape)]
    widths = WIDTHS[device]
    min_patch = min(MIN_PATCH_VOXELS, float(np.prod(median_shape)))
    halved = 0
    while True:
        topo = _topology(target, initial, widths, in_ch, out_ch)
        while not fits(topo):
            smaller = _shrink_axis(target, topo.patch, median_shape)
            if smaller is None:
                break
            topo = _topology(target, smaller, widths, in_ch, out_ch)
        if (np.prod(topo.patch) >= min_patch and fits(topo)) or widths[0] <= 8:
            break
        widths = (widths[0] // 2, widths[1] // 2)
        halved += 1

    sample_seconds = topo.macs / 1e9 * rate
    batch = int(memory_bytes // (topo.elements * BYTES_PER_ELEMENT))
    if step_target is not None:
        batch = min(batch, int(step_target // sample_seconds))
    cap = round(float(np.prod(median_shape)) * len(fp.cases) * 0.05 / np.prod(topo.patch))
    batch = max(2, min(batch, cap))
    step_seconds = batch * sample_seconds
    if train_seconds is not None:
        fit_steps = int(train_seconds // step_seconds)
        if fit_steps < spe:
            raise InputError(None, f"--minutes {budget.minutes:g} is too short for one epoch of {spe} steps "
                             f"(about {spe * step_seconds:.0f} s even with the smallest network planned); "
                             "give more minutes")
        epochs = min(fit_steps, LONG_RUN[0] * LONG_RUN[1]) // spe  # the budget filled, at most nnU-Net's steps
    return _Run(topo=topo, widths=widths, halved=halved, min_patch=min_patch, batch=batch, epochs=epochs,
                steps_per_epoch=spe, long_run=long_run, step_target=step_target, step_seconds=step_seconds)


def _lowres(fp: Fingerprint, budget: PlanBudget, target: np.ndarray, median_shape: np.ndarray, run: _Run,
            reason: str) -> tuple[np.ndarray, np.ndarray, _Run, str]:
    """nnU-Net's 3d_lowres spacing for a short run whose patch sees under :data:`LOWRES_COVERAGE`
    of the median case at the fullres spacing: the spacing grows by :data:`LOWRES_STEP` (only the
    axes over 2x finer than the coarsest, while there are such) and the run is sized again, until
    the patch covers that share (or the spacing is :data:`LOWRES_MAX_FACTOR` times the fullres one).

    nnU-Net plans this as the first stage of a cascade; medseg has no cascade, so on a CPU or a
    time budget the lowres model is the model: a patch that sees a quarter of the case learns more
    in a few thousand steps than one that sees a few percent of it at full resolution.
    """
    fullres, full_shape, full_run = target, median_shape, run

    def coverage(r: _Run, shape: np.ndarray) -> float:
        return float(np.prod(r.topo.patch, dtype=np.float64) / np.prod(shape, dtype=np.float64))

    start = coverage(run, median_shape)
    spacing = fullres.astype(np.float64).copy()
    while coverage(run, median_shape) < LOWRES_COVERAGE:
        finer = spacing.max() / spacing > 2
        spacing = np.where(finer, spacing * LOWRES_STEP, spacing) if finer.any() else spacing * LOWRES_STEP
        if np.any(spacing > fullres * LOWRES_MAX_FACTOR):
            break
        median_shape = np.maximum(np.round(fullres / spacing * full_shape), 1.0)
        run = _size_run(fp, budget, spacing, median_shape)
        target = spacing
    if target is fullres:
        return fullres, full_shape, full_run, reason
    return (target, median_shape, run,
            f"{reason}: {', '.join(f'{t:.3g}' for t in fullres)}, where this run's patch would see only "
            f"{start:.0%} of the median case; coarsened as nnU-Net plans its 3d_lowres configuration (x{LOWRES_STEP} "
            f"steps, the finest axes first) until the patch sees {coverage(run, median_shape):.0%} of it (medseg has no "
            "cascade: on a CPU or a time budget, the lowres model is the model)")


def _model_entries(run: _Run, device: str) -> list[Entry]:
    topo = run.topo
    strides = [s[0] if len(set(s)) == 1 else list(s) for s in topo.strides]
    pools = [sum(1 for s in topo.strides if s[a] == 2) for a in range(3)]
    if run.halved:
        widths = (f"widths {topo.channels[0]}, doubling per level, at most {run.widths[1]}: halved "
                  f"{'once' if run.halved == 1 else f'{run.halved} times'} so that the time budget still allows a "
                  f"patch of at least {int(round(run.min_patch ** (1 / 3)))}^3 voxels")
    elif device == "cuda":
        widths = "nnU-Net's widths: 32, doubling per level, at most 320"
    else:
        widths = "widths 16 doubling per level, at most 256 (nnU-Net: 32 to 320, too slow on a CPU)"
    return [
        Entry("name", "unet", "the registry's U-Net (MONAI's residual U-Net) shaped as nnU-Net's 3d_fullres "
              "PlainConvUNet: medseg has one U-Net; its kernels are 3 wide on every axis"),
        Entry("spatial_dims", 3, "nnU-Net's 3d_fullres configuration (medseg plans no 2D or cascade variant)"),
        Entry("options", [
            Entry("channels", topo.channels, f"{len(topo.channels)} levels; {widths}"),
            Entry("strides", strides,
                  "per level and axis (R, A, S) from the target spacing, nnU-Net's get_pool_and_conv_props: an "
                  "axis is pooled while at most 2x coarser than the finest and its feature map keeps "
                  f"{FEATUREMAP_MIN_EDGE}+ voxels ({pools[0]}, {pools[1]}, {pools[2]} poolings)"),
            Entry("num_res_units", NUM_RES_UNITS, "two convs per encoder level, as PlainConvUNet's stages"),
            Entry("norm", "instance", "instance norm, as nnU-Net"),
        ]),
    ]


def _loss_entries(fp: Fingerprint) -> list[Entry]:
    tiny = [k for k in fp.labels
            if fp.class_fractions(k) and float(np.median(fp.class_fractions(k))) < TINY_CLASS_FRACTION]
    if tiny:
        names = ", ".join(fp.labels[k] for k in tiny)
        return [Entry("name", "dice_focal", f"tiny classes ({names}: under {TINY_CLASS_FRACTION:.1%} of their cases' "
                      "voxels, median): Dice + focal, which weighs the rare hard voxels up (nnU-Net: Dice + CE)"),
                Entry("options", {"include_background": False, "gamma": 2.0},
                      "Dice over the foreground classes, as nnU-Net; focal gamma 2 (Lin et al.)")]
    return [Entry("name", "dice_ce", f"Dice + cross-entropy, as nnU-Net (no class under {TINY_CLASS_FRACTION:.1%} "
                  "of its cases' voxels)"),
            Entry("options", {"include_background": False}, "Dice over the foreground classes, as nnU-Net")]


def _schedule_entries(run: _Run, budget: PlanBudget) -> list[Entry]:
    """Optimiser, schedule, patch, batch and run length."""
    if run.long_run:
        optimiser = Entry("optimiser", {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True,
                                        "weight_decay": 3.0e-5, "grad_clip": 12.0},
                          "nnU-Net's SGD: lr 0.01, Nesterov momentum 0.99, weight decay 3e-5, gradients clipped at 12")
        warmup = 0
    else:
        optimiser = Entry("optimiser", {"name": "adamw", "lr": 0.003, "weight_decay": 1.0e-5, "grad_clip": 12.0},
                          f"a short run ({run.total_steps} steps): AdamW at 3e-3 as medseg's BraTS config; nnU-Net's "
                          "SGD with momentum 0.99 needs its 250,000 steps")
        warmup = min(50, run.total_steps // 20)
    if run.long_run:
        length = "nnU-Net's 1000 epochs of 250 steps"
    elif budget.minutes is not None:
        length = (f"{run.total_steps} steps fit {budget.minutes:g} minutes at about {run.step_seconds:.2f} s per step "
                  f"({TRAIN_TIME_FRACTION:.0%} of the budget; the trainer fits its schedule to max_minutes)")
    else:
        length = (f"a CPU run: {run.epochs} epochs of {run.steps_per_epoch} steps, about "
                  f"{_fmt_minutes(run.run_seconds)} at {run.step_seconds:.2f} s per step (nnU-Net's 250,000 steps "
                  "would take weeks; --minutes sizes the run)")
    if run.batch > 2:
        batch = ("nnU-Net's rule: as many patches as the memory (and here the time per step) allows, at most 5% of "
                 "the dataset's voxels")
    else:
        batch = "nnU-Net's minimum of 2" + (": a CPU step's time grows with the batch" if budget.device == "cpu"
                                            else ": the patch uses the memory budget")
    limit = f"{budget.memory_gb:g} GB" + (f" and about {run.step_target:.2f} s" if run.step_target is not None else "")
    return [
        optimiser,
        Entry("schedule", {"name": "poly", "power": 0.9, "warmup_steps": warmup},
              "nnU-Net's poly schedule, (1 - t)^0.9" + (f", after {warmup} warm-up steps" if warmup else "")),
        Entry("patch_size", run.topo.patch,
              "voxels along R, A, S: nnU-Net's patch (the target spacing's aspect ratio, at most the median shape) "
              f"shrunk until a step fits {limit}; a multiple of the pooling ({int(np.prod(run.topo.patch))} voxels)"),
        Entry("batch_size", run.batch, batch),
        Entry("epochs", run.epochs, length),
        Entry("steps_per_epoch", run.steps_per_epoch,
              "nnU-Net's 250 steps per epoch" if run.long_run else "50 steps per epoch (medseg's default)"),
    ]


def _validation_entry(run: _Run, median_shape: np.ndarray, n_cases: int, folds: int, device: str) -> Entry:
    """Validation passes spaced to take at most :data:`VALIDATION_TIME_FRACTION` of the run."""
    overlap = 0.5 if device == "cuda" else 0.25
    windows = math.prod(math.ceil(max(m - p, 0) / (p * (1 - overlap))) + 1 for m, p in zip(median_shape, run.topo.patch))
    # a window's forward is about a third of a training step's work
    val_pass = windows * run.topo.macs / 1e9 * SECONDS_PER_GMAC[device] / 3 * math.ceil(n_cases / folds)
    passes = int(max(1, min(10, (VALIDATION_TIME_FRACTION * run.run_seconds) // max(val_pass, 1e-9))))
    every = max(1, math.ceil(run.epochs / passes))
    return Entry("validation", {"every_epochs": every, "overlap": overlap, "sw_batch_size": 4 if device == "cuda" else 2},
                 f"a fold's val cases segmented every {every} epochs (about {_fmt_minutes(val_pass)} a pass, {windows} "
                 f"windows per median case; validation kept under {VALIDATION_TIME_FRACTION:.0%} of the run), the "
                 "best pass picks model.pt; window overlap "
                 + ("0.5 as nnU-Net" if device == "cuda" else "0.25 (nnU-Net: 0.5; fewer windows on a CPU)"))


def _nonzero_backgrounds(fp: Fingerprint) -> list[float]:
    """The constant nonzero backgrounds of the cases' channels (images normalised before they came)."""
    return [b for c in fp.cases for b in c.background if b is not None and b != 0]


def _intensity_items(fp: Fingerprint) -> Items:
    """Per channel: nnU-Net's CT normalisation with the fingerprint's numbers, or per-image z-score."""
    rel = fp.median_relative_size_after_cropping
    shifted = _nonzero_backgrounds(fp)
    items = []
    for ch in fp.channels:
        modality = ch.modality.strip()
        if modality.casefold() == "ct":
            name = ch.name if ch.name.casefold() == "ct" else f"{ch.name} (CT)"
            items.append(({"kind": "ct", "window": [_r(ch.percentile_00_5), _r(ch.percentile_99_5)],
                           "mean": _r(ch.mean), "std": _r(ch.std)},
                          f"{name}: clipped to the foreground's 0.5-99.5 percentiles, then the foreground's mean and "
                          "std (nnU-Net's CT normalisation; numbers from the fingerprint, the same for every fold)"))
            continue
        what = f" ({modality})" if modality and modality != ch.name else "" if modality else " (no modality given)"
        inside = rel < 0.75 and not shifted
        if shifted:
            where = (f"over the whole image (its background is a constant {min(shifted):.4g}, not 0: there is "
                     "no nonzero mask)")
        elif inside:
            where = f"inside the nonzero mask (cropping to it keeps {rel:.0%} of the median case, under 3/4)"
        else:
            where = f"over the whole image (cropping to nonzero keeps {rel:.0%} of the median case)"
        items.append(({"kind": "zscore", "nonzero_only": inside},
                      f"{ch.name}{what}: not CT, so z-score per image, {where}, as nnU-Net"))
    return Items(items)


def _augment_entry(fp: Fingerprint, run: _Run) -> Entry:
    lateral = [n for n in fp.labels.values() if _LATERAL.search(n)]
    aniso_patch = max(run.topo.patch) / min(run.topo.patch) > ANISO_THRESHOLD
    reasons = ["nnU-Net's augmentation as far as medseg has it: rotation and scaling 0.7-1.4 (p 0.2), intensity "
               "x0.75-1.25 (p 0.15), Gaussian noise (p 0.1)",
               f"no mirroring: labels name sides ({', '.join(lateral[:3])})" if lateral
               else "mirroring on every axis (p 0.5)",
               "no rotation: the patch is anisotropic (nnU-Net rotates it in-plane only; medseg's rotates about every "
               "axis)" if aniso_patch else "rotation up to 30 degrees"]
    return Entry("augment", {"flip_prob": 0.0 if lateral else 0.5, "affine_prob": 0.2,
                             "rotate_deg": 0.0 if aniso_patch else 30.0, "scale_range": [0.7, 1.4],
                             "intensity_scale_prob": 0.15, "intensity_scale": 0.25, "noise_prob": 0.1, "noise_std": 0.1},
                 "; ".join(reasons))


def _data_entries(fp: Fingerprint, run: _Run, target: np.ndarray, spacing_reason: str, manifest: str,
                  allow_outside: bool) -> list[Entry]:
    rel = fp.median_relative_size_after_cropping
    shifted = _nonzero_backgrounds(fp)
    constant = all(b is not None for c in fp.cases for b in c.background)
    if rel >= 1.0:
        crop = Entry("crop_foreground", None,
                     "no crop: every case is nonzero up to its borders (nnU-Net's nonzero crop would keep it whole)")
    elif not shifted:
        crop = Entry("crop_foreground", {"threshold": None, "margin_vox": 0},
                     f"crop to the nonzero box, as nnU-Net (the median case keeps {rel:.0%} of its voxels)")
    elif constant:
        crop = Entry("crop_foreground", {"threshold": _r(max(shifted)), "margin_vox": 2},
                     "nnU-Net's crop to nonzero for images normalised before they came: the box of voxels above the "
                     f"highest of the cases' constant backgrounds ({max(shifted):.4g}), 2 voxels wider since one "
                     f"threshold serves every case (the median case keeps about {rel:.0%} of its voxels)")
    else:
        crop = Entry("crop_foreground", None, "no crop: some cases have a constant nonzero background and others "
                     "none, so no one threshold finds the foreground of all")
    if run.long_run:
        sampling = Entry("sampling", {"pos": 1.0, "neg": 2.0}, "1 patch in 3 centred on foreground, as nnU-Net")
    else:
        sampling = Entry("sampling", {"pos": 2.0, "neg": 1.0},
                         "2 patches in 3 centred on foreground: a short run sees few patches (nnU-Net: 1 in 3)")
    entries = [Entry("manifest", manifest, "the dataset's cases (relative to this file); "
                     + ("its paths are absolute" if allow_outside else "its paths stay inside its folder"))]
    if allow_outside:
        entries.append(Entry("allow_outside", True, "the manifest lists the dataset.json's files by absolute path"))
    return entries + [
        Entry("channels", [c.name for c in fp.channels], "channel names, in the order of each case's images"),
        Entry("labels", dict(fp.labels), "class ids (0 is background)"),
        Entry("preprocess", [
            Entry("orientation", "RAS", "every case oriented to RAS before resampling"),
            Entry("target_spacing", [_r(t) for t in target], spacing_reason),
            Entry("intensity", _intensity_items(fp)),
            crop,
        ]),
        sampling,
        _augment_entry(fp, run),
    ]


def plan_training(fingerprint: Fingerprint, budget: PlanBudget, *, manifest: str, allow_outside: bool = False,
                  fingerprint_file: str | None = None) -> TrainingPlan:
    """Decide a training config from ``fingerprint`` for ``budget``.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: device, memory and time.
        manifest: ``data.manifest`` as written in the YAML (relative to its folder, or absolute).
        allow_outside: the manifest holds absolute paths outside its folder (``data.allow_outside``).
        fingerprint_file: the fingerprint's file name, for the header.

    Raises:
        InputError: fewer than 2 cases (naming the dataset), a budget too small for one epoch.
    """
    fp = fingerprint
    n_cases = len(fp.cases)
    folds = cross_validation_folds(n_cases, fp.dataset)
    device = budget.device
    target, median_shape, spacing_reason = _target_spacing(fp)
    run = _size_run(fp, budget, target, median_shape)
    if not run.long_run:
        target, median_shape, run, spacing_reason = _lowres(fp, budget, target, median_shape, run, spacing_reason)
    entries = [
        Entry("model", _model_entries(run, device)),
        Entry("loss", _loss_entries(fp)),
        *_schedule_entries(run, budget),
        _validation_entry(run, median_shape, n_cases, folds, device),
        Entry("data", _data_entries(fp, run, target, spacing_reason, manifest, allow_outside)),
        Entry("cross_validation", {"folds": folds, "seed": 0}, "nnU-Net's 5 folds by case" if folds == 5
              else f"{folds} folds: one per case ({n_cases} cases; nnU-Net: 5)"),
    ]
    if budget.minutes is not None:
        entries.append(Entry("max_minutes", float(budget.minutes), "the time budget of a run (--minutes): the "
                             "trainer stops cleanly at it, its schedule compressed to end on time"))
    entries += [
        Entry("seed", 0, "batches depend only on (seed, step)"),
        Entry("autocast", "bf16" if device == "cpu" else "auto", "bf16 about doubles a U-Net's speed on a CPU"
              if device == "cpu" else "bf16 on the GPU (nnU-Net: mixed precision)"),
        Entry("checkpoint_every_steps", run.steps_per_epoch, "a checkpoint every epoch"),
        Entry("num_threads", "auto", "medseg's CPU thread policy"),
    ]
    rate = "rate measured on 2 CPU cores" if device == "cpu" else "rough rate of an A100-class GPU"
    header = [
        f"Training config planned by `medseg plan` from {fp.dataset}",
        f"({n_cases} labelled cases, {len(fp.channels)} channel(s), {len(fp.labels)} class(es)) for {device}, "
        f"{budget.memory_gb:g} GB" + (f", {budget.minutes:g} minutes" if budget.minutes is not None else "") + ".",
        f"Estimated: {run.step_seconds:.2f} s per step, {_fmt_minutes(run.run_seconds)} per fold ({rate}).",
    ]
    if fingerprint_file:
        header.append(f"The dataset fingerprint these decisions come from: {fingerprint_file}")
    header.append("Each decision's reason is the comment above it.")
    return TrainingPlan(entries=entries, header=header)


@dataclass(frozen=True)
class PlanOutputs:
    """What :func:`plan_dataset` wrote: the config, the fingerprint beside it and, for a
    ``dataset.json``, the manifest beside it (else None)."""

    config: Path
    fingerprint: Path
    manifest: Path | None


def side_files(config: str | Path) -> tuple[Path, Path]:
    """The fingerprint and manifest files that go beside ``config``: ``NAME.yaml`` gives
    ``NAME.fingerprint.json`` and ``NAME.manifest.csv``."""
    config = Path(config)
    name = config.name
    for suffix in (".yaml", ".yml"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            break
    return config.with_name(f"{name}.fingerprint.json"), config.with_name(f"{name}.manifest.csv")


def plan_dataset(dataset: str | Path, config: str | Path, budget: PlanBudget, *, labels: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> PlanOutputs:
    """Fingerprint a DATASET, plan its training config and write both (``medseg plan``).

    Writes ``config`` (commented YAML that :func:`medseg.training.load_train_config` reads),
    ``NAME.fingerprint.json`` beside it and, for a ``dataset.json``, ``NAME.manifest.csv`` (every
    case of the dataset, ``data.manifest`` of the config). Each file is written whole (temporary
    name, then rename), the config last; nothing is written when any check fails.

    Raises:
        InputError: ``config`` exists (never overwritten) or would overwrite an input; a bad
            dataset (see :func:`~medseg.planning.fingerprint.read_dataset`,
            :func:`~medseg.planning.fingerprint.compute_fingerprint`); fewer than 2 cases; a
            budget too small for one epoch.
    """
    import os

    from medseg.io import atomic_write_text
    from medseg.manifest import read_msd, write_manifest
    from medseg.planning.fingerprint import compute_fingerprint, read_dataset, write_fingerprint
    from medseg.training.config import TrainConfig

    config = Path(config)
    fingerprint_path, manifest_path = side_files(config)
    if config.exists():
        raise InputError(config, "already exists: medseg plan never overwrites a config (choose another -o, or "
                         "remove it first)")
    ds = read_dataset(dataset, labels)
    inputs = {ds.source.resolve()} | ({Path(labels).resolve()} if labels is not None else set())
    for out in (config, fingerprint_path) + ((manifest_path,) if ds.kind == "dataset.json" else ()):
        if out.resolve() in inputs:
            raise InputError(out, "is an input of this plan; choose another -o")
    cross_validation_folds(len(ds.rows), ds.source)
    fp = compute_fingerprint(ds, progress=progress)

    folder = config.absolute().parent
    allow_outside = False
    if ds.kind == "dataset.json":
        rows = read_msd(ds.source)
        manifest_ref = manifest_path.name
        allow_outside = not all(p.resolve().is_relative_to(folder.resolve())
                                for r in rows for p in r.images + ((r.label,) if r.label else ()))
    elif os.path.commonpath([folder.resolve(), ds.source.resolve()]) != folder.resolve().anchor:
        manifest_ref = os.path.relpath(ds.source.resolve(), folder.resolve())
    else:  # nothing in common but the root: an absolute path reads better than ../../..
        manifest_ref = str(ds.source.resolve())
    plan = plan_training(fp, budget, manifest=manifest_ref, allow_outside=allow_outside,
                         fingerprint_file=fingerprint_path.name)
    text = plan.to_yaml()
    TrainConfig.model_validate(plan.config)  # a plan that would not load is a bug, not a file to write

    written: list[Path] = []
    try:
        written.append(write_fingerprint(fp, fingerprint_path))
        if ds.kind == "dataset.json":
            written.append(write_manifest(rows, manifest_path))
        if config.exists():  # appeared while planning
            raise InputError(config, "already exists: medseg plan never overwrites a config")
        atomic_write_text(config, text)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return PlanOutputs(config=config, fingerprint=fingerprint_path,
                       manifest=manifest_path if ds.kind == "dataset.json" else None)

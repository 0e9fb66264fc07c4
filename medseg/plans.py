"""The model directory: what ``train`` writes and ``segment`` reads (self-contained, copyable).

Layout::

    MODEL_DIR/
      model.pt           # state_dict only; torch.load(..., weights_only=True)
      plans.json         # ModelPlans: architecture, preprocessing, inference defaults, labels
      labels.json        # {"1": "liver", ...} (0 is background)
      config.yaml        # the resolved training config (for the record; not needed to predict)
      training_log.csv   # per-epoch metrics (for the record)

A cross-validated model folder holds one such directory per fold, every fold's ``plans.json``
the same, and the post-processing chosen on the out-of-fold predictions::

    MODEL_DIR/
      splits.json          # [{"train": [case ids], "val": [case ids]}, ...], one entry per fold
      fold_0/ fold_1/ ...  # each a model directory as above (+ validation/<case_id>.nii.gz)
      cv_summary.json      # the evaluation summary of the out-of-fold predictions
      postprocessing.json  # {"largest_component": {"<label id>": true|false, ...}, "dice": {...}}

:func:`fold_dirs` lists the fold directories; :func:`read_postprocessing` reads the decision.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medseg.errors import InputError, read_text_input, validation_message
from medseg.io.atomic import atomic_write_text
from medseg.preprocess.config import PreprocessConfig

__all__ = ["ModelSpec", "InferenceDefaults", "ModelPlans", "load_plans", "save_plans", "read_labels",
           "write_labels", "check_labels", "check_patch_size", "fold_dirs", "read_postprocessing", "WEIGHTS_FILE",
           "PLANS_FILE", "LABELS_FILE", "POSTPROCESSING_FILE", "FOLD_PREFIX", "MAX_PATCH_SIDE", "MAX_PATCH_VOXELS"]

WEIGHTS_FILE = "model.pt"
PLANS_FILE = "plans.json"
LABELS_FILE = "labels.json"
POSTPROCESSING_FILE = "postprocessing.json"
FOLD_PREFIX = "fold_"  # fold K of a cross-validated model folder is the directory fold_K

# Patch (training crop and sliding window) bounds, in voxels of the preprocessed grid. No CT or MR
# grid used for segmentation is wider than 1024 voxels along an axis, and images are padded up to
# the patch, so a wider side only adds padding. 2**24 voxels is 256**3 (4096**2 in 2D): at that
# size the smallest useful 3D U-Net already needs several GB of activations per sample. Larger
# values are typos that would otherwise end in a MemoryError minutes into a run.
MAX_PATCH_SIDE = 1024
MAX_PATCH_VOXELS = 1 << 24


def check_patch_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    """``patch_size`` as a tuple, checked: every side 1..:data:`MAX_PATCH_SIDE` voxels and at most
    :data:`MAX_PATCH_VOXELS` voxels in all.

    Raises:
        ValueError: the bad value and the bound (validators put it under the ``patch_size`` key).
    """
    patch = tuple(int(p) for p in patch_size)
    if not patch:
        raise ValueError("must list the patch's size in voxels along each axis, e.g. [96, 96, 96]")
    for axis, side in enumerate(patch):
        if side < 1:
            raise ValueError(f"{list(patch)}: {side} voxels along axis {axis}; each side must be at least 1")
        if side > MAX_PATCH_SIDE:
            raise ValueError(f"{list(patch)}: {side} voxels along axis {axis} is more than "
                             f"{MAX_PATCH_SIDE}, wider than any CT/MR grid (sizes are voxels, not mm)")
    voxels = math.prod(patch)
    if voxels > MAX_PATCH_VOXELS:
        raise ValueError(f"{list(patch)}: {voxels} voxels is more than {MAX_PATCH_VOXELS} (256^3), "
                         "more than a network's activations fit in memory; use a smaller patch")
    return patch


def check_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """``labels`` (class id -> structure name) as a dict in the same order, checked: integer ids
    of at least 0, names that are non-empty text, each name used once.

    Raises:
        TypeError: an id that is not an integer, a name that is not text.
        ValueError: a negative id, an empty name, or one name for two ids (naming both ids).
    """
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    for key, name in labels.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"label ids must be integers, not {type(key).__name__} {key!r}")
        key = int(key)
        if key < 0:
            raise ValueError(f"negative label id {key}")
        if not isinstance(name, str):
            raise TypeError(f"the name of label {key} must be text, not {type(name).__name__} {name!r}")
        if not name.strip():
            raise ValueError(f"label {key} has an empty name")
        if name in seen:
            raise ValueError(f"the name {name!r} is used by both label {seen[name]} and label {key}; "
                             "structure names must be unique")
        seen[name] = key
        out[key] = name
    return out


class ModelSpec(BaseModel):
    """Arguments of :func:`medseg.models.create_model`."""

    model_config = ConfigDict(extra="forbid")

    name: str = "unet"
    spatial_dims: Literal[2, 3] = 3
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(2, ge=2)
    options: dict[str, Any] = Field(default_factory=dict)


class InferenceDefaults(BaseModel):
    """Sliding-window defaults the model was trained for.

    ``patch_size``: window in voxels of the preprocessed grid (3 values for 3D, 2 for 2D).
    ``slice_axis``: for 2D models, the axis of the oriented volume that slices are taken along.
    """

    model_config = ConfigDict(extra="forbid")

    patch_size: tuple[int, ...] = (96, 96, 96)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    slice_axis: int | None = Field(None, ge=0, le=2)

    @field_validator("patch_size")
    @classmethod
    def _patch_size(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return check_patch_size(v)


class ModelPlans(BaseModel):
    """Everything needed to rebuild the network and its pre/post-processing from a folder."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    model: ModelSpec
    preprocess: PreprocessConfig
    inference: InferenceDefaults = Field(default_factory=InferenceDefaults)
    labels: dict[int, str] = Field(default_factory=dict, description="class id -> name (0 background excluded)")
    channel_names: list[str] = Field(default_factory=lambda: ["image"])

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[int, str]) -> dict[int, str]:
        try:
            return check_labels(v)
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def save_plans(plans: ModelPlans, model_dir: str | Path) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(model_dir / PLANS_FILE, plans.model_dump_json(indent=2))
    write_labels(plans.labels, model_dir / LABELS_FILE)


def load_plans(model_dir: str | Path) -> ModelPlans:
    """The :class:`ModelPlans` of a model directory.

    Raises:
        InputError: no ``plans.json`` (not a model directory), or one that is not UTF-8 JSON
            text or not valid plans (naming the file and each bad key).
    """
    path = Path(model_dir) / PLANS_FILE
    if not path.is_file():
        raise InputError(model_dir, f"not a model directory (no {PLANS_FILE})")
    text = read_text_input(path, "plans file")
    try:
        return ModelPlans.model_validate_json(text)
    except ValueError as exc:
        raise InputError(path, f"invalid plans: {validation_message(exc)}") from None


class _Pairs(list):
    """A JSON object as its list of (key, value) pairs, in file order."""


def read_labels(path: str | Path) -> dict[int, str]:
    """Read a labels file ``{"1": "spleen", ...}`` into ``{1: "spleen", ...}`` (sorted by id; 0 dropped).

    Raises:
        InputError: naming the file: unreadable, not UTF-8 JSON text, not an object of integer
            ids to names, an id given twice, or a name given to two ids (naming both).
    """
    path = Path(path)
    text = read_text_input(path, "labels file")
    try:  # as (key, value) pairs: a repeated id is an error, not silently the last one
        data = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not a JSON labels file ({exc})") from None
    if not isinstance(data, _Pairs):
        raise InputError(path, "labels file must map label ids to names, e.g. {\"1\": \"liver\"}")
    out: dict[int, str] = {}
    ids: set[int] = set()
    for k, v in data:
        try:
            key = int(k)
        except ValueError:
            raise InputError(path, f"label id {k!r} is not an integer") from None
        if key in ids:
            raise InputError(path, f"label id {key} is given twice")
        ids.add(key)
        if key != 0:
            out[key] = dict(v) if isinstance(v, _Pairs) else v
    try:
        return dict(sorted(check_labels(out).items()))
    except (TypeError, ValueError) as exc:
        raise InputError(path, str(exc)) from None


def write_labels(labels: dict[int, str], path: str | Path) -> None:
    atomic_write_text(path, json.dumps({str(k): v for k, v in sorted(labels.items())}, indent=2))


def fold_dirs(folder: str | Path) -> dict[int, Path]:
    """``{K: folder/fold_K}`` for every sub-folder ``fold_K`` (``K`` a non-negative integer) that
    holds a ``plans.json`` or a ``model.pt``, sorted by ``K``; empty for a plain model directory."""
    folder = Path(folder)
    found: dict[int, Path] = {}
    try:
        children = list(folder.iterdir())
    except OSError:
        return found
    for child in children:
        suffix = child.name[len(FOLD_PREFIX):]
        if not (child.name.startswith(FOLD_PREFIX) and suffix.isascii() and suffix.isdigit()
                and suffix == str(int(suffix))):  # fold_3, not fold_03
            continue
        if (child / PLANS_FILE).is_file() or (child / WEIGHTS_FILE).is_file():
            found[int(suffix)] = child
    return dict(sorted(found.items()))


def read_postprocessing(folder: str | Path, labels: Mapping[int, str]) -> tuple[int, ...] | None:
    """The classes whose largest connected component alone is kept, as decided by
    cross-validation in ``folder/postprocessing.json`` (``{"largest_component": {"<label id>":
    true|false, ...}, ...}``; other keys, e.g. the Dice before and after, are for the record).

    Args:
        labels: the model's ``{class id: name}``; every id in the file must be one of them.

    Returns:
        the class ids marked ``true``, sorted (empty when every class keeps all its components),
        or ``None`` when the folder has no ``postprocessing.json``.

    Raises:
        InputError: naming the file: not UTF-8 JSON, no ``largest_component`` object, an id that
            is not one of the model's labels, a value that is not ``true``/``false``.
    """
    path = Path(folder) / POSTPROCESSING_FILE
    if not path.exists():
        return None
    text = read_text_input(path, "post-processing file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not a JSON post-processing file ({exc})") from None
    decision = data.get("largest_component") if isinstance(data, dict) else None
    if not isinstance(decision, dict):
        raise InputError(path, 'expected {"largest_component": {"<label id>": true|false, ...}}')
    keep: list[int] = []
    for key, value in decision.items():
        try:
            label = int(key)
        except ValueError:
            raise InputError(path, f"largest_component: label id {key!r} is not an integer") from None
        if label not in labels:
            known = ", ".join(str(k) for k in sorted(labels))
            raise InputError(path, f"largest_component: label {label} is not one of the model's labels ({known})")
        if not isinstance(value, bool):
            raise InputError(path, f"largest_component: label {label} must be true or false, not {value!r}")
        if value:
            keep.append(label)
    return tuple(sorted(keep))

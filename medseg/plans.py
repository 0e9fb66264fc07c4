"""The model directory: what ``train`` writes and ``segment`` reads (self-contained, copyable).

Layout::

    MODEL_DIR/
      model.pt           # state_dict only; torch.load(..., weights_only=True)
      plans.json         # ModelPlans: architecture, preprocessing, inference defaults, labels
      labels.json        # {"1": "liver", ...} (0 is background)
      config.yaml        # the resolved training config (for the record; not needed to predict)
      training_log.csv   # per-epoch metrics (for the record)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.preprocess.config import PreprocessConfig

__all__ = ["ModelSpec", "InferenceDefaults", "ModelPlans", "load_plans", "save_plans", "read_labels",
           "write_labels", "WEIGHTS_FILE", "PLANS_FILE", "LABELS_FILE"]

WEIGHTS_FILE = "model.pt"
PLANS_FILE = "plans.json"
LABELS_FILE = "labels.json"


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


class ModelPlans(BaseModel):
    """Everything needed to rebuild the network and its pre/post-processing from a folder."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    model: ModelSpec
    preprocess: PreprocessConfig
    inference: InferenceDefaults = Field(default_factory=InferenceDefaults)
    labels: dict[int, str] = Field(default_factory=dict, description="class id -> name (0 background excluded)")
    channel_names: list[str] = Field(default_factory=lambda: ["image"])


def save_plans(plans: ModelPlans, model_dir: str | Path) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(model_dir / PLANS_FILE, plans.model_dump_json(indent=2))
    write_labels(plans.labels, model_dir / LABELS_FILE)


def load_plans(model_dir: str | Path) -> ModelPlans:
    path = Path(model_dir) / PLANS_FILE
    if not path.is_file():
        raise InputError(model_dir, f"not a model directory (no {PLANS_FILE})")
    try:
        return ModelPlans.model_validate_json(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"invalid plans: {str(exc).splitlines()[0]}") from None


def read_labels(path: str | Path) -> dict[int, str]:
    """Read a labels file ``{"1": "spleen", ...}`` into ``{1: "spleen", ...}`` (0 dropped)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable labels JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "labels file must map label ids to names, e.g. {\"1\": \"liver\"}")
    out: dict[int, str] = {}
    for k, v in data.items():
        try:
            key = int(k)
        except ValueError:
            raise InputError(path, f"label id {k!r} is not an integer") from None
        if key < 0:
            raise InputError(path, f"negative label id {key}")
        if key != 0:
            out[key] = str(v)
    return dict(sorted(out.items()))


def write_labels(labels: dict[int, str], path: str | Path) -> None:
    atomic_write_text(path, json.dumps({str(k): v for k, v in sorted(labels.items())}, indent=2))

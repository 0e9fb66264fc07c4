"""TotalSegmentator's tasks as data (``tasks.json``, written by :mod:`.make_tasks` from
TotalSegmentator's own tables) and where their part models lie in a weights folder."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError

__all__ = ["PartModel", "SplitRule", "TaskSpec", "TASKS_FILE", "load_tasks", "task_spec", "task_names",
           "results_folder", "part_folder"]

TASKS_FILE = Path(__file__).with_name("tasks.json")


@dataclass(frozen=True)
class PartModel:
    """One nnU-Net model of a task.

    Attributes:
        dataset_id: its nnU-Net dataset id (291 for ``Dataset291_…``).
        folder: the dataset folder's name in the weights folder.
        part: TotalSegmentator's name of the part (``class_map_part_organs``…), ``None`` for a
            task of one model.
        labels: ``{the model's label id: the task's class name}``; ``None`` for a task of one
            model, whose label ids are the task's.
    """

    dataset_id: int
    folder: str
    part: str | None
    labels: dict[int, str] | None


@dataclass(frozen=True)
class SplitRule:
    """TotalSegmentator's split of a large image into three overlapping slabs along the last
    axis (for tasks of several models): when the resampled image has more than ``voxels_over``
    voxels and more than ``slices_over`` slices; ``margin`` slices of overlap."""

    voxels_over: int
    slices_over: int
    margin: int

    def applies(self, shape: tuple[int, int, int], n_models: int) -> bool:
        return n_models > 1 and int(np.prod(shape)) > self.voxels_over and shape[2] > self.slices_over


@dataclass(frozen=True)
class TaskSpec:
    """One task: which nnU-Net models run, on which grid, and how their labels merge.

    Attributes:
        name: medseg's name (``total``, ``total_fast``…).
        totalsegmentator_task, mode: TotalSegmentator's ``--task`` and ``default``/``fast``/``fastest``.
        modality: ``"CT"`` or ``"MR"``.
        trainer, plans, configuration: the model folders' ``<trainer>__<plans>__<configuration>``.
        folds: the folds TotalSegmentator runs.
        checkpoint: the checkpoint file it loads.
        resample_mm: the grid the models run on, mm per canonical (RAS) axis.
        input_resampling_order: spline order of the image's resampling to that grid.
        step_size: sliding-window step, fraction of the patch.
        mirroring: whether TotalSegmentator mirrors (it never does).
        labels: the task's ``{class id: name}``.
        parts: the models, in the order they run and merge (a later part's non-background label
            overwrites an earlier one's).
        split: the large-image split.
        version: the TotalSegmentator version the table comes from.
    """

    name: str
    totalsegmentator_task: str
    mode: str
    modality: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int, ...]
    checkpoint: str
    resample_mm: tuple[float, float, float]
    input_resampling_order: int
    step_size: float
    mirroring: bool
    labels: dict[int, str]
    parts: tuple[PartModel, ...]
    split: SplitRule
    version: str

    @property
    def model_folder_name(self) -> str:
        """``<trainer>__<plans>__<configuration>``, the trained-model folder in each dataset folder."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    def lookup(self, part: PartModel) -> np.ndarray | None:
        """The part's label ids → the task's ids, as TotalSegmentator builds it: a ``uint8`` table
        of ``max(part id) + 1`` entries, 0 for ids the part map lacks; ``None`` for a task of one
        model (its ids are kept)."""
        if part.labels is None:
            return None
        ids = {name: i for i, name in self.labels.items()}
        lut = np.zeros(max(part.labels) + 1, dtype=np.uint8)
        for local, name in part.labels.items():
            lut[local] = ids[name]
        return lut


def _int_keys(mapping: dict[str, str]) -> dict[int, str]:
    return {int(k): v for k, v in mapping.items()}


@functools.lru_cache(maxsize=None)
def load_tasks() -> dict[str, TaskSpec]:
    """Every task of ``tasks.json``, by name."""
    table = json.loads(TASKS_FILE.read_text(encoding="utf-8"))
    split = SplitRule(**table["split"])
    out = {}
    for name, t in table["tasks"].items():
        parts = tuple(PartModel(dataset_id=int(p["dataset_id"]), folder=p["folder"], part=p["part"],
                                labels=None if p["labels"] is None else _int_keys(p["labels"])) for p in t["parts"])
        out[name] = TaskSpec(
            name=name, totalsegmentator_task=t["totalsegmentator_task"], mode=t["mode"], modality=t["modality"],
            trainer=t["trainer"], plans=t["plans"], configuration=t["configuration"],
            folds=tuple(int(f) for f in t["folds"]), checkpoint=t["checkpoint"],
            resample_mm=tuple(float(v) for v in t["resample_mm"]),  # type: ignore[arg-type]
            input_resampling_order=int(table["input_resampling_order"]), step_size=float(t["step_size"]),
            mirroring=bool(t["mirroring"]), labels=_int_keys(t["labels"]), parts=parts, split=split,
            version=table["totalsegmentator_version"])
    return out


def task_names() -> tuple[str, ...]:
    return tuple(load_tasks())


def task_spec(name: str, where: str | Path) -> TaskSpec:
    """The task ``name``.

    Raises:
        InputError: an unknown task (naming ``where``, the weights folder, and the known tasks).
    """
    tasks = load_tasks()
    if name not in tasks:
        raise InputError(where, f"unknown TotalSegmentator task {name!r}; known tasks: {', '.join(tasks)}")
    return tasks[name]


def results_folder(path: str | Path) -> Path:
    """The folder of ``Dataset…`` folders: ``path`` itself (TotalSegmentator's ``nnunet/results``
    or ``TOTALSEG_WEIGHTS_PATH``), or ``path/results`` (``nnunet``), or ``path/nnunet/results``
    (``~/.totalsegmentator``)."""
    path = Path(path)
    for candidate in (path / "nnunet" / "results", path / "results"):
        if candidate.is_dir():
            return candidate
    return path


def part_folder(results: Path, spec: TaskSpec, part: PartModel) -> Path:
    """The part's trained-model folder.

    Raises:
        InputError: it is not there (naming the folder to put in place).
    """
    folder = results / part.folder / spec.model_folder_name
    if not folder.is_dir():
        raise InputError(results, f"--task {spec.name} needs {part.folder}/{spec.model_folder_name} (not found); "
                         "medseg never downloads weights")
    return folder

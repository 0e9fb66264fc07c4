"""The ``totalsegmentator`` model kind: a TotalSegmentator weights folder and a task, run as
TotalSegmentator's ``nnUNet_predict_image`` runs it (``TotalSegmentator -i IN -o OUT --ml --task T``
with its defaults).

Per study (:meth:`TaskPredictor.predict`):

1. the image on its closest canonical (RAS) grid (``nibabel.as_closest_canonical``);
2. resampled to the task's spacing (``change_spacing``: ``scipy.ndimage.zoom``, spline order 1,
   the command line's default, values truncated to ``int32``);
3. each part model (an nnU-Net v2 model folder, :mod:`medseg.inference.nnunet`) once on that
   volume, with the task's fold, step size (0.8) and no mirroring; for a task of several parts on
   a resampled image of more than 512·512·900 voxels and 200 slices, on three overlapping slabs
   along the last axis, put back together as TotalSegmentator does;
4. the part's labels mapped to the task's ids and merged into one ``uint8`` map, parts in order,
   a later part's non-background label overwriting an earlier one's;
5. the merged map resampled back to the canonical shape (nearest neighbour) and put back on the
   input's axes: the labels lie on the input's exact grid (shape and affine).

Not reproduced: options off TotalSegmentator's default path (``--roi_subset`` and cropping,
``--body_seg``, ``--force_split``, ``--remove_small_blobs``, ``--higher_order_resampling``,
``--v1_order``, statistics); the ``total`` tasks have no postprocessing on the default path.
TotalSegmentator reads NIfTI with nibabel's ``get_fdata`` (float64, scaling applied): medseg's
reader gives the same voxels and affine except for a file whose qform and sform disagree or
whose scaling is not exact in float32.

A merged task has no class probabilities: ``keep_probabilities=True`` and
:meth:`TaskPrediction.probabilities` raise ``ValueError``, and ``info.details["probabilities"]``
is ``False`` (the study pipeline refuses the CRF for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import InputError
from medseg.inference.kinds import ModelInfo, ModelOptions
from medseg.inference.predictor import Prediction
from medseg.inference.totalseg.grid import canonical_grid, from_canonical, to_canonical, to_shape, to_spacing
from medseg.inference.totalseg.table import PartModel, TaskSpec, part_folder, results_folder, task_spec
from medseg.io.volume import Volume

__all__ = ["describe", "model_files", "load", "TaskPredictor", "TaskPrediction", "split_slabs"]


def _no_probabilities(task: str) -> str:
    return (f"TotalSegmentator task {task!r} merges the labels of its part models: it has no class "
            "probabilities (run one part's nnU-Net model folder for probabilities)")


@dataclass
class TaskPrediction(Prediction):
    """A :class:`~medseg.inference.Prediction` of a TotalSegmentator task: labels only."""

    task: str = ""

    def probabilities(self, dtype=np.float16) -> np.ndarray:
        """Raises ValueError: a merged task has no probabilities."""
        raise ValueError(_no_probabilities(self.task))

    def with_probabilities(self, probabilities: np.ndarray) -> "Prediction":
        """Raises ValueError: a merged task has no probabilities to refine."""
        raise ValueError(_no_probabilities(self.task))


def _part_options(spec: TaskSpec, options: ModelOptions) -> ModelOptions:
    return ModelOptions(folds=options.folds if options.folds is not None else spec.folds,
                        checkpoint=options.checkpoint,
                        step_size=options.step_size if options.step_size is not None else spec.step_size)


def _resolve(path: Path, options: ModelOptions) -> tuple[TaskSpec, Path, list[Path]]:
    """The task, the results folder and each part's model folder (every one checked present)."""
    if options.task is None:
        raise InputError(path, "a TotalSegmentator weights folder needs --task (e.g. --task total)")
    results = results_folder(path)
    spec = task_spec(options.task, results)
    return spec, results, [part_folder(results, spec, part) for part in spec.parts]


def describe(path: Path, options: ModelOptions) -> ModelInfo:
    """The task's :class:`ModelInfo` from the part folders' configuration files.

    Raises:
        InputError: unknown task, a part folder missing (naming it), or a part folder that is
            not a complete nnU-Net model folder.
    """
    from medseg.inference.nnunet import folder as nnunet_folder

    spec, results, folders = _resolve(path, options)
    part_options = _part_options(spec, options)
    infos = [nnunet_folder.describe(folder, part_options) for folder in folders]
    return _info(spec, results, part_options, infos)


def _info(spec: TaskSpec, results: Path, part_options: ModelOptions, infos: Sequence[ModelInfo]) -> ModelInfo:
    parts = [{"dataset_id": p.dataset_id, "folder": p.folder, "part": p.part,
              "patch_size": list(i.patch_size), "labels": len(i.labels)} for p, i in zip(spec.parts, infos)]
    return ModelInfo(
        kind="totalsegmentator", path=results, channels=tuple(infos[0].channels), labels=dict(spec.labels),
        modality=spec.modality, spacing_mm=tuple(spec.resample_mm), patch_size=tuple(infos[0].patch_size),
        folds=part_options.folds,
        details={"task": spec.name, "totalsegmentator_version": spec.version,
                 "totalsegmentator_task": spec.totalsegmentator_task, "mode": spec.mode,
                 "trainer": spec.trainer, "plans": spec.plans, "configuration": spec.configuration,
                 "checkpoint": part_options.checkpoint, "step_size": part_options.step_size,
                 "mirroring": spec.mirroring, "input_resampling_order": spec.input_resampling_order,
                 "parts": parts, "probabilities": False})


def model_files(path: Path, options: ModelOptions) -> list[Path]:
    """Each part's configuration and weight files, parts in order."""
    from medseg.inference.nnunet import folder as nnunet_folder

    spec, _, folders = _resolve(path, options)
    part_options = _part_options(spec, options)
    return [f for folder in folders for f in nnunet_folder.model_files(folder, part_options)]


def load(path: Path, options: ModelOptions, *, device: str, autocast: str, tta: bool, overlap: float | None,
         window_batch: int, num_threads: int | None) -> "TaskPredictor":
    """Load every part model of the task once (see :class:`TaskPredictor`)."""
    spec, results, _ = _resolve(path, options)
    if overlap is not None:
        options = ModelOptions(folds=options.folds, checkpoint=options.checkpoint, task=options.task,
                               step_size=1.0 - float(overlap))
    return TaskPredictor.load(results, spec, options, device=device, autocast=autocast, tta=tta,
                              window_batch=window_batch, num_threads=num_threads)


def split_slabs(depth: int, margin: int) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """TotalSegmentator's three slabs of ``depth`` slices: for each, the slices it is cut from,
    which of its own slices are kept, and where they go: ``((src0, src1), (keep0, keep1), (dst0, dst1))``."""
    third = depth // 3
    s2 = third + 1 - margin
    s3 = third * 2 + 1 - margin
    return [((0, third + margin), (0, third), (0, third)),
            ((s2, third * 2 + margin), (margin - 1, margin - 1 + third), (third, third * 2)),
            ((s3, depth), (margin - 1, depth - s3), (third * 2, depth))]


class TaskPredictor:
    """A TotalSegmentator task: its part models (nnU-Net predictors, each loaded once) and the
    merge of their labels. The same surface as :class:`~medseg.inference.Predictor`.

    Args:
        spec: the task.
        parts: ``(part, predictor)`` in the task's order; each predictor has the nnU-Net
            predictor's ``predict(volume, *, tta, keep_probabilities) -> Prediction``.
        info: the task's :class:`ModelInfo`.
        tta: mirror test-time augmentation by default (TotalSegmentator: never).
    """

    def __init__(self, spec: TaskSpec, parts: Sequence[tuple[PartModel, object]], info: ModelInfo, *,
                 tta: bool = False):
        if not parts:
            raise ValueError("a task needs at least one part model")
        self.spec = spec
        self.parts = list(parts)
        self.info = info
        self.tta = bool(tta)
        self._lookups = [spec.lookup(part) for part, _ in self.parts]

    @classmethod
    def load(cls, results: Path, spec: TaskSpec, options: ModelOptions, *, device: str = "auto",
             autocast: str = "none", tta: bool = False, window_batch: int = 2,
             num_threads: int | None = None) -> "TaskPredictor":
        """Load the task ``spec``'s part models from the results folder ``results``.

        Raises:
            InputError: a part folder missing or not loadable.
        """
        from medseg.inference.nnunet import folder as nnunet_folder

        part_options = _part_options(spec, options)
        folders = [part_folder(results, spec, part) for part in spec.parts]
        predictors = [nnunet_folder.load(folder, part_options, device=device, autocast=autocast, tta=tta,
                                         overlap=None, window_batch=window_batch, num_threads=num_threads)
                      for folder in folders]
        info = _info(spec, results, part_options, [p.info for p in predictors])
        return cls(spec, list(zip(spec.parts, predictors)), info, tta=tta)

    def use_backend(self, backend: str = "auto", precision: str = "f32", *, calibration=()):
        """Run every part model's windows on ``backend`` at ``precision`` (each part's
        :meth:`~medseg.inference.nnunet.predictor.NnunetPredictor.use_backend`)."""
        return [predictor.use_backend(backend, precision, calibration=calibration) for _, predictor in self.parts]

    @property
    def backend(self) -> str:
        """What runs the windows of the part models (e.g. ``"openvino f32"``)."""
        shown = sorted({predictor.backend for _, predictor in self.parts})
        return "; ".join(shown)

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.spec.labels)

    @property
    def runtime(self):
        """The part predictors' :class:`~medseg.runtime.Runtime`."""
        return self.parts[0][1].runtime

    @property
    def device(self):
        return self.runtime.device

    def predict(self, images: Volume | Sequence[Volume], *, tta: bool | None = None,
                keep_probabilities: bool | None = None) -> TaskPrediction:
        """Segment one study with every part model and merge the labels (module docstring).

        Args:
            images: the study: one :class:`Volume` (a list of one is accepted).
            tta: mirror test-time augmentation of the part models (default: the predictor's).
            keep_probabilities: ``True`` is refused (a merged task has none); ``None``/``False``.

        Returns:
            :class:`TaskPrediction`: ``uint8`` labels of the task's ids on the input's exact grid.

        Raises:
            ValueError: ``keep_probabilities=True``.
            InputError: more than one image.
        """
        if keep_probabilities:
            raise ValueError(_no_probabilities(self.spec.name))
        vols = [images] if isinstance(images, Volume) else list(images)
        if not vols or not all(isinstance(v, Volume) for v in vols):
            raise TypeError("images must be a Volume or a list of one Volume")
        if len(vols) != 1:
            raise InputError(vols[0].source, f"TotalSegmentator task {self.spec.name!r} takes one image, "
                             f"{len(vols)} given")
        tta = self.tta if tta is None else bool(tta)
        image = vols[0]
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        grid = canonical_grid(image.shape, image.affine)
        array, affine = to_spacing(to_canonical(image.array, grid), grid, self.spec.resample_mm,
                                   self.spec.input_resampling_order)
        timings["preprocess"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        merged = self._merge(array, affine, tta)
        timings["windows"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = from_canonical(to_shape(merged, grid.shape), grid)
        if labels.shape != image.shape:
            raise RuntimeError(f"labels came back as {labels.shape}, expected the input's {image.shape}")
        timings["invert"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        seg = Volume(array=labels, affine=image.affine.copy(), source=None,
                     meta={k: v for k, v in image.meta.items() if k in ("nifti_header", "dicom", "format")})
        return TaskPrediction(labels=seg, label_names=self.label_names, image=image, timings=timings,
                              task=self.spec.name)

    def _merge(self, array: np.ndarray, affine: np.ndarray, tta: bool) -> np.ndarray:
        """Each part on ``array`` (the task's grid), mapped to the task's ids and merged into one
        ``uint8`` map, a later part's non-background label overwriting."""
        shape = tuple(int(s) for s in array.shape)
        if self.spec.split.applies(shape, len(self.parts)):
            slabs = split_slabs(shape[2], self.spec.split.margin)
        else:
            slabs = [((0, shape[2]), (0, shape[2]), (0, shape[2]))]
        merged = np.zeros(shape, dtype=np.uint8)
        for (part, predictor), lut in zip(self.parts, self._lookups):
            for (s0, s1), (k0, k1), (d0, d1) in slabs:
                volume = Volume(array=np.ascontiguousarray(array[:, :, s0:s1]), affine=affine)
                seg = predictor.predict(volume, tta=tta, keep_probabilities=False).labels.array.astype(np.uint8)
                if lut is not None:
                    if seg.size and int(seg.max()) >= len(lut):
                        lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                    seg = lut[seg]
                kept = seg[:, :, k0:k1]
                np.copyto(merged[:, :, d0:d1], kept, where=kept != 0)
                del seg, kept
        return merged

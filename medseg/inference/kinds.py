"""Model folder kinds: what ``--model`` may name, detected from the folder, described without
loading weights, and loaded into a predictor.

Kinds:

- ``medseg``: a model directory written by ``medseg train`` (``plans.json`` + ``model.pt``), or a
  cross-validated folder of them (``fold_*/plans.json`` + ``fold_*/model.pt``), run as an ensemble
  of its folds (:mod:`medseg.inference.own_model`).
- ``nnunet``: an nnU-Net v2 trained-model folder ``<Trainer>__<Plans>__<configuration>/`` with
  ``dataset.json``, ``plans.json`` and ``fold_*/checkpoint_final.pth`` (:mod:`medseg.inference.nnunet`).
- ``totalsegmentator``: a TotalSegmentator weights folder (its ``nnunet/results``), with a
  ``task`` naming which of its models to run (:mod:`medseg.inference.totalseg`).
- ``monai-bundle``: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.pt`` or ``models/model.ts``) (:mod:`medseg.inference.bundle`).

Each kind is a module with ``describe(path, options) -> ModelInfo``, ``model_files(path, options)
-> list[Path]`` and ``load(path, options, *, device, autocast, tta, overlap, window_batch,
num_threads) -> predictor``.

Every predictor, whatever its kind, has the same surface, which is all the study pipeline,
``medseg segment``, ``medseg batch`` and the flows use:

- ``info``: its :class:`ModelInfo`;
- ``label_names``: ``{class id: name}`` (background excluded);
- ``runtime``: its :class:`~medseg.runtime.Runtime` (``device`` = ``runtime.device``);
- ``use_backend(backend, precision, *, calibration=())``: compile its networks for a backend
  with :func:`medseg.inference.backends.compile_network` (one call per network, on its
  fixed-shape window batch); ``backend``: what runs them, e.g. ``"openvino bf16"``;
- ``predict(images, *, tta=None, keep_probabilities=None) -> Prediction`` with the labels on the
  input's exact grid and ``Prediction.probabilities()`` on the input grid when kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medseg.errors import InputError

__all__ = ["KINDS", "ModelInfo", "ModelOptions", "detect_kind", "describe_model", "load_predictor", "model_files", "parse_folds"]

KINDS = ("medseg", "nnunet", "totalsegmentator", "monai-bundle")


@dataclass(frozen=True)
class ModelOptions:
    """How to run a model folder (each option applies to the kinds that have the concept).

    Attributes:
        folds: which folds to run and average (nnU-Net, TotalSegmentator, a medseg fold folder);
            ``None``: every fold present (nnU-Net, medseg) or the task's own (TotalSegmentator).
        checkpoint: ``"final"`` (``checkpoint_final.pth``) or ``"best"`` (``checkpoint_best.pth``).
        task: the TotalSegmentator task (``total``, ``total_mr``, ``total_fast``…); required for
            a TotalSegmentator weights folder, refused for other kinds.
        step_size: sliding-window step as a fraction of the window (nnU-Net's ``tile_step_size``,
            default 0.5 there); for medseg models ``1 - overlap``.
        backend: what runs the network: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``
            (:mod:`medseg.inference.backends`).
        precision: ``f32``, ``bf16`` or ``int8`` (int8: OpenVINO with NNCF quantisation).
        calibration: the studies int8 is calibrated on, each a tuple of channel paths (or a
            DICOM folder); required for int8, refused otherwise.
    """

    folds: tuple[int, ...] | None = None
    checkpoint: str = "final"
    task: str | None = None
    step_size: float | None = None
    backend: str = "auto"
    precision: str = "f32"
    calibration: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        from medseg.inference.backends import check_backend

        check_backend(self.backend, self.precision, bool(self.calibration))
        if self.checkpoint not in ("final", "best"):
            raise ValueError(f"checkpoint must be 'final' or 'best', not {self.checkpoint!r}")
        if self.step_size is not None and not 0.0 < float(self.step_size) <= 1.0:
            raise ValueError(f"step size must be in (0, 1], not {self.step_size}")
        if self.folds is not None:
            if not self.folds or any(int(f) < 0 for f in self.folds):
                raise ValueError(f"folds must be non-negative fold numbers, not {self.folds}")


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder is, read from its configuration files only (no weights loaded).

    Attributes:
        kind: one of :data:`KINDS`.
        path: the folder.
        channels: input channel names, in the order ``medseg segment INPUT...`` takes them.
        labels: ``{class id: name}`` of the written label map (0, background, excluded).
        modality: ``"CT"`` when every channel is CT (HU), else ``"MR"``: the CRF's defaults.
        spacing_mm: the network grid's voxel spacing along the array axes, or ``None`` (native).
        patch_size: the sliding window in voxels of the network grid.
        folds: the folds that will run (``None`` for kinds without folds).
        largest_component: the classes whose largest connected component alone is kept, as the
            model folder's cross-validation decided (a medseg fold folder's
            ``postprocessing.json``; the study pipeline applies it); ``None``: the folder has no
            such decision.
        details: kind-specific facts (trainer, plans, configuration, architecture, task, parts…),
            JSON-ready.
    """

    kind: str
    path: Path
    channels: tuple[str, ...]
    labels: dict[int, str]
    modality: str
    spacing_mm: tuple[float, ...] | None
    patch_size: tuple[int, ...]
    folds: tuple[int, ...] | None = None
    largest_component: tuple[int, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (label ids as strings)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        for key in ("channels", "spacing_mm", "patch_size", "folds", "largest_component"):
            d[key] = None if d[key] is None else list(d[key])
        return d


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def detect_kind(path: str | Path, task: str | None = None) -> str:
    """The kind of the model folder ``path`` (one of :data:`KINDS`).

    Raises:
        InputError: not a folder, or a folder of none of the known kinds (naming what each kind
            needs), or ``task`` given for a folder that is not a TotalSegmentator weights folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist" if not folder.exists() else
                         "is not a folder (expected a model folder)")
    if task is not None:
        return "totalsegmentator"
    if (folder / "dataset.json").is_file() and (folder / "plans.json").is_file():
        return "nnunet"
    if (folder / "configs").is_dir() and ((folder / "configs" / "metadata.json").is_file()
                                          or (folder / "configs" / "inference.json").is_file()):
        return "monai-bundle"
    if (folder / "plans.json").is_file() or (folder / "model.pt").is_file():
        return "medseg"
    from medseg.plans import fold_dirs

    if fold_dirs(folder):
        return "medseg"
    if any(p.is_dir() and p.name.startswith("Dataset") for p in _children(folder)) or (folder / "nnunet").is_dir():
        raise InputError(folder, "looks like a TotalSegmentator weights folder: give --task (e.g. --task total)")
    nested = [p for p in _children(folder) if p.is_dir() and (p / "dataset.json").is_file() and (p / "plans.json").is_file()]
    hint = f" (did you mean {nested[0]}?)" if len(nested) == 1 else ""
    raise InputError(folder, "not a model folder: no plans.json + model.pt or fold_*/ of them (medseg), no "
                     "dataset.json + plans.json + "
                     f"fold_*/ (nnU-Net v2), no configs/metadata.json (MONAI bundle){hint}")


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def describe_model(path: str | Path, options: ModelOptions | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a model folder, from its configuration files only.

    Raises:
        InputError: not a model folder, or its configuration is incomplete or invalid.
    """
    module, options = _kind_module(path, options)
    return module.describe(Path(path), options)


def load_predictor(path: str | Path, *, options: ModelOptions | None = None, device: str = "auto",
                   autocast: str = "none", tta: bool = False, overlap: float | None = None,
                   window_batch: int = 2, num_threads: int | None = None):
    """Load the model folder ``path`` (any kind) once into a predictor (see the module docstring).

    Args:
        options: folds, checkpoint, task, step size, backend, precision and calibration
            studies (:class:`ModelOptions`).
        device, autocast, num_threads: as :func:`medseg.runtime.resolve_runtime`.
        tta: mirror test-time augmentation by default.
        overlap: window overlap fraction (``1 - step_size``; give one of the two).
        window_batch: windows per forward pass.

    Raises:
        InputError: not a loadable model folder (one line naming the file and the problem).
        BackendError: a backend named explicitly that is not installed or cannot run with
            ``device``/``autocast``.
    """
    from medseg.inference.backends import require_backend

    if overlap is not None and options is not None and options.step_size is not None:
        raise ValueError("give the window overlap or the step size, not both")
    module, options = _kind_module(path, options)
    require_backend(options.backend)
    predictor = module.load(Path(path), options, device=device, autocast=autocast, tta=tta, overlap=overlap,
                            window_batch=window_batch, num_threads=num_threads)
    predictor.use_backend(options.backend, options.precision, calibration=options.calibration)
    return predictor


def model_files(path: str | Path, options: ModelOptions | None = None) -> list[Path]:
    """The files whose content defines the model's results (configuration and the weights that
    will run), in a fixed order: what a batch run's configuration key hashes and what tells a
    worker's cached model that the folder changed.

    Raises:
        InputError: not a model folder, or one of those files is missing.
    """
    module, options = _kind_module(path, options)
    return module.model_files(Path(path), options)


def _kind_module(path: str | Path, options: ModelOptions | None):
    """The module of the folder's kind, with the options checked against the kind."""
    options = options or ModelOptions()
    kind = detect_kind(path, options.task)
    if kind not in ("medseg", "nnunet", "totalsegmentator") and options.folds is not None:
        raise InputError(path, f"a {kind} model has no folds: leave out --folds")
    if kind not in ("nnunet", "totalsegmentator"):
        if options.checkpoint != "final":
            raise InputError(path, f"a {kind} model has one checkpoint: leave out --checkpoint")
    return _module(kind), options


def _module(kind: str):
    if kind == "medseg":
        from medseg.inference import own_model as module
    elif kind == "nnunet":
        from medseg.inference.nnunet import folder as module
    elif kind == "totalsegmentator":
        from medseg.inference.totalseg import task as module
    else:
        from medseg.inference.bundle import folder as module
    return module


def parse_folds(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"0,1"`` (or ``"all"``/``None``: every fold present) as fold numbers."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(f) for f in text)
    text = text.strip()
    if text in ("", "all"):
        return None
    try:
        folds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--folds takes fold numbers separated by commas (e.g. 0,1) or 'all', not {text!r}") from None
    if any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise ValueError(f"--folds takes distinct non-negative fold numbers, not {text!r}")
    return folds


"""The dataset fingerprint: the numbers :mod:`medseg.planning.plan` decides a training config from.

nnU-Net's fingerprint (``dataset_fingerprint.json``) holds each case's spacing and shape after
cropping to the nonzero box, and per channel the intensity statistics of the labelled
foreground. medseg's adds each case's orientation, and per class the voxel counts, volumes
(mL) and connected-component counts (26-connectivity, as lesions are counted in
:mod:`medseg.measure`), so that a plan can see tiny or fragmented classes.

A DATASET is a medseg manifest CSV (``case_id,image,label,split[,modality]``) or an MSD /
nnU-Net v2 ``dataset.json``. Its labelled ``train`` and ``val`` cases make the fingerprint
(the cases cross-validation folds are drawn from); ``test`` cases are left out.

Every image goes through medseg's readers (:func:`medseg.io.read_channels`,
:func:`medseg.io.read_label`), volumes through :func:`medseg.measure.compute_volumes` and
components through :func:`medseg.measure.lesions.connected_components`.

Written as JSON (:meth:`Fingerprint.to_dict`, :func:`write_fingerprint`)::

    {"dataset": "/data/manifest.csv",
     "labels": {"1": "liver", ...},
     "channels": [{"name": "CT", "modality": "CT", "foreground": {"voxels": 3172560, "mean": 99.1,
                   "std": 21.4, "median": 100.0, "min": -80.0, "max": 180.0,
                   "percentile_00_5": 51.0, "percentile_99_5": 152.0}}],
     "median_relative_size_after_cropping": 1.0,
     "cases": [{"case_id": "a", "split": "train", "images": [...], "label": "...",
                "shape": [72, 64, 48], "spacing": [3.0, 3.0, 3.0], "orientation": "RAS",
                "background": [null], "shape_after_crop": [72, 64, 48],
                "classes": {"1": {"voxels": 21000, "volume_ml": 567.0, "components": 1}, ...}}],
     "classes": {"1": {"name": "liver", "cases": 4, "voxels": 84000, "volume_ml": {"median": ..., "min": ..., "max": ...},
                       "components": {"median": 1.0, "max": 1}, "fraction": {"median": 0.02, "min": ...}}}}

``shape``, ``spacing`` (mm) and ``shape_after_crop`` follow the file's own voxel axes, whose
directions ``orientation`` gives (``"LPS"``: the first axis runs to the patient's left…); the
plan brings them to the training orientation's axes. ``background``: per channel, the image's
minimum when it fills (at least 90% of) the image's border: 0 for skull-stripped MR, the lowest
value of MR z-scored before it came here; else null. ``shape_after_crop`` is nnU-Net's crop to the nonzero box, with a
channel's constant background counted as zero. ``fraction`` is a class's share of its case's
voxels.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from medseg.errors import InputError

if TYPE_CHECKING:
    from medseg.manifest import ManifestRow

__all__ = ["Dataset", "ChannelStats", "ClassCount", "CaseFingerprint", "Fingerprint", "read_dataset",
           "compute_fingerprint", "write_fingerprint", "axis_to_ras", "MAX_INTENSITY_SAMPLES", "FINGERPRINT_PERCENTILES"]

# Foreground voxels pooled per channel for the intensity statistics. nnU-Net pools 10^8; medseg
# takes every labelled voxel of a dataset up to this many, and beyond it a seeded sample of
# (this / number of cases) voxels from each case that has more.
MAX_INTENSITY_SAMPLES = 20_000_000
FINGERPRINT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Dataset:
    """The labelled cases of a DATASET and what it says about them.

    Attributes:
        source: the manifest CSV or ``dataset.json``.
        kind: ``"manifest"`` or ``"dataset.json"``.
        rows: the labelled ``train`` and ``val`` cases (absolute paths), in file order.
        channels: channel names, in the order of each case's images.
        modalities: per channel, the modality the dataset gives (``"CT"``, ``"MR"``, ``"FLAIR"``…;
            ``""`` when it gives none).
        labels: class id → name (ids 1..K), or None when the dataset names none (the ids found in
            the label maps are then named ``label_<id>``).
        labels_source: the file the labels come from (labels file or ``dataset.json``), or None.
    """

    source: Path
    kind: Literal["manifest", "dataset.json"]
    rows: tuple[ManifestRow, ...]
    channels: tuple[str, ...]
    modalities: tuple[str, ...]
    labels: dict[int, str] | None
    labels_source: Path | None


def _strip_common(names: list[str]) -> list[str]:
    """Channel names from file names: the common prefix and suffix (at ``_``/``-``/``.``) dropped."""
    if len(names) < 2:
        return names
    parts = [re.split(r"([_.-])", n) for n in names]
    start = 0
    while all(len(p) > start + 1 for p in parts) and len({p[start] for p in parts}) == 1:
        start += 1
    end = 0
    while all(len(p) > start + end + 1 for p in parts) and len({p[-1 - end] for p in parts}) == 1:
        end += 1
    out = ["".join(p[start:len(p) - end]).strip("_.-") for p in parts]
    return out if all(out) and len(set(out)) == len(out) else names


def _channel_names_from_files(rows: list[ManifestRow], n: int) -> list[str] | None:
    """Names from the channel files when every case names its channel ``c`` the same way."""
    from medseg.io import strip_image_suffix

    per_channel = [{strip_image_suffix(r.images[c].name) for r in rows} for c in range(n)]
    if any(len(s) != 1 for s in per_channel):
        return None
    names = [next(iter(s)) for s in per_channel]
    return _strip_common(names) if len(set(names)) == n else None


def read_dataset(path: str | Path, labels_file: str | Path | None = None) -> Dataset:
    """Read a DATASET: a manifest CSV, a ``dataset.json`` (MSD or nnU-Net v2), or a folder holding one.

    Labels: ``labels_file`` (``{"1": "liver", ...}``) when given; else a ``dataset.json``'s
    ``labels``; else ``labels.json`` beside a manifest; else none (named from the label maps).
    Channel names and modalities: a ``dataset.json``'s ``channel_names``/``modality``; for a
    manifest, its ``modality`` column (one value for every channel, or one per channel joined by
    ``;``), and names from the channel files (``Flair_x.nii.gz``, ``T1c_x.nii.gz``: ``Flair``,
    ``T1c``) when every case names them alike.

    Raises:
        InputError: naming the file: a missing or unreadable dataset, a missing image or label
            file, a ``train``/``val`` case without a label, cases with different channel counts,
            a labels list whose ids are not 1..K.
    """
    from medseg.manifest import read_manifest, read_msd, read_msd_channels, read_msd_labels
    from medseg.plans import LABELS_FILE, read_labels

    path = Path(path).absolute()
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise InputError(path, "a folder without dataset.json; give a manifest CSV or a dataset.json")
        path = path / "dataset.json"
    kind: Literal["manifest", "dataset.json"] = "dataset.json" if path.suffix.lower() == ".json" else "manifest"
    rows = read_msd(path) if kind == "dataset.json" else read_manifest(path)
    labelled = [r for r in rows if r.split in ("train", "val")]
    for r in labelled:
        if r.label is None:
            raise InputError(path, f"case {r.case_id!r} ({r.split}) has no label; planning and training need a label "
                             "for every train and val case (make it a test case)")
    if not labelled:
        raise InputError(path, "no labelled train or val cases to plan from")
    n = len(labelled[0].images)
    for r in labelled[1:]:
        if len(r.images) != n:
            raise InputError(path, f"case {r.case_id!r} has {len(r.images)} channel image(s), case "
                             f"{labelled[0].case_id!r} has {n}: every case needs the same channels")

    if kind == "dataset.json":
        names = read_msd_channels(path)
        if names and len(names) != n:
            raise InputError(path, f"channel_names lists {len(names)} channel(s) but the cases have {n}")
        modalities = names or [""] * n
        channels = names or ([f"channel_{c}" for c in range(n)] if n > 1 else ["image"])
    else:
        given = next((r.modality for r in labelled if r.modality.strip()), "")
        items = [m.strip() for m in given.split(";")] if given else []
        modalities = items if len(items) == n else [given.strip()] * n
        from_files = _channel_names_from_files(labelled, n) if n > 1 else None
        if len(items) == n and n > 1 and len(set(items)) == n:
            channels = items
        elif from_files is not None:
            channels = from_files
        elif n == 1:
            channels = [modalities[0] or "image"]
        else:
            channels = [f"channel_{c}" for c in range(n)]

    labels: dict[int, str] | None = None
    source: Path | None = None
    if labels_file is not None:
        source = Path(labels_file)
        labels = read_labels(source)
    elif kind == "dataset.json":
        source, labels = path, read_msd_labels(path)
    elif (path.parent / LABELS_FILE).is_file():
        source = path.parent / LABELS_FILE
        labels = read_labels(source)
    if labels is not None:
        ids = sorted(labels)
        if not ids or ids != list(range(1, len(ids) + 1)):
            raise InputError(source, f"label ids must be 1..K (0 is background) to train on, not {ids}")
        labels = {i: labels[i] for i in ids}
    return Dataset(source=path, kind=kind, rows=tuple(labelled), channels=tuple(channels),
                   modalities=tuple(modalities), labels=labels, labels_source=source)


@dataclass(frozen=True)
class ChannelStats:
    """Intensity statistics of one channel over the labelled foreground (label > 0) of every case.

    Units: the image's (HU for CT). ``voxels``: foreground voxels pooled (see
    :data:`MAX_INTENSITY_SAMPLES`); ``percentile_00_5`` / ``percentile_99_5``: numpy's linear
    percentiles 0.5 and 99.5, as nnU-Net's.
    """

    name: str
    modality: str
    voxels: int
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float

    def to_dict(self) -> dict:
        return {"name": self.name, "modality": self.modality,
                "foreground": {"voxels": self.voxels, "mean": self.mean, "std": self.std, "median": self.median,
                               "min": self.min, "max": self.max, "percentile_00_5": self.percentile_00_5,
                               "percentile_99_5": self.percentile_99_5}}


@dataclass(frozen=True)
class ClassCount:
    """One class in one case: ``voxels``, ``volume_ml`` (voxels × voxel volume) and ``components``
    (26-connected)."""

    voxels: int
    volume_ml: float
    components: int


_AXIS_OF_CODE = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def axis_to_ras(orientation: str) -> tuple[int, int, int]:
    """For each voxel axis of an image whose orientation code is ``orientation`` (``"IPL"``), the
    world axis it runs along (0: left-right, 1: posterior-anterior, 2: inferior-superior): where it
    lands once the image is oriented to RAS (or any other code of those three axes)."""
    return tuple(_AXIS_OF_CODE[c] for c in orientation.upper())  # type: ignore[return-value]


@dataclass(frozen=True)
class CaseFingerprint:
    """One case: geometry as stored (voxel axes of the file) and its classes.

    Attributes:
        shape: voxels per axis; ``spacing``: mm per axis (as the file states it, as ITK reads it);
        orientation: axis codes (``"RAS"``, ``"LPS"``, ``"IPL"``…);
        background: per channel, the image's minimum when it fills at least 90% of the image's
            border (its six faces), or None;
        shape_after_crop: the box of voxels that differ from the background (0 where there is none)
            in any channel: nnU-Net's crop to nonzero;
        classes: class id → :class:`ClassCount` for every class of the labels (zero where absent).
    """

    case_id: str
    split: str
    images: tuple[str, ...]
    label: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    background: tuple[float | None, ...]
    shape_after_crop: tuple[int, int, int]
    classes: dict[int, ClassCount]

    @property
    def relative_size_after_crop(self) -> float:
        return float(math.prod(self.shape_after_crop) / max(math.prod(self.shape), 1))

    def oriented(self, values: tuple) -> tuple:
        """``values`` given per voxel axis (spacing, shape), reordered to the world axes (R, A, S)."""
        out = [None, None, None]
        for axis, world in enumerate(axis_to_ras(self.orientation)):
            out[world] = values[axis]
        return tuple(out)

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "split": self.split, "images": list(self.images), "label": self.label,
                "shape": list(self.shape), "spacing": list(self.spacing), "orientation": self.orientation,
                "background": list(self.background), "shape_after_crop": list(self.shape_after_crop),
                "classes": {str(k): {"voxels": c.voxels, "volume_ml": c.volume_ml, "components": c.components}
                            for k, c in self.classes.items()}}


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


@dataclass(frozen=True)
class Fingerprint:
    """A dataset's fingerprint (see the module docstring for its JSON form)."""

    dataset: Path
    labels: dict[int, str]
    channels: tuple[ChannelStats, ...]
    cases: tuple[CaseFingerprint, ...]

    @property
    def median_relative_size_after_cropping(self) -> float:
        return float(np.median([c.relative_size_after_crop for c in self.cases]))

    def class_fractions(self, label: int) -> list[float]:
        """The class's share of its case's voxels, in every case that holds it."""
        return [c.classes[label].voxels / math.prod(c.shape) for c in self.cases if c.classes[label].voxels]

    def class_summary(self, label: int) -> dict:
        present = [c.classes[label] for c in self.cases if c.classes[label].voxels]
        return {"name": self.labels[label], "cases": len(present), "voxels": int(sum(c.voxels for c in present)),
                "volume_ml": _summary([c.volume_ml for c in present]),
                "components": {"median": float(np.median([c.components for c in present])) if present else None,
                               "max": max((c.components for c in present), default=None)},
                "fraction": _summary(self.class_fractions(label))}

    def to_dict(self) -> dict:
        return {"dataset": str(self.dataset), "labels": {str(k): v for k, v in self.labels.items()},
                "channels": [c.to_dict() for c in self.channels],
                "median_relative_size_after_cropping": self.median_relative_size_after_cropping,
                "cases": [c.to_dict() for c in self.cases],
                "classes": {str(k): self.class_summary(k) for k in self.labels}}


def _read_case(row: ManifestRow, channels: tuple[str, ...]):
    """The case's channel volumes and label map; a channel off the first one's grid is named with
    the case and both channels."""
    from medseg.io import check_channel_grid, read_label, read_volume

    images = [read_volume(p) for p in row.images]
    for c, other in enumerate(images[1:], start=1):
        try:
            check_channel_grid(images[0], other)
        except InputError as exc:
            raise InputError(exc.path, f"case {row.case_id!r}: channel {channels[c]} is not on the grid of channel "
                             f"{channels[0]}: {exc.problem}") from None
    return images, read_label(row.label, images[0])


def _border_value(array: np.ndarray) -> float | None:
    """The image's background: its minimum when that value fills at least 90% of the voxels of
    its six faces (air or padding around a scan, 0 around a skull-stripped brain, the lowest value
    of an image z-scored before it came); else None."""
    low = array.min()
    faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    at_low = sum(int(np.count_nonzero(f == low)) for f in faces)
    return float(low) if at_low >= 0.9 * sum(f.size for f in faces) else None


def _components(label: np.ndarray, value: int, bbox: list[list[int]] | None) -> int:
    from medseg.measure.lesions import connected_components

    if bbox is None:
        return 0
    box = tuple(slice(a, b + 1) for a, b in zip(bbox[0], bbox[1]))
    return connected_components(label[box] == value)[1]


def compute_fingerprint(dataset: Dataset, *, progress: Callable[[str], None] | None = None) -> Fingerprint:
    """Read every labelled case of ``dataset`` once and compute its fingerprint.

    Raises:
        InputError: an unreadable image or label file; channels of a case not on one grid (naming
            the case and the channels); a label map off its image's grid; a label value that is
            not in the dataset's labels (naming the label file and the value).
    """
    from medseg.io.volume import stated_spacing
    from medseg.measure import compute_volumes, present_labels
    from medseg.preprocess import foreground_box

    n_cases = len(dataset.rows)
    per_case_cap = MAX_INTENSITY_SAMPLES // max(n_cases, 1)
    samples: list[list[np.ndarray]] = [[] for _ in dataset.channels]
    cases: list[CaseFingerprint] = []
    seen_ids: set[int] = set()
    for index, row in enumerate(dataset.rows):
        if progress is not None:
            progress(f"fingerprint {index + 1}/{n_cases}: {row.case_id}")
        images, label = _read_case(row, dataset.channels)
        arr = label.array
        present = [v for v in present_labels(arr) if v != 0]
        if dataset.labels is not None:
            unknown = [v for v in present if v not in dataset.labels]
            if unknown:
                raise InputError(row.label, f"label value {unknown[0]} is not in the labels list of "
                                 f"{dataset.labels_source} (ids {', '.join(map(str, dataset.labels))})")
        seen_ids.update(present)
        names = dataset.labels if dataset.labels is not None else {v: str(v) for v in present}
        report = compute_volumes(label, labels=names)["structures"]
        counts = {}
        for lid, name in names.items():
            s = report[name]
            comps = _components(arr, lid, s["bbox_voxels"]) if s["voxels"] else 0
            counts[lid] = ClassCount(voxels=int(s["voxels"]), volume_ml=float(s["volume_ml"]), components=int(comps))
        background = tuple(_border_value(v.array) for v in images)
        if any(background):  # a constant nonzero background counts as zero
            stack = np.stack([v.array.astype(np.float32) - (b or 0.0) for v, b in zip(images, background)])
        else:
            stack = np.stack([v.array for v in images])
        box = foreground_box(stack, images[0].shape, None, 0)
        del stack
        mask = arr > 0
        n_fg = int(np.count_nonzero(mask))
        if n_fg > per_case_cap:
            idx = np.flatnonzero(mask.ravel())
            idx = np.sort(np.random.default_rng(index).choice(idx, per_case_cap, replace=False))
            for c, v in enumerate(images):
                samples[c].append(v.array.ravel()[idx].astype(np.float32))
        elif n_fg:
            for c, v in enumerate(images):
                samples[c].append(v.array[mask].astype(np.float32))
        cases.append(CaseFingerprint(
            case_id=row.case_id, split=row.split, images=tuple(str(p) for p in row.images), label=str(row.label),
            shape=images[0].shape, spacing=tuple(float(s) for s in stated_spacing(images[0])),
            orientation=images[0].orientation, background=background, shape_after_crop=tuple(int(b - a) for a, b in box),
            classes=counts))
    if dataset.labels is not None:
        labels = dict(dataset.labels)
    else:
        labels = {i: f"label_{i}" for i in range(1, max(seen_ids, default=0) + 1)}
        zero = ClassCount(0, 0.0, 0)
        cases = [replace(c, classes={i: c.classes.get(i, zero) for i in labels}) for c in cases]
    if not labels:
        raise InputError(dataset.source, "no label map holds any labelled voxel: nothing to train on")
    channels = []
    for c, name in enumerate(dataset.channels):
        values = np.concatenate(samples[c]) if samples[c] else np.zeros(0, np.float32)
        if values.size == 0:
            raise InputError(dataset.source, "no label map holds any labelled voxel: no foreground to measure")
        lo, median, hi = (float(x) for x in np.percentile(values, (FINGERPRINT_PERCENTILES[0], 50.0,
                                                                    FINGERPRINT_PERCENTILES[1])))
        channels.append(ChannelStats(name=name, modality=dataset.modalities[c], voxels=int(values.size),
                                     mean=float(values.mean(dtype=np.float64)), std=float(values.std(dtype=np.float64)),
                                     median=median, min=float(values.min()), max=float(values.max()),
                                     percentile_00_5=lo, percentile_99_5=hi))
    return Fingerprint(dataset=dataset.source, labels=labels, channels=tuple(channels), cases=tuple(cases))


def write_fingerprint(fingerprint: Fingerprint, path: str | Path) -> Path:
    """Write the fingerprint as JSON, atomically (numbers unrounded)."""
    from medseg.io import atomic_write_text

    return atomic_write_text(path, json.dumps(fingerprint.to_dict(), indent=2) + "\n")

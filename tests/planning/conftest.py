"""Helpers for the planning tests: small datasets written to disk, and fingerprints made in memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medseg.planning.fingerprint import CaseFingerprint, ChannelStats, ClassCount, Fingerprint


def write_manifest_dataset(root: Path, cases: list[dict], *, labels: dict[int, str] | None = None,
                           modality: str = "CT") -> Path:
    """Write ``cases`` (each ``{"id", "images": [Volume, ...], "label": Volume, "split"}``) as NIfTI
    files plus ``manifest.csv`` (and ``labels.json`` when ``labels``); return the manifest."""
    from medseg.io import write_volume

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        paths = []
        for c, image in enumerate(case["images"]):
            name = f"images/{case['id']}_{c:04d}.nii.gz"
            write_volume(image, root / name)
            paths.append(name)
        label = f"labels/{case['id']}.nii.gz"
        write_volume(case["label"], root / label)
        rows.append([case["id"], ";".join(paths), label, case.get("split", "train"), modality])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "image", "label", "split", "modality"])
        w.writerows(rows)
    if labels is not None:
        (root / "labels.json").write_text(json.dumps({str(k): v for k, v in labels.items()}))
    return root / "manifest.csv"


def phantom_cases(n: int, *, shape=(40, 36, 24), spacing=(4.0, 4.0, 4.0), orientation="RAS", n_tumours=2,
                  seed: int = 0) -> list:
    """``n`` small phantom studies (:func:`medseg.phantoms.make_phantom`), first ones ``train``, last ``val``."""
    from medseg.phantoms import make_phantom

    return [make_phantom(seed + i, shape=shape, spacing=spacing, orientation=orientation, n_tumours=n_tumours,
                         case_id=f"ph{i}") for i in range(n)]


def synthetic_fingerprint(*, spacings, shapes, orientation="RAS", modality="CT", labels=None, fractions=None,
                          crop_fraction: float = 1.0, channels: int = 1, stats: dict | None = None,
                          background: float | None = None) -> Fingerprint:
    """A fingerprint made in memory: one case per ``spacings``/``shapes`` row (stored axes, all in
    ``orientation``); each class holds ``fractions[k]`` of every case's voxels (default 1%);
    ``crop_fraction``: share of the voxels kept by the nonzero crop; ``background``: every
    channel's border value."""
    labels = labels or {1: "organ"}
    fractions = fractions or {k: 0.01 for k in labels}
    cases = []
    for i, (sp, sh) in enumerate(zip(spacings, shapes)):
        n = int(np.prod(sh))
        classes = {k: ClassCount(voxels=int(fractions[k] * n), volume_ml=fractions[k] * n * float(np.prod(sp)) / 1000,
                                 components=1) for k in labels}
        crop = tuple(max(1, int(round(s * crop_fraction ** (1 / 3)))) for s in sh)
        cases.append(CaseFingerprint(case_id=f"c{i}", split="train", images=(f"c{i}.nii.gz",), label=f"c{i}_seg.nii.gz",
                                     shape=tuple(sh), spacing=tuple(float(s) for s in sp), orientation=orientation,
                                     background=(background,) * channels, shape_after_crop=crop, classes=classes))
    stats = stats or {"mean": 60.0, "std": 40.0, "median": 55.0, "min": -100.0, "max": 300.0,
                      "percentile_00_5": -50.0, "percentile_99_5": 250.0}
    chans = tuple(ChannelStats(name=f"{modality}{c}" if channels > 1 else modality, modality=modality, voxels=1000,
                               **stats) for c in range(channels))
    return Fingerprint(dataset=Path("/data/dataset.csv"), labels=dict(labels), channels=chans, cases=tuple(cases))

"""Helpers of the batch-flow tests: tiny phantom archives."""

from __future__ import annotations

from pathlib import Path

from medseg.io import write_volume
from medseg.phantoms import make_phantom

TINY_SHAPE = (32, 32, 20)
TINY_SPACING = (6.0, 6.0, 7.5)


def tiny_study(seed: int):
    """A small phantom study (32x32x20 voxels at 6x6x7.5 mm): organs and a tumour."""
    return make_phantom(seed, shape=TINY_SHAPE, spacing=TINY_SPACING, n_tumours=1)


def write_tiny_archive(root: Path, n: int, *, seed: int = 100, labels: bool = False, prefix: str = "study") -> list[str]:
    """``n`` tiny phantom NIfTI studies ``root/study_XX.nii.gz`` (+ ``root/labels/``); returns ids."""
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        s = tiny_study(seed + i)
        sid = f"{prefix}_{i:02d}"
        write_volume(s.image, root / f"{sid}.nii.gz")
        if labels:
            write_volume(s.label, root / "labels" / f"{sid}.nii.gz")
        ids.append(sid)
    return ids

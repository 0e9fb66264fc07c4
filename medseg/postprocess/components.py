"""Connected-component clean-up of label maps: largest component, small blobs, holes.

Each step is optional and can be limited to some classes. Connectivity is 26 in 3D by default
(the same as lesion counting in :mod:`medseg.measure`), 6 on request. Sizes are in mm³ so that
one setting works on any voxel spacing.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ComponentsConfig", "clean_labels", "component_sizes_mm3"]


class ComponentsConfig(BaseModel):
    """What :func:`clean_labels` does, per class.

    Attributes:
        largest_component: keep only the largest connected component of these classes
            (``True``: every class; ``False``/empty: none). Organs are one piece; tumours and
            lesions are not, so list the classes rather than saying ``True`` for multi-lesion data.
        min_size_mm3: remove components smaller than this volume, either one value for every
            class or ``{class: mm³}``; removed voxels become background (0).
        fill_holes: fill cavities (background enclosed by a class, slice-independent 3D fill) of
            these classes (``True``: every class).
        connectivity: 26 (faces, edges, corners) or 6 (faces only) in 3D.
    """

    model_config = ConfigDict(extra="forbid")

    largest_component: bool | list[int] = False
    min_size_mm3: float | dict[int, float] | None = None
    fill_holes: bool | list[int] = False
    connectivity: Literal[6, 26] = 26

    @field_validator("min_size_mm3")
    @classmethod
    def _non_negative(cls, v):
        vals = [v] if isinstance(v, (int, float)) else list(v.values()) if isinstance(v, dict) else []
        if any(not math.isfinite(x) or x < 0 for x in vals):
            raise ValueError(f"min_size_mm3 must be ≥ 0 mm³, got {v}")
        return v


def _structure(connectivity: int):
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, 3 if connectivity == 26 else 1)


def _selected(option: bool | Sequence[int], present: Sequence[int]) -> list[int]:
    if option is True:
        return list(present)
    if option is False or option is None:
        return []
    return [c for c in option if c in set(present)]


def component_sizes_mm3(mask: np.ndarray, spacing_mm: Sequence[float], connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of a boolean ``(X, Y, Z)`` mask.

    Returns ``(components, sizes_mm3)``: the component map (0 outside, 1..n) and the volume of
    each component in mm³ (index 0 is the outside).
    """
    from scipy import ndimage

    comp, n = ndimage.label(mask, structure=_structure(connectivity))
    vox = float(np.prod(spacing_mm))
    sizes = np.bincount(comp.ravel(), minlength=n + 1).astype(np.float64) * vox
    return comp, sizes


def clean_labels(labels: np.ndarray, spacing_mm: Sequence[float], cfg: ComponentsConfig | None = None) -> np.ndarray:
    """Clean a label map: small-component removal, largest component, hole filling (in that order).

    Args:
        labels: ``(X, Y, Z)`` integer class ids (0 background).
        spacing_mm: voxel size along each axis in mm (for ``min_size_mm3``).
        cfg: what to do (default: nothing).

    Returns:
        A new ``(X, Y, Z)`` array of the input's dtype. Filled holes take the enclosing class;
        a hole is only filled where it is background (other classes inside are kept).
    """
    from scipy import ndimage

    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be a 3D (X, Y, Z) array, got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    sp = [float(s) for s in spacing_mm]
    if len(sp) != 3 or any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing_mm must be three positive numbers in mm, got {spacing_mm}")
    cfg = cfg or ComponentsConfig()
    out = lab.copy()
    present = [int(c) for c in np.unique(out) if c != 0]
    struct = _structure(cfg.connectivity)

    if cfg.min_size_mm3 is not None:
        for c in present:
            limit = cfg.min_size_mm3 if not isinstance(cfg.min_size_mm3, dict) else cfg.min_size_mm3.get(c)
            if not limit:
                continue
            comp, sizes = component_sizes_mm3(out == c, sp, cfg.connectivity)
            small = sizes < limit
            small[0] = False
            out[small[comp]] = 0

    for c in _selected(cfg.largest_component, present):
        mask = out == c
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=struct)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[mask & (comp != int(np.argmax(sizes)))] = 0

    for c in _selected(cfg.fill_holes, present):
        mask = out == c
        if not mask.any():
            continue
        filled = ndimage.binary_fill_holes(mask, structure=_structure(6 if cfg.connectivity == 26 else 26))
        out[filled & (out == 0)] = c
    return out

"""QC previews: the image with coloured label outlines, as one PNG per study (``preview.png``).

Panels, side by side: an axial, a coronal and a sagittal plane through the labelled structures
(each plane is the slice of its orientation holding the most labelled voxels), then one axial
plane through each given lesion (e.g. every missed lesion of a recall report). Radiological view:
the patient's right on the image's left, anterior (axial) or superior (coronal, sagittal) up.
Pixels are square in mm: nearest-neighbour upsampling to the scan's finest spacing, or finer so
that its largest extent spans :data:`MIN_PIXELS` pixels.

The PNG is drawn pixel by pixel, not through a plot: an outline pixel of a label has exactly that
label's colour (:func:`medseg.io.structure_code`, the colour its DICOM-SEG segment recommends), so
what the picture shows can be checked against the label map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medseg.io.volume import Volume

__all__ = ["MIN_PIXELS", "label_colours", "preview_planes", "preview_labels", "preview_rgb", "preview_png", "write_preview"]

# Gap between panels (pixels) and its colour; the image window (HU) of a CT, else percentiles.
_GAP = 4
_GAP_RGB = (32, 32, 32)
_CT_WINDOW = (-160.0, 240.0)
# Pixels across the largest extent of the scan, at least.
MIN_PIXELS = 320


def label_colours(names: Mapping[int, str]) -> dict[int, tuple[int, int, int]]:
    """Label id → RGB outline colour (the structure's recommended display colour)."""
    from medseg.io import structure_code

    return {int(k): structure_code(str(v)).rgb for k, v in names.items() if int(k) != 0}


def _canonical(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reoriented to RAS+ axis order and direction, and its spacing (mm) per axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.affine)
    arr = nib.orientations.apply_orientation(np.asarray(volume.array), ornt)
    spacing = np.asarray(volume.spacing)[np.argsort(ornt[:, 0])]
    return arr, tuple(float(s) for s in spacing)


def _plane(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D plane of a RAS+ array in radiological view: rows top to bottom, columns left to right."""
    if axis == 2:  # axial: rows anterior→posterior, columns right→left
        return arr[::-1, ::-1, index].T
    if axis == 1:  # coronal: rows superior→inferior, columns right→left
        return arr[::-1, index, ::-1].T
    return arr[index, ::-1, ::-1].T  # sagittal: rows superior→inferior, columns anterior→posterior


def _plane_spacing(spacing: Sequence[float], axis: int) -> tuple[float, float]:
    """(row, column) spacing in mm of :func:`_plane`'s planes across ``axis``."""
    return {2: (spacing[1], spacing[0]), 1: (spacing[2], spacing[0]), 0: (spacing[2], spacing[1])}[axis]


def preview_planes(labels: Volume, lesions_voxel: Sequence[Sequence[float]] = ()) -> list[tuple[int, int]]:
    """The ``(axis, index)`` planes of the preview, in the RAS+ reoriented array: the axial
    (axis 2), coronal (1) and sagittal (0) slice with the most labelled voxels, then the axial
    slice through each lesion (``lesions_voxel``: ``(i, j, k)`` voxel positions in ``labels``'
    own array, e.g. a lesion's centroid)."""
    import nibabel as nib

    arr, _ = _canonical(labels)
    fg = arr != 0
    planes = []
    for axis in (2, 1, 0):
        other = tuple(a for a in range(3) if a != axis)
        counts = fg.sum(axis=other)
        planes.append((axis, int(np.argmax(counts)) if counts.any() else arr.shape[axis] // 2))
    ornt = nib.orientations.io_orientation(labels.affine)
    for point in lesions_voxel:
        k_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the labels' axis that becomes RAS+ axis 2
        k = int(round(float(point[k_axis])))
        if ornt[k_axis, 1] < 0:
            k = labels.shape[k_axis] - 1 - k
        planes.append((2, min(max(k, 0), arr.shape[2] - 1)))
    return planes


def _outline(lab: np.ndarray) -> np.ndarray:
    """Pixels of a label whose 4-neighbour (or the border) carries another value: a 1-pixel outline."""
    edge = np.zeros(lab.shape, dtype=bool)
    padded = np.pad(lab, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dr:dr + lab.shape[0], dc:dc + lab.shape[1]] != centre
    return edge & (lab != 0)


def _upsample(plane: np.ndarray, row_mm: float, col_mm: float, step: float) -> np.ndarray:
    """Nearest-neighbour upsampling to square pixels of ``step`` mm."""
    rows = max(1, int(round(plane.shape[0] * row_mm / step)))
    cols = max(1, int(round(plane.shape[1] * col_mm / step)))
    ri = np.minimum((np.arange(rows) * plane.shape[0]) // rows, plane.shape[0] - 1)
    ci = np.minimum((np.arange(cols) * plane.shape[1]) // cols, plane.shape[1] - 1)
    return plane[np.ix_(ri, ci)]


def _grey(image: np.ndarray, ct: bool) -> tuple[float, float]:
    if ct:
        return _CT_WINDOW
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _panels(image: Volume | None, labels: Volume, lesions_voxel: Sequence[Sequence[float]]):
    """``(grey, labels)`` planes of the preview, upsampled to square pixels (``grey`` None without image)."""
    lab, spacing = _canonical(labels)
    img = _canonical(image)[0] if image is not None else None
    # square pixels of the finest spacing, or finer so that the largest extent spans MIN_PIXELS
    step = min(min(spacing), max(n * s for n, s in zip(lab.shape, spacing)) / MIN_PIXELS)
    for axis, index in preview_planes(labels, lesions_voxel):
        rmm, cmm = _plane_spacing(spacing, axis)
        grey = None if img is None else _upsample(_plane(img, axis, index), rmm, cmm, step)
        yield grey, _upsample(_plane(lab, axis, index), rmm, cmm, step)


def _compose(panels: Sequence[np.ndarray], fill) -> np.ndarray:
    """Panels side by side, :data:`_GAP` pixels apart, top-aligned; ``fill`` elsewhere."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + _GAP * (len(panels) - 1)
    out = np.empty((height, width) + panels[0].shape[2:], dtype=panels[0].dtype)
    out[:] = fill
    x = 0
    for p in panels:
        out[: p.shape[0], x: x + p.shape[1]] = p
        x += p.shape[1] + _GAP
    return out


def preview_labels(labels: Volume, lesions_voxel: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """The label ids under each pixel of :func:`preview_rgb` ``(H, W)`` (0 between panels)."""
    return _compose([lab for _, lab in _panels(None, labels, lesions_voxel)], 0)


def preview_rgb(image: Volume, labels: Volume, names: Mapping[int, str],
                lesions_voxel: Sequence[Sequence[float]] = (), *, ct: bool | None = None) -> np.ndarray:
    """The preview as an RGB array ``(H, W, 3)`` uint8 (see the module docstring).

    Args:
        image: the scan; ``labels`` must be on its grid.
        labels: class ids.
        names: label id → structure name (outline colours); labels it lacks get a generic colour.
        lesions_voxel: ``(i, j, k)`` voxel positions of lesions to show an axial plane through each.
        ct: grey window -160…240 HU (``True``) or the 1st–99th percentile (``False``); default:
            ``True`` when the image's values look like HU (minimum below −500).
    """
    if image.shape != labels.shape:
        raise ValueError(f"labels of shape {labels.shape} are not on the image's grid {image.shape}")
    values = np.asarray(image.array, dtype=np.float32)
    if ct is None:
        ct = bool(values.size) and float(np.nanmin(values)) < -500
    lo, hi = _grey(values, ct)
    from medseg.io import structure_code

    colours = label_colours(names)
    for value in np.unique(np.asarray(labels.array)):
        if int(value) != 0 and int(value) not in colours:
            colours[int(value)] = structure_code(f"label {int(value)}").rgb
    panels = []
    for grey, plane_lab in _panels(image, labels, lesions_voxel):
        g = np.clip((grey.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        rgb = np.repeat(g[..., None], 3, axis=2)
        edge = _outline(plane_lab)
        for value, colour in colours.items():
            rgb[edge & (plane_lab == value)] = colour
        panels.append(rgb)
    return _compose(panels, _GAP_RGB)


def preview_png(image: Volume, labels: Volume, names: Mapping[int, str],
                lesions_voxel: Sequence[Sequence[float]] = ()) -> bytes:
    """:func:`preview_rgb` as PNG bytes (lossless: every pixel keeps its colour)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(preview_rgb(image, labels, names, lesions_voxel), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_preview(image: Volume, labels: Volume, names: Mapping[int, str], path: str | Path,
                  lesions_voxel: Sequence[Sequence[float]] = ()) -> Path:
    """Write :func:`preview_png` to ``path`` atomically."""
    from medseg.io.atomic import atomic_write_bytes

    return atomic_write_bytes(path, preview_png(image, labels, names, lesions_voxel))

"""TotalSegmentator's grid: the closest canonical (RAS) orientation, its ``change_spacing``
resampling (``scipy.ndimage.zoom``, mode ``nearest``, its rounding of the new shape) there and
back, and the undoing of the orientation, reproduced voxel for voxel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CanonicalGrid", "canonical_grid", "to_canonical", "to_spacing", "to_shape", "from_canonical"]


@dataclass(frozen=True)
class CanonicalGrid:
    """An image's closest canonical orientation, as ``nibabel.as_closest_canonical`` makes it.

    Attributes:
        ornt: the nibabel orientation from the input's axes to RAS.
        shape: the canonical array's shape ``(X, Y, Z)``.
        affine: its voxel-to-world affine (mm).
        zooms: its NIfTI header zooms (float32, as nibabel stores them), mm.
    """

    ornt: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: np.ndarray


def canonical_grid(shape: tuple[int, int, int], affine: np.ndarray) -> CanonicalGrid:
    """The closest canonical grid of an image of ``shape`` and ``affine`` (nibabel's own code,
    on an image without voxels)."""
    import nibabel as nib

    empty = np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(int(s) for s in shape))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(empty, np.asarray(affine, dtype=np.float64)))
    return CanonicalGrid(ornt=nib.orientations.io_orientation(affine), shape=tuple(int(s) for s in canonical.shape),
                         affine=np.array(canonical.affine), zooms=np.array(canonical.header.get_zooms()[:3]))


def to_canonical(array: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    """``array`` (the input's axes) on the canonical axes (a view)."""
    import nibabel as nib

    return nib.orientations.apply_orientation(array, grid.ornt)


def from_canonical(array: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    """``array`` on the canonical axes back on the input's axes (TotalSegmentator's
    ``undo_canonical``)."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), grid.ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, back))


def to_spacing(array: np.ndarray, grid: CanonicalGrid, spacing_mm: tuple[float, float, float],
               order: int) -> tuple[np.ndarray, np.ndarray]:
    """TotalSegmentator's ``change_spacing(img, spacing, order=order, dtype=np.int32)`` of the
    canonical ``array``: ``(array, affine)`` on the new grid.

    The zoom per axis is the header zoom (float32) over the spacing; each affine column is divided
    by it; the shape is ``round(shape * zoom)`` (scipy's). The values are interpolated in float64
    (whatever the input's dtype, as from ``get_fdata()``) and truncated to ``int32``. An image
    already at the spacing comes back unchanged (as TotalSegmentator returns it, not cast).
    """
    from scipy import ndimage

    new_spacing = np.array(spacing_mm, dtype=np.float64)
    if np.array_equal(grid.zooms, new_spacing):
        return array, grid.affine.copy()
    zoom = grid.zooms / new_spacing
    affine = grid.affine.copy()
    for axis in range(3):
        affine[:3, axis] = affine[:3, axis] / zoom[axis]
    out = ndimage.zoom(array, zoom, output=np.float64, mode="nearest", order=order)
    return out.astype(np.int32), affine


def to_shape(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """TotalSegmentator's ``change_spacing(labels, target_shape=shape, order=0, dtype=np.uint8)``:
    nearest-neighbour ``scipy.ndimage.zoom`` by ``shape / labels.shape`` (unchanged when the
    shapes are equal)."""
    from scipy import ndimage

    if tuple(labels.shape) == tuple(shape):
        return labels
    zoom = np.array(shape) / np.array(labels.shape)
    out = ndimage.zoom(labels, zoom, mode="nearest", order=0)
    if tuple(out.shape) != tuple(shape):
        raise RuntimeError(f"resampling the labels back gave {out.shape}, expected {tuple(shape)}")
    return out

"""The one in-memory image type: a voxel array with its geometry attached."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Volume", "affine_spacing", "stated_spacing", "orientation_code", "affine_difference_mm"]


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def stated_spacing(volume: "Volume") -> tuple[float, float, float]:
    """Voxel spacing in mm as the file states it: a NIfTI header's ``pixdim`` (float32 values, as
    ITK and nnU-Net read them) when it agrees with the affine's column lengths within 1e-4
    relative; otherwise (other formats, or a header that disagrees) the affine's.

    The affine of a rotated NIfTI is stored in float32, so its column lengths miss the stated
    spacing by ~1e-8 relative: enough to flip a ``round(spacing / target × shape)`` at .5.
    """
    norms = volume.spacing
    header = volume.meta.get("nifti_header")
    if header is None:
        return norms
    zooms = [float(np.float32(z)) for z in header.get_zooms()[:3]]
    if len(zooms) == 3 and all(abs(z - n) <= 1e-4 * max(abs(n), 1e-6) for z, n in zip(zooms, norms)):
        return tuple(zooms)  # type: ignore[return-value]
    return norms


def affine_difference_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far apart (mm) two voxel-to-world affines put the same voxel: the largest distance
    between the world positions the two give the corner voxels of an image of ``shape``
    (``(I, J, K)``). 0.0 for equal affines; it grows with a rotation or spacing difference in
    proportion to the field of view."""
    corners = np.array(np.meshgrid(*[(0.0, max(int(n) - 1, 0)) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    homogeneous = np.vstack([corners, np.ones((1, corners.shape[1]))])
    delta = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))[:3] @ homogeneous
    return float(np.sqrt((delta ** 2).sum(axis=0)).max())


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter orientation of the voxel axes in world (RAS+) space, e.g. ``"RAS"``, ``"LPS"``."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine)))


@dataclass
class Volume:
    """A 3D scan or label map and its geometry.

    Attributes:
        array: voxels, shape ``(I, J, K)`` in file storage order (nibabel's order: the first
            axis varies fastest on disk). Dtype as stored (int16 HU, uint8 labels, float32 MR…).
        affine: ``(4, 4)`` float64 map from voxel index ``(i, j, k, 1)`` to world coordinates
            in mm, RAS+ convention (NIfTI's; DICOM/ITK LPS geometry is converted on read).
        source: the file or folder it was read from (``None`` when made in memory).
        meta: format details that writing may reuse: ``"nifti_header"`` (a nibabel header whose
            qform/sform codes are kept on write), ``"dicom"`` (series UID, description, …);
            ``"warnings"``: one line (``"<file>: <what>"``) per doubt the reader resolved and went
            on (e.g. a NIfTI qform and sform that disagree), for batch state and reports.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, not {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"a Volume holds a 3D array, not {self.array.ndim}D {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm."""
        return affine_spacing(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (= cm³), from the affine's determinant."""
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def orientation(self) -> str:
        return orientation_code(self.affine)

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """The same geometry (affine, source, meta) around another array of the same shape."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {tuple(array.shape)} differs from the volume's {self.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def same_grid(self, other: "Volume", atol_mm: float = 1e-3) -> bool:
        """True when ``other`` has the same shape and an affine equal within ``atol_mm``."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0))

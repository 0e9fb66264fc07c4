"""Reading the probabilities file of DESIGN.md: a 4D NIfTI ``(X, Y, Z, C)``, channel c for label c."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.files import missing_problem
from medseg.io.volume import Volume, affine_difference_mm

__all__ = ["read_probabilities"]


def read_probabilities(path: str | Path, grid: Volume | None = None, *, check_sums: bool = True) -> np.ndarray:
    """Read softmax probabilities as an ``(X, Y, Z, C)`` float16/float32 array (float64 → float32).

    Args:
        path: the 4D NIfTI file (a 5D file with a singleton 4th axis is accepted).
        grid: when given, the probabilities must lie on its grid (shape, and affine within 1e-3 mm).
        check_sums: require the channels to sum to 1 (±0.02) at every (sampled) voxel; off for
            partial-volume maps that need not be a full softmax.

    Raises:
        InputError: missing, unreadable (every check of :func:`medseg.io.read_nifti_voxels`,
            the size limits included), not 4D, off ``grid``, fewer than 2 channels, not float,
            NaN/Inf, values outside [0, 1], or channels not summing to 1.
    """
    from nibabel.volumeutils import apply_read_scaling

    from medseg.io.nifti import read_nifti_voxels

    path = Path(path)
    if not path.exists():
        raise InputError(path, missing_problem(path))
    if path.is_dir():
        raise InputError(path, "is a folder, not a 4D NIfTI probability file")

    def check_header(hdr, shape: tuple[int, ...]) -> None:
        """Shape, grid and channels from the header alone, before the voxels are read."""
        if len(shape) != 4 and not (len(shape) == 5 and shape[3] == 1):
            raise InputError(path, f"probabilities must be a 4D NIfTI (X, Y, Z, C), got {len(shape)}D {shape}")
        if grid is not None:
            if shape[:3] != grid.shape:
                raise InputError(path, f"probabilities grid {shape[:3]} differs from the image's {grid.shape} ({grid.source})")
            affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
            if not np.allclose(affine, grid.affine, atol=1e-3, rtol=0):
                diff = affine_difference_mm(affine, grid.affine, grid.shape)
                raise InputError(path, f"probabilities are not on the image's grid ({grid.source}): affines differ by "
                                 f"up to {diff:.4g} mm")
        if shape[-1] < 2:
            raise InputError(path, f"probabilities need at least 2 channels (background first), got {shape[-1]}")
        dtype = hdr.get_data_dtype()
        if dtype.kind != "f" and hdr.get_slope_inter() in ((None, None), (1.0, 0.0)):
            raise InputError(path, f"probabilities must be float32 or float16 softmax values, got dtype {dtype}")

    hdr, data = read_nifti_voxels(path, check_header=check_header)
    shape = data.shape
    squeeze5 = len(shape) == 5
    n_classes = shape[-1]
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="), order="F")
    slope, inter = hdr.get_slope_inter()
    if not (slope in (None, 1.0) and inter in (None, 0.0)):
        data = apply_read_scaling(data, slope, inter)
    if squeeze5:
        data = data[:, :, :, 0, :]
    if data.dtype.kind != "f":
        raise InputError(path, f"probabilities must be float32 or float16 softmax values, got dtype {data.dtype}")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(path, "probabilities contain NaN or Inf")
    lo, hi = float(data.min()), float(data.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(path, f"probabilities must lie in [0, 1], found values from {lo:g} to {hi:g}")
    if check_sums:
        step = max(1, int(np.prod(data.shape[:3])) // 500_000)
        sums = data.reshape(-1, n_classes)[::step].sum(axis=1, dtype=np.float64)
        if sums.size and float(np.abs(sums - 1).max()) > 0.02:
            raise InputError(path, f"channels must sum to 1 at every voxel (softmax), found sums from "
                             f"{float(sums.min()):.3g} to {float(sums.max()):.3g}")
    return data

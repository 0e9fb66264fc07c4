"""Reading the probabilities file of DESIGN.md: a 4D NIfTI ``(X, Y, Z, C)``, channel c for label c."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume

__all__ = ["read_probabilities"]


def read_probabilities(path: str | Path, grid: Volume | None = None, *, check_sums: bool = True) -> np.ndarray:
    """Read softmax probabilities as an ``(X, Y, Z, C)`` float16/float32 array (float64 → float32).

    Args:
        path: the 4D NIfTI file (a 5D file with a singleton 4th axis is accepted).
        grid: when given, the probabilities must lie on its grid (shape, and affine within 1e-3 mm).
        check_sums: require the channels to sum to 1 (±0.02) at every (sampled) voxel; off for
            partial-volume maps that need not be a full softmax.

    Raises:
        InputError: missing, unreadable, not 4D, off ``grid``, fewer than 2 channels, not float,
            NaN/Inf, values outside [0, 1], or channels not summing to 1.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        raise InputError(path, "is a folder, not a 4D NIfTI probability file")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    squeeze5 = len(shape) == 5 and shape[3] == 1
    if len(shape) != 4 and not squeeze5:
        raise InputError(path, f"probabilities must be a 4D NIfTI (X, Y, Z, C), got {len(shape)}D {shape}")
    n_classes = shape[-1]
    if grid is not None:
        if shape[:3] != grid.shape:
            raise InputError(path, f"probabilities grid {shape[:3]} differs from the image's {grid.shape} ({grid.source})")
        if not np.allclose(np.asarray(img.affine), grid.affine, atol=1e-3, rtol=0):
            diff = float(np.abs(np.asarray(img.affine) - grid.affine).max())
            raise InputError(path, f"probabilities are not on the image's grid ({grid.source}): affines differ by "
                             f"up to {diff:.4g} mm")
    if n_classes < 2:
        raise InputError(path, f"probabilities need at least 2 channels (background first), got {n_classes}")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(path, f"voxel data cannot be read ({type(exc).__name__}: {exc})") from None
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

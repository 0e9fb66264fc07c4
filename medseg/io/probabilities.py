"""Reading the probabilities file of DESIGN.md: a 4D NIfTI ``(X, Y, Z, C)``, channel c for label c."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError

__all__ = ["read_probabilities"]


def read_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read softmax probabilities: returns ``(probs (C, X, Y, Z) float16/float32, affine (4, 4) RAS+ mm)``.

    The array is a view with the channel axis moved first (no copy of the voxels).

    Raises:
        InputError: not a readable NIfTI, not 4D, non-float data, values outside [0, 1] (checked on
            a sample of voxels).
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "probabilities file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for malformed files
        raise InputError(path, f"not a readable NIfTI probabilities file ({type(exc).__name__}: {exc})") from None
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4:
        raise InputError(path, f"probabilities must be 4D (X, Y, Z, C), not {data.ndim}D {tuple(data.shape)}")
    if data.dtype.kind != "f":
        raise InputError(path, f"probabilities must be float (softmax values in [0, 1]), not {data.dtype}")
    sample = data.reshape(-1)[:: max(1, data.size // 100_000)]
    if sample.size and (not np.all(np.isfinite(sample)) or sample.min() < -1e-3 or sample.max() > 1 + 1e-3):
        raise InputError(path, "probabilities outside [0, 1] (or NaN): expected softmax probabilities")
    return np.moveaxis(data, -1, 0), np.asarray(img.affine, dtype=np.float64)

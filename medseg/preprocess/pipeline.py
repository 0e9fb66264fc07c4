"""Forward preprocessing of one case and the exact inverse of its spatial steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.io.volume import Volume
from medseg.preprocess.config import IntensityConfig, PreprocessConfig

__all__ = ["InverseInfo", "PreprocessedCase", "preprocess_case", "invert_spatial", "normalize_intensity",
           "reorient", "resample", "foreground_box"]


@dataclass
class InverseInfo:
    """What :func:`invert_spatial` needs to go back to the input grid.

    Attributes:
        input_shape: shape ``(I, J, K)`` of the input file's array.
        input_affine: its affine (RAS+, mm).
        ornt_transform: nibabel orientation transform from the input to the oriented grid.
        oriented_shape: shape after reorientation, before resampling.
        resampled_shape: shape after resampling (= the network's grid when there is no crop).
        crop_box: ``((x0, x1), (y0, y1), (z0, z1))`` voxel ranges (stop exclusive) of the
            resampled grid kept by the foreground crop, or None (no crop).
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    ornt_transform: np.ndarray
    oriented_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    crop_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    @property
    def network_shape(self) -> tuple[int, int, int]:
        """Shape of the grid the network sees (after resampling and the optional crop)."""
        if self.crop_box is None:
            return tuple(self.resampled_shape)
        return tuple(int(b - a) for a, b in self.crop_box)


@dataclass
class PreprocessedCase:
    """A case on the network's grid.

    Attributes:
        image: ``(C, X, Y, Z)`` float32, normalised.
        label: ``(X, Y, Z)`` uint8 class ids, or None.
        affine: affine of the preprocessed grid (RAS+, mm).
        inverse: how to map results back to the input grid.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    inverse: InverseInfo

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _orientation_transform(affine: np.ndarray, target: str) -> np.ndarray:
    import nibabel as nib

    current = nib.orientations.io_orientation(affine)
    return nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(tuple(target)))


def reorient(array: np.ndarray, affine: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a nibabel orientation ``transform`` to the last three axes of ``array``.

    Returns the reoriented array (a view where possible) and its affine.
    """
    import nibabel as nib

    spatial = array.shape[-3:]
    lead = array.ndim - 3
    # nibabel applies to the first axes; move channel axes to the end and back.
    moved = np.moveaxis(array, list(range(lead)), list(range(3, 3 + lead))) if lead else array
    out = nib.orientations.apply_orientation(moved, transform)
    if lead:
        out = np.moveaxis(out, list(range(3, 3 + lead)), list(range(lead)))
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, spatial)
    return out, new_affine


def _zoom_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Affine of a grid resampled from ``old_shape`` to ``new_shape`` over the same field of view
    (voxel centres as in ``align_corners=False``)."""
    scale = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = (scale - 1.0) / 2.0
    return affine @ m


def resample(array: np.ndarray, new_shape: tuple[int, int, int], mode: str) -> np.ndarray:
    """Resample the last three axes of ``array`` to ``new_shape`` over the same field of view.

    ``mode``: ``"linear"`` (trilinear, float32) or ``"nearest"`` (labels, dtype kept).
    Leading axes (channels) are kept. Runs in torch on the CPU, chunked by channel.
    """
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[-3:]) == tuple(new_shape):
        return array
    lead = array.shape[:-3]
    flat = array.reshape((-1,) + array.shape[-3:])
    out = []
    for ch in flat:
        t = torch.from_numpy(np.ascontiguousarray(ch))
        if mode == "nearest":
            src = t.to(torch.float32) if t.dtype not in (torch.float32, torch.float64) else t
            r = F.interpolate(src[None, None], size=tuple(new_shape), mode="nearest-exact")[0, 0]
            out.append(r.numpy().astype(array.dtype, copy=False))
        else:
            r = F.interpolate(t.to(torch.float32)[None, None], size=tuple(new_shape), mode="trilinear",
                              align_corners=False)[0, 0]
            out.append(r.numpy())
    return np.stack(out).reshape(lead + tuple(new_shape))


def normalize_intensity(array: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """Normalise one channel ``(X, Y, Z)`` into float32 following ``cfg``."""
    x = array.astype(np.float32, copy=True)
    if cfg.kind == "ct":
        lo, hi = cfg.window
        np.clip(x, lo, hi, out=x)
        if cfg.mean is not None and cfg.std is not None:
            x -= cfg.mean
            x /= max(cfg.std, 1e-8)
        else:
            x -= lo
            x /= hi - lo
    elif cfg.kind == "zscore":
        mask = x != 0 if cfg.nonzero_only else np.ones(x.shape, dtype=bool)
        if mask.any():
            vals = x[mask]
            mean, std = float(vals.mean()), float(vals.std())
            x = np.where(mask, (x - mean) / max(std, 1e-8), 0.0).astype(np.float32) if cfg.nonzero_only \
                else (x - mean) / max(std, 1e-8)
    return x


def preprocess_case(images: list[Volume], cfg: PreprocessConfig, label: Volume | None = None) -> PreprocessedCase:
    """Orient, resample and normalise one case.

    Args:
        images: one :class:`Volume` per input channel, all on the same grid.
        cfg: the preprocessing parameters.
        label: optional label map on the same grid.

    Returns:
        :class:`PreprocessedCase` with ``image`` ``(C, X, Y, Z)`` float32.
    """
    if not images:
        raise ValueError("preprocess_case needs at least one image")
    ref = images[0]
    for other in images[1:]:
        if not ref.same_grid(other):
            raise ValueError(f"channel {other.source} is not on the grid of {ref.source}")
    transform = _orientation_transform(ref.affine, cfg.orientation)
    stack = np.stack([v.array for v in images])
    oriented, affine = reorient(stack, ref.affine, transform)
    oriented_shape = tuple(int(s) for s in oriented.shape[-3:])
    if cfg.target_spacing is not None:
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(oriented_shape, spacing, cfg.target_spacing))
    else:
        new_shape = oriented_shape
    crop_box = None
    if cfg.crop_foreground is not None:
        crop_box = foreground_box(oriented, new_shape, cfg.crop_foreground.threshold, cfg.crop_foreground.margin_vox)
    channels = [normalize_intensity(oriented[c], cfg.channel(c)) for c in range(oriented.shape[0])]
    image = resample(np.stack(channels), new_shape, "linear").astype(np.float32, copy=False)
    new_affine = _zoom_affine(affine, oriented_shape, new_shape)
    lab = None
    if label is not None:
        lab_o, _ = reorient(label.array, ref.affine, transform)
        lab = resample(np.ascontiguousarray(lab_o), new_shape, "nearest").astype(np.uint8)
    if crop_box is not None:
        sl = tuple(slice(a, b) for a, b in crop_box)
        image = image[(slice(None),) + sl]
        lab = None if lab is None else np.ascontiguousarray(lab[sl])
        shift = np.eye(4)
        shift[:3, 3] = [a for a, _ in crop_box]
        new_affine = new_affine @ shift
    inverse = InverseInfo(input_shape=ref.shape, input_affine=ref.affine.copy(), ornt_transform=transform,
                          oriented_shape=oriented_shape, resampled_shape=tuple(int(s) for s in new_shape),
                          crop_box=crop_box)
    return PreprocessedCase(image=np.ascontiguousarray(image), label=lab, affine=new_affine, inverse=inverse)


def foreground_box(stack: np.ndarray, new_shape: tuple[int, int, int], threshold: float | None,
                   margin_vox: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Bounding box, on a grid of ``new_shape``, of the foreground of ``stack`` ``(C, X, Y, Z)``.

    Foreground: any channel ``> threshold`` (or ``!= 0`` when ``threshold`` is None). The box is
    widened by ``margin_vox`` and clipped to the grid; an image without foreground keeps the
    whole grid. Returns ``((x0, x1), (y0, y1), (z0, z1))`` with exclusive stops.
    """
    mask = (stack != 0).any(axis=0) if threshold is None else (stack > threshold).any(axis=0)
    mask = resample(mask.astype(np.uint8), tuple(new_shape), "nearest")
    if not mask.any():
        return tuple((0, int(n)) for n in new_shape)  # type: ignore[return-value]
    box = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((max(0, int(idx[0]) - margin_vox), min(int(new_shape[ax]), int(idx[-1]) + 1 + margin_vox)))
    return tuple(box)  # type: ignore[return-value]


def invert_spatial(array: np.ndarray, inverse: InverseInfo, mode: str = "nearest",
                   pad_value: float | list[float] | tuple[float, ...] = 0.0) -> np.ndarray:
    """Map ``array`` (``(..., X, Y, Z)`` on the preprocessed grid) back onto the input's grid.

    ``mode``: ``"nearest"`` for labels, ``"linear"`` for scores/probabilities (then argmax).
    ``pad_value``: fills what a foreground crop removed; one number, or one per leading
    channel (for per-class probabilities ``(C, X, Y, Z)`` pass ``[1, 0, ..., 0]``: background).
    The result has shape ``(..., *inverse.input_shape)``.
    """
    if tuple(array.shape[-3:]) != tuple(inverse.network_shape):
        raise ValueError(f"array grid {array.shape[-3:]} is not the preprocessed grid {inverse.network_shape}")
    if inverse.crop_box is not None:
        full = np.empty(array.shape[:-3] + tuple(inverse.resampled_shape), dtype=array.dtype)
        if isinstance(pad_value, (list, tuple)):
            if array.ndim != 4 or len(pad_value) != array.shape[0]:
                raise ValueError(f"pad_value has {len(pad_value)} values for an array of shape {array.shape} "
                                 "(expected one per channel of a (C, X, Y, Z) array)")
            full[...] = np.asarray(pad_value, dtype=array.dtype).reshape(-1, 1, 1, 1)
        else:
            full[...] = pad_value
        full[(Ellipsis,) + tuple(slice(a, b) for a, b in inverse.crop_box)] = array
        array = full
    back = resample(array, inverse.oriented_shape, mode)
    # inverse orientation: from the target orientation back to the input's
    out, _ = reorient(back, np.eye(4), _invert_transform(inverse.ornt_transform))
    if tuple(out.shape[-3:]) != tuple(inverse.input_shape):
        raise AssertionError(f"inversion produced {out.shape[-3:]}, expected {inverse.input_shape}")
    return np.ascontiguousarray(out)


def _invert_transform(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform``."""
    inv = np.zeros_like(transform)
    for new_ax, (old_ax, flip) in enumerate(transform):
        inv[int(old_ax)] = (new_ax, flip)
    return inv

"""nnU-Net's default preprocessing of one case at inference, and the geometry of its inverse.

Order (nnU-Net's ``DefaultPreprocessor.run_case_npy``): ``transpose_forward`` → crop to the
non-zero box of all channels (holes filled) → normalisation per channel → resampling to the
configuration's spacing. Arrays are in nnU-Net's axis order: the reverse of medseg's (nibabel's)
array axes, as SimpleITK reads them, with ``transpose_forward`` applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medseg.inference.nnunet.config import NnunetConfig

__all__ = ["NnunetCase", "preprocess", "separate_z_axis", "new_shape", "nonzero_box", "normalize",
           "resample_data", "resize_axis_modes", "ANISO_THRESHOLD"]

ANISO_THRESHOLD = 3.0


@dataclass
class NnunetCase:
    """A case on the network's grid and what the export needs to go back.

    Attributes:
        data: ``(C, a, b, c)`` float32, the network's input (before padding to the window).
        shape_before_cropping: after ``transpose_forward``, before the crop.
        bbox: the crop box ``[[a0, a1], [b0, b1], [c0, c1]]`` (stop exclusive) in that grid.
        shape_after_cropping: the cropped shape, before resampling.
        spacing: the case's spacing after ``transpose_forward`` (mm).
        network_spacing: the spacing of ``data`` (the configuration's, 3 values).
    """

    data: np.ndarray
    shape_before_cropping: tuple[int, int, int]
    bbox: list[list[int]]
    shape_after_cropping: tuple[int, int, int]
    spacing: list[float]
    network_spacing: list[float]


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    s = np.asarray(spacing, dtype=float)
    return [int(i) for i in np.where(max(s) / s == 1)[0]]


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float], force_separate_z: bool | None,
                    threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples separately (order 0 along it), or ``None``
    (``determine_do_sep_z_and_axis``)."""
    if force_separate_z is not None:
        axes = _lowres_axes(current_spacing) if force_separate_z else None
    elif max(current_spacing) / min(current_spacing) > threshold:
        axes = _lowres_axes(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``round(spacing / target × shape)`` per axis."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape))


def nonzero_box(data: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """The bounding box of the non-zero voxels of any channel (holes filled) and that mask
    (``crop_to_nonzero``); the whole grid when every voxel is zero."""
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    mask = binary_fill_holes(mask)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.nonzero(mask.any(axis=other))[0]
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, int(mask.shape[axis])])
    return box, mask


def normalize(image: np.ndarray, scheme: str, use_mask: bool, mask: np.ndarray | None,
              properties: dict[str, float]) -> np.ndarray:
    """One channel ``(a, b, c)`` normalised as nnU-Net's scheme ``scheme`` does (float32, in place
    where possible). ``mask``: the non-zero mask of the crop (``seg >= 0`` in nnU-Net)."""
    eps = 1e-8
    image = image.astype(np.float32, copy=False)
    if scheme == "CTNormalization":
        np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"], out=image)
        image -= properties["mean"]
        image /= max(properties["std"], eps)
    elif scheme == "ZScoreNormalization":
        if use_mask and mask is not None:
            values = image[mask]
            mean, std = values.mean(), values.std()
            image[mask] = (values - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme == "RGBTo01Normalization":
        if image.min() < 0 or image.max() > 255:
            raise ValueError("RGBTo01Normalization expects intensities in 0..255")
        image /= 255.0
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalisation scheme {scheme!r}")
    return image


def resize_axis_modes(function: str, kwargs: dict[str, Any], current_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[str, str, str]:
    """Per axis, how the probability export interpolates: ``"linear"`` or ``"nearest"``.

    Both of nnU-Net's functions interpolate the logits linearly (order 1 / trilinear), except
    along the separate-z axis, where ``order_z`` 0 / ``aniso_axis_mode`` ``nearest-exact`` picks
    the nearest slice (the two rules pick the same slice).
    """
    if function == "resample_data_or_seg_to_shape":
        order, order_z = int(kwargs.get("order", 1)), int(kwargs.get("order_z", 0))
        if order != 1 or order_z not in (0, 1):
            raise ValueError(f"probability resampling with order {order}, order_z {order_z} (medseg streams order 1 "
                             "with order_z 0 or 1)")
        z_mode = "nearest" if order_z == 0 else "linear"
    else:
        mode = kwargs.get("mode", "linear")
        aniso = kwargs.get("aniso_axis_mode", "nearest-exact")
        if mode != "linear" or aniso not in ("nearest-exact", "linear"):
            raise ValueError(f"probability resampling with mode {mode!r}, aniso_axis_mode {aniso!r}")
        z_mode = "nearest" if aniso == "nearest-exact" else "linear"
    axis = separate_z_axis(current_spacing, new_spacing, kwargs.get("force_separate_z"),
                           float(kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD)))
    modes = ["linear", "linear", "linear"]
    if axis is not None:
        modes[axis] = z_mode
    return tuple(modes)  # type: ignore[return-value]


def _skimage_resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(image, tuple(int(s) for s in shape), order, mode="edge", anti_aliasing=False)


def resample_data(data: np.ndarray, shape: Sequence[int], current_spacing: Sequence[float],
                  new_spacing: Sequence[float], function: str, kwargs: dict[str, Any]) -> np.ndarray:
    """The normalised case ``(C, a, b, c)`` resampled to ``shape`` as nnU-Net's data resampling
    function ``function`` does (float32 out). Nothing is done when the shape is already ``shape``."""
    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    axis = separate_z_axis(current_spacing, new_spacing, kwargs.get("force_separate_z"),
                           float(kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD)))
    out = np.empty((data.shape[0],) + shape, dtype=np.float32)
    if function == "resample_torch_fornnunet":
        import torch
        import torch.nn.functional as F

        mode = kwargs.get("mode", "linear")
        aniso = kwargs.get("aniso_axis_mode", "nearest-exact")
        if mode != "linear":
            raise ValueError(f"resample_torch_fornnunet with mode {mode!r} is not reproduced")
        with torch.no_grad():
            for c in range(data.shape[0]):
                t = torch.from_numpy(np.ascontiguousarray(data[c], dtype=np.float32))
                if axis is None:
                    r = F.interpolate(t[None, None], shape, mode="trilinear", antialias=False)[0, 0]
                else:
                    moved = t.movedim(axis, 0)  # (n_axis, p, q)
                    plane = [shape[i] for i in range(3) if i != axis]
                    r2 = F.interpolate(moved[:, None], plane, mode="bilinear", antialias=False)[:, 0]
                    r2 = r2.movedim(0, axis)
                    r = F.interpolate(r2[None, None], shape, mode="trilinear" if aniso == "linear" else aniso,
                                      antialias=False)[0, 0]
                out[c] = r.numpy()
        return out
    order, order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
    if kwargs.get("is_seg"):
        raise ValueError("data resampling with is_seg=True")
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64)
        if axis is None:
            out[c] = _skimage_resize(channel, shape, order)
            continue
        plane = [shape[i] for i in range(3) if i != axis]
        tmp_shape = list(shape)
        tmp_shape[axis] = data.shape[1 + axis]
        here = np.empty(tmp_shape, dtype=np.float64)
        for s in range(data.shape[1 + axis]):
            index = [slice(None)] * 3
            index[axis] = s
            here[tuple(index)] = _skimage_resize(channel[tuple(index)], plane, order)
        if tmp_shape[axis] != shape[axis]:
            if order_z != 0:
                from scipy.ndimage import map_coordinates

                grids = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float64)
                for a in range(3):
                    grids[a] = float(here.shape[a]) / shape[a] * (grids[a] + 0.5) - 0.5
                out[c] = map_coordinates(here, grids, order=order_z, mode="nearest")
            else:
                from medseg.inference.resample import AxisMap

                # map_coordinates(order=0) at (d + 0.5)·in/out − 0.5 picks floor((d + 0.5)·in/out)
                idx = AxisMap.nearest(here.shape[axis], shape[axis]).i0
                out[c] = np.take(here, idx, axis=axis)
        else:
            out[c] = here
    return out


def preprocess(images: Sequence[np.ndarray], spacing: Sequence[float], config: NnunetConfig) -> NnunetCase:
    """nnU-Net's preprocessing of one case.

    Args:
        images: one array per channel in nnU-Net's axis order (SimpleITK's: medseg's array
            transposed (2, 1, 0)), same shape.
        spacing: voxel spacing in mm in the same axis order.
        config: the model's :class:`~medseg.inference.nnunet.config.NnunetConfig`.

    Returns:
        :class:`NnunetCase`.
    """
    tf = config.transpose_forward
    data = np.stack([np.asarray(im, dtype=np.float32) for im in images]).transpose([0] + [i + 1 for i in tf])
    spacing_t = [float(spacing[i]) for i in tf]
    shape_before = tuple(int(s) for s in data.shape[1:])
    box, mask = nonzero_box(data)
    crop = tuple(slice(a, b) for a, b in box)
    data = np.ascontiguousarray(data[(slice(None),) + crop])
    mask = mask[crop]
    shape_after = tuple(int(s) for s in data.shape[1:])
    target = list(config.spacing)
    if len(target) < 3:
        target = [spacing_t[0]] + target
    shape = new_shape(shape_after, spacing_t, target)
    for c in range(data.shape[0]):
        data[c] = normalize(data[c], config.normalization[c], config.use_mask_for_norm[c], mask,
                            config.intensity_properties.get(str(c), {}))
    fn, kwargs = config.resampling_data
    data = resample_data(data, shape, spacing_t, target, fn, kwargs)
    return NnunetCase(data=data, shape_before_cropping=shape_before, bbox=box, shape_after_cropping=shape_after,
                      spacing=spacing_t, network_spacing=target)

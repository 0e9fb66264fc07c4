"""Training-time preprocessing: patch sampling (positive/negative ratio), augmentation and the
CT foreground-percentile intensity fit. MONAI transforms do the work.

Everything random here is driven by an explicit ``numpy.random.RandomState`` that the caller
derives from ``(seed, step)`` (:func:`step_random_state`), so a batch is a pure function of the
seed and the step: an interrupted run resumes on exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medseg.preprocess.config import PreprocessConfig

__all__ = ["SamplingConfig", "AugmentConfig", "PatchSampler", "SampleCase", "step_random_state",
           "fit_foreground_intensity"]


class SamplingConfig(BaseModel):
    """Patch centres: a labelled (foreground) voxel with probability ``pos / (pos + neg)``, else
    a background voxel (MONAI ``RandCropByPosNegLabeld``)."""

    model_config = ConfigDict(extra="forbid")

    pos: float = Field(2.0, ge=0.0)
    neg: float = Field(1.0, ge=0.0)

    @field_validator("neg")
    @classmethod
    def _not_both_zero(cls, v, info):
        if v == 0 and info.data.get("pos", 1.0) == 0:
            raise ValueError("pos and neg cannot both be 0")
        return v


class AugmentConfig(BaseModel):
    """Random augmentation of training patches (probabilities per patch).

    - ``flip_prob``: mirror along each spatial axis independently (MONAI ``RandFlipd``);
    - ``rot90_prob``: quarter turns in a plane where the patch is square (``RandRotate90d``);
    - ``affine_prob``: rotation up to ``rotate_deg`` degrees about each axis and isotropic-per-axis
      scaling in ``scale_range`` (``RandAffined``; image bilinear, label nearest);
    - ``intensity_scale_prob``: ``x · (1 + f)``, ``f`` uniform in ±``intensity_scale`` (``RandScaleIntensityd``);
    - ``noise_prob``: additive Gaussian noise of standard deviation ``noise_std`` (``RandGaussianNoised``).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    rot90_prob: float = Field(0.0, ge=0.0, le=1.0)
    affine_prob: float = Field(0.0, ge=0.0, le=1.0)
    rotate_deg: float = Field(15.0, ge=0.0, le=180.0)
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity_scale_prob: float = Field(0.15, ge=0.0, le=1.0)
    intensity_scale: float = Field(0.1, ge=0.0)
    noise_prob: float = Field(0.15, ge=0.0, le=1.0)
    noise_std: float = Field(0.05, ge=0.0)

    @field_validator("scale_range")
    @classmethod
    def _scale(cls, v):
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, not {v}")
        return v


def step_random_state(seed: int, step: int) -> np.random.RandomState:
    """The random state of training step ``step`` (a pure function of ``seed`` and ``step``)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)])
    return np.random.RandomState(ss.generate_state(1)[0])


@dataclass
class SampleCase:
    """A preprocessed training case held in memory.

    Attributes:
        case_id: identifier.
        image: ``(C, X, Y, Z)`` float32.
        label: ``(X, Y, Z)`` uint8 class ids.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray


class PatchSampler:
    """Draws training batches from in-memory cases: crop by pos/neg ratio, then augment.

    Args:
        cases: the training cases (padded here, once, to at least the patch size).
        patch_size: 3 values for 3D, 2 values for 2D (in-plane size of the slices).
        spatial_dims: 2 (slices along ``slice_axis``) or 3.
        slice_axis: the axis of ``(X, Y, Z)`` that 2D slices are taken along.
        sampling: positive/negative ratio.
        augment: augmentation parameters.
        batch_size: patches per batch.
        seed: base seed; :meth:`batch` is a function of ``(seed, step)`` only.

    :meth:`batch` returns ``image`` ``(B, C, *patch)`` float32 and ``label`` ``(B, 1, *patch)``
    int64 torch tensors on the CPU.
    """

    def __init__(self, cases: Sequence[SampleCase], patch_size: Sequence[int], *, spatial_dims: int = 3,
                 slice_axis: int = 2, sampling: SamplingConfig | None = None, augment: AugmentConfig | None = None,
                 batch_size: int = 2, seed: int = 0):
        import torch
        from monai.transforms.utils import map_binary_to_indices

        if not cases:
            raise ValueError("PatchSampler needs at least one training case")
        if len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size {tuple(patch_size)} must have {spatial_dims} values for spatial_dims={spatial_dims}")
        self.spatial_dims = spatial_dims
        self.slice_axis = slice_axis
        self.patch_size = tuple(int(p) for p in patch_size)
        if spatial_dims == 2:
            crop = list(self.patch_size)
            crop.insert(slice_axis, 1)
            self.crop_size = tuple(crop)
        else:
            self.crop_size = self.patch_size
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sampling = sampling or SamplingConfig()
        self.augment = augment or AugmentConfig()
        self._items = []
        for case in cases:
            pad = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(case.label.shape, self.crop_size)]
            image = np.pad(case.image, pad) if any(b for _, b in pad) else case.image
            label = np.pad(case.label, pad[1:]) if any(b for _, b in pad) else case.label
            label_t = torch.from_numpy(np.ascontiguousarray(label)[None])
            fg, bg = map_binary_to_indices(label_t > 0)
            self._items.append({"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                                "label": label_t, "fg": fg, "bg": bg, "case_id": case.case_id})
        self.transform = self._build_transform()

    def _build_transform(self):
        from monai.transforms import (
            Compose,
            RandAffined,
            RandCropByPosNegLabeld,
            RandFlipd,
            RandGaussianNoised,
            RandRotate90d,
            RandScaleIntensityd,
            SqueezeDimd,
        )

        keys = ["image", "label"]
        pos, neg = self.sampling.pos, self.sampling.neg
        ts = [RandCropByPosNegLabeld(keys, label_key="label", spatial_size=self.crop_size, pos=pos, neg=neg,
                                     num_samples=1, fg_indices_key="fg", bg_indices_key="bg", allow_smaller=False)]
        if self.spatial_dims == 2:
            ts.append(SqueezeDimd(keys, dim=1 + self.slice_axis))
        a = self.augment
        if a.enabled:
            for ax in range(self.spatial_dims):
                if a.flip_prob > 0:
                    ts.append(RandFlipd(keys, prob=a.flip_prob, spatial_axis=ax))
            if a.rot90_prob > 0:
                square = [(i, j) for i in range(self.spatial_dims) for j in range(i + 1, self.spatial_dims)
                          if self.patch_size[i] == self.patch_size[j]]
                if square:
                    ts.append(RandRotate90d(keys, prob=a.rot90_prob, max_k=3, spatial_axes=square[0]))
            if a.affine_prob > 0:
                rad = math.radians(a.rotate_deg)
                rot = rad if self.spatial_dims == 2 else (rad, rad, rad)
                lo, hi = a.scale_range
                ts.append(RandAffined(keys, prob=a.affine_prob, rotate_range=rot,
                                      scale_range=[(lo - 1.0, hi - 1.0)] * self.spatial_dims,
                                      mode=("bilinear", "nearest"), padding_mode="zeros"))
            if a.intensity_scale_prob > 0 and a.intensity_scale > 0:
                ts.append(RandScaleIntensityd("image", factors=a.intensity_scale, prob=a.intensity_scale_prob))
            if a.noise_prob > 0 and a.noise_std > 0:
                ts.append(RandGaussianNoised("image", prob=a.noise_prob, mean=0.0, std=a.noise_std))
        return Compose(ts)

    def batch(self, step: int):
        """The batch of training step ``step``: ``(image (B, C, *patch), label (B, 1, *patch))``."""
        import torch

        rs = step_random_state(self.seed, step)
        images, labels = [], []
        for _ in range(self.batch_size):
            item = self._items[int(rs.randint(len(self._items)))]
            self.transform.set_random_state(seed=int(rs.randint(0, 2**31 - 1)))
            out = self.transform({"image": item["image"], "label": item["label"], "fg": item["fg"], "bg": item["bg"]})
            out = out[0] if isinstance(out, list) else out
            images.append(torch.as_tensor(out["image"]).float().as_subclass(torch.Tensor))
            labels.append(torch.as_tensor(out["label"]).as_subclass(torch.Tensor).round().long())
        return torch.stack(images).contiguous(), torch.stack(labels).contiguous()


def fit_foreground_intensity(cfg: PreprocessConfig, samples: Sequence[tuple[Sequence[np.ndarray], np.ndarray]],
                             max_voxels_per_case: int = 200_000, seed: int = 0) -> PreprocessConfig:
    """Resolve ``foreground_percentiles`` of CT channels into a fixed window, mean and std.

    Args:
        cfg: the preprocessing config; channels with ``kind == "ct"`` and
            ``foreground_percentiles`` set are fitted, the others kept.
        samples: per training case, the raw channel arrays (any orientation) and its label
            array (same grid); foreground = label > 0.
        max_voxels_per_case: foreground voxels drawn (deterministically) from each case.

    Returns:
        A copy of ``cfg`` whose fitted channels have ``window`` = the percentiles (HU),
        ``mean``/``std`` = statistics of the clipped foreground, and ``foreground_percentiles`` kept
        for the record.
    """
    n_channels = max((len(imgs) for imgs, _ in samples), default=0)
    fit = [c for c in range(n_channels) if cfg.channel(c).kind == "ct" and cfg.channel(c).foreground_percentiles]
    if not fit:
        return cfg
    rng = np.random.default_rng(seed)
    values: dict[int, list[np.ndarray]] = {c: [] for c in fit}
    for imgs, label in samples:
        idx = np.flatnonzero(label.ravel() > 0)
        if idx.size > max_voxels_per_case:
            idx = np.sort(rng.choice(idx, max_voxels_per_case, replace=False))
        for c in fit:
            values[c].append(np.asarray(imgs[c]).ravel()[idx].astype(np.float64))
    channels = [cfg.channel(c).model_copy() for c in range(n_channels)]
    for c in fit:
        v = np.concatenate(values[c]) if values[c] else np.zeros(0)
        if v.size == 0:
            raise ValueError("foreground_percentiles needs labelled foreground in the training cases; none found")
        lo_p, hi_p = channels[c].foreground_percentiles
        lo, hi = (float(x) for x in np.percentile(v, [lo_p, hi_p]))
        if hi <= lo:
            hi = lo + 1.0
        clipped = np.clip(v, lo, hi)
        channels[c] = channels[c].model_copy(update={"window": (lo, hi), "mean": float(clipped.mean()),
                                                     "std": float(max(clipped.std(), 1e-8))})
    return cfg.model_copy(update={"intensity": channels})

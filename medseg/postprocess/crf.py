"""Fully connected (dense) 3D CRF with mean-field inference, and a grid (6/26-neighbour) CRF.

The model (Krähenbühl & Koltun, NIPS 2011; 3D as in Kamnitsas et al., MedIA 2017)::

    E(x) = Σ_i U_i(x_i) + Σ_{i<j} μ(x_i, x_j) [w_s k_s(i, j) + w_b k_b(i, j)]
    U_i(l) = −log P_i(l)                                  (the network's softmax probabilities)
    k_s(i, j) = exp(−|p_i − p_j|² / 2σ_s²)                (smoothness; positions p in mm)
    k_b(i, j) = exp(−|p_i − p_j|² / 2σ_b² − Σ_c (I_ic − I_jc)² / 2σ_Ic²)   (appearance)

Mean field: ``Q ← softmax(−U − μ·Σ_m w_m K̃_m Q)`` with normalised kernels, so that the
weights are comparable with the log-probabilities whatever σ is: the appearance kernel
symmetrically (``K̃ = D^-1/2 K D^-1/2``, ``D = diag(K 1)``, as in the reference implementation),
the smoothness kernel by rows in :func:`dense_crf` (``D^-1 K``: identical away from the volume's
border, one pass cheaper) and symmetrically in CRF-as-RNN. Potts compatibility ``μ = 1 − I``.

Each iteration filters the ``K`` probability maps with the two kernels at a cost linear in the
number of voxels (:mod:`medseg.postprocess.filters`: pooled Gaussian and a bilateral grid); with
Potts only ``K − 1`` maps are filtered, the last one follows from ``Σ_l Q_l = 1``.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CRFConfig", "dense_crf", "grid_crf", "estimate_noise_sigma", "crf_filters"]

# Defaults, and where they come from:
# - 5 mean-field iterations, smoothness σ 3 (weight 3), appearance weight 5: Krähenbühl & Koltun's
#   dense CRF defaults (pixels), kept in mm by DeepMedic's 3D CRF configs (Kamnitsas et al. 2017).
# - appearance σ 10 mm and intensity σ near the image noise (CT 10-15 HU): measured on CT-like
#   phantoms (benchmarks/crf); 12 HU is the middle of that range.
# - MR intensities have no absolute unit: the intensity σ is the noise level estimated from the
#   image itself (robust MAD of neighbour differences), see estimate_noise_sigma.
_CT_INTENSITY_SIGMA_HU = 12.0


class CRFConfig(BaseModel):
    """Dense CRF parameters (all lengths in mm, intensities in the image's units).

    Attributes:
        iterations: mean-field iterations (2 is nearly as good as 5 on CT-like data).
        spatial_sigma_mm: σ of the smoothness kernel.
        spatial_weight: its weight.
        bilateral_sigma_mm: spatial σ of the appearance kernel.
        bilateral_weight: its weight.
        intensity_sigma: intensity σ of the appearance kernel, one per image channel (HU for CT);
            ``None``: estimate each channel's noise level from the image.
        compatibility: ``"potts"`` (penalty 1 between different labels) or a ``K×K`` matrix of
            penalties μ(l, l') (zero diagonal for a Potts-like model).
        method: ``"bilateral_grid"`` (linear time) or ``"naive"`` (exact O(N²) sums; tiny volumes only).
        grid_cells_per_sigma: bilateral grid resolution (cells per spatial σ). 1 is the classic
            bilateral grid; higher is closer to the exact kernel and slower.
        intensity_clip_percentiles: intensities are clipped to these percentiles before building
            the grid (air and metal outliers would otherwise stretch the intensity axis).
    """

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(5, ge=0, le=100)
    spatial_sigma_mm: float = Field(3.0, gt=0)
    spatial_weight: float = Field(3.0, ge=0)
    bilateral_sigma_mm: float = Field(10.0, gt=0)
    bilateral_weight: float = Field(5.0, ge=0)
    intensity_sigma: list[float] | None = None
    compatibility: Literal["potts"] | list[list[float]] = "potts"
    method: Literal["bilateral_grid", "naive"] = "bilateral_grid"
    grid_cells_per_sigma: float = Field(1.0, ge=0.5, le=4.0)
    intensity_clip_percentiles: tuple[float, float] = (0.5, 99.5)

    @field_validator("intensity_sigma")
    @classmethod
    def _positive_sigma(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) == 0 or any(not math.isfinite(s) or s <= 0 for s in v)):
            raise ValueError(f"intensity_sigma must hold one positive value per image channel, got {v}")
        return v

    @field_validator("compatibility")
    @classmethod
    def _square(cls, v):
        if isinstance(v, list):
            k = len(v)
            if k < 2 or any(len(row) != k for row in v):
                raise ValueError(f"compatibility matrix must be square K×K with K ≥ 2, got rows of lengths "
                                 f"{[len(r) for r in v]}")
        return v

    @field_validator("intensity_clip_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] < v[1] <= 100.0):
            raise ValueError(f"intensity_clip_percentiles must be (low, high) with 0 ≤ low < high ≤ 100, got {v}")
        return v

    @classmethod
    def for_modality(cls, modality: str, **overrides) -> "CRFConfig":
        """Documented defaults for ``"CT"`` (intensity σ 12 HU) or ``"MR"`` (σ from the image noise)."""
        key = modality.upper()
        if key == "CT":
            base = dict(intensity_sigma=[_CT_INTENSITY_SIGMA_HU])
        elif key in ("MR", "MRI"):
            base = dict(intensity_sigma=None)
        else:
            raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
        return cls(**{**base, **overrides})


def estimate_noise_sigma(image: np.ndarray, max_samples: int = 2_000_000) -> float:
    """Noise σ of a 3D image from neighbour differences along its last axis (robust MAD).

    Differences inside homogeneous regions are ~N(0, 2σ²); edges are outliers that the median
    ignores. Constant background (zero differences) is left out so skull-stripped MR works.
    """
    img = np.asarray(image, dtype=np.float32)
    d = np.diff(img, axis=-1).ravel()
    if d.size > max_samples:
        d = d[:: int(math.ceil(d.size / max_samples))]
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    mad = float(np.median(np.abs(d - np.median(d))))
    sigma = 1.4826 * mad / math.sqrt(2.0)
    if sigma <= 0:
        sigma = float(np.std(d)) / math.sqrt(2.0) or 1.0
    return sigma


def _as_channels(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4:
        raise ValueError(f"image must be (X, Y, Z) or (Ci, X, Y, Z), got shape {img.shape}")
    if tuple(img.shape[1:]) != shape:
        raise ValueError(f"image spatial shape {tuple(img.shape[1:])} differs from the probabilities' {shape}")
    if not np.issubdtype(img.dtype, np.number):
        raise TypeError(f"image must be numeric, got dtype {img.dtype}")
    return img


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing_mm)
    if len(sp) != 3 or any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing_mm must be three positive numbers (mm per voxel along X, Y, Z), got {spacing_mm}")
    return sp


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs) if not _is_tensor(probs) else probs
    if p.ndim != 4:
        raise ValueError(f"probs must be (K, X, Y, Z) softmax probabilities, got shape {tuple(p.shape)}")
    if p.shape[0] < 2:
        raise ValueError(f"probs needs at least 2 classes (background first), got {p.shape[0]}")
    return p


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _prepare_features(img: np.ndarray, cfg: CRFConfig) -> tuple[np.ndarray, list[float]]:
    """Clip each channel to its percentiles and resolve the intensity σ per channel."""
    ci = img.shape[0]
    sig = cfg.intensity_sigma
    if sig is not None and len(sig) != ci:
        raise ValueError(f"intensity_sigma has {len(sig)} values but the image has {ci} channel(s)")
    feats = np.empty(img.shape, dtype=np.float32)
    sigmas = []
    lo_p, hi_p = cfg.intensity_clip_percentiles
    for c in range(ci):
        ch = img[c].astype(np.float32, copy=False)
        flat = ch.ravel()
        sample = flat[:: max(1, flat.size // 1_000_000)]
        lo, hi = np.percentile(sample, [lo_p, hi_p])
        np.clip(ch, lo, hi, out=feats[c])
        sigmas.append(float(sig[c]) if sig is not None else estimate_noise_sigma(ch))
    return feats, sigmas


def crf_filters(image: np.ndarray, shape: tuple[int, int, int], spacing_mm: Sequence[float], cfg: CRFConfig,
                device="cpu", dtype=None, symmetric: bool = True):
    """Build the (spatial, bilateral) filters of ``cfg`` for an image on a grid of ``shape``.

    ``symmetric=False`` (inference only) splats into the nearest intensity bin: faster, not
    usable for gradients.
    """
    import torch

    from medseg.postprocess.filters import BilateralGridFilter, GaussianFilter

    dtype = dtype or torch.float32
    sp = _check_spacing(spacing_mm)
    img = _as_channels(image, shape)
    feats, isig = _prepare_features(img, cfg)
    spatial = GaussianFilter(shape, [cfg.spatial_sigma_mm / s for s in sp], device=device, dtype=dtype)
    bilateral = BilateralGridFilter(torch.from_numpy(feats), [cfg.bilateral_sigma_mm / s for s in sp], isig,
                                    device=device, dtype=dtype, cells_per_sigma=cfg.grid_cells_per_sigma,
                                    symmetric=symmetric)
    return spatial, bilateral


class _NaiveFilter:
    """Exact O(N²) normalised Gaussian filtering over feature vectors (reference, tiny volumes)."""

    def __init__(self, features, device, dtype):
        import torch

        f = features.to(device, dtype)
        d = torch.cdist(f, f) ** 2
        self.k = torch.exp(-0.5 * d)
        self.norm = torch.rsqrt(self.k.sum(1))

    def __call__(self, q):
        shape = q.shape
        q = q.reshape(-1)
        return (self.norm * (self.k @ (self.norm * q))).reshape(shape)


def _naive_filters(image, shape, spacing_mm, cfg, device, dtype):
    import torch

    n = int(np.prod(shape))
    if n > 20000:
        raise ValueError(f"method 'naive' builds an N×N matrix; {n} voxels is too many (use 'bilateral_grid')")
    sp = _check_spacing(spacing_mm)
    img = _as_channels(image, shape)
    feats, isig = _prepare_features(img, cfg)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) * h for s, h in zip(shape, sp)],
                                      indexing="ij"), -1).reshape(-1, 3)
    spatial = _NaiveFilter(grid / cfg.spatial_sigma_mm, device, dtype)
    inten = torch.from_numpy(feats.reshape(feats.shape[0], -1).T.astype(np.float64)) / torch.tensor(isig, dtype=torch.float64)
    bilateral = _NaiveFilter(torch.cat([grid / cfg.bilateral_sigma_mm, inten], 1), device, dtype)
    return spatial, bilateral


def _compat_matrix(cfg: CRFConfig, k: int):
    if cfg.compatibility == "potts":
        return None
    mu = np.asarray(cfg.compatibility, dtype=np.float32)
    if mu.shape != (k, k):
        raise ValueError(f"compatibility matrix is {mu.shape[0]}×{mu.shape[1]} but probs have {k} classes")
    return mu


def dense_crf(image: np.ndarray, probs: np.ndarray, spacing_mm: Sequence[float], cfg: CRFConfig | None = None,
              device: str = "cpu") -> np.ndarray:
    """Refine softmax probabilities with a fully connected 3D CRF (mean-field inference).

    Args:
        image: raw intensities ``(X, Y, Z)`` or ``(Ci, X, Y, Z)`` (e.g. HU), on the probabilities' grid.
        probs: ``(K, X, Y, Z)`` float32/float16 softmax probabilities (channel 0 background).
            A torch tensor is accepted too (and stays on its device when ``device`` says so).
        spacing_mm: voxel size along X, Y, Z in mm (kernel widths are in mm).
        cfg: parameters (default: :class:`CRFConfig` with intensity σ estimated from the image).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``… where the inference runs.

    Returns:
        ``(K, X, Y, Z)`` float32 refined probabilities (argmax over axis 0 gives labels), numpy.

    Memory: about 3 float32 copies of the probabilities plus ~12 bytes per voxel for the grid's
    indices and weights; no ``K×N×neighbours`` temporaries.
    """
    import torch

    cfg = cfg or CRFConfig()
    p = _check_probs(probs)
    k = int(p.shape[0])
    shape = tuple(int(s) for s in p.shape[1:])
    dev = torch.device(device)
    dtype = torch.float32
    if cfg.method == "naive":
        spatial, bilateral = _naive_filters(image, shape, spacing_mm, cfg, dev, dtype)
    else:
        spatial, bilateral = crf_filters(image, shape, spacing_mm, cfg, dev, dtype, symmetric=False)
    mu = _compat_matrix(cfg, k)
    n = int(np.prod(shape))

    # log-probabilities, float32, (K, N); processed one class at a time where possible
    logp = torch.empty((k, n), dtype=dtype, device=dev)
    for c in range(k):
        pc = p[c] if _is_tensor(p) else torch.from_numpy(np.ascontiguousarray(p[c]))
        logp[c] = pc.reshape(-1).to(dev, dtype)
    if not torch.isfinite(logp).all():
        raise ValueError("probs contain NaN or Inf")
    logp.clamp_(min=1e-8).log_()
    q = logp.clone()
    _softmax_rows_(q)
    if cfg.iterations == 0:
        return q.reshape((k,) + shape).cpu().numpy()
    from medseg.postprocess.filters import GaussianFilter

    ws, wb = float(cfg.spatial_weight), float(cfg.bilateral_weight)
    mu_t = None if mu is None else torch.from_numpy(mu).to(dev)
    ones = torch.ones(shape, dtype=dtype, device=dev)
    potts_ones = None
    if mu is None:
        # Σ_l K̃ Q_l = K̃ 1: the last class's message follows from the others
        # (row-normalised smoothness kernel: K 1 / K 1 = 1)
        s_ones = 1.0 if isinstance(spatial, GaussianFilter) else spatial(ones)
        potts_ones = (ws * s_ones + wb * bilateral(ones)).reshape(-1)
        del s_ones, ones

    # the smoothness kernel is row-normalised here (out = K q / K 1: one multiply-add per class);
    # it equals the symmetric normalisation except within ~2σ of the volume's border
    sinv = spatial.inv_count.reshape(-1) if isinstance(spatial, GaussianFilter) else None

    def message(qc: torch.Tensor) -> torch.Tensor:
        """w_s K̃_s q + w_b K̃_b q for one class, one fresh (N,) tensor."""
        if wb != 0.0:
            msg = bilateral(qc.reshape(shape)).reshape(-1)
            if wb != 1.0:
                msg.mul_(wb)
        else:
            msg = torch.zeros(n, dtype=dtype, device=dev)
        if ws != 0.0:
            if sinv is not None:
                raw = spatial._raw(qc.reshape(shape)).reshape(-1)
                msg.addcmul_(raw, sinv, value=ws)
            else:
                msg.add_(spatial(qc.reshape(shape)).reshape(-1), alpha=ws)
        return msg

    acc = torch.empty_like(logp)
    for _ in range(cfg.iterations):
        acc.copy_(logp)
        if mu is None:
            acc[k - 1].add_(potts_ones)
            for c in range(k - 1):
                m = message(q[c])
                acc[c].add_(m)
                acc[k - 1].sub_(m)
                del m
        else:
            msg = torch.empty_like(logp)
            for c in range(k):
                msg[c] = message(q[c])
            acc.sub_(mu_t @ msg)
            del msg
        _softmax_rows_(acc, shift=mu is not None or ws + wb > 50.0)
        q, acc = acc, q
    return q.reshape((k,) + shape).cpu().numpy()


def _softmax_rows_(x, shift: bool = True) -> None:
    """In-place softmax over the first axis of a ``(K, N)`` tensor (row-wise passes, no strided reduction).

    ``shift=False`` skips subtracting the maximum: safe when the values are bounded well inside
    float32's exp range (Potts: log-probabilities ≥ log 1e-8 plus messages ≤ w_s + w_b).
    """
    import torch

    if shift:
        m = x[0].clone()
        for c in range(1, x.shape[0]):
            torch.maximum(m, x[c], out=m)
        x.sub_(m)
    x.exp_()
    total = x.sum(0)
    x.div_(total)


_OFFSETS_6 = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
_OFFSETS_26 = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]


def grid_crf(image: np.ndarray, probs: np.ndarray, spacing_mm: Sequence[float], *, connectivity: int = 6,
             iterations: int = 5, weight: float = 3.0, intensity_sigma: Sequence[float] | None = None,
             device: str = "cpu") -> np.ndarray:
    """Grid CRF: Potts pairwise terms between 6- or 26-neighbours only (comparison baseline).

    The pairwise weight of neighbours ``i, j`` is ``weight · exp(−Σ_c ΔI_c²/2σ_c²) / d_ij`` with
    ``d_ij`` their distance in units of the smallest spacing (contrast-sensitive Potts, as in
    Boykov & Jolly's graph cuts), divided by the number of neighbours so that ``weight`` compares
    with the dense CRF's.

    Args and returns as :func:`dense_crf`; ``connectivity`` 6 or 26.
    """
    import torch

    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
    if iterations < 0:
        raise ValueError(f"iterations must be ≥ 0, got {iterations}")
    p = _check_probs(probs)
    shape = tuple(int(s) for s in p.shape[1:])
    sp = np.asarray(_check_spacing(spacing_mm))
    img = _as_channels(image, shape).astype(np.float32)
    sig = [estimate_noise_sigma(c) for c in img] if intensity_sigma is None else [float(s) for s in intensity_sigma]
    if len(sig) != img.shape[0]:
        raise ValueError(f"intensity_sigma has {len(sig)} values but the image has {img.shape[0]} channel(s)")
    dev = torch.device(device)
    feats = torch.from_numpy(img).to(dev) / torch.tensor(sig, device=dev).view(-1, 1, 1, 1)
    logp = torch.from_numpy(np.asarray(p, dtype=np.float32)).to(dev).clamp_min(1e-8).log()
    offsets = _OFFSETS_6 if connectivity == 6 else _OFFSETS_26
    # affinity per positive offset, on the overlap region
    affs = []
    for off in offsets:
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, shape))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, shape))
        diff = ((feats[(slice(None),) + dst] - feats[(slice(None),) + src]) ** 2).sum(0)
        dist = float(np.sqrt(np.sum((np.asarray(off) * sp) ** 2)) / sp.min())
        affs.append((src, dst, torch.exp(-0.5 * diff) * (weight / (2 * len(offsets)) / dist)))
    q = torch.softmax(logp, 0)
    for _ in range(iterations):
        acc = logp.clone()
        for src, dst, a in affs:
            acc[(slice(None),) + dst] += a * q[(slice(None),) + src]
            acc[(slice(None),) + src] += a * q[(slice(None),) + dst]
        q = torch.softmax(acc, 0)
    return q.cpu().numpy()

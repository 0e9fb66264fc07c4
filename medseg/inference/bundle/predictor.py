"""A MONAI bundle run by medseg: MONAI's inference result, computed from the bundle's data.

The steps reproduce MONAI's own semantics (the reference is label equality with MONAI running
the bundle), with medseg's streamed machinery where it does the same thing:

- ``Orientationd``: nibabel's orientation transform (:func:`medseg.preprocess.reorient`).
- ``Spacingd``: MONAI's output grid (``zoom_affine`` + ``compute_shape_offset``: the first voxel
  centre and the axes' directions kept, the shape rounded from the corners' span) and its
  ``grid_sample`` interpolation, done separably per axis (:class:`~medseg.inference.resample.AxisMap`).
  An input whose axes are not orthogonal (sheared) is refused.
- intensity steps in the bundle's order (before or after resampling, as written).
- ``CropForegroundd``: the box of voxels ``> 0``, margin, ``k_divisible``, zero padding.
- ``SlidingWindowInferer``: the window placement of :func:`medseg.inference.sliding_window.iter_probability_slabs`
  (the same as MONAI's ``dense_patch_slices``) with MONAI's importance map; MONAI blends the
  network's logits, so medseg does too, then the softmax (``Activationsd``).
- ``Invertd``: the crop undone with zeros, the softmax resampled back with the inverse axis map
  (bilinear, or nearest with ``nearest_interp``) slab by slab (:class:`~medseg.inference.resample.SlabResampler`),
  the argmax (``AsDiscreted``), the inverse orientation: labels on the input's exact grid.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import InputError
from medseg.inference.bundle.config import (
    BundleSpec,
    CropForeground,
    NormalizeIntensity,
    Orientation,
    ScaleIntensity,
    ScaleIntensityRange,
    SlidingWindow,
    Spacing,
)
from medseg.inference.resample import AxisMap, class_argmax
from medseg.io.volume import Volume
from medseg.runtime import Runtime

__all__ = ["BundlePredictor", "BundleGrid", "preprocess_bundle", "monai_importance", "monai_spacing_grid",
           "load_bundle_network"]

_AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL


def monai_importance(roi: Sequence[int], mode: str, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's window weights (``compute_importance_map``), float32 of shape ``roi``: ones, or a
    Gaussian with ``sigma = sigma_scale × size`` centred at ``(size - 1) / 2``, not rescaled,
    clamped below at ``max(its minimum, 1e-3)``."""
    if mode == "constant":
        return np.ones(tuple(roi), dtype=np.float32)
    w = None
    for n in roi:
        x = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0)
        g = np.exp(x**2 / np.float32(-2 * (n * sigma_scale) ** 2)).astype(np.float32)
        w = g if w is None else w[..., None] * g
    return np.maximum(w, max(float(w.min()), 1e-3)).astype(np.float32)


def monai_spacing_grid(affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The output affine and shape of MONAI's ``Spacingd(pixdim)`` (``diagonal=False``,
    ``scale_extent=False``) for a grid of ``shape`` with ``affine``."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out_d = np.array([p if p > 0 else s for p, s in zip(pixdim, spacing)], dtype=np.float64)
    rzs = affine[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new = np.eye(4)
    new[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * np.abs(out_d))
    dims = np.asarray(shape, dtype=np.float64)
    corners = np.asarray(np.meshgrid(*[(0.0, d - 1.0) for d in dims], indexing="ij")).reshape(3, -1)
    corners = np.concatenate([corners, np.ones_like(corners[:1])])
    all_dist = (np.linalg.solve(new, affine) @ corners)[:-1]
    out_shape = np.round(np.ptp(all_dist, axis=1) + 1.0)
    world = affine @ corners
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(all_dist - all_dist[:, i:i + 1], 1), 0.0, rtol=_AFFINE_TOL):
            offset = world[:-1, i]
            break
    if offset is None:
        offset = affine[:3, :3] @ (dims / 2.0) + affine[:3, 3] - new[:3, :3] @ (out_shape / 2.0)
    new[:3, 3] = offset
    return new, tuple(int(s) for s in out_shape)  # type: ignore[return-value]


@dataclass
class BundleGrid:
    """How the network's grid relates to the input's (what the inversion needs).

    Attributes:
        input_shape, input_affine: the input's grid.
        to_input: nibabel orientation transform from the oriented grid back to the input's axes.
        oriented_shape: after ``Orientationd``.
        resampled_shape: after ``Spacingd``.
        back_maps: per axis, oriented index → resampled coordinate (``Invertd``'s resampling), or
            ``None`` without ``Spacingd``.
        crop_start, crop_stop: the ``CropForegroundd`` box on the resampled grid (may pass its
            border), or ``None``.
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    to_input: np.ndarray
    oriented_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    back_maps: tuple[AxisMap, AxisMap, AxisMap] | None
    crop_start: tuple[int, int, int] | None = None
    crop_stop: tuple[int, int, int] | None = None


def _intensity(x: np.ndarray, step) -> np.ndarray:
    """One intensity step on ``(C, X, Y, Z)`` float32, as MONAI computes it."""
    if isinstance(step, ScaleIntensityRange):
        if step.a_max == step.a_min:
            x = x - np.float32(step.a_min)
            return x if step.b_min is None else x + np.float32(step.b_min)
        x = (x - np.float32(step.a_min)) / np.float32(step.a_max - step.a_min)
        if step.b_min is not None and step.b_max is not None:
            x = x * np.float32(step.b_max - step.b_min) + np.float32(step.b_min)
        if step.clip:
            x = np.clip(x, step.b_min, step.b_max)
        return x.astype(np.float32, copy=False)
    if isinstance(step, ScaleIntensity):
        def rescale(a):
            lo, hi = a.min(), a.max()
            if lo == hi:
                return a * step.minv if step.minv is not None else a
            a = (a - lo) / (hi - lo)
            return a if step.minv is None or step.maxv is None else a * (step.maxv - step.minv) + step.minv
        parts = [rescale(c) for c in x] if step.channel_wise else [rescale(x)]
        return np.stack(parts).astype(np.float32) if step.channel_wise else parts[0].astype(np.float32)
    if isinstance(step, NormalizeIntensity):
        def norm(a, c):
            a = a.copy()
            mask = a != 0 if step.nonzero else np.ones(a.shape, dtype=bool)
            vals = a[mask]
            if vals.size == 0:
                return a
            sub = vals.mean() if step.subtrahend is None else step.subtrahend[min(c, len(step.subtrahend) - 1)]
            div = vals.std() if step.divisor is None else step.divisor[min(c, len(step.divisor) - 1)]
            a[mask] = (vals - np.float32(sub)) / np.float32(div if div != 0 else 1.0)
            return a
        if step.channel_wise:
            return np.stack([norm(c, i) for i, c in enumerate(x)]).astype(np.float32)
        return norm(x, 0).astype(np.float32)
    raise AssertionError(step)


def _crop_box(image: np.ndarray, step: CropForeground) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    mask = (image > 0).any(axis=0)
    if not mask.any():
        return None  # MONAI would crop to nothing; medseg keeps the whole grid
    start, stop = [], []
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        lo, hi = int(idx[0]) - step.margin[ax], int(idx[-1]) + 1 + step.margin[ax]
        if step.allow_smaller:
            lo, hi = max(lo, 0), min(hi, mask.shape[ax])
        size = hi - lo
        k = step.k_divisible[ax]
        new = int(np.ceil(size / k) * k) if k > 0 else size
        lo -= (new - size) // 2
        start.append(lo)
        stop.append(lo + new)
    return tuple(start), tuple(stop)


def _crop(image: np.ndarray, start, stop) -> np.ndarray:
    out = np.zeros((image.shape[0],) + tuple(b - a for a, b in zip(start, stop)), dtype=np.float32)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, image.shape[1:]))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    out[(slice(None),) + dst] = image[(slice(None),) + src]
    return out


def preprocess_bundle(images: Sequence[Volume], spec: BundleSpec) -> tuple[np.ndarray, BundleGrid]:
    """The bundle's preprocessing of one study: ``(C, X, Y, Z)`` float32 on the network's grid,
    and the :class:`BundleGrid` that maps results back.

    Raises:
        InputError: channels not on one grid, or an input whose axes are not orthogonal
            (sheared) when the bundle resamples.
    """
    import nibabel as nib

    from medseg.preprocess.pipeline import reorient

    ref = images[0]
    for other in images[1:]:
        if not ref.same_grid(other):
            raise InputError(other.source, f"is not on the grid of {ref.source} (channels must share one grid)")
    image = np.stack([np.asarray(v.array, dtype=np.float32) for v in images])
    affine = np.asarray(ref.affine, dtype=np.float64)
    current = nib.orientations.io_orientation(affine)
    to_input = nib.orientations.ornt_transform(current, current)
    oriented_shape = resampled_shape = tuple(int(s) for s in image.shape[1:])
    back_maps = None
    crop = None
    for step in spec.preprocessing:
        if isinstance(step, Orientation):
            target = nib.orientations.axcodes2ornt(tuple(step.axcodes))
            image, affine = reorient(image, affine, nib.orientations.ornt_transform(current, target))
            image = np.ascontiguousarray(image)
            to_input = nib.orientations.ornt_transform(target, current)
            oriented_shape = resampled_shape = tuple(int(s) for s in image.shape[1:])
        elif isinstance(step, Spacing):
            new_affine, new_shape = monai_spacing_grid(affine, image.shape[1:], step.pixdim)
            xform = np.linalg.solve(affine, new_affine)  # output voxel -> input voxel
            off = xform[:3, :3] - np.diag(np.diag(xform[:3, :3]))
            if np.abs(off).max() > 1e-6 * np.abs(np.diag(xform[:3, :3])).max():
                raise InputError(ref.source, "its voxel axes are not orthogonal (a sheared affine): the bundle's "
                                 "Spacingd would resample it obliquely, which medseg does not reproduce")
            scale, shift = np.diag(xform[:3, :3]), xform[:3, 3]
            for ax in range(3):
                fwd = AxisMap.affine(image.shape[1 + ax], new_shape[ax], scale[ax], shift[ax],
                                     mode=step.mode, padding=step.padding)
                image = fwd.apply(image, 1 + ax)
            back_maps = tuple(AxisMap.affine(new_shape[ax], oriented_shape[ax], 1.0 / scale[ax],
                                             -shift[ax] / scale[ax], mode=spec.invert_mode, padding=step.padding)
                              for ax in range(3))
            affine = new_affine
            resampled_shape = tuple(int(s) for s in new_shape)
        elif isinstance(step, CropForeground):
            crop = _crop_box(image, step)
            if crop is not None:
                image = _crop(image, *crop)
        else:
            image = _intensity(image, step)
    grid = BundleGrid(input_shape=tuple(int(s) for s in ref.shape), input_affine=np.asarray(ref.affine).copy(),
                      to_input=to_input, oriented_shape=oriented_shape, resampled_shape=resampled_shape,
                      back_maps=back_maps, crop_start=None if crop is None else crop[0],
                      crop_stop=None if crop is None else crop[1])
    return np.ascontiguousarray(image, dtype=np.float32), grid


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=0, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=0, keepdims=True)
    return x


def load_bundle_network(spec: BundleSpec):
    """The bundle's network on the CPU in eval mode: the allow-listed class built from
    ``network_def`` with ``models/model.pt`` (``torch.load(..., weights_only=True)``), or the
    TorchScript module of ``models/model.ts``.

    Raises:
        InputError: no weights file, an unreadable one, weights that do not fit (naming the
            first mismatching key), arguments the network class refuses.
    """
    import torch

    if spec.weights is None:
        raise InputError(spec.root / "models", "no model.pt or model.ts: the bundle has no weights")
    if spec.weights.suffix == ".ts":
        try:
            net = torch.jit.load(str(spec.weights), map_location="cpu")
        except Exception as exc:  # a damaged or non-TorchScript file
            raise InputError(spec.weights, f"not a readable TorchScript file ({str(exc).splitlines()[0][:200]})") from None
        net.eval()
        return net
    from monai.networks import nets

    classes = {"UNet": nets.UNet, "BasicUNet": nets.BasicUNet, "SegResNet": nets.SegResNet, "UNETR": nets.UNETR,
               "SwinUNETR": nets.SwinUNETR, "DynUNet": nets.DynUNet, "AttentionUnet": nets.AttentionUnet,
               "VNet": nets.VNet}
    name, kwargs = spec.network
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = classes[name](**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise InputError(spec.config_file, f"network_def: {name} cannot be built ({str(exc).splitlines()[0][:200]})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, a pickle with code (refused by weights_only)
        raise InputError(spec.weights, "not a readable weights file: it is damaged or holds objects other than "
                         f"tensors and plain containers ({type(exc).__name__})") from None
    state = _state_dict(state, spec.weights)
    own = net.state_dict()
    for key in list(own) + [k for k in state if k not in own]:
        if key not in state:
            raise InputError(spec.weights, f"weights do not fit {name} of network_def: first mismatching key "
                             f"{key!r} is missing from the file")
        if key not in own:
            raise InputError(spec.weights, f"weights do not fit {name} of network_def: first mismatching key "
                             f"{key!r} is not in the network")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise InputError(spec.weights, f"weights do not fit {name} of network_def: first mismatching key "
                             f"{key!r} has shape {tuple(state[key].shape)} in the file, "
                             f"{tuple(own[key].shape)} in the network")
    net.load_state_dict(state, strict=True)
    net.eval()
    return net


def _state_dict(state, path: Path) -> dict:
    import torch

    def tensors(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if tensors(state):
        return state
    if isinstance(state, dict):
        for key in ("model", "state_dict", "network", "net", "model_state_dict"):
            if tensors(state.get(key)):
                return state[key]
        nested = [v for v in state.values() if tensors(v)]
        if len(nested) == 1:
            return nested[0]
    raise InputError(path, "holds no state_dict (a dict of tensors, possibly under \"model\" or \"state_dict\")")


class BundlePredictor:
    """A MONAI bundle loaded once; segments any number of studies (the surface of
    :class:`~medseg.inference.Predictor`: ``info``, ``label_names``, ``runtime``, ``device``,
    ``predict``).

    Args:
        net: the bundle's network (logits ``(B, K, *roi)``), on ``runtime.device``, eval mode.
        spec: the bundle (:func:`~medseg.inference.bundle.config.read_bundle`).
        runtime: device, autocast and threads.
        tta: mirror test-time augmentation by default (logits averaged over every flip).
        overlap: window overlap (default: the inferer's).
        window_batch: windows per forward pass.
    """

    def __init__(self, net, spec: BundleSpec, *, runtime: Runtime, tta: bool = False, overlap: float | None = None,
                 window_batch: int = 2):
        if window_batch < 1:
            raise ValueError(f"window_batch must be at least 1, not {window_batch}")
        overlap = spec.window.overlap if overlap is None else float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {overlap}")
        self.net = net
        self.spec = spec
        self.runtime = runtime
        self.tta = bool(tta)
        self.overlap = overlap
        self.window_batch = int(window_batch)
        self.window: SlidingWindow = spec.window
        self._importance = monai_importance(spec.window.roi_size, spec.window.mode, spec.window.sigma_scale)
        self._importance_t = None
        from medseg.inference.backends import torch_forward

        self.forward = torch_forward(net, runtime)

    def use_backend(self, backend: str = "auto", precision: str = "f32", *, calibration=()):
        """Run the windows on ``backend`` at ``precision`` from now on (see
        :func:`medseg.inference.backends.compile_network`); ``calibration``: for ``int8``, studies
        (each a sequence of channel paths) whose windows, after the bundle's preprocessing,
        calibrate the quantisation."""
        from medseg.inference.backends import compile_networks

        roi = tuple(int(r) for r in self.spec.window.roi_size)
        (self.forward,) = compile_networks(
            [self.net], input_shape=(self.window_batch, len(self.spec.channels)) + roi, runtime=self.runtime,
            backend=backend, precision=precision, calibration=calibration,
            preprocess=lambda vols: preprocess_bundle(vols, self.spec)[0], window=roi)
        return self.forward

    @property
    def backend(self) -> str:
        """What runs the windows, e.g. ``"openvino bf16"``."""
        return self.forward.describe()

    @property
    def info(self):
        from medseg.inference.bundle.folder import info_from_spec

        return info_from_spec(self.spec, overlap=self.overlap)

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.spec.labels)

    @property
    def device(self):
        return self.runtime.device

    def _window_logits(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        """``(B, C, *roi)`` → logits ``(B, K, *roi)`` float32 times the window weights."""
        import torch

        dev = self.device
        if self._importance_t is None:
            self._importance_t = torch.from_numpy(self._importance).to(dev)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(dev)
        from medseg.inference.mirroring import flip_sets, mirrored_mean

        with torch.inference_mode():
            total = mirrored_mean(self.forward, x, flip_sets((2, 3, 4), tta))
            total.mul_(self._importance_t)
            return total.cpu().numpy()

    def predict(self, images: Volume | Sequence[Volume], *, tta: bool | None = None,
                keep_probabilities: bool | None = None):
        """Segment one study (see :meth:`medseg.inference.Predictor.predict`): labels on the
        input's exact grid; with ``keep_probabilities`` the softmax on the input grid
        (``K × X × Y × Z`` float16 kept; ``None``: kept when that is at most
        :data:`~medseg.inference.predictor.KEEP_PROBABILITIES_AUTO_BYTES`)."""
        with self.runtime.activate():
            return self._predict(images, self.tta if tta is None else bool(tta), keep_probabilities)

    def _predict(self, images, tta: bool, keep_probabilities: bool | None):
        from medseg.inference.predictor import KEEP_PROBABILITIES_AUTO_BYTES, Prediction, uncrop_slabs
        from medseg.inference.resample import SlabResampler
        from medseg.inference.sliding_window import iter_probability_slabs
        from medseg.preprocess.pipeline import reorient

        vols = [images] if isinstance(images, Volume) else list(images)
        if not vols or not all(isinstance(v, Volume) for v in vols):
            raise TypeError("images must be a Volume or a non-empty list of Volumes (one per channel)")
        n = len(self.spec.channels)
        if len(vols) != n:
            raise InputError(vols[0].source, f"the bundle {self.spec.root} takes {n} channel(s) "
                             f"({', '.join(self.spec.channels)}), {len(vols)} image(s) given")
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        image, grid = preprocess_bundle(vols, self.spec)
        timings["preprocess"] = time.perf_counter() - t_start
        k = self.spec.n_classes
        if keep_probabilities is None:
            keep_probabilities = k * int(np.prod(grid.input_shape)) * 2 <= KEEP_PROBABILITIES_AUTO_BYTES
        labels_oriented = np.empty(grid.oriented_shape, dtype=np.uint8 if k <= 256 else np.uint16)
        probs_oriented = np.empty((k,) + grid.oriented_shape, dtype=np.float16) if keep_probabilities else None
        resampler = SlabResampler(grid.resampled_shape, grid.oriented_shape, k, axis_maps=grid.back_maps)
        t0 = time.perf_counter()
        slabs = ((z0, _softmax(slab)) for z0, slab in iter_probability_slabs(
            image, lambda b: self._window_logits(b, tta), k, self.window.roi_size, overlap=self.overlap,
            window_batch=self.window_batch, importance=self._importance))
        if grid.crop_start is None:
            uncropped = (slab for _, slab in slabs)
        else:  # MONAI's Invertd pads the crop back with zeros
            uncropped = uncrop_slabs(slabs, grid.crop_start, grid.crop_stop, grid.resampled_shape, k,
                                     background=False)
        for slab in uncropped:
            for oz, chunk in resampler.push(slab):
                class_argmax(chunk, out=labels_oriented[..., oz:oz + chunk.shape[-1]])
                if probs_oriented is not None:
                    probs_oriented[..., oz:oz + chunk.shape[-1]] = chunk
        if not resampler.done:
            raise RuntimeError("sliding window ended before every output slice was produced")
        eye = np.eye(4)
        labels = np.ascontiguousarray(reorient(labels_oriented, eye, grid.to_input)[0])
        scores = None if probs_oriented is None else np.ascontiguousarray(reorient(probs_oriented, eye, grid.to_input)[0])
        if labels.shape != grid.input_shape:
            raise RuntimeError(f"inversion produced {labels.shape}, expected the input's {grid.input_shape}")
        timings["windows"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        ref = vols[0]
        seg = Volume(array=labels, affine=ref.affine.copy(), source=None,
                     meta={k_: v for k_, v in ref.meta.items() if k_ in ("nifti_header", "dicom", "format")})
        return Prediction(labels=seg, label_names=self.label_names, image=ref, timings=timings,
                          _input_grid_scores=scores, _runtime=self.runtime)

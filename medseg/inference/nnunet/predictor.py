"""The nnU-Net predictor: nnU-Net's preprocessing, window placement, Gaussian, mirroring and fold
averaging, and its export, with medseg's streamed sliding window and slab-wise inversion.

Numerics (``numerics``):

- ``"nnunet"`` (default): nnU-Net's own arithmetic. ``nnUNetPredictor`` sums the
  Gaussian-weighted logits and the weights of each fold in float16, divides in float16, adds the
  folds in float16, and resamples the float16 logits into float16. Near the faces of the grid,
  where the Gaussian weights are tiny, this moves logits by up to ~0.5. medseg repeats that
  arithmetic, windows added in nnU-Net's order (streamed along nnU-Net's first axis), so its
  labels and probabilities are nnU-Net's.
- ``"float32"``: the same blend in float32 (the exact weighted mean), streamed along the grid's
  longest axis, with the folds averaged inside each window.

Memory: the network's input ``(C, a, b, c)``, one window-deep slab of class logits
``(folds ×) K × (cross-section) × (window depth)``, the written label map, and the class
probabilities on the input grid only when they are asked for. nnU-Net itself holds the logits of
the whole grid and resamples them all at once.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from medseg.errors import InputError
from medseg.inference.nnunet.config import NnunetConfig
from medseg.inference.nnunet.preprocess import preprocess, resize_axis_modes
from medseg.inference.predictor import Prediction
from medseg.io.volume import Volume
from medseg.runtime import Runtime

__all__ = ["NnunetPredictor"]


class NnunetPredictor:
    """An nnU-Net v2 model (one or several folds) that segments studies on their own grid.

    Args:
        config: the folder's :class:`~medseg.inference.nnunet.config.NnunetConfig`.
        nets: one network per fold (eval mode, on ``runtime.device``); logits are averaged.
        folds: the fold names, for messages.
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes`` (axes of the
            network's patch), or ``None`` (no mirroring possible).
        runtime: device, autocast and threads.
        tta: mirror over ``mirror_axes`` by default (``nnUNetv2_predict``'s default; its
            ``--disable_tta`` is ``tta=False``).
        step_size: window step as a fraction of the patch (nnU-Net's default 0.5).
        window_batch: windows per forward pass.
        info: the model's :class:`~medseg.inference.kinds.ModelInfo`.
        numerics: ``"nnunet"`` (nnU-Net's float16 sums) or ``"float32"`` (see the module docstring).
    """

    def __init__(self, config: NnunetConfig, nets: Sequence, *, folds: Sequence, mirror_axes: Sequence[int] | None,
                 runtime: Runtime, tta: bool = False, step_size: float = 0.5, window_batch: int = 1, info=None,
                 numerics: str = "nnunet"):
        if numerics not in ("nnunet", "float32"):
            raise ValueError(f"numerics must be 'nnunet' or 'float32', not {numerics!r}")
        if not nets:
            raise ValueError("at least one network (fold) is needed")
        if not 0.0 < step_size <= 1.0:
            raise ValueError(f"step size must be in (0, 1], not {step_size}")
        if window_batch < 1:
            raise ValueError(f"window_batch must be at least 1, not {window_batch}")
        self.config = config
        self.nets = list(nets)
        self.folds = list(folds)
        self.mirror_axes = None if mirror_axes is None else tuple(int(a) for a in mirror_axes)
        self.runtime = runtime
        self.tta = bool(tta)
        self.step_size = float(step_size)
        self.window_batch = int(window_batch)
        self.info = info
        self.model_dir = str(config.folder)
        self.n_classes = config.n_heads
        self.numerics = numerics
        from medseg.inference.backends import torch_forward

        self.forwards = [torch_forward(net, runtime) for net in self.nets]

    def use_backend(self, backend: str = "auto", precision: str = "f32", *,
                    calibration: Sequence[Sequence[str]] = ()):
        """Run every fold's network on ``backend`` at ``precision`` from now on (one compiled
        network per fold; see :func:`medseg.inference.backends.compile_network`).

        ``calibration``: for ``int8``, studies (each a sequence of channel paths, in
        ``dataset.json``'s order) whose windows, after nnU-Net's preprocessing, calibrate every fold.

        Returns:
            the :class:`~medseg.inference.backends.Forward` of each fold (also :attr:`forwards`).
        """
        from medseg.inference.backends import compile_networks
        from medseg.io.volume import stated_spacing

        cfg = self.config
        patch = tuple(int(p) for p in cfg.patch_size)

        def nnunet_grid(vols):
            spacing_nn = [float(s) for s in stated_spacing(vols[0])[::-1]]
            return preprocess([np.asarray(v.array).transpose(2, 1, 0) for v in vols], spacing_nn, cfg).data

        self.forwards = compile_networks(
            self.nets, input_shape=(self.window_batch, len(cfg.channels)) + patch, runtime=self.runtime,
            backend=backend, precision=precision, calibration=calibration, preprocess=nnunet_grid,
            window=patch if not cfg.is_2d else (1,) + patch, squeeze_dim=2 if cfg.is_2d else None)
        return self.forwards

    @property
    def backend(self) -> str:
        """What runs the windows, e.g. ``"openvino f32"`` (each fold's when they differ)."""
        shown = [f.describe() for f in self.forwards]
        return shown[0] if len(set(shown)) == 1 else "; ".join(f"fold {k}: {d}" for k, d in zip(self.folds, shown))

    @property
    def device(self):
        return self.runtime.device

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.config.labels)

    # ---- windows ---------------------------------------------------------------------------

    def _fold_logits(self, forward, x, tta: bool):
        """nnU-Net's mirrored mean of one fold's logits over the checkpoint's mirroring axes,
        ``(B, K, *patch)`` float32."""
        from medseg.inference.mirroring import flip_sets, mirrored_mean

        return mirrored_mean(forward, x, flip_sets([a + 2 for a in self.mirror_axes or ()], tta))

    def _logits(self, x, tta: bool, per_fold: bool = False):
        """Logits of a window batch: the mean over folds ``(B, K, *patch)``, or with ``per_fold``
        every fold's, fold after fold along the channels ``(B, F·K, *patch)``."""
        import torch

        outs = [self._fold_logits(forward, x, tta) for forward in self.forwards]
        if per_fold:
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        total = outs[0]
        for out in outs[1:]:
            total.add_(out)
        if len(outs) > 1:
            total.div_(len(outs))
        return total

    # ---- studies ---------------------------------------------------------------------------

    def predict(self, images: Volume | Sequence[Volume], *, tta: bool | None = None,
                keep_probabilities: bool | None = None) -> Prediction:
        """Segment one study (one :class:`Volume` per channel, in ``dataset.json``'s order).

        ``keep_probabilities``: also return the class probabilities ``(K, X, Y, Z)`` on the input
        grid (``Prediction.probabilities()``); ``None`` is ``False`` here (they take ``K`` floats
        per input voxel). Region-based models have no class probabilities.

        Returns:
            :class:`~medseg.inference.Prediction`, labels on the input's exact grid.
        """
        with self.runtime.activate():
            return self._predict(images, self.tta if tta is None else bool(tta), bool(keep_probabilities))

    def _predict(self, images, tta: bool, keep: bool) -> Prediction:
        import torch

        from medseg.inference.resample import AxisMap, SlabResampler, class_argmax
        from medseg.inference.sliding_window import iter_probability_slabs, nnunet_gaussian, nnunet_window_starts

        cfg = self.config
        vols = [images] if isinstance(images, Volume) else list(images)
        if not vols or not all(isinstance(v, Volume) for v in vols):
            raise TypeError("images must be a Volume or a non-empty list of Volumes (one per channel)")
        if len(vols) != len(cfg.channels):
            raise InputError(vols[0].source, f"the model takes {len(cfg.channels)} channel(s) "
                             f"({', '.join(cfg.channels)}), {len(vols)} image(s) given")
        if keep and cfg.regions is not None:
            raise InputError(cfg.folder, "a region-based model gives one sigmoid score per region, not class "
                             "probabilities: --probabilities and --crf do not apply")
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        ref = vols[0]
        from medseg.io.volume import stated_spacing

        spacing_nn = [float(s) for s in stated_spacing(ref)[::-1]]
        case = preprocess([np.asarray(v.array).transpose(2, 1, 0) for v in vols], spacing_nn, cfg)
        timings["preprocess"] = time.perf_counter() - t_start

        k = cfg.n_heads
        grid = tuple(int(s) for s in case.data.shape[1:])
        patch = list(cfg.patch_size) if not cfg.is_2d else [1] + list(cfg.patch_size)
        exact = self.numerics == "nnunet"
        n_folds = len(self.nets) if exact else 1
        # nnU-Net's numerics stream along its first axis (so that each voxel gets its windows in
        # nnU-Net's order); float32 along the grid's longest (the smallest cross-section to hold).
        # Windows reach the network in nnU-Net's axis order either way.
        stream = 0 if (cfg.is_2d or exact) else int(np.argmax(grid))
        order = [a for a in range(3) if a != stream] + [stream]
        back = list(np.argsort(order))
        data = np.ascontiguousarray(case.data.transpose([0] + [a + 1 for a in order]))
        window = tuple(patch[a] for a in order)
        importance = nnunet_gaussian(window)
        to_net = [0, 1] + [b + 2 for b in back]
        from_net = [0, 1] + [o + 2 for o in order]
        dev = self.device
        gauss_t = torch.from_numpy(importance).to(dev)
        slice_dim = 2 if cfg.is_2d else None  # the 2D configuration's slice axis (nnU-Net's first)

        def window_fn(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(to_net)
            if dev.type == "cuda":
                x = x.pin_memory().to(dev, non_blocking=True)
            if slice_dim is not None:
                x = x.squeeze(2)
            with torch.inference_mode():
                out = self._logits(x, tta, per_fold=exact)
                if slice_dim is not None:
                    out = out.unsqueeze(2)
                out = out.permute(from_net).contiguous()
                out.mul_(gauss_t)
                return out.cpu().numpy()

        def place(size: int, p: int) -> list[int]:
            return list(range(size)) if p == 1 else nnunet_window_starts(size, p, self.step_size)

        # export geometry, in the streamed order
        out_shape = tuple(case.shape_after_cropping[a] for a in order)
        fn, kwargs = cfg.resampling_probabilities
        try:
            modes_nn = resize_axis_modes(fn, kwargs, case.network_spacing, case.spacing)
        except ValueError as exc:
            raise InputError(cfg.folder / "plans.json", str(exc)) from None
        in_shape = tuple(grid[a] for a in order)
        maps = [(AxisMap.nearest if modes_nn[a] == "nearest" else AxisMap.linear)(n, o)
                for a, n, o in zip(order, in_shape, out_shape)]
        resampler = SlabResampler(in_shape, out_shape, k, axis_maps=maps)
        before = tuple(case.shape_before_cropping[a] for a in order)
        box = [case.bbox[a] for a in order]
        n_fg = max(cfg.labels, default=0)
        label_dtype = np.uint8 if n_fg < 255 else np.uint16
        labels = np.zeros(before, dtype=label_dtype)
        probs = None
        if keep:
            probs = np.zeros((k,) + before, dtype=np.float32)
            probs[0] = 1.0
        (a0, a1), (b0, b1), (c0, _) = box
        regions = cfg.regions_class_order
        t_invert = 0.0
        t0 = time.perf_counter()
        def fold_mean(slab: np.ndarray) -> np.ndarray:
            """nnU-Net's fold average of float16 logits: added fold by fold, divided, in float16."""
            if n_folds == 1:
                return slab
            mean = slab[:k].astype(np.float16)
            for f in range(1, n_folds):
                mean = (mean.astype(np.float32) + slab[f * k:(f + 1) * k]).astype(np.float16)
            return (mean / np.float16(n_folds)).astype(np.float32)

        for _, slab in iter_probability_slabs(data, window_fn, k * n_folds, window, window_batch=self.window_batch,
                                              importance=importance, starts=place,
                                              accumulate="float16" if exact else "float32"):
            t1 = time.perf_counter()
            slab = fold_mean(slab)
            for oz, chunk in resampler.push(slab):
                if exact:  # nnU-Net resamples float16 logits into float16
                    chunk = chunk.astype(np.float16).astype(np.float32)
                z = slice(c0 + oz, c0 + oz + chunk.shape[-1])
                t = torch.from_numpy(chunk)
                if regions is None:
                    if probs is not None:
                        p = torch.softmax(t, dim=0).numpy()
                        probs[:, a0:a1, b0:b1, z] = p
                        class_argmax(p, out=labels[a0:a1, b0:b1, z])
                    else:
                        class_argmax(chunk, out=labels[a0:a1, b0:b1, z])
                else:
                    p = torch.sigmoid(t).numpy()
                    seg = np.zeros(chunk.shape[1:], dtype=label_dtype)
                    for i, value in enumerate(regions):
                        seg[p[i] > 0.5] = value
                    labels[a0:a1, b0:b1, z] = seg
            t_invert += time.perf_counter() - t1
        if not resampler.done:
            raise RuntimeError("sliding window ended before every output slice was produced")
        t1 = time.perf_counter()
        # streamed order → nnU-Net's transposed order → the input's axes (medseg's order)
        to_input = [int(i) for i in np.asarray(back)[cfg.transpose_backward]][::-1]
        labels_in = np.ascontiguousarray(labels.transpose(to_input))
        scores = None
        if probs is not None:
            scores = np.ascontiguousarray(probs.transpose([0] + [i + 1 for i in to_input]))
            del probs
        t_invert += time.perf_counter() - t1
        timings["windows"] = time.perf_counter() - t0 - t_invert
        timings["invert"] = t_invert
        timings["total"] = time.perf_counter() - t_start
        if labels_in.shape != ref.shape:
            raise RuntimeError(f"export produced {labels_in.shape}, expected the input's {ref.shape}")
        seg = Volume(array=labels_in, affine=ref.affine.copy(), source=None,
                     meta={key: v for key, v in ref.meta.items() if key in ("nifti_header", "dicom", "format")})
        return Prediction(labels=seg, label_names=self.label_names, image=ref, timings=timings,
                          _input_grid_scores=scores, _runtime=self.runtime)


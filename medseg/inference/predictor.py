"""The predictor: a model directory loaded once, then any number of studies segmented on their own grid."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume
from medseg.plans import PLANS_FILE, WEIGHTS_FILE, ModelPlans
from medseg.preprocess import InverseInfo, preprocess_case
from medseg.runtime import Runtime

__all__ = ["Predictor", "Prediction", "KEEP_PROBABILITIES_AUTO_BYTES", "uncrop_slabs"]

# predict(keep_probabilities=None) keeps the float16 class scores of the network grid when they
# take at most this many bytes (so that Prediction.probabilities() can be asked for later).
KEEP_PROBABILITIES_AUTO_BYTES = 512 * 2**20


def _unreadable_weights(weights: Path, exc: Exception) -> str:
    """Why ``torch.load(weights, weights_only=True)`` failed, in medseg's words (torch's own text
    suggests turning the safe loading off, which would run code from the file)."""
    import pickle
    import zipfile

    try:
        with open(weights, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    objects = "it holds objects other than tensors and plain containers, which medseg never loads"
    if head.startswith(b"PK"):  # torch's zip format
        complete = zipfile.is_zipfile(weights)
        why = objects if complete and isinstance(exc, pickle.UnpicklingError) else "the torch archive is truncated or damaged"
    elif head[:1] == b"\x80" and isinstance(exc, pickle.UnpicklingError):  # a pickle stream (torch's legacy format)
        why = objects
    else:
        why = "it is not a torch weights file"
    return f"not a readable weights file: {why} (expected the state_dict that `medseg train` writes)"


def _load_network(model_dir: Path, plans: ModelPlans, runtime: Runtime):
    """The network of the model directory ``model_dir`` (built from ``plans``, ``model.pt``
    loaded with ``weights_only=True``), in eval mode on ``runtime.device``.

    Raises:
        InputError: no weights, unreadable weights, weights that do not fit the architecture.
    """
    import torch

    from medseg.models import create_model

    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(model_dir, f"not a complete model directory (no {WEIGHTS_FILE})")
    spec = plans.model
    try:
        net = create_model(spec.name, spatial_dims=spec.spatial_dims, in_channels=spec.in_channels,
                           out_channels=spec.out_channels, **spec.options)
    except (ValueError, TypeError) as exc:
        raise InputError(model_dir / PLANS_FILE, f"cannot build the model: {exc}") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, a pickle with code (refused by weights_only)
        raise InputError(weights, _unreadable_weights(weights, exc)) from None
    if not isinstance(state, dict):
        raise InputError(weights, f"holds a {type(state).__name__}, expected a state_dict")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # load_state_dict reports mismatched keys/shapes this way
        first = str(exc).splitlines()
        raise InputError(weights, "weights do not fit the architecture in plans.json "
                         f"({' '.join(line.strip() for line in first[:2])[:300]})") from None
    net.eval()
    return net.to(runtime.device)


def _inverse_orientation(inverse: InverseInfo) -> np.ndarray:
    """The nibabel orientation transform from the oriented grid back to the input's axes."""
    inv = np.zeros_like(inverse.ornt_transform)
    for new_ax, (old_ax, flip) in enumerate(inverse.ornt_transform):
        inv[int(old_ax)] = (new_ax, flip)
    return inv


def _to_input_axes(array: np.ndarray, inverse: InverseInfo) -> np.ndarray:
    """Reorient ``array`` (first three axes on the oriented grid, any trailing axes) to the input's axes."""
    import nibabel as nib

    out = nib.orientations.apply_orientation(array, _inverse_orientation(inverse))
    if tuple(out.shape[:3]) != tuple(inverse.input_shape):
        raise RuntimeError(f"reorientation produced {out.shape[:3]}, expected the input's {inverse.input_shape}")
    return np.ascontiguousarray(out)


def _network_grid_shape(inverse: InverseInfo) -> tuple[int, int, int]:
    box = getattr(inverse, "crop_box", None)
    if box is None:
        return tuple(int(s) for s in inverse.resampled_shape)  # type: ignore[return-value]
    return tuple(int(b - a) for a, b in box)  # type: ignore[return-value]


def uncrop_slabs(slabs: Iterable[tuple[int, np.ndarray]], start: Sequence[int], stop: Sequence[int],
                 full_shape: Sequence[int], n_classes: int, *, background: bool = True,
                 step: int = 8) -> Iterator[np.ndarray]:
    """Undo a crop slab by slab: slabs ``(z0, (K, x, y, dz))`` of the box ``[start, stop)`` (which
    may reach past the grid, where the crop padded) become consecutive slabs ``(K, X, Y, dz)`` of
    the whole grid ``full_shape``.

    Outside the box: certain background (class 0 = 1) with ``background``, else zeros (MONAI's
    ``Invertd``).
    """
    X, Y, Z = (int(s) for s in full_shape)
    (sx, sy, sz), (ex, ey, _) = [int(v) for v in start], [int(v) for v in stop]
    xs, ys = slice(max(sx, 0), min(ex, X)), slice(max(sy, 0), min(ey, Y))
    nx, ny = slice(xs.start - sx, xs.stop - sx), slice(ys.start - sy, ys.stop - sy)

    def empty(n: int) -> np.ndarray:
        out = np.zeros((n_classes, X, Y, n), dtype=np.float32)
        if background:
            out[0] = 1.0
        return out

    z = 0
    for z0, slab in slabs:
        a, b = max(z0 + sz, 0), min(z0 + sz + slab.shape[-1], Z)
        if b <= a:
            continue
        while z < a:
            n = min(step, a - z)
            yield empty(n)
            z += n
        full = empty(b - a)
        full[:, xs, ys, :] = slab[:, nx, ny, a - z0 - sz:b - z0 - sz]
        yield full
        z = b
    while z < Z:
        n = min(step, Z - z)
        yield empty(n)
        z += n


def _uncropped_slabs(slabs: Iterable[tuple[int, np.ndarray]], inverse: InverseInfo,
                     n_classes: int) -> Iterator[np.ndarray]:
    """The resampled grid's slabs ``(K, X, Y, dz)`` of network-grid slabs: the foreground crop
    undone (:func:`uncrop_slabs`, certain background outside the box)."""
    box = getattr(inverse, "crop_box", None)
    if box is None:
        return (slab for _, slab in slabs)
    return uncrop_slabs(slabs, [a for a, _ in box], [b for _, b in box], inverse.resampled_shape, n_classes)


@dataclass
class Prediction:
    """The result of :meth:`Predictor.predict` for one study.

    Attributes:
        labels: ``uint8`` class ids (``uint16`` beyond 255 classes) on the exact grid of the
            input: its shape and affine; a NIfTI input's header travels in ``meta`` and is reused
            on write.
        label_names: ``{class id: name}`` from the model directory (0, background, excluded).
        image: the (first channel) input volume, for CRF and intensity statistics.
        timings: seconds per stage (``preprocess``, ``windows``, ``invert``, ``total``; then
            ``probabilities`` once asked for).
    """

    labels: Volume
    label_names: dict[int, str]
    image: Volume
    timings: dict[str, float] = field(default_factory=dict)
    _network_scores: np.ndarray | None = field(default=None, repr=False)
    _inverse: InverseInfo | None = field(default=None, repr=False)
    _input_grid_scores: np.ndarray | None = field(default=None, repr=False)
    _runtime: Runtime | None = field(default=None, repr=False)

    @property
    def n_classes(self) -> int:
        if self._input_grid_scores is not None:
            return int(self._input_grid_scores.shape[0])
        if self._network_scores is not None:
            return int(self._network_scores.shape[0])
        return max(self.label_names, default=0) + 1

    @property
    def has_probabilities(self) -> bool:
        return self._network_scores is not None or self._input_grid_scores is not None

    def probabilities(self, dtype=np.float16) -> np.ndarray:
        """Softmax probabilities ``(X, Y, Z, C)`` on the input grid (channel c = label c).

        Computed on request from the float16 scores kept on the network grid (resampled to the
        input's grid channel slab by slab, then reoriented), so they cost memory only when asked
        for: ``X·Y·Z·C`` values of ``dtype``.

        Raises:
            ValueError: the prediction was made with ``keep_probabilities=False`` (or ``None``
                on a study too big to keep them automatically).
        """
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"probabilities dtype must be a float type, not {dtype}")
        if self._input_grid_scores is not None:
            return np.ascontiguousarray(np.moveaxis(self._input_grid_scores, 0, -1).astype(dtype, copy=False))
        if self._network_scores is None or self._inverse is None:
            raise ValueError("probabilities were not kept for this prediction: call "
                             "Predictor.predict(..., keep_probabilities=True)")
        from medseg.inference.resample import SlabResampler

        t0 = time.perf_counter()
        scores = self._network_scores
        k = scores.shape[0]
        oriented = np.empty(tuple(self._inverse.oriented_shape) + (k,), dtype=dtype)
        resampler = SlabResampler(self._inverse.resampled_shape, self._inverse.oriented_shape, k)
        step = 8
        slabs = ((z, scores[..., z:z + step].astype(np.float32)) for z in range(0, scores.shape[-1], step))
        with self._runtime.activate() if self._runtime is not None else contextlib.nullcontext():
            for slab in _uncropped_slabs(slabs, self._inverse, k):
                for oz, chunk in resampler.push(slab):
                    oriented[:, :, oz:oz + chunk.shape[-1], :] = np.moveaxis(chunk, 0, -1)
        out = _to_input_axes(oriented, self._inverse)
        self.timings["probabilities"] = time.perf_counter() - t0
        return out

    def with_probabilities(self, probabilities: np.ndarray) -> "Prediction":
        """A new prediction from refined probabilities ``(K, X, Y, Z)`` on the input grid (e.g. CRF).

        Labels become their argmax; :meth:`probabilities` returns them.
        """
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.ndim != 4 or tuple(probabilities.shape[1:]) != self.labels.shape:
            raise ValueError(f"probabilities must be (K, {', '.join(map(str, self.labels.shape))}), "
                             f"not {probabilities.shape}")
        from medseg.inference.resample import class_argmax

        labels = class_argmax(probabilities, out=np.empty(self.labels.shape, dtype=self.labels.array.dtype))
        return Prediction(labels=self.labels.with_array(labels), label_names=self.label_names, image=self.image,
                          timings=dict(self.timings), _input_grid_scores=probabilities, _runtime=self._runtime)


class Predictor:
    """A model's networks (one, or one per fold of a fold folder) and its plans: segments any number
    of studies.

    Build it with :meth:`from_model_dir` (a model folder, loaded once), or directly around networks
    already on ``runtime.device`` (the trainer validates this way). The caller sets the networks'
    mode: :meth:`from_model_dir` puts them in eval mode at load; :meth:`predict` never changes it.
    Windows run through :attr:`forwards`, one per network: the network on ``runtime.device`` (GPU
    or CPU) under ``runtime``'s autocast, or after :meth:`use_backend` the network compiled for
    OpenVINO or ONNX Runtime (:mod:`medseg.inference.backends`); stitching and resampling on the
    CPU. Several networks (a fold ensemble) see the same preprocessed windows, and their softmax
    probabilities are averaged window by window, before blending. :meth:`predict` and
    :meth:`window_scores` run inside ``runtime.activate()`` (its CPU threads, the caller's count
    restored afterwards).

    Args:
        nets: the networks (``nn.Module``, one per fold), each mapping ``(B, C, *patch)`` to logits
            ``(B, K, *patch)`` (2D or 3D, as in ``plans.model.spatial_dims``), their parameters on
            ``runtime.device``.
        plans: the model's :class:`~medseg.plans.ModelPlans` (preprocessing, patch, slice axis, labels).
        runtime: device, autocast and threads (:func:`medseg.runtime.resolve_runtime`).
        tta: mirror test-time augmentation by default.
        overlap: window overlap fraction (default: ``plans.inference.overlap``).
        window_batch: windows per forward pass.
        model_dir: where the model came from (for messages), if anywhere.
        info: the model's :class:`~medseg.inference.kinds.ModelInfo` (default: from ``plans``).
    """

    def __init__(self, nets: Sequence, plans: ModelPlans, *, runtime: Runtime, tta: bool = False,
                 overlap: float | None = None, window_batch: int = 2, model_dir: str | None = None, info=None):
        from medseg.inference.sliding_window import gaussian_importance

        if not isinstance(runtime, Runtime):
            raise TypeError(f"runtime must be a medseg.runtime.Runtime (see resolve_runtime), not "
                            f"{type(runtime).__name__}")
        if window_batch < 1:
            raise ValueError(f"window_batch must be at least 1, not {window_batch}")
        overlap = plans.inference.overlap if overlap is None else float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {overlap}")
        nets = list(nets)
        if not nets:
            raise ValueError("at least one network is needed")
        for net in nets:
            param = next(iter(net.parameters()), None)
            if param is not None and param.device != runtime.device:
                raise ValueError(f"the network's parameters are on {param.device}, the runtime's device is "
                                 f"{runtime.device}: move the network there first")
        self.nets = nets
        self.plans = plans
        self.runtime = runtime
        self.tta = bool(tta)
        self.overlap = overlap
        self.window_batch = int(window_batch)
        self.model_dir = model_dir
        self._info = info
        self.n_classes = plans.model.out_channels
        self.window = self._window_shape(plans)
        self._importance = gaussian_importance(self.window)
        self._importance_t = None  # on the device, made on first use
        from medseg.inference.backends import torch_forward

        self.forwards = [torch_forward(net, runtime) for net in nets]

    def use_backend(self, backend: str = "auto", precision: str = "f32", *,
                    calibration: Sequence[Sequence[str | Path]] = ()):
        """Run the windows on ``backend`` at ``precision`` from now on, one compiled network per
        fold (see :func:`medseg.inference.backends.compile_network`; conversions are cached).

        Args:
            backend: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``.
            precision: ``f32``, ``bf16`` or ``int8``.
            calibration: for ``int8``: studies (each a sequence of channel paths) whose windows,
                preprocessed as the model's input, calibrate the quantisation.

        Returns:
            the :class:`~medseg.inference.backends.Forward` of each network, now in use (also
            :attr:`forwards`).
        """
        from medseg.inference.backends import compile_networks

        slice_dim = 2 + int(self.plans.inference.slice_axis) if self.is_2d else None
        net_window = tuple(w for d, w in enumerate(self.window) if d + 2 != slice_dim)
        self.forwards = compile_networks(
            self.nets, input_shape=(self.window_batch, self.plans.model.in_channels) + net_window,
            runtime=self.runtime, backend=backend, precision=precision, calibration=calibration,
            preprocess=lambda vols: preprocess_case(vols, self.plans.preprocess).image, window=self.window,
            squeeze_dim=slice_dim)
        return self.forwards

    @property
    def backend(self) -> str:
        """What runs the windows, e.g. ``"openvino bf16"`` (:meth:`Forward.describe`; each fold's
        when they differ)."""
        shown = [f.describe() for f in self.forwards]
        if len(set(shown)) == 1:
            return shown[0]
        folds = self.info.folds or range(len(shown))
        return "; ".join(f"fold {k}: {d}" for k, d in zip(folds, shown))

    @staticmethod
    def _window_shape(plans: ModelPlans) -> tuple[int, int, int]:
        """The 3D window: ``patch_size``, or for a 2D model the 2D patch with 1 at ``slice_axis``."""
        patch = tuple(int(p) for p in plans.inference.patch_size)
        if plans.model.spatial_dims == 3:
            if len(patch) != 3 or plans.inference.slice_axis is not None:
                raise ValueError(f"a 3D model needs a 3-value patch_size and no slice_axis, not {patch} and "
                                 f"{plans.inference.slice_axis}")
            return patch  # type: ignore[return-value]
        axis = plans.inference.slice_axis
        if axis is None or len(patch) != 2:
            raise ValueError(f"a 2D model needs a 2-value patch_size and a slice_axis, not {patch} and {axis}")
        window = list(patch)
        window.insert(axis, 1)
        return tuple(window)  # type: ignore[return-value]

    @property
    def device(self):
        """The ``torch.device`` the windows run on (``runtime.device``)."""
        return self.runtime.device

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str = "auto", autocast: str = "none",
                       tta: bool = False, overlap: float | None = None, window_batch: int = 2,
                       num_threads: int | None = None, folds: Sequence[int] | None = None,
                       checkpoint: str = "final", task: str | None = None, step_size: float | None = None,
                       backend: str = "auto", precision: str = "f32",
                       calibration: Sequence[Sequence[str | Path]] = ()):
        """Load a model folder of any kind (:mod:`medseg.inference.kinds`: medseg, nnU-Net v2,
        TotalSegmentator with ``task``, MONAI bundle) once.

        ``folds``, ``checkpoint``, ``task``, ``step_size``, ``backend``, ``precision`` and
        ``calibration`` are :class:`~medseg.inference.kinds.ModelOptions`; the other arguments are
        those of :meth:`load_own_model`. Returns a predictor with this class's ``predict`` surface.

        Raises:
            InputError: not a loadable model folder.
            ValueError: an unknown backend or precision, int8 without calibration studies.
            BackendError: a backend named explicitly that is not installed.
        """
        from medseg.inference.backends import check_backend
        from medseg.inference.kinds import ModelOptions, load_predictor

        calibration = tuple(tuple(str(p) for p in study) for study in calibration)
        check_backend(backend, precision, bool(calibration))
        try:
            options = ModelOptions(folds=None if folds is None else tuple(int(f) for f in folds),
                                   checkpoint=checkpoint, task=task, step_size=step_size, backend=backend,
                                   precision=precision, calibration=calibration)
        except ValueError as exc:
            raise InputError(model_dir, str(exc)) from None
        return load_predictor(model_dir, options=options, device=device, autocast=autocast, tta=tta,
                              overlap=overlap, window_batch=window_batch, num_threads=num_threads)

    @classmethod
    def load_own_model(cls, model_dir: str | Path, *, folds: Sequence[int] | None = None, device: str = "auto",
                       autocast: str = "none", tta: bool = False, overlap: float | None = None,
                       window_batch: int = 2, num_threads: int | None = None) -> "Predictor":
        """Load a medseg ``MODEL_DIR`` (``plans.json`` + ``model.pt``), or a folder of fold model
        directories (``fold_K/``, :func:`medseg.inference.own_model.read_model_folder`), once.

        Args:
            model_dir: a model directory or a fold folder (see :mod:`medseg.plans`).
            folds: the folds of a fold folder to run and average (default: every trained fold);
                refused for a plain model directory.
            device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            autocast: ``"none"`` (float32), ``"bf16"`` (CPU or CUDA), ``"fp16"`` (CUDA only) or
                ``"auto"`` (bf16 on CUDA, none on the CPU).
            tta: mirror test-time augmentation (every combination of flips of the spatial axes,
                probabilities averaged): 8× the work in 3D, 4× in 2D.
            overlap: window overlap fraction (default: the model's ``plans.inference.overlap``).
            window_batch: windows per forward pass.
            num_threads: torch CPU threads while predicting (``None``:
                :func:`medseg.runtime.default_threads`, 2, or 1 on a busy machine). Set only
                inside :meth:`predict` and :meth:`window_scores`, never for the whole process.

        Raises:
            InputError: not a model directory, unreadable weights, weights that do not fit the
                architecture in ``plans.json``, folds that are not trained or whose plans differ.
            DeviceError: a misspelt device, or CUDA asked for and absent.
            ValueError: an autocast mode impossible on the device (fp16 on the CPU), bad threads.
        """
        from medseg.inference.own_model import info_from_plans, read_model_folder
        from medseg.runtime import resolve_runtime

        runtime = resolve_runtime(device, autocast, num_threads)  # fail before the load
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise InputError(model_dir, "model directory does not exist" if not model_dir.exists()
                             else "is not a folder (expected a model directory with plans.json and model.pt)")
        folder = read_model_folder(model_dir, folds)
        nets = [_load_network(d, folder.plans, runtime) for d in folder.model_dirs]
        info = info_from_plans(folder.plans, model_dir, folds=folder.folds, largest_component=folder.largest_component)
        return cls(nets, folder.plans, runtime=runtime, tta=tta, overlap=overlap, window_batch=window_batch,
                   model_dir=str(model_dir), info=info)

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.plans.labels)

    @property
    def info(self):
        """The model's :class:`~medseg.inference.kinds.ModelInfo`."""
        if self._info is None:
            from medseg.inference.own_model import info_from_plans

            self._info = info_from_plans(self.plans, self.model_dir)
        return self._info

    @property
    def is_2d(self) -> bool:
        return self.plans.model.spatial_dims == 2

    # ---- windows -------------------------------------------------------------------------

    def window_scores(self, batch: np.ndarray, *, tta: bool | None = None) -> np.ndarray:
        """Networks on a batch of windows: ``(B, C, px, py, pz)`` → softmax ``(B, K, px, py, pz)``
        float32 (the mean over the networks and the mirror passes) multiplied by the Gaussian
        window weights (computed on the device)."""
        with self.runtime.activate():
            return self._window_scores(batch, self.tta if tta is None else tta)

    def _window_scores(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        import torch

        dev = self.device
        if self._importance_t is None:
            self._importance_t = torch.from_numpy(self._importance).to(dev)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if dev.type == "cuda":
            x = x.pin_memory().to(dev, non_blocking=True)
        slice_dim = None
        if self.is_2d:
            slice_dim = 2 + int(self.plans.inference.slice_axis)
            x = x.squeeze(slice_dim)
        from medseg.inference.mirroring import flip_sets, mirrored_mean

        with torch.inference_mode():
            flips = flip_sets(range(2, 2 + self.plans.model.spatial_dims), tta)
            total = None
            for forward in self.forwards:  # the fold ensemble's mean softmax, one fold at a time
                probs = mirrored_mean(forward, x, flips, lambda logits: torch.softmax(logits, dim=1))
                total = probs if total is None else total.add_(probs)
            if len(self.forwards) > 1:
                total.div_(len(self.forwards))
            if slice_dim is not None:
                total = total.unsqueeze(slice_dim)
            total.mul_(self._importance_t)
            return total.cpu().numpy()

    # ---- studies -------------------------------------------------------------------------

    def predict(self, images: Volume | Sequence[Volume], *, tta: bool | None = None,
                keep_probabilities: bool | None = None) -> Prediction:
        """Segment one study.

        Args:
            images: the study: one :class:`Volume` or one per input channel (same grid), in the
                order of the model's ``channel_names``.
            tta: override the predictor's mirror TTA setting for this call.
            keep_probabilities: keep the float16 class scores of the network grid so that
                :meth:`Prediction.probabilities` can be asked for; ``None`` keeps them when they
                take at most :data:`KEEP_PROBABILITIES_AUTO_BYTES`.

        Returns:
            :class:`Prediction` whose ``labels`` lie on the input's exact grid.
        """
        with self.runtime.activate():
            return self._predict(images, self.tta if tta is None else bool(tta), keep_probabilities)

    def _predict(self, images: Volume | Sequence[Volume], tta: bool, keep_probabilities: bool | None) -> Prediction:
        from medseg.inference.resample import SlabResampler, class_argmax
        from medseg.inference.sliding_window import iter_probability_slabs

        vols = [images] if isinstance(images, Volume) else list(images)
        if not vols or not all(isinstance(v, Volume) for v in vols):
            raise TypeError("images must be a Volume or a non-empty list of Volumes (one per channel)")
        if len(vols) != self.plans.model.in_channels:
            names = ", ".join(self.plans.channel_names)
            raise InputError(vols[0].source, f"the model takes {self.plans.model.in_channels} channel(s) ({names}), "
                             f"{len(vols)} image(s) given")
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        case = preprocess_case(vols, self.plans.preprocess)
        timings["preprocess"] = time.perf_counter() - t_start
        inverse = case.inverse
        k = self.n_classes
        net_shape = tuple(int(s) for s in case.image.shape[1:])
        if net_shape != _network_grid_shape(inverse):
            raise RuntimeError(f"preprocessed image {net_shape} is not the recorded network grid "
                               f"{_network_grid_shape(inverse)}")
        if keep_probabilities is None:
            keep_probabilities = k * int(np.prod(net_shape)) * 2 <= KEEP_PROBABILITIES_AUTO_BYTES
        kept = np.empty((k,) + net_shape, dtype=np.float16) if keep_probabilities else None
        label_dtype = np.uint8 if k <= 256 else np.uint16
        labels_oriented = np.empty(tuple(inverse.oriented_shape), dtype=label_dtype)
        resampler = SlabResampler(inverse.resampled_shape, inverse.oriented_shape, k)
        t_invert = 0.0
        t0 = time.perf_counter()

        def network_slabs() -> Iterator[tuple[int, np.ndarray]]:
            for z0, slab in iter_probability_slabs(case.image, lambda b: self._window_scores(b, tta), k,
                                                   self.window, overlap=self.overlap,
                                                   window_batch=self.window_batch, importance=self._importance):
                if kept is not None:
                    kept[..., z0:z0 + slab.shape[-1]] = slab
                yield z0, slab

        for slab in _uncropped_slabs(network_slabs(), inverse, k):
            t1 = time.perf_counter()
            for oz, chunk in resampler.push(slab):
                class_argmax(chunk, out=labels_oriented[..., oz:oz + chunk.shape[-1]])
            t_invert += time.perf_counter() - t1
        if not resampler.done:
            raise RuntimeError("sliding window ended before every output slice was produced")
        t1 = time.perf_counter()
        labels = _to_input_axes(labels_oriented, inverse)
        t_invert += time.perf_counter() - t1
        timings["windows"] = time.perf_counter() - t0 - t_invert
        timings["invert"] = t_invert
        timings["total"] = time.perf_counter() - t_start
        ref = vols[0]
        seg = Volume(array=labels, affine=ref.affine.copy(), source=None,
                     meta={k_: v for k_, v in ref.meta.items() if k_ in ("nifti_header", "dicom", "format")})
        return Prediction(labels=seg, label_names=self.label_names, image=ref, timings=timings,
                          _network_scores=kept, _inverse=inverse, _runtime=self.runtime)

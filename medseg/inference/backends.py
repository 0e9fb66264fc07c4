"""Network backends: a torch network's forward on torch, OpenVINO or ONNX Runtime.

Every predictor calls its network on batches of fixed-shape windows ``(B, C, *window)``. One
call, :func:`compile_network`, turns the torch network into a :class:`Forward` on the chosen
backend; the sliding window, Gaussian blending, mirroring, stitching and inversion stay the
predictor's own::

    >>> forward = compile_network(net, input_shape=(2, 1, 96, 96, 96), backend="auto",   # doctest: +SKIP
    ...                           precision="f32", runtime=runtime)
    >>> logits = forward(x)          # (B, K, 96, 96, 96) float32 torch tensor; B may be 1 or 2
    >>> forward.describe()           # 'openvino f32'

Backends (``backend``):

- ``torch``: the network itself, under the runtime's autocast (``precision="bf16"``: bf16 autocast).
- ``openvino``: the network exported to ONNX (opset 17, the batch axis dynamic) and compiled by
  OpenVINO's CPU plugin; ``bf16`` sets ``INFERENCE_PRECISION_HINT`` (CPUs with AVX512-BF16 or
  AMX), ``int8`` is NNCF post-training quantisation calibrated on windows of studies.
- ``onnxruntime``: the same ONNX model on ONNX Runtime's CPU provider (``f32`` only).
- ``auto``: torch on a CUDA device (or when a torch autocast is asked for), else OpenVINO when it
  is installed and the network converts, else torch. A network that does not convert, or whose
  converted form fails on the first window of a shape, runs on torch from then on, with a one-line warning
  (the ``medseg.inference`` logger), never an error.

Conversions are cached under :func:`cache_dir` (``MEDSEG_CACHE_DIR``, default
``$XDG_CACHE_HOME/medseg`` or ``~/.cache/medseg``), never beside the model::

    <cache>/networks/<key>/model.onnx           the exported network (openvino f32/bf16, onnxruntime)
    <cache>/networks/<key>/model.xml, model.bin the int8 network (OpenVINO IR)
    <cache>/networks/<key>/entry.json           what the key stands for; size and BLAKE2b of each file

``key`` hashes the network's weights (every state_dict tensor's bytes), its structure
(``repr``), the input shape without the batch axis, the format (ONNX or int8 IR), the library
versions, and for int8 the calibration studies' content. An entry is written into a hidden
folder and renamed into place whole; two processes converting at once both succeed (the second
keeps the first's entry). An entry whose files do not match ``entry.json`` (truncated, damaged)
is removed and converted again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from medseg.errors import MedsegError

__all__ = ["BACKENDS", "PRECISIONS", "CACHE_ENV", "CALIBRATION_WINDOWS", "BackendError", "Forward", "check_backend",
           "require_backend", "backend_installed", "cache_dir", "torch_forward", "compile_network",
           "compile_networks", "calibration_windows", "calibration_key", "conversions"]

BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "int8")
CACHE_ENV = "MEDSEG_CACHE_DIR"
CALIBRATION_WINDOWS = 32  # windows (batch 1) NNCF calibrates int8 on, spread over the studies
ONNX_OPSET = 17
FORMAT_VERSION = 1  # bump when the layout or the export settings of a cache entry change

_LOG = logging.getLogger("medseg.inference")
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_CONVERSIONS = {"count": 0}
_CONVERSIONS_LOCK = threading.Lock()
_EXPORT_LOCK = threading.Lock()  # torch's ONNX export traces through global state: one at a time per process


class BackendError(MedsegError, ValueError):
    """A backend that cannot run here: not installed, or not possible with the device or autocast asked for."""


def check_backend(backend: str, precision: str, calibrated: bool = False) -> None:
    """Validate a backend and precision pair (names only; nothing is imported).

    Args:
        calibrated: calibration studies are given (needed by ``int8``, used by nothing else).

    Raises:
        ValueError: an unknown name, int8 without calibration studies, calibration studies without
            int8, or a pair that does not exist (onnxruntime bf16/int8, torch int8).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and not calibrated:
        raise ValueError("precision int8 needs calibration studies: give --calibrate STUDY (a few studies like "
                         "those to segment; their windows set the int8 ranges)")
    if precision != "int8" and calibrated:
        raise ValueError("calibration studies are used by precision int8 only")
    if backend == "onnxruntime" and precision != "f32":
        raise ValueError(f"the onnxruntime backend runs f32 only: use --backend openvino for {precision}")
    if backend == "torch" and precision == "int8":
        raise ValueError("the torch backend has no int8: use --backend openvino (or auto) for int8")


def backend_installed(backend: str) -> bool:
    """Whether the package of ``openvino`` or ``onnxruntime`` can be imported (torch always can)."""
    if backend not in _PACKAGES:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(_PACKAGES[backend]) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        return False


def require_backend(backend: str) -> None:
    """Refuse an explicitly named backend whose package is missing (``auto`` never is refused).

    Raises:
        BackendError: one line saying how to install it.
    """
    if backend in _PACKAGES and not backend_installed(backend):
        raise BackendError(f"--backend {backend}: the {_PACKAGES[backend]} package is not installed; install it "
                           f"with `pip install {_PACKAGES[backend]}` (medseg's `make setup` does) or use --backend torch")


def cache_dir() -> Path:
    """Where converted networks are kept: ``MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg``,
    else ``~/.cache/medseg``."""
    pinned = os.environ.get(CACHE_ENV, "").strip()
    if pinned:
        return Path(pinned).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medseg"


def conversions() -> int:
    """How many networks this process has converted (exported or quantised) rather than read from the cache."""
    return _CONVERSIONS["count"]


@dataclass
class Forward:
    """A network's forward on one backend: ``forward(x)`` with ``x`` a ``(B, C, *window)`` float32
    torch tensor (on ``runtime.device`` for torch, on the CPU otherwise) returns the logits
    ``(B, K, *window)`` as a float32 torch tensor. ``B`` may vary from call to call.

    Attributes:
        backend: ``torch``, ``openvino`` or ``onnxruntime`` (never ``auto``).
        precision: ``f32``, ``bf16`` or ``int8`` (what runs; bf16 autocast on torch is ``bf16``).
        note: why this backend or precision was taken when it is not what was asked for, or ``None``.
        cache_entry: the cache folder the converted network came from or went to, or ``None``.
    """

    backend: str
    precision: str
    run: Callable[[Any], Any] = field(repr=False)
    note: str | None = None
    cache_entry: Path | None = None

    def __call__(self, x):
        return self.run(x)

    def describe(self) -> str:
        """``"openvino bf16"``, with the note in brackets when there is one."""
        return f"{self.backend} {self.precision}" + (f" ({self.note})" if self.note else "")


def torch_forward(net, runtime, precision: str = "f32", note: str | None = None) -> Forward:
    """The network itself: the runtime's autocast (``precision="bf16"``: bf16 autocast), logits as float32."""
    import torch

    if precision == "bf16":
        def context():
            return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)
        shown = "bf16"
    else:
        context = runtime.autocast
        shown = "f32" if runtime.autocast_mode == "none" else runtime.autocast_mode

    def run(x):
        with context():
            out = net(x)
        return out.float()

    return Forward("torch", shown, run, note)


# ---------------------------------------------------------------------------------- compiling

def compile_network(net, *, input_shape: Sequence[int], runtime, backend: str = "auto", precision: str = "f32",
                    calibration: Callable[[], Iterable[np.ndarray]] | None = None, calibration_id: str | None = None,
                    cache: str | Path | None = None) -> Forward:
    """The forward of ``net`` on ``backend`` (see the module docstring).

    Args:
        net: a torch module in eval mode that maps ``(B, C, *window)`` to logits ``(B, K, *window)``.
        input_shape: ``(B, C, *window)``: the usual batch (the example the export traces; any
            batch size runs) and the fixed channel count and window.
        runtime: the predictor's :class:`~medseg.runtime.Runtime` (device, autocast, threads).
        backend: one of :data:`BACKENDS`.
        precision: one of :data:`PRECISIONS`.
        calibration: for ``int8``: called (only when the int8 network is not cached) to give the
            calibration windows, each ``(1, C, *window)`` float32 (:func:`calibration_windows`).
        calibration_id: for ``int8``: the calibration studies' content hash (:func:`calibration_key`).
        cache: the cache folder (default :func:`cache_dir`).

    Raises:
        BackendError: an explicitly named backend that is not installed, or that cannot run with
            the runtime's device or autocast (CUDA, a torch autocast).
        ValueError: see :func:`check_backend`.
    """
    check_backend(backend, precision, calibration is not None)
    require_backend(backend)
    if runtime.device.type != "cpu":
        if backend in _PACKAGES:
            raise BackendError(f"--backend {backend} runs on the CPU: use --device cpu, or --backend torch/auto "
                               f"on {runtime.device}")
        return torch_forward(net, runtime, precision if precision != "int8" else "f32",
                             note=None if precision != "int8" else "no int8 on CUDA: running f32")
    if runtime.autocast_mode != "none":
        if backend in _PACKAGES:
            raise BackendError(f"--autocast is torch's: with --backend {backend} use --precision bf16 instead")
        return torch_forward(net, runtime, "f32", note=None if backend == "torch" else "--autocast asks for torch")
    if backend == "torch":
        return torch_forward(net, runtime, precision)
    if backend == "auto":
        if not backend_installed("openvino"):
            return torch_forward(net, runtime, precision if precision == "bf16" else "f32",
                                 note="openvino is not installed")
        backend = "openvino"
    shape = tuple(int(s) for s in input_shape)
    folder = Path(cache) if cache is not None else cache_dir()
    try:
        with runtime.activate():
            if backend == "onnxruntime":
                return _onnxruntime_forward(net, shape, runtime, folder)
            return _openvino_forward(net, shape, runtime, folder, precision, calibration, calibration_id)
    except MedsegError:
        raise
    except Exception as exc:  # any failure to export, read or compile: the network runs on torch
        return _torch_instead(net, runtime, precision, backend, "could not convert the network", exc)


def _torch_instead(net, runtime, precision: str, backend: str, what: str, exc: Exception) -> Forward:
    """The torch forward that replaces a converted network that failed, with a one-line warning."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    _LOG.debug("%s: %s failed", backend, what, exc_info=True)
    note = f"{backend} {what} ({type(exc).__name__}: {first}): running torch"
    _LOG.warning(note)
    return torch_forward(net, runtime, precision if precision == "bf16" else "f32", note=note)


def _checked_on_first_call(forward: Forward, net, runtime) -> Forward:
    """``forward`` whose first call with each input shape falls back to torch when the converted
    network fails to run: a conversion problem that shows only on real input (a batch size the
    export did not trace). No extra window is run to test the compiled network: the first window
    of each shape is the test. On a fall-back the ``Forward`` becomes the torch one (backend,
    precision, note, run) and stays so."""
    compiled = forward.run
    shapes: set[tuple[int, ...]] = set()

    def run(x):
        shape = tuple(x.shape)
        if shape in shapes:
            return compiled(x)
        try:
            out = compiled(x)
        except MedsegError:
            raise
        except Exception as exc:
            torch_ = _torch_instead(net, runtime, forward.precision, forward.backend,
                                    f"could not run the network on a {'x'.join(map(str, shape))} input", exc)
            forward.backend, forward.precision, forward.note, forward.run = (torch_.backend, torch_.precision,
                                                                             torch_.note, torch_.run)
            forward.cache_entry = None
            return torch_.run(x)
        shapes.add(shape)
        return out

    forward.run = run
    return forward


def _weights_hash(net) -> str:
    """BLAKE2b of the network's structure and of every state_dict tensor (name, dtype, shape, bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(net).encode())
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _key(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _file_digest(path: Path) -> str:
    from medseg.io.files import update_hash

    h = hashlib.blake2b(digest_size=16)
    update_hash(h, path)
    return h.hexdigest()


def _read_entry(entry: Path, names: Sequence[str]) -> bool:
    """Whether the cache entry holds ``names`` whole (sizes and digests as recorded); a damaged
    entry is removed."""
    if not entry.is_dir():
        return False
    try:
        record = json.loads((entry / "entry.json").read_text(encoding="utf-8"))
        files = record["files"]
        ok = all(files[n]["size"] == (entry / n).stat().st_size and files[n]["blake2b"] == _file_digest(entry / n)
                 for n in names)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _LOG.warning("conversion cache entry %s is incomplete or damaged: converting again", entry)
        _remove_entry(entry)
    return ok


def _remove_entry(entry: Path) -> None:
    aside = entry.with_name(f".{entry.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(OSError):
        os.replace(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _write_entry(entry: Path, parts: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Write a cache entry whole: ``write(folder)`` fills a hidden folder, ``entry.json`` records
    each file's size and digest, then the folder is renamed into place. Another process's entry
    already in place is kept. A cache that cannot be written is warned about, not an error."""
    tmp = entry.with_name(f".{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        files = {p.name: {"size": p.stat().st_size, "blake2b": _file_digest(p)} for p in sorted(tmp.iterdir())}
        (tmp / "entry.json").write_text(json.dumps({"key": parts, "files": files}, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():  # not a race lost to another process
                raise
    except OSError as exc:
        _LOG.warning("cannot write the conversion cache %s (%s): set %s to a writable folder",
                     entry.parent, exc.strerror or exc, CACHE_ENV)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _count_conversion() -> None:
    with _CONVERSIONS_LOCK:
        _CONVERSIONS["count"] += 1


def _onnx_bytes(net, shape: tuple[int, ...], folder: Path) -> tuple[bytes, Path]:
    """The network as ONNX (opset 17, dynamic batch axis), from the cache or exported now."""
    import torch

    parts = {"format": "onnx", "version": FORMAT_VERSION, "opset": ONNX_OPSET, "torch": torch.__version__,
             "input": list(shape[1:]), "weights": _weights_hash(net)}
    entry = folder / "networks" / _key(parts)
    with _EXPORT_LOCK:
        if _read_entry(entry, ["model.onnx"]):
            return (entry / "model.onnx").read_bytes(), entry
        buf = io.BytesIO()
        example = torch.zeros(shape, dtype=torch.float32)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python numbers: fixed windows
            torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=ONNX_OPSET, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        _count_conversion()
        data = buf.getvalue()
        _write_entry(entry, parts, lambda tmp: (tmp / "model.onnx").write_bytes(data))
    return data, entry


def _onnxruntime_forward(net, shape, runtime, folder: Path) -> Forward:
    import onnxruntime as ort
    import torch

    data, entry = _onnx_bytes(net, shape, folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures reach medseg as exceptions, said in one line there
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(x):
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {"x": arr})[0])

    return _checked_on_first_call(Forward("onnxruntime", "f32", run, cache_entry=entry), net, runtime)


def _openvino_forward(net, shape, runtime, folder: Path, precision: str,
                      calibration: Callable[[], Iterable[np.ndarray]] | None, calibration_id: str | None) -> Forward:
    import openvino as ov
    import torch

    core = ov.Core()
    data, entry = _onnx_bytes(net, shape, folder)
    note = None
    if precision == "int8":
        model, entry = _int8_model(core, data, shape, folder, calibration, calibration_id)
    else:
        model = core.read_model(data)
    hint = "f32"
    if precision == "bf16":
        if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "bf16"
        else:
            precision, note = "f32", "this CPU has no bf16 instructions: running f32"
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                 "INFERENCE_NUM_THREADS": runtime.threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(x):
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        with lock:
            request.infer({0: arr})
            out = np.array(request.get_output_tensor(0).data, copy=True)
        return torch.from_numpy(out)

    return _checked_on_first_call(Forward("openvino", precision, run, note=note, cache_entry=entry), net, runtime)


def _int8_model(core, onnx_data: bytes, shape, folder: Path, calibration, calibration_id: str | None):
    """NNCF's post-training int8 quantisation of the ONNX network, as OpenVINO IR (cached)."""
    import openvino as ov
    import torch

    if calibration is None or not calibration_id:
        raise ValueError("int8 needs calibration windows and their content hash")
    nncf_version = _nncf_version()
    parts = {"format": "openvino-int8", "version": FORMAT_VERSION, "onnx": hashlib.blake2b(onnx_data, digest_size=16).hexdigest(),
             "torch": torch.__version__, "openvino": ov.get_version(), "nncf": nncf_version,
             "input": list(shape[1:]), "calibration": calibration_id, "windows": CALIBRATION_WINDOWS}
    entry = folder / "networks" / _key(parts)
    if _read_entry(entry, ["model.xml", "model.bin"]):
        return core.read_model(entry / "model.xml"), entry
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off: medseg never reaches the network
    import nncf

    windows = [np.ascontiguousarray(w, dtype=np.float32) for w in calibration()]
    if not windows:
        raise ValueError("no calibration windows")
    previous = nncf.get_log_level() if hasattr(nncf, "get_log_level") else None
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
            quantized = nncf.quantize(core.read_model(onnx_data), nncf.Dataset(windows), subset_size=len(windows))
    finally:
        if previous is not None:
            nncf.set_log_level(previous)
    _count_conversion()
    _write_entry(entry, parts, lambda tmp: ov.save_model(quantized, tmp / "model.xml", compress_to_fp16=False))
    return quantized, entry


def _nncf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nncf")
    except PackageNotFoundError:
        raise BackendError("--precision int8: the nncf package is not installed; install it with `pip install nncf` "
                           "(medseg's `make setup` does)") from None


def compile_networks(nets: Sequence, *, input_shape: Sequence[int], runtime, backend: str = "auto",
                     precision: str = "f32", calibration: Sequence[Sequence[str | Path]] = (),
                     preprocess: Callable | None = None, window: Sequence[int] | None = None,
                     squeeze_dim: int | None = None) -> list:
    """:func:`compile_network` for each network of a model (its folds), calibrated alike.

    Args:
        input_shape: ``(B, C, *window)`` as the networks see it.
        calibration: for ``int8``: studies (each a sequence of channel paths) read with
            :func:`medseg.io.read_channels`, preprocessed by ``preprocess(volumes) -> (C, *grid)``
            (the model's own preprocessing) and cut into windows of ``window`` (the grid's axes;
            the dim ``squeeze_dim`` of each ``(1, C, *window)`` window dropped for a 2D network).

    Returns:
        one :class:`Forward` per network.
    """
    windows = None
    if calibration:
        if preprocess is None or window is None:
            raise ValueError("int8 calibration needs the model's preprocessing and window")

        def cut():
            from medseg.io import read_channels

            images = (preprocess(read_channels(list(sources))) for sources in calibration)
            for w in calibration_windows(images, window, -(-CALIBRATION_WINDOWS // len(calibration))):
                yield w if squeeze_dim is None else w.squeeze(squeeze_dim)
        windows = cut
    key = calibration_key(calibration) if calibration else None
    return [compile_network(net, input_shape=input_shape, runtime=runtime, backend=backend, precision=precision,
                            calibration=windows, calibration_id=key) for net in nets]


# ---------------------------------------------------------------------------------- calibration

def calibration_windows(images: Iterable[np.ndarray], window: Sequence[int], per_image: int) -> Iterable[np.ndarray]:
    """Windows for int8 calibration: up to ``per_image`` windows ``(1, C, *window)`` float32 from
    each preprocessed image ``(C, *grid)`` (zero-padded to the window as the sliding window
    pads), at evenly spread positions of a non-overlapping tiling."""
    from medseg.inference.sliding_window import window_starts

    window = tuple(int(w) for w in window)
    for image in images:
        spatial = image.shape[1:]
        pad = [max(0, w - s) for w, s in zip(window, spatial)]
        if any(pad):
            image = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pad])
        axes = [window_starts(n, w, 0.0) for n, w in zip(image.shape[1:], window)]
        positions = [()]
        for starts in axes:
            positions = [p + (s,) for p in positions for s in starts]
        picks = np.unique(np.linspace(0, len(positions) - 1, min(per_image, len(positions))).round().astype(int))
        for i in picks:
            sl = tuple(slice(s, s + w) for s, w in zip(positions[i], window))
            yield np.ascontiguousarray(image[(slice(None),) + sl][None], dtype=np.float32)


def calibration_key(studies: Sequence[Sequence[str | Path]]) -> str:
    """BLAKE2b of the calibration studies' bytes (each study: its channel files or DICOM folder)."""
    from medseg.io.files import content_hash

    h = hashlib.blake2b(digest_size=16)
    for sources in studies:
        h.update(content_hash(sources).encode())
    return h.hexdigest()

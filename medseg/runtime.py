"""The runtime policy: which device, which autocast precision and how many CPU threads torch uses.

One policy for every entry point (the predictor, the trainer, the CRF command). It is resolved and
validated once, up front, into a :class:`Runtime`, and applied as a context rather than as a
process-wide side effect::

    >>> from medseg.runtime import resolve_runtime                    # doctest: +SKIP
    >>> runtime = resolve_runtime("auto", autocast="bf16")            # errors now, not mid-run
    >>> with runtime.activate():          # torch's CPU threads = runtime.threads, restored on exit
    ...     with runtime.autocast():      # torch.autocast(runtime.device.type, torch.bfloat16)
    ...         logits = net(x.to(runtime.device))

Rules:

- **device**: ``auto`` is the first CUDA device when torch sees one, else the CPU; ``cpu``,
  ``cuda`` and ``cuda:N`` are taken as asked and refused (:class:`DeviceError`) when absent.
- **autocast**: ``none`` (float32), ``bf16`` (CPU or CUDA; about twice as fast for a U-Net on a
  CPU), ``fp16`` (CUDA only), or ``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16), none on
  the CPU. :func:`resolve_runtime` turns ``auto`` into one of the other three.
- **threads** (:func:`default_threads`): ``MEDSEG_THREADS`` when set; else 2 torch intra-op
  threads (at most the CPU count), or 1 when the machine is already busy (1-minute load average above the CPU count), where several
  spinning OpenMP threads per process slow everyone down many times over. More than 2 threads
  was not faster for medseg's models on small machines. Pin the count to compare runs bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal

from medseg.errors import MedsegError

if TYPE_CHECKING:
    import torch

__all__ = ["THREADS_ENV", "DeviceError", "AutocastMode", "AUTOCAST_MODES", "DEVICE_CHOICES", "Runtime", "resolve_device",
           "autocast_dtype", "default_threads", "resolve_runtime"]

AutocastMode = Literal["none", "bf16", "fp16", "auto"]
AUTOCAST_MODES: tuple[str, ...] = ("none", "bf16", "fp16", "auto")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class DeviceError(MedsegError, ValueError):
    """A device that cannot be used here: a misspelt name, or CUDA (or a CUDA index) that is absent.

    Reported by the CLI as one line (no file is to blame).
    """


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``"auto"`` picks the first CUDA device when torch sees one, else the CPU.

    Raises:
        TypeError: ``device`` is not a string.
        DeviceError: ``device`` is not one of the accepted spellings, or CUDA was asked for and is
            not available (or the index does not exist).
    """
    import torch

    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', not {type(device).__name__}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceError(f"device {device!r}: expected 'cuda' or 'cuda:N' with N a device index")
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise DeviceError(f"device {device!r} asked for, but no CUDA device is available "
                              f"(torch {torch.__version__} built {built} CUDA); use --device cpu or auto")
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {device!r} asked for, but only {count} CUDA device(s) exist (0..{count - 1})")
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"device must be one of auto, cpu, cuda or cuda:N, not {device!r}")


def _concrete_autocast(device_type: str, mode: str) -> str:
    """``mode`` with ``auto`` replaced by the precision it stands for on ``device_type``."""
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, not {mode!r}")
    if mode == "auto":
        if device_type != "cuda":
            return "none"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device_type != "cuda":
        raise ValueError("autocast 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    return mode


def autocast_dtype(device_type: str, mode: str):
    """The autocast dtype of ``mode`` on ``device_type`` (``"cpu"``/``"cuda"``), or None for full precision.

    ``none`` → None; ``bf16`` → ``torch.bfloat16`` (CPU or CUDA); ``fp16`` → ``torch.float16``
    (CUDA only: CPU half-precision convolutions are slow or missing); ``auto`` → bf16 on CUDA
    (fp16 where bf16 is unsupported), None on the CPU.

    Raises:
        ValueError: unknown ``mode``, or fp16 asked for on the CPU.
    """
    import torch

    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[_concrete_autocast(device_type, mode)]


THREADS_ENV = "MEDSEG_THREADS"


def default_threads() -> int:
    """torch's intra-op CPU threads when none are asked for: ``MEDSEG_THREADS`` when set (pins the
    count for every medseg process, batch workers included), else 2 (at most the CPU count), or 1
    when the 1-minute load average already exceeds the CPU count (a busy, shared machine).

    Raises:
        ValueError: ``MEDSEG_THREADS`` is not a whole number ≥ 1.
    """
    pinned = os.environ.get(THREADS_ENV, "").strip()
    if pinned:
        if not pinned.isdigit() or int(pinned) < 1:
            raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, not {pinned!r}")
        return int(pinned)
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] > n
    except OSError:  # no load average on this platform
        busy = False
    return 1 if busy else min(2, n)


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: build it with :func:`resolve_runtime` (which validates every field).

    Attributes:
        device: the ``torch.device`` networks and tensors go to.
        autocast_mode: ``"none"``, ``"bf16"`` or ``"fp16"`` (never ``"auto"``; possible on ``device``).
        threads: torch intra-op CPU threads while :meth:`activate` is in force (≥ 1).
    """

    device: torch.device
    autocast_mode: str
    threads: int

    def __post_init__(self):
        import torch

        if not isinstance(self.device, torch.device):
            raise TypeError(f"device must be a torch.device (see resolve_runtime), not {type(self.device).__name__}")
        if self.autocast_mode == "auto" or _concrete_autocast(self.device.type, self.autocast_mode) != self.autocast_mode:
            raise ValueError(f"autocast_mode must be none, bf16 or fp16, not {self.autocast_mode!r} "
                             "(resolve_runtime turns 'auto' into one of them)")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, not {self.threads!r}")

    @property
    def autocast_dtype(self):
        """``torch.bfloat16``, ``torch.float16`` or None (full precision)."""
        return autocast_dtype(self.device.type, self.autocast_mode)

    def autocast(self):
        """``torch.autocast`` on the runtime's device and dtype, or a no-op context for ``none``."""
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def activate(self) -> Iterator["Runtime"]:
        """Use :attr:`threads` torch CPU threads inside the ``with`` block; put back the previous count on exit.

        torch keeps this setting per calling thread (OpenMP), so activations in several threads
        do not disturb each other; nested activations restore in turn. CPU work of a CUDA run
        (copies, stitching, CPU-side torch ops) uses the same count.
        """
        import torch

        before = torch.get_num_threads()
        if before != self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield self
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def resolve_runtime(device: str = "auto", autocast: str = "none", threads: int | None = None) -> Runtime:
    """Validate a device, an autocast mode and a thread count together, before any work starts.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`resolve_device`).
        autocast: ``none``, ``bf16``, ``fp16`` or ``auto`` (see :func:`autocast_dtype`).
        threads: torch intra-op CPU threads; ``None``: :func:`default_threads`.

    Raises:
        DeviceError: misspelt or absent device.
        ValueError: unknown autocast mode, fp16 on the CPU, or a thread count below 1.
    """
    dev = resolve_device(device)
    mode = _concrete_autocast(dev.type, autocast)
    return Runtime(device=dev, autocast_mode=mode, threads=default_threads() if threads is None else threads)

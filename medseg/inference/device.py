"""Device and autocast selection for inference (the caller picks; models hold no defaults)."""

from __future__ import annotations

from typing import Literal

from medseg.errors import MedsegError

__all__ = ["DeviceError", "AutocastMode", "resolve_device", "autocast_dtype", "AUTOCAST_MODES", "DEVICE_CHOICES"]

AutocastMode = Literal["none", "bf16", "fp16"]
AUTOCAST_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class DeviceError(MedsegError, ValueError):
    """A device that was asked for is not available here (reported as one line by the CLI)."""


def resolve_device(device: str = "auto"):
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``"auto"`` picks the first CUDA device when torch sees one, else the CPU.

    Raises:
        ValueError: ``device`` is not one of the accepted spellings.
        DeviceError: CUDA was asked for and is not available (or the index does not exist).
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
            raise ValueError(f"device {device!r}: expected 'cuda' or 'cuda:N' with N a device index")
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise DeviceError(f"device {device!r} asked for, but no CUDA device is available "
                              f"(torch {torch.__version__} built {built} CUDA); use --device cpu or auto")
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {device!r} asked for, but only {count} CUDA device(s) exist (0..{count - 1})")
        return torch.device(f"cuda:{index}")
    raise ValueError(f"device must be one of auto, cpu, cuda or cuda:N, not {device!r}")


def autocast_dtype(device_type: str, mode: str):
    """The autocast dtype for ``mode`` on ``device_type`` (``"cpu"``/``"cuda"``), or None for ``"none"``.

    bf16 works on CPUs (about twice as fast for a U-Net here) and on CUDA; fp16 only on CUDA
    (CPU half-precision convolutions are slow or missing).

    Raises:
        ValueError: unknown ``mode``, or fp16 asked for on the CPU.
    """
    import torch

    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, not {mode!r}")
    if mode == "none":
        return None
    if mode == "fp16":
        if device_type != "cuda":
            raise ValueError("autocast 'fp16' needs a CUDA device; use 'bf16' on the CPU")
        return torch.float16
    return torch.bfloat16

"""How large an image medseg agrees to read: checked from the header, before any voxel is read.

Two limits, both checked by :func:`check_image_size` (every reader of :mod:`medseg.io` calls it
once it knows the declared shape and voxel type, before it allocates anything):

- a voxel count, :func:`max_voxels`: the environment variable ``MEDSEG_MAX_VOXELS`` (default
  2**31 = 2,147,483,648 voxels, far above any real scan: a 512×512×2000 CT is 0.5e9). The CLI's
  ``--max-voxels`` sets that variable (:func:`set_max_voxels`), so batch workers started from it
  inherit the same limit;
- the memory available now, :func:`available_memory`: the voxel array as read (voxels × bytes per
  voxel) must fit in it. This one cannot be raised: reading more than the machine can hold ends
  in the out-of-memory killer or in swap.

An image is refused when it breaks either, with one line naming the file, its size and the limit.
Before both, the readers check the declared size against the file itself (voxel bytes after the
header for raw data, at most :data:`MAX_DEFLATE_RATIO` times the file for gzip-compressed data).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from medseg.errors import InputError, MedsegError

__all__ = ["MAX_VOXELS_ENV", "DEFAULT_MAX_VOXELS", "MAX_DEFLATE_RATIO", "max_voxels", "set_max_voxels",
           "available_memory", "check_image_size"]

MAX_VOXELS_ENV = "MEDSEG_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2 ** 31
# deflate cannot compress better than about 1032:1: gzip-compressed voxels (.nii.gz, NRRD/MetaImage
# with compression) whose header declares more than this many times the file size are corrupt
MAX_DEFLATE_RATIO = 1100


def _parse_voxels(text: str) -> int:
    """A positive whole number of voxels: ``4000000000``, ``4_000_000_000`` or ``4e9``."""
    value: float | int
    try:
        value = int(text.strip())
    except ValueError:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
    if not (isinstance(value, int) or (math.isfinite(value) and value == int(value))) or value < 1:
        raise MedsegError(f"{MAX_VOXELS_ENV}={text!r}: expected a positive whole number of voxels (e.g. 4000000000 or 4e9)")
    return int(value)


def max_voxels() -> int:
    """The largest voxel count (voxels × components) medseg reads: ``MEDSEG_MAX_VOXELS`` when set,
    else :data:`DEFAULT_MAX_VOXELS` (2**31). Read from the environment at every call.

    Raises:
        MedsegError: ``MEDSEG_MAX_VOXELS`` is set to something other than a positive whole number.
    """
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    return _parse_voxels(text) if text else DEFAULT_MAX_VOXELS


def set_max_voxels(voxels: int | None) -> None:
    """Set the voxel limit for this process and every process it starts (``MEDSEG_MAX_VOXELS``);
    ``None`` goes back to the default.

    Raises:
        MedsegError: ``voxels`` is not a positive whole number.
    """
    if voxels is None:
        os.environ.pop(MAX_VOXELS_ENV, None)
        return
    if isinstance(voxels, bool) or not isinstance(voxels, int) or voxels < 1:
        raise MedsegError(f"--max-voxels: expected a positive whole number of voxels, not {voxels!r}")
    os.environ[MAX_VOXELS_ENV] = str(voxels)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None when unknown.

    The smaller of the kernel's ``MemAvailable`` (/proc/meminfo; free pages where that is missing)
    and, inside a container, the cgroup's memory limit minus its current usage (cgroup v2
    ``memory.max``/``memory.current``, or v1 ``memory.limit_in_bytes``/``memory.usage_in_bytes``).
    """
    candidates: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # "max" or a huge number: no limit
            candidates.append(max(limit - usage, 0))
            break
    return min(candidates) if candidates else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _count(n: int) -> str:
    """``720``, ``1.0e10``: plain below a million, else in scientific notation."""
    return str(n) if n < 1_000_000 else f"{n:.1e}".replace("e+0", "e").replace("e+", "e")


def check_image_size(path: str | Path, shape: tuple[int, ...], bytes_per_voxel: int, type_name: str) -> None:
    """Refuse an image too large to read, from its declared ``shape`` alone.

    Args:
        path: the file or folder, for the message.
        shape: declared size of every axis, components included (e.g. ``(4000, 2500, 1000)``).
        bytes_per_voxel: bytes of one array element as read (2 for int16).
        type_name: the voxel type for the message (``"int16"``, ``"16-bit signed integer"``).

    Raises:
        InputError: ``"big.nii: 4000×2500×1000 = 1.0e10 voxels (20.0 GB as int16) exceeds the limit
            of 2147483648 voxels; raise it with --max-voxels or MEDSEG_MAX_VOXELS"``, or the same
            size against the memory available now.
    """
    voxels = math.prod(int(s) for s in shape)
    nbytes = voxels * int(bytes_per_voxel)
    size = f"{'×'.join(str(int(s)) for s in shape)} = {_count(voxels)} voxels ({_gb(nbytes)} as {type_name})"
    limit = max_voxels()
    if voxels > limit:
        raise InputError(path, f"{size} exceeds the limit of {limit} voxels; raise it with --max-voxels or "
                         f"{MAX_VOXELS_ENV}")
    free = available_memory()
    if free is not None and nbytes > free:
        raise InputError(path, f"{size} needs more memory than is available ({_gb(free)} free)")

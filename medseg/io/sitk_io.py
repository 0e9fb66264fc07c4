"""DICOM series and NRRD/MHA through SimpleITK (GDCM decodes compressed DICOM, e.g. JPEG 2000).

ITK stores geometry in LPS and arrays as ``(z, y, x)``; here it becomes a :class:`Volume` with
a RAS+ affine and an ``(i, j, k)`` = ``(x, y, z)`` array, the same convention as NIfTI files.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.files import detached_data_files
from medseg.io.limits import MAX_DEFLATE_RATIO, check_image_size
from medseg.io.volume import Volume

__all__ = [
    "check_sitk_size",
    "DicomSeries",
    "is_dicom_file",
    "list_dicom_series",
    "read_dicom_series",
    "read_sitk_file",
    "write_sitk_file",
    "sitk_to_volume",
    "volume_to_sitk",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_LOG = logging.getLogger("medseg.io")


class _NativeOutput:
    """Keep what native code (ITK, GDCM, MetaIO, OpenJPEG) prints to stderr off the terminal.

    Inside the block, file descriptor 2 points at a temporary file; afterwards ``text`` holds what
    was written there, and each line goes to the ``medseg.io`` logger at DEBUG level. ITK's
    warnings, GDCM's and MetaIO's messages are written straight to the C++ error stream, where
    no ITK setting reaches them all, so the descriptor itself is redirected. One block at a time
    in the process (the redirection is process-wide); blocks nest.
    """

    _lock = threading.RLock()

    def __init__(self) -> None:
        self.text = ""
        self._file = None
        self._saved: int | None = None

    def __enter__(self) -> "_NativeOutput":
        self._lock.acquire()
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except OSError:  # no usable descriptor 2: nothing to keep off it
            if self._saved is not None:
                os.close(self._saved)
                self._saved = None
            if self._file is not None:
                self._file.close()
                self._file = None
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._file.seek(0)
                self.text = self._file.read().decode("utf-8", "replace")
                for line in self.text.splitlines():
                    if line.strip():
                        _LOG.debug("native: %s", line.rstrip())
        finally:
            if self._file is not None:
                self._file.close()
            self._lock.release()

    def first_line(self) -> str:
        """The first non-blank line printed in the block ('' when none)."""
        return next((" ".join(line.split()) for line in self.text.splitlines() if line.strip()), "")


def sitk_to_volume(img, source: str | None = None, meta: dict | None = None) -> Volume:
    """Convert a 3D SimpleITK image into a :class:`Volume` (array ``(x, y, z)``, RAS+ affine)."""
    import SimpleITK as sitk

    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    array = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    return Volume(array=array, affine=affine, source=source, meta=dict(meta or {}))


def volume_to_sitk(volume: Volume):
    """Convert a :class:`Volume` into a SimpleITK image with the same world geometry (LPS)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    spacing = np.asarray(volume.spacing)
    lps = LPS_TO_RAS @ volume.affine[:3, :3]
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ volume.affine[:3, 3]))
    return img


def _check_sitk_image(path: Path, img) -> None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"{img.GetNumberOfComponentsPerPixel()} components per voxel (a vector/RGB image), "
                         "medseg needs one scalar per voxel")
    dim = img.GetDimension()
    if dim != 3:
        raise InputError(path, f"{dim}D image {img.GetSize()}: medseg needs a 3D volume")
    spacing = img.GetSpacing()
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(path, f"zero or negative voxel spacing {tuple(spacing)} mm")
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(path, "singular direction matrix (the voxel-to-world map has zero volume)")


def _check_finite(path: Path, array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(path, f"{int(bad.sum())} NaN/Inf voxels")


def _itk_detail(exc: RuntimeError, native: _NativeOutput | None = None) -> str:
    """The person-readable part of an ITK exception (the text after ``ITK ERROR: Class(0x…):``),
    followed by the first line native code printed meanwhile, if any."""
    text = str(exc).strip()
    m = re.search(r"(?:ITK |sitk::)ERROR: (?:[^:\n]*?\(0x[0-9a-f]+\): )?(.*)", text, flags=re.S)
    detail = " ".join((m.group(1) if m else (text.splitlines()[-1] if text else "")).split())
    extra = native.first_line() if native is not None else ""
    if extra and extra not in detail:
        detail = f"{detail}; {extra}" if detail else extra
    return detail[:200]


def _voxel_type(reader) -> tuple[int, str]:
    """Bytes per component and ITK's name of the voxel type of an image whose information was
    read (``"16-bit signed integer"``, ``"vector of 8-bit unsigned integer"``, ``"complex of
    32-bit float"``)."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    m = re.search(r"(\d+)-bit", name)
    nbytes = int(m.group(1)) // 8 if m else 8
    return nbytes * (2 if name.startswith("complex") else 1), name


def _check_image_information(path: Path, reader, slices: int = 1) -> None:
    """Refuse, from the header alone (before any voxel is read), an image medseg cannot use:
    complex or multi-component voxels, not 3D, or larger than the limits of
    :mod:`medseg.io.limits`. ``slices``: files of a DICOM series (each holding ``reader``'s size)."""
    size = tuple(int(s) for s in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    nbytes, name = _voxel_type(reader)
    if name.startswith("complex"):
        raise InputError(path, f"complex-valued voxels ({name}); medseg reads real-valued scans")
    if components > 1:
        rgb = components in (3, 4) and "8-bit unsigned" in name
        kind = ("RGB image" if components == 3 else "RGBA image") if rgb else "vector image"
        raise InputError(path, f"{kind} ({components} components per voxel): medseg reads greyscale scans "
                         "(one value per voxel)")
    if slices > 1:
        size = size[:2] + (size[2] * slices if len(size) > 2 else slices,)
    if len(size) == 4 and size[3] != 1:
        raise InputError(path, f"4D data {size}: a series of {size[3]} volumes, not one 3D volume")
    if len(size) not in (3, 4):
        raise InputError(path, f"{len(size)}D image {size}: medseg needs a 3D volume")
    check_image_size(path, size, nbytes, name)


def _header_text(path: Path) -> tuple[str, int]:
    """The text header of a MetaImage or NRRD file and its length in bytes (where attached voxel
    data start: after ``ElementDataFile = …`` in a MetaImage, after the blank line in an NRRD)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        end = head.find(b"\n\n")
        length = end + 2 if end >= 0 else len(head)
    else:
        m = re.search(rb"^[ \t]*ElementDataFile[ \t]*=[^\n]*\n", head, flags=re.M | re.I)
        length = m.end() if m else len(head)
    return head[:length].decode("latin-1"), length


def _header_field(text: str, *keys: str) -> str | None:
    """The value of the first of ``keys`` in a MetaImage (``Key = value``) or NRRD (``key: value``) header."""
    for key in keys:
        m = re.search(rf"^[ \t]*{key}[ \t]*[=:][ \t]*([^\n]*)$", text, flags=re.M | re.I)
        if m:
            return m.group(1).strip()
    return None


def _check_header_spacing(path: Path, text: str) -> None:
    """Refuse zero/negative spacing written in a MetaImage or NRRD header (ITK would silently
    turn a negative spacing into a flipped direction, and refuses zero with a cryptic message)."""
    patterns = (r"^\s*(?:ElementSpacing|ElementSize)\s*=\s*([^\n]+)", r"^\s*spacings\s*:\s*([^\n]+)")
    for pattern in patterns:
        for m in re.finditer(pattern, text, flags=re.M | re.I):
            values = []
            for tok in m.group(1).split():
                try:
                    values.append(float(tok))
                except ValueError:
                    continue  # nan for non-spatial axes in NRRD
            if any(v <= 0 for v in values):
                raise InputError(path, f"zero or negative voxel spacing {tuple(values)} mm in the header")


def _check_data_size(path: Path, text: str, header_bytes: int, reader) -> None:
    """Refuse a header that declares more voxel bytes than its data can hold: the attached data
    after the header, or the detached file (``.raw`` of a ``.mhd``, data file of a ``.nhdr``).
    Raw data must hold them all; gzip-compressed data at most 1100 times its size. Other
    encodings (bzip2, text, file lists) are left to ITK."""
    nbytes, name = _voxel_type(reader)
    size = tuple(int(s) for s in reader.GetSize())
    declared = int(np.prod(size, dtype=np.int64)) * int(reader.GetNumberOfComponents()) * nbytes
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        encoding = (_header_field(text, "encoding") or "raw").lower()
        ratio = {"raw": 1, "gzip": MAX_DEFLATE_RATIO, "gz": MAX_DEFLATE_RATIO}.get(encoding)
    else:
        compressed = (_header_field(text, "CompressedData") or "false").lower() == "true"
        ratio = MAX_DEFLATE_RATIO if compressed else 1
    if ratio is None:
        return
    detached = detached_data_files(path)
    if detached:
        data = detached[0]
        held = data.stat().st_size
    elif path.suffix.lower() in (".mhd", ".nhdr"):
        return  # a list or pattern of data files
    else:
        data = path
        held = max(path.stat().st_size - header_bytes, 0)
    if declared <= held * ratio:
        return
    what = f"{declared} bytes of voxels ({'×'.join(map(str, size))} {name})"
    if data == path:
        raise InputError(path, f"header declares {what} but the file holds at most {held * ratio}: truncated")
    raise InputError(data, f"holds {held} bytes, but its header {path} declares {what}: truncated")


def _checked_sitk_reader(path: Path):
    """An ITK reader of ``path`` whose header passed every check made before reading voxels."""
    import SimpleITK as sitk

    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    text, header_bytes = _header_text(path)
    _check_header_spacing(path, text)
    for data in detached_data_files(path):
        if not data.is_file():
            raise InputError(data, f"{'does not exist' if not data.exists() else 'is not a file'} "
                             f"(the voxel data file named by {path})")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    native = _NativeOutput()
    try:
        with native:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"not a readable NRRD/MetaImage file ({_itk_detail(exc, native)})") from None
    _check_image_information(path, reader)
    _check_data_size(path, text, header_bytes, reader)
    return reader


def check_sitk_size(path: str | Path) -> None:
    """The checks :func:`read_sitk_file` makes before reading any voxel, reading only the header.

    Raises:
        InputError: as :func:`read_sitk_file`.
    """
    _checked_sitk_reader(Path(path))


def read_sitk_file(path: str | Path) -> Volume:
    """Read an NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, validating it like NIfTI.

    The header is read first: a missing or short detached data file, complex or multi-component
    voxels, 4D series and images over the limits of :mod:`medseg.io.limits` are refused before
    any voxel is read.
    """
    path = Path(path)
    reader = _checked_sitk_reader(path)
    native = _NativeOutput()
    try:
        with native:
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"voxel data cannot be read ({_itk_detail(exc, native)})") from None
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    _check_sitk_image(path, img)
    vol = sitk_to_volume(img, source=str(path), meta={"format": path.suffix.lower().lstrip(".")})
    _check_finite(path, vol.array)
    return vol


def write_sitk_file(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NRRD/MHA (by suffix) atomically."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_path(path) as tmp, _NativeOutput():
        sitk.WriteImage(volume_to_sitk(volume), str(tmp), useCompression=True)
    return path


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    files: tuple[str, ...]
    modality: str = ""


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm`` file or a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _header_reader(file: str):
    """An ImageFileReader of ``file`` with its header read (RuntimeError when it cannot be)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series directly inside ``folder`` (GDCM's grouping by SeriesInstanceUID)."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = []
    with _NativeOutput():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    for uid in uids:
        with _NativeOutput():
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        description = modality = ""
        if files:
            try:
                with _NativeOutput():
                    reader = _header_reader(files[0])
                description = _tag(reader, "0008|103e")
                modality = _tag(reader, "0008|0060")
            except RuntimeError:
                pass
        series.append(DicomSeries(uid=uid, description=description, files=files, modality=modality))
    return series


def _dicom_header(file: str | Path):
    """:func:`_header_reader` of one file of a series; InputError naming the file when it fails."""
    native = _NativeOutput()
    try:
        with native:
            return _header_reader(str(file))
    except RuntimeError as exc:
        detail = native.first_line() or _itk_detail(exc)
        if not detail or "Unable to determine ImageIO reader" in detail:
            detail = "GDCM cannot parse it"
        raise InputError(file, f"DICOM file cannot be read: truncated or corrupt ({detail})") from None


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) in little endian


def _looks_like_broken_image(file: Path) -> bool:
    """True for a DICOM file that is an image or not DICOM at all: it holds a Pixel Data element,
    or it has the ``DICM`` preamble but no file meta group after it. False for a DICOM object
    without pixels (a structured report, a presentation state), which is no slice of a series."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError:
        return True
    if _PIXEL_DATA_TAG in data:
        return True
    meta_group = data[132:134] == b"\x02\x00" and data[136:138].isalpha() and data[136:138].isupper()
    return data[128:132] == b"DICM" and not meta_group


def _check_readable_files(folder: Path, series: list[DicomSeries]) -> None:
    """Refuse a folder holding a DICOM file (a ``.dcm`` name or the ``DICM`` preamble) that GDCM
    put in no series because it cannot parse it: an image left out would be a missing slice.
    DICOM objects without pixel data (reports, presentation states) are left alone."""
    grouped = {Path(f).name for s in series for f in s.files}
    for f in sorted(folder.iterdir()):
        if f.name in grouped or f.name.startswith(".") or not f.is_file() or not is_dicom_file(f):
            continue
        if _looks_like_broken_image(f):
            _dicom_header(f)


def _check_slice_positions(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a series with missing slices or uneven slice spacing (ITK would only warn)."""
    if len(files) < 2:
        raise InputError(folder, f"DICOM series has {len(files)} slice: a 3D volume needs at least 2")
    positions = []
    normal = None
    for f in files:
        reader = _dicom_header(f)
        pos = _tag(reader, "0020|0032")
        ori = _tag(reader, "0020|0037")
        if not pos or not ori:
            raise InputError(f, "DICOM slice without ImagePositionPatient/ImageOrientationPatient")
        if normal is None:
            o = np.asarray([float(v) for v in ori.split("\\")])
            normal = np.cross(o[:3], o[3:])
        positions.append(np.asarray([float(v) for v in pos.split("\\")]))
    z = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(z)
    if np.any(gaps < 1e-4):
        raise InputError(folder, "DICOM series has two slices at the same position (duplicate or mixed acquisitions)")
    step = float(np.median(gaps))
    tol = max(0.01 * step, 1e-3)
    if np.all(np.abs(gaps - step) <= tol):
        return
    missing = int(np.sum(np.round(gaps / step) - 1).clip(min=0))
    worst = int(np.argmax(np.abs(gaps - step)))
    if missing > 0 and np.all(np.abs(gaps - np.round(gaps / step) * step) <= tol):
        raise InputError(folder, f"DICOM series is missing {missing} slice(s): gap of {gaps[worst]:.3f} mm "
                         f"after slice {worst + 1} of {len(files)} where the spacing is {step:.3f} mm")
    raise InputError(folder, f"uneven slice spacing in DICOM series: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                     f"(median {step:.3f} mm)")


def _check_decodable_files(files: tuple[str, ...]) -> None:
    """Decode each file of a series that failed as a whole; InputError naming the first that fails."""
    import SimpleITK as sitk

    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(f)
        native = _NativeOutput()
        try:
            with native:
                reader.Execute()
        except RuntimeError as exc:
            raise InputError(f, f"DICOM pixel data cannot be decoded ({_itk_detail(exc, native)})") from None


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read the one DICOM series in ``folder`` (or the one named by ``series_uid``).

    Voxels are GDCM's decoded values with the rescale slope/intercept applied (CT in HU).

    Raises:
        InputError: empty folder, no DICOM files, a DICOM file that cannot be read (named),
            several series and no ``series_uid`` (the message lists every SeriesInstanceUID with
            its description), an unknown ``series_uid``, RGB or complex voxels, a series larger
            than the limits of :mod:`medseg.io.limits` (checked from the first file's header
            before any pixel is decoded), missing slices or uneven slice spacing, pixel data that
            cannot be decoded (naming the file).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    if not any(p.is_file() for p in folder.iterdir()):
        raise InputError(folder, "empty folder: no files to read")
    series = list_dicom_series(folder)
    _check_readable_files(folder, series)
    if not series:
        raise InputError(folder, "no DICOM series found in this folder")
    if series_uid is not None:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            raise InputError(folder, f"no series with SeriesInstanceUID {series_uid}; found: "
                             + "; ".join(f"{s.uid} ({s.description or 'no description'})" for s in series))
        chosen = match[0]
    elif len(series) > 1:
        raise InputError(folder, f"{len(series)} DICOM series in one folder, pick one with --series UID: "
                         + "; ".join(f"{s.uid or '(empty SeriesInstanceUID)'} ({s.description or 'no description'}, {len(s.files)} files)" for s in series))
    else:
        chosen = series[0]
    _check_image_information(folder, _dicom_header(chosen.files[0]), slices=len(chosen.files))
    _check_slice_positions(folder, chosen.files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    native = _NativeOutput()
    try:
        with native:
            img = reader.Execute()
    except RuntimeError as exc:
        _check_decodable_files(chosen.files)
        raise InputError(folder, f"DICOM series cannot be decoded ({_itk_detail(exc, native)})") from None
    _check_sitk_image(folder, img)
    meta = {"format": "dicom", "dicom": {"series_uid": chosen.uid, "description": chosen.description,
                                         "modality": chosen.modality, "n_files": len(chosen.files)}}
    vol = sitk_to_volume(img, source=str(folder), meta=meta)
    _check_finite(folder, vol.array)
    return vol

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
from medseg.io.dicom import (
    DicomFrame,
    check_positions,
    read_dicom_headers,
    resample_tilt,
    series_provenance,
    stack_affine_lps,
    stack_frames,
)
from medseg.io.files import detached_data_files
from medseg.io.limits import MAX_DEFLATE_RATIO, check_image_size
from medseg.io.volume import Volume

__all__ = [
    "check_sitk_size",
    "DicomSeries",
    "dicom_provenance",
    "is_dicom_file",
    "list_dicom_series",
    "read_dicom_series",
    "read_sitk_file",
    "write_sitk_file",
    "sitk_to_volume",
    "volume_to_sitk",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
LPS_TO_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])
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


def _choose_series(folder: Path, series_uid: str | None) -> DicomSeries:
    """The series of ``folder`` to read: the only one, or the one named by ``series_uid``."""
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
        return match[0]
    if len(series) > 1:
        raise InputError(folder, f"{len(series)} DICOM series in one folder, pick one with --series UID: "
                         + "; ".join(f"{s.uid or '(empty SeriesInstanceUID)'} ({s.description or 'no description'}, "
                                     f"{len(s.files)} files)" for s in series))
    return series[0]


def _series_files(path: Path, series_uid: str | None) -> tuple[str, ...]:
    """The files of the series at ``path``: a folder (:func:`_choose_series`) or one multi-frame file."""
    if path.is_file():
        if not is_dicom_file(path):
            raise InputError(path, "not a DICOM file")
        return (str(path),)
    if not path.exists():
        raise InputError(path, "does not exist")
    return _choose_series(path, series_uid).files


def _ordered_stack(path: Path, files: tuple[str, ...]) -> tuple[list[DicomFrame], dict]:
    headers = dict(zip(files, read_dicom_headers(files)))
    return stack_frames(path, files, [headers[f] for f in files]), headers


def dicom_provenance(series_dir: str | Path, series_uid: str | None = None) -> dict:
    """What a derived object (DICOM-SEG, RTSTRUCT) needs to refer to the series that
    :func:`read_dicom_series` reads from ``series_dir`` (a folder, or one multi-frame file),
    read from the headers only (no pixel data). The same dict is ``Volume.meta["dicom"]`` of the
    volume read from it (which adds ``n_files`` and ``tilt_deg``/``tilt_resampled``).

    Keys:
        ``series_dir`` (str): the folder (or multi-frame file) as given.
        ``study_instance_uid``, ``series_instance_uid``, ``frame_of_reference_uid`` (str): the
            series' UIDs; generated when empty in the files (see ``generated``).
        ``sop_class_uid`` (str): SOPClassUID of the first instance.
        ``modality`` (str): e.g. ``"CT"``, ``"MR"``.
        ``instances`` (list of dict, one per slice, in the volume's ``k`` order: ``instances[k]``
            is the slice at array index ``[:, :, k]``): ``sop_instance_uid`` (str),
            ``sop_class_uid`` (str), ``file`` (str path), ``frame`` (1-based frame number in a
            multi-frame file, ``None`` for a single-frame file), ``position`` (list of 3 floats:
            ImagePositionPatient, LPS mm, as stored, before any tilt resampling).
        ``tags`` (dict DICOM keyword → str, ``""`` when absent): the patient, study, series and
            equipment tags of :data:`medseg.io.dicom.PROVENANCE_TAGS` (PatientID, PatientName,
            PatientBirthDate, PatientSex, StudyDate, StudyTime, AccessionNumber, StudyID,
            ReferringPhysicianName, SeriesNumber, SeriesDescription, Manufacturer, …), from the
            first instance; multi-valued tags joined by ``\\``.
        ``generated`` (list of str): the keywords among StudyInstanceUID, SeriesInstanceUID,
            FrameOfReferenceUID, SOPInstanceUID that were empty in the files (and, for
            SOPInstanceUID, their file meta) and were generated deterministically from the
            series' content with :func:`pydicom.uid.generate_uid` (the same on every read).
        ``from_file_meta`` (list of str): ``"SOPInstanceUID"``/``"SOPClassUID"`` when they were
            empty in the datasets and taken from MediaStorageSOPInstanceUID/ClassUID.
        ``warnings`` (list of str): one line per generated or missing UID (``"<series_dir>: …"``).

    Raises:
        InputError: as :func:`read_dicom_series` for a folder that holds no readable series
            (several series and no ``series_uid``, mixed orientations, a mosaic, …).
    """
    path = Path(series_dir)
    files = _series_files(path, series_uid)
    frames, headers = _ordered_stack(path, files)
    return series_provenance(series_dir, frames, headers)


def read_dicom_series(folder: str | Path, series_uid: str | None = None, *, resample_tilt: bool = False) -> Volume:
    """Read the one DICOM series in ``folder`` (or the one named by ``series_uid``), or one
    multi-frame (enhanced CT/MR) file given as ``folder``.

    Voxels are GDCM's decoded values with the rescale slope/intercept applied (CT in HU). Slices
    (frames) are ordered along the slice normal, ascending; ``meta["dicom"]`` holds the series'
    provenance (:func:`dicom_provenance`) and ``tilt_deg``, the gantry tilt measured from the
    slice positions (0.0 for a regular stack).

    Args:
        resample_tilt: a stack whose slice positions are sheared away from the slice normal
            (gantry tilt) is refused unless this is set; then its slices are shifted onto a
            regular grid with the true geometry (:func:`medseg.io.dicom.resample_tilt`),
            ``meta["dicom"]["tilt_resampled"]`` is True and ``meta["warnings"]`` says so.

    Raises:
        InputError: empty folder, no DICOM files, a DICOM file that cannot be read (named),
            several series and no ``series_uid`` (the message lists every SeriesInstanceUID with
            its description), an unknown ``series_uid``, RGB or complex voxels, a series larger
            than the limits of :mod:`medseg.io.limits` (checked from the first file's header
            before any pixel is decoded), a Siemens mosaic, slices in several orientations, 4D
            data, missing slices or uneven slice spacing, a gantry tilt without
            ``resample_tilt``, pixel data that cannot be decoded (naming the file).
    """
    import SimpleITK as sitk

    path = Path(folder)
    files = _series_files(path, series_uid)
    _check_image_information(path, _dicom_header(files[0]), slices=len(files))
    frames, headers = _ordered_stack(path, files)
    geometry = check_positions(path, frames)
    if geometry.tilt_deg and not resample_tilt:
        raise InputError(path, f"gantry tilt of {geometry.tilt_deg:.2f}°: slice positions are sheared away from the "
                         f"slice normal ({geometry.offset_mm:.2f} mm across the stack), so a regular grid would put "
                         "slices in the wrong place; read it with --resample-tilt to resample onto a regular grid")
    multi_frame = frames[0].frame is not None
    native = _NativeOutput()
    try:
        with native:
            if multi_frame:
                img = sitk.ReadImage(files[0])
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames([fr.file for fr in frames])
                img = reader.Execute()
    except RuntimeError as exc:
        _check_decodable_files(files)
        raise InputError(path, f"DICOM series cannot be decoded ({_itk_detail(exc, native)})") from None
    _check_sitk_image(path, img)
    provenance = series_provenance(folder, frames, headers)
    meta = {"format": "dicom", "dicom": {**provenance, "n_files": len(files), "tilt_deg": geometry.tilt_deg,
                                         "tilt_resampled": False}}
    warnings = list(provenance["warnings"])
    vol = sitk_to_volume(img, source=str(path), meta=meta)
    if multi_frame or geometry.tilt_deg:
        array = vol.array
        if multi_frame:  # ITK keeps the file's frame order; slices go along the normal
            if array.shape[2] != len(frames):
                raise InputError(path, f"multi-frame DICOM decoded as {array.shape[2]} frames, its header lists "
                                 f"{len(frames)}")
            array = np.ascontiguousarray(array[:, :, [fr.frame - 1 for fr in frames]])
        if geometry.tilt_deg:
            array = resample_tilt(array, frames, geometry)
            meta["dicom"]["tilt_resampled"] = True
            note = (f"{path}: gantry tilt of {geometry.tilt_deg:.2f}° resampled onto a regular grid "
                    f"({geometry.step_mm:.4g} mm along the slice normal, --resample-tilt)")
            warnings.append(note)
            _LOG.warning("%s", note)
        affine = LPS_TO_RAS_4 @ stack_affine_lps(frames, geometry.step_mm)
        vol = Volume(array=array, affine=affine, source=str(path), meta=meta)
    if warnings:
        vol.meta["warnings"] = warnings
    _check_finite(path, vol.array)
    return vol

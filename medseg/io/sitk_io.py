"""DICOM series and NRRD/MHA through SimpleITK (GDCM decodes compressed DICOM, e.g. JPEG 2000).

ITK stores geometry in LPS and arrays as ``(z, y, x)``; here it becomes a :class:`Volume` with
a RAS+ affine and an ``(i, j, k)`` = ``(x, y, z)`` array, the same convention as NIfTI files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume

__all__ = [
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


def _itk_detail(exc: RuntimeError) -> str:
    """The person-readable part of an ITK exception (the text after ``ITK ERROR: Class(0x…):``)."""
    text = str(exc).strip()
    m = re.search(r"ITK ERROR: [^:]*?: (.*)", text, flags=re.S)
    detail = m.group(1) if m else (text.splitlines()[-1] if text else "")
    return " ".join(detail.split())[:200]


def _check_header_spacing(path: Path) -> None:
    """Refuse zero/negative spacing written in a MetaImage or NRRD header (ITK would silently
    turn a negative spacing into a flipped direction, and refuses zero with a cryptic message)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    text = head.split(b"\n\n", 1)[0].decode("latin-1") if path.suffix.lower() in (".nrrd", ".nhdr") else head.decode("latin-1")
    patterns = (r"^\s*(?:ElementSpacing|ElementSize)\s*=\s*([^\n]+)", r"^\s*spacings\s*:\s*([^\n]+)")
    for pattern in patterns:
        for m in re.finditer(pattern, text, flags=re.M | re.I):
            values = []
            for tok in m.group(1).split():
                try:
                    values.append(float(tok))
                except ValueError:
                    continue  # nan for non-spatial axes in NRRD, or the start of binary data
            if any(v <= 0 for v in values):
                raise InputError(path, f"zero or negative voxel spacing {tuple(values)} mm in the header")


def read_sitk_file(path: str | Path) -> Volume:
    """Read an NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, validating it like NIfTI."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    _check_header_spacing(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable NRRD/MetaImage file ({_itk_detail(exc)})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    elif img.GetDimension() == 4:
        raise InputError(path, f"4D data {img.GetSize()}: a series of {img.GetSize()[3]} volumes, not one 3D volume")
    _check_sitk_image(path, img)
    vol = sitk_to_volume(img, source=str(path), meta={"format": path.suffix.lower().lstrip(".")})
    _check_finite(path, vol.array)
    return vol


def write_sitk_file(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NRRD/MHA (by suffix) atomically."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_path(path) as tmp:
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
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        description = modality = ""
        if files:
            try:
                reader = _header_reader(files[0])
                description = _tag(reader, "0008|103e")
                modality = _tag(reader, "0008|0060")
            except RuntimeError:
                pass
        series.append(DicomSeries(uid=uid, description=description, files=files, modality=modality))
    return series


def _check_slice_positions(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a series with missing slices or uneven slice spacing (ITK would only warn)."""
    if len(files) < 2:
        raise InputError(folder, f"DICOM series has {len(files)} slice: a 3D volume needs at least 2")
    positions = []
    normal = None
    for f in files:
        reader = _header_reader(f)
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


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read the one DICOM series in ``folder`` (or the one named by ``series_uid``).

    Voxels are GDCM's decoded values with the rescale slope/intercept applied (CT in HU).

    Raises:
        InputError: empty folder, no DICOM files, several series and no ``series_uid``
            (the message lists every SeriesInstanceUID with its description), an unknown
            ``series_uid``, missing slices or uneven slice spacing.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    if not any(p.is_file() for p in folder.iterdir()):
        raise InputError(folder, "empty folder: no files to read")
    series = list_dicom_series(folder)
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
    _check_slice_positions(folder, chosen.files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(folder, f"DICOM series cannot be decoded ({_itk_detail(exc)})") from None
    _check_sitk_image(folder, img)
    meta = {"format": "dicom", "dicom": {"series_uid": chosen.uid, "description": chosen.description,
                                         "modality": chosen.modality, "n_files": len(chosen.files)}}
    vol = sitk_to_volume(img, source=str(folder), meta=meta)
    _check_finite(folder, vol.array)
    return vol

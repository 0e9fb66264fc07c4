"""DICOM headers read with pydicom: the geometry of a stack of frames and its provenance.

A *frame* is one 2D image of a series: a single-frame file (classic CT/MR series) or one frame
of a multi-frame file (enhanced CT/MR, per-frame functional groups). :func:`stack_frames` reads
each frame's position, orientation and pixel spacing, refuses what is no 3D volume (a Siemens
mosaic, mixed orientations, 4D data, multi-frame files without per-frame positions) and orders
the frames along the slice normal, ascending, as ITK and rt-utils order them: frame ``k`` of the
returned list is slice ``k`` of the volume. :func:`check_positions` refuses missing slices,
uneven spacing and irregular in-plane offsets, and measures a gantry tilt (slice positions
sheared away from the normal). :func:`resample_tilt` moves a sheared stack onto a regular grid
with its true geometry. :func:`series_provenance` gives the UIDs and patient/study tags a derived
object (DICOM-SEG, RTSTRUCT) refers to.

Geometry is in DICOM patient coordinates (LPS, mm). A frame is ``(rows, columns)``; the column
index runs along ``ImageOrientationPatient[:3]`` (spacing ``PixelSpacing[1]``), the row index
along ``ImageOrientationPatient[3:]`` (spacing ``PixelSpacing[0]``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

__all__ = [
    "DicomFrame",
    "StackGeometry",
    "PROVENANCE_TAGS",
    "TILT_TOLERANCE_PIXELS",
    "read_dicom_headers",
    "stack_frames",
    "check_positions",
    "stack_affine_lps",
    "resample_tilt",
    "series_provenance",
]

_LOG = logging.getLogger("medseg.io")

# patient, study, series and equipment tags a derived object (SEG, RTSTRUCT) copies from its source
PROVENANCE_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "BodyPartExamined", "PatientPosition",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "DeviceSerialNumber", "SoftwareVersions",
)
# a stack is tilted when its slices are offset in-plane by more than this many pixels (the
# smaller pixel spacing) over the whole stack, away from the line along the slice normal
TILT_TOLERANCE_PIXELS = 0.1
# ImageOrientationPatient values (direction cosines) further apart than this are two orientations
_ORIENTATION_TOLERANCE = 1e-3
_MOSAIC_TAG = 0x0019100A  # Siemens private NumberOfImagesInMosaic


@dataclass(frozen=True)
class DicomFrame:
    """One 2D frame of a series.

    Attributes:
        file: the file holding it.
        frame: 1-based frame number in a multi-frame file; ``None`` for a single-frame file.
        position: ``ImagePositionPatient`` (3,), mm, LPS: the centre of the first pixel.
        orientation: ``ImageOrientationPatient`` (6,): the row direction (along which the column
            index runs) then the column direction.
        spacing: ``PixelSpacing`` (2,), mm: between rows, then between columns.
        size: ``(Rows, Columns)``.
        sop_instance_uid, sop_class_uid: as in the dataset (``""`` when empty there).
    """

    file: str
    frame: int | None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    size: tuple[int, int]
    sop_instance_uid: str
    sop_class_uid: str

    @property
    def normal(self) -> np.ndarray:
        o = np.asarray(self.orientation, dtype=np.float64)
        return np.cross(o[:3], o[3:])


def read_dicom_headers(files: list[str] | tuple[str, ...]) -> list[Any]:
    """Each file's dataset without its pixel data (pydicom), in the order given.

    Raises:
        InputError: naming a file whose header cannot be parsed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, struct.error) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise InputError(f, f"DICOM header cannot be read: truncated or corrupt ({detail})") from None
    return headers


def _floats(value: Any, n: int, file: str, keyword: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__")
                                       and not isinstance(value, str) else [value]))
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise InputError(file, f"DICOM {keyword} is {value!r}: expected {n} numbers")
    return out


def _item(seq_parent: Any, keyword: str) -> Any:
    """The first item of the sequence ``keyword`` of ``seq_parent`` (``None`` when absent or empty)."""
    seq = getattr(seq_parent, keyword, None) if seq_parent is not None else None
    return seq[0] if seq else None


def _mosaic_problem(ds: Any) -> str | None:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    n = ds.get(_MOSAIC_TAG)
    if "MOSAIC" not in image_type and n is None:
        return None
    count = ""
    if n is not None:
        try:
            value = n.value
            count = f"{int(value if not isinstance(value, bytes) else int.from_bytes(value[:4], 'little'))} images "
        except (TypeError, ValueError):
            count = ""
    return (f"Siemens mosaic ({count}tiled in one {ds.get('Rows', '?')}×{ds.get('Columns', '?')} frame): medseg "
            "does not unpack mosaics; convert the series with dcm2niix first")


def _frames_of(file: str, ds: Any) -> list[DicomFrame]:
    """The frames of one dataset, with their geometry (per-frame functional groups for a multi-frame file)."""
    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    cls = str(ds.get("SOPClassUID", "") or "").strip()
    size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if n_frames > 1 or per_frame is not None:
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        if not per_frame or len(per_frame) != n_frames:
            raise InputError(file, f"multi-frame DICOM ({n_frames} frames) without per-frame positions "
                             "(PerFrameFunctionalGroupsSequence/PlanePositionSequence): its geometry is unknown")
        frames = []
        for f, group in enumerate(per_frame, start=1):
            plane = _item(group, "PlanePositionSequence")
            if plane is None or "ImagePositionPatient" not in plane:
                raise InputError(file, f"multi-frame DICOM ({n_frames} frames): frame {f} has no position "
                                 "(PlanePositionSequence): its geometry is unknown")
            orient = _item(group, "PlaneOrientationSequence") or _item(shared, "PlaneOrientationSequence")
            measures = _item(group, "PixelMeasuresSequence") or _item(shared, "PixelMeasuresSequence")
            if orient is None or "ImageOrientationPatient" not in orient:
                raise InputError(file, f"multi-frame DICOM: frame {f} has no ImageOrientationPatient")
            if measures is None or "PixelSpacing" not in measures:
                raise InputError(file, f"multi-frame DICOM: frame {f} has no PixelSpacing")
            frames.append(DicomFrame(
                file, f, _floats(plane.ImagePositionPatient, 3, file, "ImagePositionPatient"),
                _floats(orient.ImageOrientationPatient, 6, file, "ImageOrientationPatient"),
                _floats(measures.PixelSpacing, 2, file, "PixelSpacing"), size, sop, cls))
        return frames
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise InputError(file, "DICOM slice without ImagePositionPatient/ImageOrientationPatient")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None:
        raise InputError(file, "DICOM slice without PixelSpacing")
    return [DicomFrame(file, None, _floats(ds.ImagePositionPatient, 3, file, "ImagePositionPatient"),
                       _floats(ds.ImageOrientationPatient, 6, file, "ImageOrientationPatient"),
                       _floats(spacing, 2, file, "PixelSpacing"), size, sop, cls)]


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def stack_frames(source: str | Path, files: list[str] | tuple[str, ...], headers: list[Any]) -> list[DicomFrame]:
    """The frames of a series (``files`` and their ``headers``), ordered along the slice normal.

    Frame ``k`` of the result is slice ``k`` of the volume: ascending position along the normal
    ``ImageOrientationPatient[:3] × ImageOrientationPatient[3:]`` (ITK's and rt-utils' order).

    Raises:
        InputError: (naming ``source`` or the file at fault) a Siemens mosaic, a multi-frame file
            without per-frame geometry or beside other files, frames of several orientations,
            sizes or pixel spacings, 4D data (several frames at every position), fewer than 2
            frames.
    """
    frames: list[DicomFrame] = []
    for f, ds in zip(files, headers):
        problem = _mosaic_problem(ds)
        if problem:
            raise InputError(f if len(files) == 1 else source, problem)
        frames.extend(_frames_of(str(f), ds))
    if len(files) > 1 and any(fr.frame is not None for fr in frames):
        multi = next(fr.file for fr in frames if fr.frame is not None)
        raise InputError(source, f"series of {len(files)} files holding multi-frame images (e.g. {Path(multi).name}): "
                         "read one multi-frame file at a time")
    if len(frames) < 2:
        raise InputError(source, f"DICOM series has {len(frames)} slice: a 3D volume needs at least 2")
    first = frames[0]
    o0 = np.asarray(first.orientation)
    worst, worst_frame = 0.0, first
    for fr in frames[1:]:
        d = float(np.abs(np.asarray(fr.orientation) - o0).max())
        if d > worst:
            worst, worst_frame = d, fr
    if worst > _ORIENTATION_TOLERANCE:
        groups = {tuple(np.round(np.asarray(fr.orientation) / (2 * _ORIENTATION_TOLERANCE)).astype(int)) for fr in frames}
        angle = max(_angle_deg(first.normal, worst_frame.normal), _angle_deg(o0[:3], np.asarray(worst_frame.orientation[:3])))
        raise InputError(source, f"slices in {len(groups)} orientations (ImageOrientationPatient differs by up to "
                         f"{angle:.1f}° between {_where(first)} and {_where(worst_frame)}): a localiser or radial "
                         "acquisition is no 3D volume; pick a series with one slice orientation")
    sizes = {fr.size for fr in frames}
    if len(sizes) > 1:
        raise InputError(source, "slices of different sizes (" + ", ".join(f"{r}×{c}" for r, c in sorted(sizes))
                         + "): not one 3D volume")
    spacings = np.asarray([fr.spacing for fr in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-4 * max(spacings[0].max(), 1.0):
        raise InputError(source, f"slices with different pixel spacings (from {spacings.min():.4g} to "
                         f"{spacings.max():.4g} mm): not one 3D volume")
    normal = first.normal
    z = np.asarray([fr.position for fr in frames]) @ normal
    order = np.argsort(z, kind="stable")
    ordered = [frames[i] for i in order]
    zs = z[order]
    distinct = np.concatenate([[True], np.diff(zs) >= 1e-4])
    n_positions = int(distinct.sum())
    if n_positions < len(frames) and len(frames) % n_positions == 0:
        counts = np.diff(np.flatnonzero(np.concatenate([distinct, [True]])))
        if n_positions > 1 and np.all(counts == counts[0]):
            raise InputError(source, f"4D data: {counts[0]} frames at each of {n_positions} slice positions (time "
                             "points, echoes or diffusion directions): medseg reads one 3D volume; split the "
                             "series into one volume per time point first")
    return ordered


def _where(frame: DicomFrame) -> str:
    return Path(frame.file).name + (f" frame {frame.frame}" if frame.frame is not None else "")


@dataclass(frozen=True)
class StackGeometry:
    """Where the slices of an ordered stack lie, measured from their positions.

    Attributes:
        step_mm: slice spacing along the normal (mm).
        shear: in-plane offset (LPS, mm) of a slice per mm along the normal: ``(3,)``, zero for
            a stack along its normal.
        tilt_deg: the angle between the stack's axis and the slice normal (degrees).
        offset_mm: the in-plane offset of the last slice from the line along the normal
            through the first (mm).
    """

    step_mm: float
    shear: tuple[float, float, float]
    tilt_deg: float
    offset_mm: float


def check_positions(source: str | Path, frames: list[DicomFrame]) -> StackGeometry:
    """Refuse an ordered stack (:func:`stack_frames`) with missing slices, uneven slice spacing,
    two slices at one position or in-plane offsets that do not grow linearly along the stack;
    measure its gantry tilt.

    Raises:
        InputError: naming ``source``.
    """
    n = len(frames)
    normal = frames[0].normal
    pos = np.asarray([fr.position for fr in frames], dtype=np.float64)
    rel = pos - pos[0]
    z = rel @ normal
    gaps = np.diff(z)
    if np.any(gaps < 1e-4):
        raise InputError(source, "DICOM series has two slices at the same position (duplicate or mixed acquisitions)")
    step = float(np.median(gaps))
    tol = max(0.01 * step, 1e-3)
    if not np.all(np.abs(gaps - step) <= tol):
        missing = int(np.sum(np.round(gaps / step) - 1).clip(min=0))
        worst = int(np.argmax(np.abs(gaps - step)))
        if missing > 0 and np.all(np.abs(gaps - np.round(gaps / step) * step) <= tol):
            raise InputError(source, f"DICOM series is missing {missing} slice(s): gap of {gaps[worst]:.3f} mm "
                             f"after slice {worst + 1} of {n} where the spacing is {step:.3f} mm")
        raise InputError(source, f"uneven slice spacing in DICOM series: gaps from {gaps.min():.3f} to "
                         f"{gaps.max():.3f} mm (median {step:.3f} mm)")
    lateral = rel - np.outer(z, normal)
    shear = (z @ lateral) / float(z @ z)  # least squares: lateral ≈ z × shear
    residual = float(np.linalg.norm(lateral - np.outer(z, shear), axis=1).max())
    pixel = float(min(frames[0].spacing))
    if residual > TILT_TOLERANCE_PIXELS * pixel:
        raise InputError(source, f"slice positions do not lie on one line: in-plane offsets vary irregularly by up "
                         f"to {residual:.3f} mm between slices; not one 3D volume")
    offset = float(np.linalg.norm(lateral[-1]))
    tilt = math.degrees(math.atan(float(np.linalg.norm(shear))))
    if offset <= TILT_TOLERANCE_PIXELS * pixel:
        shear, tilt = np.zeros(3), 0.0
    return StackGeometry(step, tuple(float(v) for v in shear), tilt, offset)


def stack_affine_lps(frames: list[DicomFrame], step_mm: float) -> np.ndarray:
    """``(4, 4)`` voxel-to-LPS affine (mm) of a regular stack: index ``(i, j, k)`` = (column,
    row, slice); origin at the first frame's first pixel, slice axis along the normal."""
    o = np.asarray(frames[0].orientation, dtype=np.float64)
    row_dir, col_dir = o[:3], o[3:]
    dr, dc = frames[0].spacing
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dc
    affine[:3, 1] = col_dir * dr
    affine[:3, 2] = np.cross(row_dir, col_dir) * step_mm
    affine[:3, 3] = frames[0].position
    return affine


def resample_tilt(array: np.ndarray, frames: list[DicomFrame], geometry: StackGeometry) -> np.ndarray:
    """Move the slices of a sheared stack onto the regular grid of :func:`stack_affine_lps`.

    Slice ``k`` of ``array`` (``(I, J, K)``: column, row, slice index) holds the plane through
    ``frames[k].position``; on the regular grid the plane at ``k`` starts on the line along the
    normal through the first slice. Each slice is shifted in-plane by its offset (linear
    interpolation), as dcm2niix's gantry-tilt correction does; voxels shifted in from outside the
    field of view take the volume's minimum (air in CT). Integer volumes keep their dtype
    (values rounded).

    Returns:
        ``(I, J, K)`` array of ``array``'s dtype.
    """
    from scipy import ndimage

    o = np.asarray(frames[0].orientation, dtype=np.float64)
    dr, dc = frames[0].spacing
    shear = np.asarray(geometry.shear)
    z = (np.asarray([fr.position for fr in frames]) - np.asarray(frames[0].position)) @ frames[0].normal
    fill = float(array.min())
    out = np.empty(array.shape, dtype=np.float64)
    for k in range(array.shape[2]):
        offset = z[k] * shear  # where slice k's first pixel lies, relative to the regular grid's
        # the regular grid's voxel (i, j) is the slice's pixel (i - offset·row/dc, j - offset·col/dr)
        di, dj = float(offset @ o[:3]) / dc, float(offset @ o[3:]) / dr
        out[:, :, k] = ndimage.shift(array[:, :, k].astype(np.float64), (di, dj), order=1, mode="constant", cval=fill)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(array.dtype)
    return out.astype(array.dtype)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _meta_uid(ds: Any, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get(keyword, "") or "").strip() if meta is not None else ""


def series_provenance(source: str | Path, frames: list[DicomFrame], headers: dict[str, Any]) -> dict[str, Any]:
    """The provenance of an ordered stack (see :func:`medseg.io.dicom_provenance` for the keys).

    ``headers`` maps each file to its dataset. Empty SOP Instance/Class UIDs are taken from the
    file meta (MediaStorageSOPInstanceUID/ClassUID); an empty SOPInstanceUID with no file meta
    value, and empty Study, Series and Frame of Reference UIDs, are generated deterministically
    from the series' content (:func:`pydicom.uid.generate_uid` with entropy sources), logged
    as a warning and listed in ``generated`` and ``warnings``.
    """
    from pydicom.uid import generate_uid

    source = str(source)
    first = headers[frames[0].file]
    from_meta: set[str] = set()
    generated: dict[str, str] = {}

    instances = []
    for fr in frames:
        ds = headers[fr.file]
        sop, cls = fr.sop_instance_uid, fr.sop_class_uid
        if not sop:
            sop = _meta_uid(ds, "MediaStorageSOPInstanceUID")
            if sop:
                from_meta.add("SOPInstanceUID")
            else:
                digest = hashlib.blake2b(Path(fr.file).read_bytes(), digest_size=20).hexdigest()
                sop = generate_uid(entropy_srcs=["SOPInstanceUID", digest])
                generated["SOPInstanceUID"] = "from each file's bytes"
        if not cls:
            cls = _meta_uid(ds, "MediaStorageSOPClassUID")
            if cls:
                from_meta.add("SOPClassUID")
        instances.append({"sop_instance_uid": sop, "sop_class_uid": cls, "file": fr.file, "frame": fr.frame,
                          "position": [float(v) for v in fr.position]})

    tags = {kw: _text(first, kw) for kw in PROVENANCE_TAGS}
    instance_uids = sorted({inst["sop_instance_uid"] for inst in instances})
    series_uid = _text(first, "SeriesInstanceUID")
    if not series_uid:
        series_uid = generate_uid(entropy_srcs=["SeriesInstanceUID", *instance_uids])
        generated["SeriesInstanceUID"] = "from its SOPInstanceUIDs"
    study_uid = _text(first, "StudyInstanceUID")
    if not study_uid:
        study_keys = ("PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
                      "StudyID")
        if any(tags[k] for k in study_keys):
            study_uid = generate_uid(entropy_srcs=["StudyInstanceUID", *(f"{k}={tags[k]}" for k in study_keys)])
            generated["StudyInstanceUID"] = "from the patient and study tags"
        else:
            study_uid = generate_uid(entropy_srcs=["StudyInstanceUID", series_uid])
            generated["StudyInstanceUID"] = "from the SeriesInstanceUID"
    frame_uid = _text(first, "FrameOfReferenceUID")
    if not frame_uid:
        frame_uid = generate_uid(entropy_srcs=["FrameOfReferenceUID", study_uid, series_uid])
        generated["FrameOfReferenceUID"] = "from the Study and Series UIDs"
    classes = {inst["sop_class_uid"] for inst in instances}
    warnings = []
    if generated:
        keys = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")
                if k in generated]
        what = "; ".join(f"{k} {generated[k]}" for k in keys)
        warnings.append(f"{source}: empty {', '.join(keys)} in the DICOM files: generated deterministically "
                        f"({what}), the same on every read")
    if "" in classes:
        warnings.append(f"{source}: empty SOPClassUID in the DICOM files and their file meta: derived objects "
                        "cannot refer to these images")
    for w in warnings:
        _LOG.warning("%s", w)
    if from_meta:
        _LOG.info("%s: empty %s in the datasets, taken from the file meta", source, ", ".join(sorted(from_meta)))
    return {
        "series_dir": source,
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "frame_of_reference_uid": frame_uid,
        "sop_class_uid": instances[0]["sop_class_uid"],
        "modality": _text(first, "Modality"),
        "instances": instances,
        "tags": tags,
        "generated": sorted(generated),
        "from_file_meta": sorted(from_meta),
        "warnings": warnings,
    }

"""Segmentations back to DICOM: DICOM-SEG (highdicom) and RTSTRUCT (rt-utils), referencing their series.

The source series is described by :class:`DicomReference`: the header of every slice in the
volume's ``k`` order (as :func:`medseg.io.read_dicom_series` stacks them) with its UIDs completed by
:func:`medseg.io.dicom_provenance` (instance and class UIDs from the file meta where the dataset's
are empty, study and series UIDs generated where the files have none; ``notes`` says which).
Headers are read without pixel data and changed only in memory: the series' files are never written.

The segmentation must lie on the series' grid: the same voxel centres, in any axis order or
direction (a NIfTI written in RAS+ from the series is); anything else is refused with how far (mm)
its voxels lie from the series'. Every segment carries its structure's SNOMED CT codes and colour
(:func:`medseg.io.codes.structure_code`).

>>> ref = dicom_reference("series/")                                        # doctest: +SKIP
>>> seg = dicom_seg_dataset(labels, ref, {1: "liver", 2: "liver_tumor"})    # doctest: +SKIP
>>> seg.save_as("seg.dcm")                                                  # doctest: +SKIP

:func:`medseg.inference.write_study_outputs` writes them with a study's other outputs, all or none.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.io.codes import Code, structure_code
from medseg.io.volume import Volume, affine_difference_mm

_LOG = logging.getLogger("medseg.io")

__all__ = ["DicomReference", "DicomExportOptions", "dicom_reference", "series_reference", "labels_on_series_grid", "export_segments", "dicom_seg_dataset",
           "rtstruct_dataset", "SEG_TYPES", "EMPTY_SEGMENTS"]

SEG_TYPES = ("binary", "labelmap")
EMPTY_SEGMENTS = ("drop", "keep")
SegType = Literal["binary", "labelmap"]
Empty = Literal["drop", "keep"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Voxel centres of a segmentation and its series may differ by this much (mm) and still be one grid.
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class DicomExportOptions:
    """How segments are written.

    Attributes:
        seg_type: DICOM-SEG encoding: ``"binary"`` (one 1-bit frame per segment and slice, read by
            every SEG reader) or ``"labelmap"`` (one frame per slice holding segment numbers: the
            Label Map Segmentation IOD, smaller, read by fewer viewers).
        empty: ``"drop"`` labels with no voxel, or ``"keep"`` every named label as a segment/ROI.
    """

    seg_type: SegType = "binary"
    empty: Empty = "drop"

    def __post_init__(self) -> None:
        if self.seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {', '.join(SEG_TYPES)}, not {self.seg_type!r}")
        if self.empty not in EMPTY_SEGMENTS:
            raise ValueError(f"empty must be one of {', '.join(EMPTY_SEGMENTS)}, not {self.empty!r}")


@dataclass
class DicomReference:
    """The DICOM series a segmentation refers to.

    Attributes:
        folder: the series folder.
        headers: one ``pydicom.Dataset`` per slice (no pixel data), in the volume's ``k`` order,
            with SOPInstanceUID, SOPClassUID, StudyInstanceUID, SeriesInstanceUID and
            FrameOfReferenceUID set (completed in memory where the files lack them).
        notes: the provenance's warnings: one line saying which UIDs the files lack and how they
            were completed (generated UIDs are deterministic: the same on every export).
    """

    folder: Path
    headers: list
    notes: list[str] = field(default_factory=list)
    _said: bool = field(default=False, repr=False, compare=False)

    def say_notes(self) -> None:
        """Log the notes as warnings, once per reference (where its UIDs go into a file)."""
        if not self._said:
            for line in self.notes:
                _LOG.warning("%s", line)
            self._said = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """The series grid ``(columns, rows, slices)``, the ``(I, J, K)`` of its :class:`Volume`."""
        h = self.headers[0]
        return int(h.Columns), int(h.Rows), len(self.headers)

    def affine(self) -> np.ndarray:
        """The series' voxel → world (RAS+, mm) affine of ``(I, J, K)`` = (column, row, slice)
        indices, from ImageOrientationPatient, PixelSpacing and the first and last slices'
        ImagePositionPatient."""
        first, last = self.headers[0], self.headers[-1]
        o = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
        dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing, column spacing
        p0 = np.asarray(first.ImagePositionPatient, dtype=np.float64)
        n = len(self.headers)
        if n > 1:
            step = (np.asarray(last.ImagePositionPatient, dtype=np.float64) - p0) / (n - 1)
        else:
            step = np.cross(o[:3], o[3:]) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
        lps = np.eye(4)
        lps[:3, 0] = o[:3] * dc
        lps[:3, 1] = o[3:] * dr
        lps[:3, 2] = step
        lps[:3, 3] = p0
        return LPS_TO_RAS @ lps


def _provenance_headers(folder: Path, provenance: dict[str, Any]) -> list:
    """The slice headers a provenance record (:func:`medseg.io.dicom_provenance`) names, in its
    ``k`` order, with its UIDs set on in-memory copies."""
    import pydicom

    instances = provenance["instances"]
    if any(item.get("frame") is not None for item in instances):
        raise InputError(folder, "the series is a multi-frame DICOM file: DICOM-SEG and RTSTRUCT export supports "
                         "series of single-frame images only")
    headers = []
    for item in instances:
        path = Path(item["file"])
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(path, f"DICOM header cannot be read ({exc})") from None
        if not item["sop_class_uid"]:
            raise InputError(path, "empty SOPClassUID in the dataset and its file meta: a derived object cannot "
                             "refer to this image")
        ds.SOPInstanceUID = item["sop_instance_uid"]
        ds.SOPClassUID = item["sop_class_uid"]
        ds.StudyInstanceUID = provenance["study_instance_uid"]
        ds.SeriesInstanceUID = provenance["series_instance_uid"]
        ds.FrameOfReferenceUID = provenance["frame_of_reference_uid"]
        headers.append(ds)
    return headers


def _reference(folder: Path, provenance: dict[str, Any]) -> DicomReference:
    headers = _provenance_headers(folder, provenance)
    for ds in headers:
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if key not in ds or ds[key].value in (None, ""):
                raise InputError(ds.filename, f"DICOM slice without {key}: a segmentation cannot be placed on it")
    return DicomReference(folder=folder, headers=headers, notes=list(provenance.get("warnings", [])))


def dicom_reference(folder: str | Path, series_uid: str | None = None) -> DicomReference:
    """The :class:`DicomReference` of the one series in ``folder`` (or the one ``series_uid`` names).

    Raises:
        InputError: what :func:`medseg.io.dicom_provenance` refuses (several series: the message
            lists them), a multi-frame series, or a slice without the geometry a derived object needs.
    """
    from medseg.io import dicom_provenance

    folder = Path(folder)
    return _reference(folder, dicom_provenance(folder, series_uid=series_uid))


def series_reference(image: Volume) -> DicomReference:
    """The :class:`DicomReference` of the series an image was read from (its ``meta["dicom"]``,
    the provenance :func:`medseg.io.read_volume` keeps for a DICOM folder).

    Raises:
        InputError: the image did not come from a DICOM series, or was resampled for a gantry
            tilt (its voxels are no longer the series' pixels).
    """
    provenance = image.meta.get("dicom")
    if image.meta.get("format") != "dicom" or not provenance or "instances" not in provenance:
        raise InputError(image.source or "image", "is not a DICOM series: DICOM-SEG and RTSTRUCT refer to the "
                         "series a segmentation was made from")
    if provenance.get("tilt_resampled"):
        raise InputError(image.source, "was resampled for its gantry tilt: a segmentation of the resampled volume "
                         "is not on the series' slices, so DICOM-SEG and RTSTRUCT cannot refer to them")
    return _reference(Path(provenance.get("series_dir") or image.source), provenance)


def _check_slices(ref: DicomReference, affine: np.ndarray) -> None:
    """Every slice header lies where ``affine`` puts slice ``k`` (else the slice order is not the volume's)."""
    for k, ds in enumerate(ref.headers):
        where = (LPS_TO_RAS @ np.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64), 1.0))[:3]
        expected = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        off = float(np.linalg.norm(where - expected))
        if off > 0.01 * max(1.0, float(np.linalg.norm(affine[:3, 2]))):
            raise InputError(ds.filename if hasattr(ds, "filename") else ref.folder,
                             f"slice {k} of the DICOM series lies {off:.3g} mm from where the series' grid puts it "
                             "(irregular slice positions: re-ingest the series)")


def labels_on_series_grid(labels: Volume, ref: DicomReference) -> np.ndarray:
    """``labels``' array on the series' own ``(I, J, K)`` = (column, row, slice) grid.

    A segmentation stored in another axis order or direction (e.g. RAS+ from an LPS series) is
    transposed and flipped; its voxel centres must equal the series'.

    Raises:
        InputError: (naming the segmentation) another grid: its shape and how far (mm) its voxels
            lie from the series'.
    """
    grid = ref.affine()
    _check_slices(ref, grid)
    shape = ref.shape
    m = np.linalg.solve(grid, labels.affine)  # segmentation index -> series index
    r = m[:3, :3]
    perm = [int(np.argmax(np.abs(r[:, a]))) for a in range(3)]  # series axis of each segmentation axis
    if sorted(perm) != [0, 1, 2]:
        perm = [0, 1, 2]
    sign = [1.0 if r[perm[a], a] >= 0 else -1.0 for a in range(3)]
    t = np.zeros((4, 4))
    t[3, 3] = 1.0
    for a in range(3):
        t[perm[a], a] = sign[a]
        t[perm[a], 3] = 0.0 if sign[a] > 0 else labels.shape[a] - 1
    diff = affine_difference_mm(grid @ t, labels.affine, labels.shape)
    mapped = tuple(labels.shape[perm.index(g)] for g in range(3))
    where = labels.source or "segmentation"
    if mapped != shape or diff > GRID_TOLERANCE_MM:
        parts = [] if mapped == shape else [f"shape {labels.shape} against the series' {shape} (columns, rows, slices)"]
        if diff > GRID_TOLERANCE_MM:
            parts.append(f"its voxels lie up to {diff:.4g} mm from the series'")
        raise InputError(where, f"segmentation is not on the grid of the DICOM series {ref.folder}: "
                         f"{'; '.join(parts)} (resample it onto the series first)")
    arr = np.asarray(labels.array)
    for a in range(3):
        if sign[a] < 0:
            arr = np.flip(arr, axis=a)
    order = [perm.index(g) for g in range(3)]  # segmentation axis of each series axis
    return np.ascontiguousarray(np.transpose(arr, order))


def export_segments(grid_labels: np.ndarray, names: Mapping[int, str], *, empty: Empty = "drop",
                    source: str | Path | None = None) -> list[tuple[int, str]]:
    """The ``(label, name)`` pairs to export, in label order.

    Args:
        grid_labels: the label array (any shape).
        names: label id → structure name (labels.json); 0 (background) is never exported.
        empty: ``"drop"`` leaves out labels with no voxel; ``"keep"`` exports every named label.
        source: the labels file, named in the error.

    Raises:
        InputError: labels present in the array that ``names`` does not name (naming ``source``).
    """
    if empty not in EMPTY_SEGMENTS:
        raise ValueError(f"empty must be one of {', '.join(EMPTY_SEGMENTS)}, not {empty!r}")
    present = [int(v) for v in np.unique(grid_labels) if v != 0]
    unnamed = [v for v in present if v not in names]
    if unnamed:
        shown = ", ".join(map(str, unnamed[:10])) + (f" (and {len(unnamed) - 10} more)" if len(unnamed) > 10 else "")
        raise InputError(source or "labels", f"the segmentation holds label(s) {shown} that the labels file does not name")
    keep = sorted(int(k) for k in names if int(k) != 0) if empty == "keep" else present
    return [(k, str(names[k])) for k in keep]


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _software_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("medseg")
    except metadata.PackageNotFoundError:
        return "0"


def _segment_descriptions(segments: Sequence[tuple[int, str]]):
    import highdicom as hd
    from highdicom.color import CIELabColor
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", version=_software_version(),
                                                   family=codes.DCM.ArtificialIntelligence)
    out = []
    for number, (label, name) in enumerate(segments, start=1):
        code = structure_code(name)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=_coded(code.category),
            segmented_property_type=_coded(code.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_id=f"label {label}", tracking_uid=hd.UID(),
            anatomic_regions=[_coded(code.anatomic_region)] if code.anatomic_region else None,
            display_color=CIELabColor.from_rgb(*code.rgb))
        if code.type_modifier is not None:
            from pydicom.sequence import Sequence as DicomSequence

            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
                [_coded(code.type_modifier)])
        if code.anatomic_region_modifier is not None and code.anatomic_region is not None:
            from pydicom.sequence import Sequence as DicomSequence

            desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = DicomSequence(
                [_coded(code.anatomic_region_modifier)])
        out.append(desc)
    return out


def dicom_seg_dataset(labels: Volume, ref: DicomReference, names: Mapping[int, str], *, seg_type: SegType = "binary",
                      empty: Empty = "drop", labels_file: str | Path | None = None):
    """A DICOM-SEG of ``labels`` referring to the series ``ref`` (a highdicom ``Segmentation``, in memory).

    Args:
        labels: class ids on the series' grid (see :func:`labels_on_series_grid`).
        ref: the series (:func:`dicom_reference`).
        names: label id → structure name; segment ``n`` is the ``n``-th exported label in label order.
        seg_type: ``"binary"`` (one 1-bit frame per segment and slice; every SEG reader) or
            ``"labelmap"`` (one frame per slice holding segment numbers: the Label Map Segmentation
            IOD, read by fewer viewers).
        empty: ``"drop"`` or ``"keep"`` labels with no voxel (:func:`export_segments`).
        labels_file: the labels file named when a label has no name.

    Raises:
        InputError: not on the series' grid, unnamed labels, nothing to export.
    """
    ref.say_notes()
    import highdicom as hd

    if seg_type not in SEG_TYPES:
        raise ValueError(f"seg_type must be one of {', '.join(SEG_TYPES)}, not {seg_type!r}")
    grid = labels_on_series_grid(labels, ref)
    segments = export_segments(grid, names, empty=empty, source=labels_file or labels.source)
    if not segments:
        raise InputError(labels.source or "segmentation", "no labelled voxel to export (every label is empty; "
                         "--empty-segments keep exports empty segments)")
    lut = np.zeros(int(grid.max()) + 1 if grid.size else 1, dtype=np.uint16)
    for number, (label, _) in enumerate(segments, start=1):
        if label < lut.size:
            lut[label] = number
    frames = lut[grid].transpose(2, 1, 0)  # (slices, rows, columns)
    frames = frames.astype(np.uint8 if len(segments) < 256 else np.uint16)
    first = ref.headers[0]
    kind = hd.seg.SegmentationTypeValues.BINARY if seg_type == "binary" else hd.seg.SegmentationTypeValues.LABELMAP
    seg = hd.seg.Segmentation(
        source_images=ref.headers, pixel_array=np.ascontiguousarray(frames), segmentation_type=kind,
        segment_descriptions=_segment_descriptions(segments), series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", None) or 0) + 1000, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
        software_versions=_software_version(), device_serial_number="0",
        series_description=f"medseg segmentation of {str(getattr(first, 'SeriesDescription', '') or 'series')}"[:64],
        content_label="MEDSEG", omit_empty_frames=True)
    return seg


def rtstruct_dataset(labels: Volume, ref: DicomReference, names: Mapping[int, str], *, empty: Empty = "drop",
                     labels_file: str | Path | None = None):
    """An RTSTRUCT of ``labels`` referring to the series ``ref`` (a pydicom ``FileDataset``, in memory):
    one ROI per structure with its name and colour, contours (rt-utils, from OpenCV's outlines of
    each slice) in patient coordinates (mm).

    Raises:
        InputError: as :func:`dicom_seg_dataset`.
    """
    ref.say_notes()
    try:
        from rt_utils import ds_helper
        from rt_utils.image_helper import get_slice_position
        from rt_utils.rtstruct import RTStruct
    except ImportError:
        from medseg.errors import MedsegError

        raise MedsegError("RTSTRUCT output needs rt-utils: pip install --no-deps rt-utils (its `dataclasses` "
                          "requirement is a Python 3.6 backport that breaks other tools)") from None

    grid = labels_on_series_grid(labels, ref)
    segments = export_segments(grid, names, empty=empty, source=labels_file or labels.source)
    if not segments:
        raise InputError(labels.source or "segmentation", "no labelled voxel to export (every label is empty; "
                         "--empty-segments keep exports empty segments)")
    order = sorted(range(len(ref.headers)), key=lambda k: float(get_slice_position(ref.headers[k])))
    series = [ref.headers[k] for k in order]
    masks = grid.transpose(1, 0, 2)[:, :, order]  # (rows, columns, slices in rt-utils' order)
    with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints notes on stdout
        ds = ds_helper.create_rtstruct_dataset(series)
        rt = RTStruct(series, ds)
        for label, name in segments:
            code = structure_code(name)
            rt.add_roi(mask=masks == label, color=list(code.rgb), name=name, description=code.type.meaning,
                       roi_generation_algorithm="AUTOMATIC")
    first = ref.headers[0]
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = _software_version()
    ds.InstitutionName = str(getattr(first, "InstitutionName", "") or "")
    ds.StructureSetLabel = "medseg"
    # Type 1/2 attributes of the General Study, RT Series and Frame of Reference modules rt-utils leaves out
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = str(getattr(first, "PositionReferenceIndicator", "") or "")
    ds.ReferringPhysicianName = str(getattr(first, "ReferringPhysicianName", "") or "")
    ds.AccessionNumber = str(getattr(first, "AccessionNumber", "") or "")
    ds.OperatorsName = ""
    ds.SeriesDescription = f"medseg structures of {str(getattr(first, 'SeriesDescription', '') or 'series')}"[:64]
    return ds

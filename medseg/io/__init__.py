"""The only code that knows file formats. Geometry travels with the array (:class:`Volume`).

- :func:`read_volume`: NIfTI (.nii/.nii.gz), NRRD/MetaImage (.nrrd/.nhdr/.mha/.mhd), a folder
  holding one DICOM series or one multi-frame DICOM file, validated, as a :class:`Volume` with a
  RAS+ affine.
- :func:`dicom_provenance`: the UIDs, per-slice SOP instances and patient/study tags of a DICOM
  series, for derived objects (SEG, RTSTRUCT); :mod:`medseg.io.dicom` reads DICOM headers.
- :func:`write_volume`: atomic write (temporary name, then rename) with exactly the affine.
- :func:`read_channels`: the channel files of one study, checked to share one grid.
- :func:`read_label`: a label map, checked for integer values and (optionally) for the grid of
  its image.
- :mod:`medseg.io.files`: which files are images, which belong to one study, its content hash.
- :mod:`medseg.io.dicom_export`: a label map back to DICOM, referring to its series: DICOM-SEG
  (:func:`dicom_seg_dataset`, highdicom) and RTSTRUCT (:func:`rtstruct_dataset`, rt-utils), each
  segment with the SNOMED CT codes and colour of :func:`structure_code` (:mod:`medseg.io.codes`).
- :mod:`medseg.io.limits`: the largest image medseg reads (:func:`max_voxels`, environment variable
  ``MEDSEG_MAX_VOXELS``, and the memory available), checked from the header before any voxel is read.

Every reader refuses bad input with :class:`InputError` (``"<file>: <problem>"``, one line). What
native libraries (ITK, GDCM) print while reading goes to the ``medseg.io`` logger at DEBUG level,
never to the terminal; doubts the readers resolve and go on from (a NIfTI qform and sform that
disagree) are logged there as warnings and kept in ``Volume.meta["warnings"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from medseg.io.codes import StructureCode, structure_code
from medseg.io.dicom_export import (
    DicomExportOptions,
    DicomReference,
    dicom_reference,
    series_reference,
    dicom_seg_dataset,
    labels_on_series_grid,
    rtstruct_dataset,
)
from medseg.io.files import IMAGE_SUFFIXES, content_hash, is_image_path, missing_problem, strip_image_suffix
from medseg.io.limits import MAX_VOXELS_ENV, available_memory, check_image_size, max_voxels, set_max_voxels
from medseg.io.probabilities import read_probabilities
from medseg.io.nifti import check_nifti_size, is_nifti_path, read_nifti, read_nifti_voxels, write_nifti, write_nifti_array
from medseg.io.sitk_io import (
    check_sitk_size,
    DicomSeries,
    dicom_provenance,
    is_dicom_file,
    is_multiframe_dicom,
    list_dicom_series,
    read_dicom_series,
    read_sitk_file,
    sitk_to_volume,
    volume_to_sitk,
    write_sitk_file,
)
from medseg.io.volume import Volume, affine_difference_mm, affine_spacing, orientation_code

__all__ = [
    "Volume",
    "InputError",
    "DicomSeries",
    "dicom_provenance",
    "is_dicom_file",
    "is_multiframe_dicom",
    "read_volume",
    "read_channels",
    "check_channel_grid",
    "check_volume_size",
    "single_dicom_file_problem",
    "write_volume",
    "read_label",
    "read_probabilities",
    "check_same_grid",
    "is_image_path",
    "strip_image_suffix",
    "content_hash",
    "IMAGE_SUFFIXES",
    "read_nifti",
    "read_nifti_voxels",
    "write_nifti",
    "write_nifti_array",
    "read_dicom_series",
    "list_dicom_series",
    "read_sitk_file",
    "write_sitk_file",
    "sitk_to_volume",
    "volume_to_sitk",
    "affine_spacing",
    "affine_difference_mm",
    "orientation_code",
    "MAX_VOXELS_ENV",
    "max_voxels",
    "set_max_voxels",
    "available_memory",
    "check_image_size",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "StructureCode",
    "structure_code",
    "DicomReference",
    "DicomExportOptions",
    "dicom_reference",
    "series_reference",
    "dicom_seg_dataset",
    "rtstruct_dataset",
    "labels_on_series_grid",
]

SITK_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if not s.startswith(".nii"))


def read_volume(path: str | Path, *, series_uid: str | None = None, resample_tilt: bool = False) -> Volume:
    """Read one 3D image: a NIfTI/NRRD/MHA file, a folder holding one DICOM series, or one
    multi-frame (enhanced CT/MR) DICOM file.

    Args:
        series_uid: the DICOM series to read in a folder holding several.
        resample_tilt: resample a gantry-tilted DICOM stack onto a regular grid instead of
            refusing it (:func:`read_dicom_series`).

    Returns:
        A :class:`Volume` (array ``(I, J, K)`` in stored dtype, RAS+ affine in mm).

    Raises:
        InputError: ``"<path>: <problem>"`` for anything unreadable or invalid.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, missing_problem(path))
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, resample_tilt=resample_tilt)
    name = path.name.lower()
    if is_nifti_path(name) or name.endswith(".gz"):
        return read_nifti(path)
    if name.endswith(SITK_SUFFIXES):
        return read_sitk_file(path)
    with open(path, "rb") as f:
        head = f.read(348)
    # DICOM first: a DICOM preamble (128 free bytes) may begin with NIfTI's 348
    if is_dicom_file(path):
        if is_multiframe_dicom(path):
            return read_dicom_series(path, resample_tilt=resample_tilt)
        raise InputError(path, single_dicom_file_problem(path))
    if head[:2] == b"\x1f\x8b" or len(head) == 348 and int.from_bytes(head[:4], "little") == 348:
        return read_nifti(path)
    raise InputError(path, "not a supported image (expected .nii, .nii.gz, .nrrd, .mha, .mhd, a DICOM folder "
                     "or a multi-frame DICOM file)")


def single_dicom_file_problem(path: str | Path) -> str:
    """What is wrong with giving one file of a DICOM series where a study is expected."""
    return f"is a single DICOM file: a DICOM series is read from the folder that holds it ({Path(path).parent})"


def read_channels(paths: list[str | Path] | tuple[str | Path, ...], *, series_uid: str | None = None,
                  resample_tilt: bool = False) -> list[Volume]:
    """Read the channel images of one study (one path per channel, in the model's channel order);
    ``series_uid`` and ``resample_tilt`` as :func:`read_volume`.

    Raises:
        InputError: a channel that cannot be read, or one that is not on the first channel's
            grid (naming both files and the difference).
    """
    if not paths:
        raise ValueError("paths: expected at least one image, got none")
    volumes = [read_volume(p, series_uid=series_uid, resample_tilt=resample_tilt) for p in paths]
    for other in volumes[1:]:
        check_channel_grid(volumes[0], other)
    return volumes


def check_channel_grid(first: Volume, other: Volume) -> None:
    """Raise :class:`InputError` (naming ``other``'s file and ``first``'s) unless ``other``, a
    channel of the same study, lies on ``first``'s grid (same shape, affines within 1e-3 mm)."""
    if other.shape != first.shape:
        raise InputError(other.source, f"channel of shape {other.shape} is not on the grid of "
                         f"{first.source} (shape {first.shape}); every channel must share one grid")
    if not first.same_grid(other):
        diff = affine_difference_mm(first.affine, other.affine, first.shape)
        raise InputError(other.source, f"channel is not on the grid of {first.source} (affines differ by "
                         f"up to {diff:.4g} mm); every channel must share one grid")


def check_volume_size(path: str | Path) -> None:
    """Refuse, from its header alone, an image file :func:`read_volume` would refuse before
    reading voxels (not an image, an invalid header, RGB/complex voxels, more voxels than the
    file holds or than :func:`max_voxels` / the memory allow). Folders (DICOM series) and files
    of unknown format pass: their checks need the files read.

    Raises:
        InputError: naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        return
    name = path.name.lower()
    if is_nifti_path(name) or name.endswith(".gz"):
        check_nifti_size(path)
    elif name.endswith(SITK_SUFFIXES):
        check_sitk_size(path)


def write_volume(volume: Volume, path: str | Path, *, dtype=None) -> Path:
    """Write ``volume`` atomically; the format follows the suffix (.nii.gz, .nii, .nrrd, .mha)."""
    path = Path(path)
    if is_nifti_path(path):
        return write_nifti(volume, path, dtype=dtype)
    if path.name.lower().endswith(SITK_SUFFIXES):
        vol = volume if dtype is None else volume.with_array(volume.array.astype(dtype))
        return write_sitk_file(vol, path)
    raise ValueError(f"{path}: unknown output format (use .nii.gz, .nii, .nrrd or .mha)")


def check_same_grid(image: Volume, label: Volume, atol_mm: float = 1e-3) -> None:
    """Raise :class:`InputError` (naming the label file) when ``label`` is not on ``image``'s grid.

    Shapes are compared first; for equal shapes, the message gives how far apart (mm) the two
    affines put the same voxel (:func:`affine_difference_mm`), never the shapes.
    """
    if image.shape != label.shape:
        raise InputError(label.source, f"label map shape {label.shape} differs from its image's {image.shape} "
                         f"({image.source})")
    if not np.allclose(image.affine, label.affine, atol=atol_mm, rtol=0):
        diff = affine_difference_mm(image.affine, label.affine, image.shape)
        raise InputError(label.source, f"label map geometry differs from its image's ({image.source}): "
                         f"affines differ by up to {diff:.4g} mm")


def read_label(path: str | Path, image: Volume | None = None) -> Volume:
    """Read a label map: integer values only, and on ``image``'s grid when ``image`` is given.

    Float-stored label maps whose values are all whole numbers are accepted and cast to the
    smallest unsigned integer type that holds them.
    """
    vol = read_volume(path)
    arr = vol.array
    if arr.dtype.kind == "f":
        if not np.all(np.mod(arr, 1) == 0):
            frac = arr[np.mod(arr, 1) != 0]
            raise InputError(path, f"non-integer label values (e.g. {float(frac.flat[0]):g}): a label map holds class ids")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise InputError(path, f"label map of dtype {arr.dtype} (expected integers)")
    if arr.size and arr.min() < 0:
        raise InputError(path, f"negative label value {int(arr.min())}")
    top = int(arr.max()) if arr.size else 0
    target = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    if arr.dtype != target and (arr.dtype.kind == "f" or arr.dtype.kind in "i"):
        arr = arr.astype(target)
    vol = vol.with_array(arr)
    if image is not None:
        check_same_grid(image, vol)
    return vol

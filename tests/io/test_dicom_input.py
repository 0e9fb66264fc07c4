"""DICOM in without silent geometry errors: gantry tilt, enhanced multi-frame files, mixed
orientations, Siemens mosaics, series without pixel data, and the provenance of a series.

Series are made from the real one (../shared/data/ct_abdomen/dicom, 20 CT slices, 2 mm apart) by
editing tags of copies with pydicom (the pixel data are copied unchanged), and taken from DICOM
test files that ship in PyPI packages (pydicom-data: an enhanced CT and an enhanced MR without
per-frame positions; nibabel: a Philips enhanced MR and two Siemens mosaics). References:
SimpleITK (GDCM) and dcm2niix (the ``dcm2niix`` package of the ``test`` extra).
"""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError

TILT_DEG = 15.0
STEP_MM = 2.0
OUTSIDE = -5000.0  # the ITK reference's value for voxels from outside the field of view


def _dcm2niix() -> str | None:
    """The dcm2niix binary (the test extra's ``dcm2niix`` package puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "dcm2niix"
    return str(beside) if beside.is_file() else shutil.which("dcm2niix")


def _slices(real_dicom: Path) -> list:
    """The real series' datasets (pixel data included), ordered by position along the normal (z)."""
    import pydicom

    return sorted((pydicom.dcmread(p) for p in real_dicom.iterdir() if p.is_file()),
                  key=lambda ds: float(ds.ImagePositionPatient[2]))


def _write(datasets: list, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"s{k:03d}.dcm")
    return folder


@pytest.fixture(scope="module")
def tilted_dir(real_dicom, tmp_path_factory) -> Path:
    """The real series with its slice positions sheared by a 15° gantry tilt: slice k lies 2 mm
    along the normal and 2·tan(15°) = 0.536 mm along the column direction (y) from slice k-1."""
    datasets = _slices(real_dicom)
    p0 = np.array([float(v) for v in datasets[0].ImagePositionPatient])
    lateral = STEP_MM * math.tan(math.radians(TILT_DEG))
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [f"{v:.6f}" for v in p0 + [0.0, k * lateral, k * STEP_MM]]
        ds.GantryDetectorTilt = TILT_DEG
    return _write(datasets, tmp_path_factory.mktemp("tilt") / "tilted")


def _sitk_tilt_reference(folder: Path, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The tilted series on the regular grid ``affine_ras``, computed by ITK independently of
    medseg: each file read alone (ITK places it at its own ImagePositionPatient) and resampled
    with linear interpolation onto the grid's plane of the same slice."""
    import pydicom
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine_ras[:3]
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    out = np.empty(shape, dtype=np.float64)
    for k, f in enumerate(files):
        img = sitk.Cast(sitk.ReadImage(str(f)), sitk.sitkFloat64)
        ref = sitk.Image(shape[0], shape[1], 1, sitk.sitkFloat64)
        ref.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
        ref.SetDirection(tuple((lps[:, :3] / spacing).ravel()))
        ref.SetOrigin(tuple(lps[:, 3] + lps[:, 2] * k))
        moved = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, OUTSIDE)
        out[:, :, k] = sitk.GetArrayFromImage(moved)[0].T
    return out


def test_tilt_refused_with_angle_and_option(tilted_dir):
    from medseg.io import read_volume

    with pytest.raises(InputError) as err:
        read_volume(tilted_dir)
    text = str(err.value)
    assert text.startswith(f"{tilted_dir}: gantry tilt of 15.00°")
    assert "--resample-tilt" in text and "\n" not in text


def test_tilt_resampled_onto_true_grid(tilted_dir, real_dicom):
    """--resample-tilt (on) against the refusal (off): the volume comes on the regular grid of the
    true geometry (2.0 mm along the normal, first slice where its position says), and equals ITK's
    own placement of every slice within a voxel."""
    from medseg.io import read_volume

    vol = read_volume(tilted_dir, resample_tilt=True)
    real = read_volume(real_dicom)
    assert vol.shape == real.shape == (512, 512, 20)
    # the real series is this grid: the shear moved slices in-plane only
    np.testing.assert_allclose(vol.affine, real.affine, atol=1e-4, rtol=0)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, STEP_MM), atol=1e-6)
    assert vol.meta["dicom"]["tilt_deg"] == pytest.approx(TILT_DEG, abs=1e-3)
    assert vol.meta["dicom"]["tilt_resampled"] is True
    assert any("gantry tilt of 15.00° resampled" in w for w in vol.meta["warnings"])

    ref = _sitk_tilt_reference(tilted_dir, vol.affine, vol.shape)
    ours = vol.array.astype(np.float64)
    # ITK's default value marks voxels shifted in from outside the field of view; at its edge
    # (half a row) ITK takes the edge pixel and medseg blends with the fill: one row differs
    outside = ref == OUTSIDE
    inside = ~(outside | np.roll(outside, 1, axis=1) | np.roll(outside, -1, axis=1))
    assert inside.mean() > 0.98
    assert np.abs(ours - ref)[inside].max() <= 1.0  # the same linear interpolation, rounded to int16
    # slice 0 is not moved; the last one moved 19 × 0.536 mm = 10.4 rows (content, not headers)
    assert np.array_equal(vol.array[:, :, 0], real.array[:, :, 0])
    shift = 19 * STEP_MM * math.tan(math.radians(TILT_DEG)) / 0.9765625
    j = int(np.ceil(shift))
    frac = j - shift
    expected = (1 - frac) * real.array[:, :-j, 19].astype(float) + frac * real.array[:, 1:-j + 1, 19]
    np.testing.assert_allclose(ours[:, j:, 19], expected, atol=0.51)
    # off: not the same volume at all
    assert np.abs(ours[:, 20:-20, 19] - real.array[:, 20:-20, 19]).mean() > 20


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix (the test extra's `dcm2niix` package) not installed")
def test_tilt_correction_agrees_with_dcm2niix(tilted_dir, tmp_path):
    """dcm2niix's tilt-corrected slices (``*_Tilt_1.nii.gz``) are ours moved by one in-plane
    translation for every slice: the slice-to-slice correction agrees within a voxel."""
    import nibabel as nib

    from medseg.io import read_volume

    out = tmp_path / "d2n"
    out.mkdir()
    subprocess.run([_dcm2niix(), "-z", "y", "-f", "t", "-o", str(out), str(tilted_dir)], check=True,
                   capture_output=True)
    theirs = np.asarray(nib.as_closest_canonical(nib.load(out / "t_Tilt_1.nii.gz")).dataobj).astype(float)
    vol = read_volume(tilted_dir, resample_tilt=True)
    ours = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(vol.array, vol.affine)).dataobj).astype(float)
    assert theirs.shape[0] == 512 and theirs.shape[2] == 20 and theirs.shape[1] >= 512
    best = []
    for k in range(0, 20, 3):
        errors = [np.abs(theirs[:, s:s + 512, k] - ours[:, :, k])[:, 30:-30].mean()
                  for s in range(theirs.shape[1] - 512 + 1)]
        best.append(int(np.argmin(errors)))
        assert min(errors) < 20.0  # HU, mean over the slice: the same anatomy
    assert max(best) - min(best) <= 1, best


def _enhanced_ct(tmp_path: Path) -> Path:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "enhanced_ct"
    folder.mkdir()
    return Path(shutil.copy(get_testdata_file("eCT_Supplemental.dcm", download=False), folder))


def _philips_mr(tmp_path: Path) -> Path:
    import nibabel

    src = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    folder = tmp_path / "philips"
    folder.mkdir()
    target = folder / "philips_mprage.dcm"
    target.write_bytes(gzip.decompress(src.read_bytes()))
    return target


def _canonical(array: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("make", [_enhanced_ct, _philips_mr], ids=["enhanced_ct", "philips_enhanced_mr"])
def test_enhanced_multiframe_geometry_equals_sitk_and_dcm2niix(make, tmp_path):
    """One multi-frame file, read from the file or from its folder: the same voxels at the same
    world positions as SimpleITK and dcm2niix, within 1e-3 mm."""
    import nibabel as nib
    import SimpleITK as sitk

    from medseg.io import read_volume, sitk_to_volume

    file = make(tmp_path)
    vol = read_volume(file)
    from_folder = read_volume(file.parent)
    assert vol.same_grid(from_folder, atol_mm=0) and np.array_equal(vol.array, from_folder.array)
    ours, ours_affine = _canonical(vol.array, vol.affine)
    ref = sitk_to_volume(sitk.ReadImage(str(file)))
    theirs, theirs_affine = _canonical(ref.array, ref.affine)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3, rtol=0)
    assert np.array_equal(ours, theirs)
    frames = [inst["frame"] for inst in vol.meta["dicom"]["instances"]]
    assert sorted(frames) == list(range(1, vol.shape[2] + 1))
    if _dcm2niix():
        out = tmp_path / "d2n"
        out.mkdir()
        subprocess.run([_dcm2niix(), "-z", "y", "-f", "x", "-o", str(out), str(file.parent)], check=True,
                       capture_output=True)
        d2n = nib.as_closest_canonical(nib.load(out / "x.nii.gz"))
        assert d2n.shape == ours.shape
        np.testing.assert_allclose(d2n.affine, ours_affine, atol=1e-3, rtol=0)
        if ours.any():  # the Philips test file carries headers with zeroed pixels
            np.testing.assert_allclose(np.asarray(d2n.dataobj), ours, atol=1e-3)


def test_enhanced_ct_frames_ordered_along_the_normal(tmp_path):
    """eCT_Supplemental stores its frames against the normal (orientation (-1,0,0),(0,1,0): the
    normal is -z, frame 1 at z=-159, frame 2 at z=-149): slice 0 is frame 2."""
    from medseg.io import dicom_provenance, read_volume

    file = _enhanced_ct(tmp_path)
    prov = dicom_provenance(file)
    assert [i["frame"] for i in prov["instances"]] == [2, 1]
    assert prov["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    vol = read_volume(file)
    assert vol.affine[2, 3] == pytest.approx(-149.0)  # slice 0 lies at z = -149 (RAS z = LPS z)


def _edit_mr_frames(tmp_path: Path, edit) -> Path:
    import pydicom

    file = _philips_mr(tmp_path)
    ds = pydicom.dcmread(file)
    edit(ds)
    ds.save_as(file)
    return file


def test_multiframe_4d_refused_with_its_reason(tmp_path):
    def pairs(ds):  # frames 2f and 2f+1 at one position: 2 time points of 88 slices
        groups = ds.PerFrameFunctionalGroupsSequence
        for f in range(1, len(groups), 2):
            groups[f].PlanePositionSequence[0].ImagePositionPatient = list(groups[f - 1].PlanePositionSequence[0].ImagePositionPatient)

    file = _edit_mr_frames(tmp_path, pairs)
    from medseg.io import read_volume

    with pytest.raises(InputError, match=r"4D data: 2 frames at each of 88 slice positions"):
        read_volume(file)


def test_multiframe_mixed_orientations_refused(tmp_path):
    def rotate(ds):
        ds.PerFrameFunctionalGroupsSequence[40].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    file = _edit_mr_frames(tmp_path, rotate)
    from medseg.io import read_volume

    with pytest.raises(InputError, match=r"slices in 2 orientations .*philips_mprage.dcm frame 41"):
        read_volume(file)


def test_multiframe_without_frame_positions_refused(tmp_path):
    from pydicom.data import get_testdata_file

    from medseg.io import read_volume

    file = Path(shutil.copy(get_testdata_file("emri_small.dcm", download=False), tmp_path))
    with pytest.raises(InputError, match=r"multi-frame DICOM \(10 frames\) without per-frame positions"):
        read_volume(file)


def test_mixed_orientations_refused(real_dicom, tmp_path):
    """Five slices of the real series turned sagittal (a localiser's planes): refused for their
    orientations, not for 'two slices at one position' or 'uneven spacing'."""
    from medseg.io import read_volume

    datasets = _slices(real_dicom)
    for ds in datasets[5:10]:
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    folder = _write(datasets, tmp_path / "mixed")
    with pytest.raises(InputError) as err:
        read_volume(folder)
    assert str(err.value).startswith(f"{folder}: slices in 2 orientations (ImageOrientationPatient differs by up to 90.0°")


def test_siemens_mosaic_refused(real_dicom, tmp_path):
    """nibabel's two Siemens DWI mosaics (48 images each) and the real series with mosaic tags."""
    import nibabel

    from medseg.io import read_volume

    data = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
    folder = tmp_path / "dwi"
    folder.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        (folder / name[:-3]).write_bytes(gzip.decompress((data / name).read_bytes()))
    with pytest.raises(InputError) as err:
        read_volume(folder)
    assert str(err.value) == (f"{folder}: Siemens mosaic (48 images tiled in one 896×896 frame): medseg does not "
                              "unpack mosaics; convert the series with dcm2niix first")

    datasets = _slices(real_dicom)
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    edited = _write(datasets, tmp_path / "mosaic_tags")
    with pytest.raises(InputError, match="Siemens mosaic"):
        read_volume(edited)


def test_series_without_pixel_data_one_stderr_line(real_dicom, tmp_path, cli):
    datasets = _slices(real_dicom)
    for ds in datasets:
        del ds.PixelData
    folder = _write(datasets, tmp_path / "nopixels")
    res = cli("ingest", folder, "--out", tmp_path / "out")
    lines = res.stderr.splitlines()
    assert lines == [f"medseg: error: {folder}: 20 DICOM file(s) but no image among them (no Pixel Data: reports, "
                     "presentation states or stripped headers): no series to read"], res.stderr
    assert "WARNING" not in res.stdout + res.stderr


def test_provenance_of_the_real_series(real_dicom):
    """UIDs from the file meta where the datasets' are empty; Study and Series UIDs generated,
    the same on every read, and said; instances[k] is the slice at array index k (by content)."""
    import pydicom

    from medseg.io import dicom_provenance, read_volume

    prov = dicom_provenance(real_dicom)
    assert prov == dicom_provenance(real_dicom)
    vol = read_volume(real_dicom)
    assert {k: v for k, v in vol.meta["dicom"].items() if k not in ("n_files", "tilt_deg", "tilt_resampled")} == prov
    assert prov["series_dir"] == str(real_dicom.absolute())
    assert prov["generated"] == ["SeriesInstanceUID", "StudyInstanceUID"]
    assert prov["from_file_meta"] == ["SOPClassUID", "SOPInstanceUID"]
    assert prov["frame_of_reference_uid"] == "1.3.12.2.1107.5.1.4.60064.30000022120807274275100000041"
    assert prov["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert prov["modality"] == "CT" and prov["tags"]["Manufacturer"] == "SIEMENS"
    assert prov["tags"]["StudyDate"] == "20221208" and prov["tags"]["PatientID"] == ""
    assert len(prov["warnings"]) == 1 and "generated deterministically" in prov["warnings"][0]
    assert len(prov["instances"]) == 20
    assert len({i["sop_instance_uid"] for i in prov["instances"]}) == 20
    for k in (0, 7, 19):
        inst = prov["instances"][k]
        ds = pydicom.dcmread(inst["file"])
        assert inst["sop_instance_uid"] == ds.file_meta.MediaStorageSOPInstanceUID
        assert inst["frame"] is None
        assert inst["position"] == [float(v) for v in ds.ImagePositionPatient]
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu.T, vol.array[:, :, k])  # a frame is (rows, columns); the volume (i, j) = (column, row)


def test_provenance_keeps_the_series_uids(real_dicom, tmp_path):
    from medseg.io import dicom_provenance

    datasets = _slices(real_dicom)
    for k, ds in enumerate(datasets):
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3.{k + 1}"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.PatientID = "P-17"
    folder = _write(datasets, tmp_path / "complete")
    prov = dicom_provenance(folder)
    assert prov["generated"] == [] and prov["from_file_meta"] == [] and prov["warnings"] == []
    assert (prov["study_instance_uid"], prov["series_instance_uid"]) == ("1.2.826.0.1.3680043.8.498.1",
                                                                          "1.2.826.0.1.3680043.8.498.2")
    assert [i["sop_instance_uid"] for i in prov["instances"]] == [f"1.2.826.0.1.3680043.8.498.3.{k + 1}"
                                                                 for k in range(20)]
    assert prov["tags"]["PatientID"] == "P-17"


def test_bad_slice_position_names_the_file(real_dicom, tmp_path):
    from medseg.io import read_volume

    datasets = _slices(real_dicom)
    datasets[3].ImagePositionPatient = ["1", "2"]
    folder = _write(datasets, tmp_path / "bad_position")
    with pytest.raises(InputError) as err:
        read_volume(folder)
    assert str(err.value) == f"{folder / 's003.dcm'}: DICOM ImagePositionPatient is [1, 2]: expected 3 numbers"

"""Every bad input of issue 2 through the CLI (`medseg ingest`): exit code, the one-line message
naming the file and the problem, and nothing partial left behind.

Bad NIfTI files are written with nibabel and then patched byte by byte (an independent writer;
medseg's own writer refuses to produce them). Bad DICOM series are copies of the real series in
../shared/data/ct_abdomen/dicom with tags rewritten in the bytes (see conftest.py).
"""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def _nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    return img.to_bytes()


def _write(path: Path, data: bytes, gz: bool | None = None) -> Path:
    if gz if gz is not None else str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
    return path


def _patch_f32(data: bytes, offset: int, values) -> bytes:
    raw = struct.pack(f"<{len(values)}f", *values)
    return data[:offset] + raw + data[offset + len(raw):]


def _small(dtype=np.int16) -> np.ndarray:
    return np.arange(8 * 9 * 10, dtype=dtype).reshape(8, 9, 10)


def _assert_refused(cli, out: Path, source: Path, *problem: str, args=(), culprit: Path | None = None,
                    listed: bool = True):
    """The CLI exits 3 (the run finished, a study failed) with one error line naming the file and the problem; OUT holds no image,
    no partial file, no manifest; failures.csv lists the source with the same message."""
    res = cli("ingest", source, "--out", out, *args)
    # a study that failed: the run finished (3); a lone source with no study at all: nothing ran (1)
    assert res.returncode == (3 if listed else 1), res.stderr
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, res.stderr
    line = errors[0]
    assert line.startswith("medseg: error: "), line
    assert str(culprit or source) in line, line
    for word in problem:
        assert word.lower() in line.lower(), line
    assert "Traceback" not in res.stderr
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [p for p in left if p.endswith((".nii.gz", ".nii")) or ".partial-" in p], left
    assert "manifest.csv" not in left, left
    if not listed:
        return line
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["source"] == str(source), rows
    assert rows[0]["error"] == line.removeprefix("medseg: error: ")
    return line


# --- NIfTI -------------------------------------------------------------------------------------


def test_truncated_gzip(cli, tmp_path):
    full = gzip.compress(_nifti_bytes(_small()), compresslevel=1)
    src = tmp_path / "cut.nii.gz"
    src.write_bytes(full[: len(full) // 2])
    _assert_refused(cli, tmp_path / "out", src, "truncated or corrupt gzip")


def test_corrupt_gzip(cli, tmp_path):
    full = bytearray(gzip.compress(_nifti_bytes(np.random.default_rng(0).integers(0, 999, (8, 9, 10)).astype(np.int16))))
    full[-8:-4] = bytes(b ^ 0xFF for b in full[-8:-4])  # wrong CRC-32
    src = _write(tmp_path / "crc.nii.gz", bytes(full), gz=False)
    _assert_refused(cli, tmp_path / "out", src, "corrupt gzip")


@pytest.mark.parametrize("name,data", [
    ("notes.nii", b"these are my notes, not an image\n" * 20),
    ("text.nii.gz", gzip.compress(b"hello " * 100)),
    ("tiny.nii", b"\x00" * 40),
], ids=["text-as-nii", "gzipped-text", "too-short"])
def test_not_a_nifti(cli, tmp_path, name, data):
    src = _write(tmp_path / name, data, gz=False)
    _assert_refused(cli, tmp_path / "out", src, "not a NIfTI")


def test_unknown_format(cli, tmp_path):
    src = _write(tmp_path / "scan.txt", b"plain text\n" * 50, gz=False)
    _assert_refused(cli, tmp_path / "out", src, "not a supported image")


def test_4d_trailing_axis_of_one_is_squeezed(cli, tmp_path):
    import nibabel as nib

    arr = _small()[..., None]
    affine = np.array([[-1.5, 0, 0, 10], [0, 1.5, 0, -4], [0, 0, 2, 7], [0, 0, 0, 1]])
    src = _write(tmp_path / "one_frame.nii.gz", _nifti_bytes(arr, affine))
    res = cli("ingest", src, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    img = nib.load(tmp_path / "out" / "one_frame.nii.gz")
    assert img.shape == (8, 9, 10)
    assert np.array_equal(np.asarray(img.dataobj), arr[..., 0])
    assert np.array_equal(img.affine, affine)


def test_4d_series_refused(cli, tmp_path):
    src = _write(tmp_path / "series.nii.gz", _nifti_bytes(np.zeros((8, 9, 10, 3), np.int16)))
    _assert_refused(cli, tmp_path / "out", src, "4D data", "3 volumes")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_voxels(cli, tmp_path, bad):
    arr = _small(np.float32)
    arr[3, 4, 5] = bad
    src = _write(tmp_path / "nonfinite.nii.gz", _nifti_bytes(arr))
    line = _assert_refused(cli, tmp_path / "out", src, "NaN/Inf voxels")
    assert "(3, 4, 5)" in line


@pytest.mark.parametrize("pixdim", [(1.5, 0.0, 2.0), (1.5, -1.5, 2.0)], ids=["zero", "negative"])
def test_zero_or_negative_spacing_nifti(cli, tmp_path, pixdim):
    data = _patch_f32(_nifti_bytes(_small()), 80, pixdim)  # pixdim[1..3] at byte 80
    src = _write(tmp_path / "spacing.nii.gz", data)
    _assert_refused(cli, tmp_path / "out", src, "zero or negative voxel spacing")


@pytest.mark.parametrize("spacing", ["1 0 1", "1 -2 1"], ids=["zero", "negative"])
def test_zero_or_negative_spacing_metaimage(cli, tmp_path, spacing):
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
              f"ElementSpacing = {spacing}\nDimSize = 4 5 6\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    src = _write(tmp_path / "spacing.mha", header.encode() + np.zeros(120, np.int16).tobytes(), gz=False)
    _assert_refused(cli, tmp_path / "out", src, "zero or negative voxel spacing")


def test_singular_affine(cli, tmp_path):
    data = _nifti_bytes(_small())
    # sform rows (srow_x/y/z at bytes 280/296/312): the second voxel axis maps onto the first
    data = _patch_f32(data, 280, (1.5, 1.5, 0.0, 0.0))
    data = _patch_f32(data, 296, (0.0, 0.0, 0.0, 0.0))
    src = _write(tmp_path / "singular.nii.gz", data)
    _assert_refused(cli, tmp_path / "out", src, "singular")


# --- what the reader returns for valid but unusual files -----------------------------------------


def test_scaled_nifti_gives_the_values_the_header_means(tmp_path, shared_data):
    """scl_slope/scl_inter are applied (as nibabel applies them); the raw integers are not voxels."""
    import nibabel as nib

    from medseg.io import read_volume

    img = nib.Nifti1Image(_small(), np.diag([1.5, 1.5, 2.0, 1.0]))
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = read_volume(tmp_path / "scaled.nii.gz")
    assert np.array_equal(vol.array, _small() * 0.5 - 1024.0)
    mask = shared_data / "brats_glioma" / "brats_2013_pat0003_1" / "brainmask.nii.gz"
    got = read_volume(mask).array
    assert np.array_equal(got, np.asanyarray(nib.load(mask).dataobj))
    assert np.allclose(np.unique(got), [0.0, 1.0], atol=1e-6)


def test_big_endian_and_nifti2(tmp_path):
    import nibabel as nib

    from medseg.io import read_volume

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(_small().astype(">i2"), affine, header=nib.Nifti1Header(endianness=">")), tmp_path / "be.nii")
    nib.save(nib.Nifti2Image(_small(), affine), tmp_path / "n2.nii.gz")
    for name in ("be.nii", "n2.nii.gz"):
        vol = read_volume(tmp_path / name)
        assert vol.array.dtype.isnative and np.array_equal(vol.array, _small()) and np.array_equal(vol.affine, affine)


def test_header_declaring_more_voxels_than_the_file_holds(cli, tmp_path):
    data = _nifti_bytes(_small())
    cut = _write(tmp_path / "short.nii", data[: len(data) - 100], gz=False)
    _assert_refused(cli, tmp_path / "out", cut, "file holds at most")


# --- folders and DICOM series ------------------------------------------------------------------


def test_empty_folder(cli, tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    _assert_refused(cli, tmp_path / "out", src, "empty folder", listed=False)


def test_folder_without_images(cli, tmp_path):
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "readme.txt").write_text("no scans here")
    _assert_refused(cli, tmp_path / "out", src, "no images", "DICOM", listed=False)


def test_several_dicom_series_listed_then_picked(cli, tmp_path, multi_series_dir, real_dicom):
    from medseg.io import read_volume

    folder, series = multi_series_dir
    line = _assert_refused(cli, tmp_path / "out", folder, "2 DICOM series", "--series")
    for uid, description in series.items():
        assert uid in line and description in line
    uid = list(series)[1]
    res = cli("ingest", folder, "--out", tmp_path / "picked", "--series", uid)
    assert res.returncode == 0, res.stderr
    got = read_volume(tmp_path / "picked" / "study.nii.gz")
    want = read_volume(real_dicom)
    assert np.array_equal(got.array, want.array)
    assert np.array_equal(got.affine, want.affine)
    # an unknown UID is refused with the list of the ones there are
    line = _assert_refused(cli, tmp_path / "unknown", folder, "no series with SeriesInstanceUID 9.9.9",
                           args=("--series", "9.9.9"))
    assert all(uid in line for uid in series)


def test_missing_slice(cli, tmp_path, missing_slice_dir):
    _assert_refused(cli, tmp_path / "out", missing_slice_dir, "missing 1 slice", "4.000 mm")


def test_uneven_slice_spacing(cli, tmp_path, uneven_dir):
    _assert_refused(cli, tmp_path / "out", uneven_dir, "uneven slice spacing")


# --- label maps --------------------------------------------------------------------------------


def test_label_geometry_differs(cli, tmp_path):
    image = _write(tmp_path / "img.nii.gz", _nifti_bytes(_small()))
    shifted = np.diag([1.5, 1.5, 2.0, 1.0])
    shifted[0, 3] = 3.0
    label = _write(tmp_path / "lab.nii.gz", _nifti_bytes(np.zeros((8, 9, 10), np.uint8), shifted))
    _assert_refused(cli, tmp_path / "out", image, "geometry differs", "3 mm", args=("--label", label),
                    culprit=label)
    wrong_shape = _write(tmp_path / "lab2.nii.gz", _nifti_bytes(np.zeros((8, 9, 11), np.uint8)))
    _assert_refused(cli, tmp_path / "out2", image, "shape (8, 9, 11) differs", args=("--label", wrong_shape),
                    culprit=wrong_shape)


def test_label_non_integer_values(cli, tmp_path):
    image = _write(tmp_path / "img.nii.gz", _nifti_bytes(_small()))
    lab = np.zeros((8, 9, 10), np.float32)
    lab[2:4, 2:4, 2:4] = 1.0
    lab[5, 5, 5] = 0.5
    label = _write(tmp_path / "prob.nii.gz", _nifti_bytes(lab))
    _assert_refused(cli, tmp_path / "out", image, "non-integer label values", "0.5", args=("--label", label),
                    culprit=label)


def test_float_label_with_whole_values_is_accepted(cli, tmp_path):
    import nibabel as nib

    image = _write(tmp_path / "img.nii.gz", _nifti_bytes(_small()))
    lab = np.zeros((8, 9, 10), np.float32)
    lab[2:4, 2:4, 2:4] = 3.0
    label = _write(tmp_path / "lab.nii.gz", _nifti_bytes(lab))
    res = cli("ingest", image, "--label", label, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    out = nib.load(tmp_path / "out" / "labels" / "img.nii.gz")
    assert out.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(out.dataobj), lab.astype(np.uint8))

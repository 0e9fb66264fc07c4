"""Geometry is sacred: real files of every orientation and dtype round-trip bit-exactly."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import read_volume, write_volume

REAL_FILES = [
    ("ct_abdomen/example_ct.nii.gz", "RAS", np.int32),
    ("ct_abdomen/example_ct_sm.nii.gz", "RAS", np.int16),
    ("ct_abdomen/dicom_seg.nii.gz", "LAS", np.uint8),
    ("ms_lesions/patient07/FLAIR_MNI.nii.gz", "LAS", np.float32),
    ("brats_glioma/brats_2013_pat0003_1/T1c_subtrMeanDivStd.nii.gz", "LPS", np.float32),
    # stored int32 with scl_slope 2.3e-10, scl_inter 0.5: the values it means are floats 0 and ~1
    ("brats_glioma/brats_2013_pat0003_1/brainmask.nii.gz", "LPS", np.float64),
    ("kits19_labels/case_00002/segmentation.nii.gz", "IPL", np.uint8),
]


@pytest.mark.parametrize("rel,orientation,dtype", REAL_FILES, ids=[r[0] for r in REAL_FILES])
def test_real_file_roundtrips_bit_exactly(shared_data, tmp_path, rel, orientation, dtype):
    import nibabel as nib

    src = shared_data / rel
    vol = read_volume(src)
    assert vol.orientation == orientation
    assert vol.array.dtype == dtype
    out = write_volume(vol, tmp_path / "copy.nii.gz")
    again = read_volume(out)
    assert again.shape == vol.shape
    assert again.array.dtype == vol.array.dtype
    assert np.array_equal(again.array, vol.array)
    assert np.array_equal(again.affine, vol.affine)
    # and as any NIfTI reader sees it
    assert np.array_equal(nib.load(out).affine, nib.load(src).affine)


def test_nrrd_and_mha_roundtrip(tmp_path):
    from medseg.phantoms import make_phantom

    vol = make_phantom(1, orientation="LPS", rotation_deg=(10.0, 5.0, -7.0)).image
    for suffix in (".nrrd", ".mha"):
        out = write_volume(vol, tmp_path / f"x{suffix}")
        again = read_volume(out)
        assert np.array_equal(again.array, vol.array)
        np.testing.assert_allclose(again.affine, vol.affine, atol=1e-9)

"""Ingest keeps the DICOM provenance of a study (``<id>.dicom.json``, never in the NIfTI),
refuses a gantry-tilted stack in one line unless ``--resample-tilt``, and writes nothing for a
series it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _sheared_copy(real_dicom: Path, folder: Path, tilt_deg: float = 15.0) -> Path:
    import pydicom

    datasets = sorted((pydicom.dcmread(p) for p in real_dicom.iterdir() if p.is_file()),
                      key=lambda ds: float(ds.ImagePositionPatient[2]))
    p0 = np.array([float(v) for v in datasets[0].ImagePositionPatient])
    folder.mkdir(parents=True)
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [f"{v:.6f}" for v in p0 + [0.0, 2.0 * k * math.tan(math.radians(tilt_deg)), 2.0 * k]]
        ds.save_as(folder / f"s{k:03d}.dcm")
    return folder


def test_ingest_writes_provenance_beside_the_nifti(shared_data, tmp_path, cli):
    import nibabel as nib

    series = shared_data / "ct_abdomen" / "dicom"
    out = tmp_path / "out"
    res = cli("ingest", series, "--out", out)
    assert res.returncode == 0, res.stderr
    # the empty Study/Series UIDs of the shared series are generated, and said (one warning line)
    warnings = [line for line in res.stderr.splitlines() if line.startswith("medseg: warning:")]
    assert len(warnings) == 1 and "generated deterministically" in warnings[0]
    record = json.loads((out / "dicom.dicom.json").read_text())
    assert record["series_dir"] == str(series.absolute())
    assert record["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert record["n_files"] == 20 and record["tilt_deg"] == 0.0 and record["tilt_resampled"] is False
    positions = [i["position"][2] for i in record["instances"]]
    assert positions == sorted(positions) and len(positions) == 20  # k order: ascending along the normal
    img = nib.load(out / "dicom.nii.gz")
    assert img.header.extensions == [] and "1.2.826" not in img.header["descrip"].tobytes().decode("latin-1")
    # the same on a second ingest into another folder: deterministic UIDs
    res2 = cli("ingest", series, "--out", tmp_path / "out2")
    assert res2.returncode == 0
    again = json.loads((tmp_path / "out2" / "dicom.dicom.json").read_text())
    assert (again["study_instance_uid"], again["series_instance_uid"]) == (record["study_instance_uid"],
                                                                            record["series_instance_uid"])


def test_ingest_tilt_refused_then_resampled(shared_data, tmp_path, cli):
    """Off: one error line with the angle and the option, nothing written. On: the volume on the
    regular grid (2.0 mm, not 2.0706), the tilt in the provenance JSON and a note on stderr."""
    import nibabel as nib

    tilted = _sheared_copy(shared_data / "ct_abdomen" / "dicom", tmp_path / "tilted")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tilted.iterdir())
    out = tmp_path / "off"
    res = cli("ingest", tilted, "--out", out)
    assert res.returncode == 3
    errors = [line for line in res.stderr.splitlines() if line.startswith("medseg: error:")]
    assert errors == [f"medseg: error: {tilted}: gantry tilt of 15.00°: slice positions are sheared away from the "
                      "slice normal (10.18 mm across the stack), so a regular grid would put slices in the wrong "
                      "place; read it with --resample-tilt to resample onto a regular grid"]
    assert not list(out.glob("*.nii.gz")) and not list(out.glob("*.json"))

    on = tmp_path / "on"
    res = cli("ingest", tilted, "--out", on, "--resample-tilt")
    assert res.returncode == 0, res.stderr
    assert any("gantry tilt of 15.00° resampled onto a regular grid" in line for line in res.stderr.splitlines())
    img = nib.load(on / "tilted.nii.gz")
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    record = json.loads((on / "tilted.dicom.json").read_text())
    assert record["tilt_resampled"] is True and abs(record["tilt_deg"] - 15.0) < 1e-3
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tilted.iterdir()) == before  # inputs untouched


def test_ingest_refused_series_writes_nothing(shared_data, tmp_path, cli):
    import pydicom

    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, p in enumerate(sorted((shared_data / "ct_abdomen" / "dicom").iterdir())):
        ds = pydicom.dcmread(p)
        if k % 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
        ds.save_as(folder / f"s{k:03d}.dcm")
    out = tmp_path / "out"
    res = cli("ingest", folder, "--out", out)
    assert res.returncode == 3
    errors = [line for line in res.stderr.splitlines() if line.startswith("medseg:")]
    assert len(errors) == 1 and errors[0].startswith(f"medseg: error: {folder}: slices in 2 orientations")
    assert "Traceback" not in res.stderr
    assert not list(out.glob("*.nii.gz")) and not list(out.glob("*.dicom.json"))


def test_ingest_multiframe_file(tmp_path, cli):
    import shutil

    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    file = Path(shutil.copy(get_testdata_file("eCT_Supplemental.dcm", download=False), src))
    out = tmp_path / "out"
    res = cli("ingest", file, "--out", out)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "eCT_Supplemental.dicom.json").read_text())
    assert [i["frame"] for i in record["instances"]] == [2, 1]
    assert (out / "manifest.csv").read_text().splitlines()[1] == "eCT_Supplemental,eCT_Supplemental.nii.gz,,test,CT"

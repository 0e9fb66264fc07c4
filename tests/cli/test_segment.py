"""`medseg segment` end to end in a subprocess: accuracy, outputs, bad input, fast start."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np

from medseg.io import read_volume


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cli_segments_a_phantom_with_probabilities(cli, phantom_archive, phantom_model, tmp_path):
    image_path = phantom_archive / "images" / "phantom_003.nii.gz"  # unseen, oblique LAS, 3x3x4 mm
    out, probs_path = tmp_path / "seg.nii.gz", tmp_path / "probs.nii.gz"
    r = cli("segment", image_path, "--model", phantom_model, "-o", out, "--probabilities", probs_path,
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # progress only on a terminal
    assert "seg.nii.gz" in r.stdout
    image = read_volume(image_path)
    truth = read_volume(phantom_archive / "labels" / "phantom_003.nii.gz").array
    seg = read_volume(out)
    assert seg.shape == image.shape and seg.array.dtype == np.uint8
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
    a, b = seg.array > 0, truth > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.8
    import nibabel as nib

    p = nib.load(probs_path)
    assert p.shape == image.shape + (6,)
    assert p.get_data_dtype() in (np.float16, np.float32)
    np.testing.assert_allclose(p.affine, image.affine, atol=1e-5)
    data = np.asarray(p.dataobj, dtype=np.float32)
    np.testing.assert_allclose(data.sum(-1), 1.0, atol=5e-3)
    assert (data.argmax(-1) == seg.array).mean() > 0.995
    assert _leftovers(tmp_path) == ["probs.nii.gz", "seg.nii.gz"]  # no temporaries left


def test_cli_bad_inputs_leave_no_output(cli, phantom_archive, phantom_model, tmp_path):
    image_path = phantom_archive / "images" / "phantom_003.nii.gz"
    out = tmp_path / "out"
    out.mkdir()
    # missing model directory
    r = cli("segment", image_path, "--model", tmp_path / "no_model", "-o", out / "a.nii.gz")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "no_model" in r.stderr and "does not exist" in r.stderr
    # a folder that is not a model directory
    r = cli("segment", image_path, "--model", phantom_archive, "-o", out / "a.nii.gz")
    assert r.returncode != 0 and "plans.json" in r.stderr and r.stderr.strip().count("\n") == 0
    # corrupt (truncated) input
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(image_path.read_bytes()[:2000])
    r = cli("segment", corrupt, "--model", phantom_model, "-o", out / "b.nii.gz", "--probabilities", out / "p.nii.gz")
    assert r.returncode != 0
    assert "corrupt.nii.gz" in r.stderr and r.stderr.strip().count("\n") == 0
    # output that would overwrite the input
    r = cli("segment", corrupt, "--model", phantom_model, "-o", corrupt)
    assert r.returncode != 0 and "overwrite the input" in r.stderr
    assert corrupt.stat().st_size == 2000
    # --crf: works once medseg.postprocess.crf exists; until then a clear one-line refusal
    if importlib.util.find_spec("medseg.postprocess") is None or importlib.util.find_spec("medseg.postprocess.crf") is None:
        r = cli("segment", image_path, "--model", phantom_model, "-o", out / "c.nii.gz", "--crf")
        assert r.returncode != 0 and "--crf" in r.stderr and r.stderr.strip().count("\n") == 0
    assert _leftovers(out) == []


def test_cli_import_does_not_load_heavy_libraries():
    code = ("import sys, medseg.cli\n"
            "heavy = sorted(m for m in ('torch', 'monai', 'prefect', 'SimpleITK', 'scipy', 'nibabel') if m in sys.modules)\n"
            "print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""
    r = subprocess.run([sys.executable, "-m", "medseg", "segment", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--probabilities" in r.stdout and "--tta" in r.stdout


def test_cli_crf_and_volume_report(cli, phantom_archive, phantom_model, tmp_path):
    import json

    image_path = phantom_archive / "images" / "phantom_003.nii.gz"
    out, report = tmp_path / "seg_crf.nii.gz", tmp_path / "volumes.json"
    r = cli("segment", image_path, "--model", phantom_model, "-o", out, "--crf", "--volumes", report)
    assert r.returncode == 0, r.stderr
    image = read_volume(image_path)
    seg = read_volume(out)
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
    truth = read_volume(phantom_archive / "labels" / "phantom_003.nii.gz").array
    a, b = seg.array > 0, truth > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.8
    data = json.loads(report.read_text())
    assert data["segmentation"] == str(out)
    counts = np.bincount(seg.array.ravel(), minlength=6)
    names = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}
    for lid, name in names.items():
        assert data["structures"][name]["voxels"] == int(counts[lid])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg_crf.nii.gz", "volumes.json"]

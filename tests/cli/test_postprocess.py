"""CLI: ``medseg crf`` on a real LAS MR crop, ``medseg components``, ``medseg classical``, bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="module")
def flair_case(shared_data, tmp_path_factory):
    """A crop of patient07's FLAIR (LAS, 1 mm) and synthetic lesion probabilities on its grid."""
    from scipy.ndimage import gaussian_filter

    root = shared_data / "ms_lesions" / "patient07"
    out = tmp_path_factory.mktemp("flair")
    crop = (slice(60, 124), slice(80, 144), slice(70, 118))
    flair = nib.load(str(root / "FLAIR_MNI.nii.gz")).slicer[crop]
    gold = nib.load(str(root / "GOLD_STANDARD_MNI.nii.gz")).slicer[crop]
    assert nib.aff2axcodes(flair.affine) == ("L", "A", "S")
    image = out / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(flair.dataobj, dtype=np.float32), flair.affine, flair.header), str(image))
    lesion = (np.asarray(gold.dataobj) > 0).astype(np.float32)
    rng = np.random.default_rng(0)
    p1 = np.clip(gaussian_filter(lesion, 1.0) + rng.normal(0, 0.2, lesion.shape), 0.01, 0.99).astype(np.float32)
    probs = np.stack([1 - p1, p1], axis=-1)
    probs_path = out / "probs.nii.gz"
    nib.save(nib.Nifti1Image(probs, flair.affine), str(probs_path))
    return {"dir": out, "image": image, "probs": probs_path, "affine": flair.affine, "shape": flair.shape,
            "probs_array": probs, "lesion": lesion}


def test_crf_cli_keeps_exact_geometry_on_las_file(cli, flair_case):
    out = flair_case["dir"] / "seg.nii.gz"
    pout = flair_case["dir"] / "refined.nii.gz"
    res = cli("crf", flair_case["image"], flair_case["probs"], "-o", out, "--modality", "mr",
              "--iterations", "3", "--probabilities-out", pout)
    assert res.returncode == 0, res.stderr
    seg = nib.load(str(out))
    assert seg.shape == flair_case["shape"]
    assert np.array_equal(seg.affine, flair_case["affine"])
    assert nib.aff2axcodes(seg.affine) == ("L", "A", "S")
    arr = np.asarray(seg.dataobj)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1}
    refined = nib.load(str(pout))
    assert refined.shape == flair_case["shape"] + (2,)
    assert np.array_equal(refined.affine, flair_case["affine"])
    r = np.asarray(refined.dataobj)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(r.argmax(-1), arr)
    # the CRF agrees with the truth better than the noisy argmax does
    before = flair_case["probs_array"].argmax(-1)
    truth = flair_case["lesion"] > 0
    assert (arr.astype(bool) != truth).sum() < (before.astype(bool) != truth).sum()
    assert not list(Path(flair_case["dir"]).glob(".*partial*"))


def test_crf_cli_bad_inputs(cli, flair_case, tmp_path):
    image, probs, aff = flair_case["image"], flair_case["probs"], flair_case["affine"]
    p = flair_case["probs_array"]
    cases = {}
    nib.save(nib.Nifti1Image(p[..., 1], aff), str(tmp_path / "three_d.nii.gz"))
    cases["three_d.nii.gz"] = "4D"
    nib.save(nib.Nifti1Image(p[:-1], aff), str(tmp_path / "small.nii.gz"))
    cases["small.nii.gz"] = "differs from the image"
    shifted = aff.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(p, shifted), str(tmp_path / "shifted.nii.gz"))
    cases["shifted.nii.gz"] = "not on the image's grid"
    nib.save(nib.Nifti1Image(p * 0.5, aff), str(tmp_path / "halves.nii.gz"))
    cases["halves.nii.gz"] = "sum to 1"
    nib.save(nib.Nifti1Image((p > 0.5).astype(np.uint8), aff), str(tmp_path / "ints.nii.gz"))
    cases["ints.nii.gz"] = "float32 or float16"
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    cases["junk.nii.gz"] = "named .gz but is not gzip-compressed"
    cases["missing.nii.gz"] = "does not exist"
    from medseg.io.probabilities import read_probabilities
    from medseg.errors import InputError
    from medseg.io import read_volume

    vol = read_volume(image)
    for name, words in cases.items():
        with pytest.raises(InputError) as err:
            read_probabilities(tmp_path / name, vol)
        assert name in str(err.value) and words in str(err.value), str(err.value)
    # through the CLI: one line naming the file, exit 1, nothing written, inputs never overwritten
    for name in ("three_d.nii.gz", "shifted.nii.gz"):
        out = tmp_path / f"out_{name}"
        res = cli("crf", image, tmp_path / name, "-o", out)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("medseg: error:"), res.stderr
        assert name in lines[0] and cases[name] in lines[0]
        assert not out.exists()
    res = cli("crf", image, probs, "-o", probs)
    assert res.returncode == 1 and "overwrite an input" in res.stderr


def test_components_and_classical_cli_keep_geometry(cli, tmp_path):
    from medseg.io import read_volume, write_volume
    from medseg.phantoms import make_phantom

    study = make_phantom(3, shape=(40, 36, 30), orientation="LPS", rotation_deg=(10.0, -5.0, 8.0))
    image = tmp_path / "ct.nii.gz"
    seg = tmp_path / "seg.nii.gz"
    write_volume(study.image, image)
    lab = study.label.array.copy()
    lab[0:2, 0:2, 0:2] = 2  # a speck of spleen far from the spleen
    write_volume(study.label.with_array(lab), seg)

    out = tmp_path / "clean.nii.gz"
    res = cli("components", seg, "-o", out, "--largest", "--fill-holes", "--min-size-mm3", "50")
    assert res.returncode == 0, res.stderr
    cleaned = read_volume(out)
    assert np.array_equal(cleaned.affine, read_volume(seg).affine) and cleaned.shape == (40, 36, 30)
    assert cleaned.array[0:2, 0:2, 0:2].max() == 0 and (cleaned.array == 2).sum() > 0

    for args in (["--method", "otsu", "--classes", "3"], ["--method", "threshold", "--thresholds", "-500,100"],
                 ["--method", "split-merge", "--homogeneity", "60", "--min-region-voxels", "5"]):
        out = tmp_path / f"classical_{args[1]}.nii.gz"
        res = cli("classical", image, "-o", out, *args)
        assert res.returncode == 0, (args, res.stderr)
        v = read_volume(out)
        assert np.array_equal(v.affine, read_volume(image).affine) and v.shape == study.image.shape
        assert v.array.max() >= 1
    res = cli("classical", image, "-o", tmp_path / "x.nii.gz", "--method", "split-merge")
    assert res.returncode == 1 and "--homogeneity" in res.stderr
    res = cli("classical", image, "-o", tmp_path / "x.nii.gz", "--method", "threshold", "--thresholds", "5,1")
    assert res.returncode == 1 and "increasing" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = cli("components", image, "-o", tmp_path / "y.nii.gz", "--largest")
    assert res.returncode == 1 and "negative label value" in res.stderr  # a CT is not a label map
    res = cli("components", tmp_path / "nope.nii.gz", "-o", tmp_path / "z.nii.gz")
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_crf_cli_flag_errors_name_the_flag_not_a_file(cli, tmp_path):
    """A bad --modality or an absent --device is a one-line error about the flag, found before any file is read."""
    import torch

    image, probs, out = tmp_path / "image.nii.gz", tmp_path / "probs.nii.gz", tmp_path / "seg.nii.gz"
    res = cli("crf", image, probs, "-o", out, "--modality", "pet")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["medseg: error: --modality must be ct, mr or auto, not 'pet'"]
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    res = cli("crf", image, probs, "-o", out, "--device", device)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"medseg: error: device '{device}' asked for, but ")
    assert "image.nii.gz" not in lines[0] and "probs.nii.gz" not in lines[0]
    assert not out.exists()

"""MONAI bundles as a model kind: medseg's result equals MONAI's own run of the bundle, and
medseg never evaluates code from a bundle.

The fixture bundle (tests/data/monai_bundle, written by tests/fixtures/make_bundle.py) is a
small MONAI UNet trained on phantoms, with spleen_ct_segmentation's inference.json layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "data" / "monai_bundle"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two unseen phantoms: oblique (rotated, LPS) and axis-aligned LPS, anisotropic, as NIfTI."""
    from medseg.io import write_volume
    from medseg.phantoms import make_phantom

    d = tmp_path_factory.mktemp("bundle_studies")
    grids = {"oblique": dict(shape=(60, 56, 40), spacing=(3.2, 3.0, 4.0), orientation="LPS",
                             rotation_deg=(11.0, -7.0, 14.0)),
             "lps": dict(shape=(64, 60, 36), spacing=(2.8, 2.8, 4.5), orientation="LPS")}
    paths = {}
    for i, (name, grid) in enumerate(grids.items()):
        paths[name] = d / f"{name}.nii.gz"
        write_volume(make_phantom(7 + i, **grid).image, paths[name])
    return paths


@pytest.fixture(scope="module")
def monai_reference(studies, tmp_path_factory):
    """MONAI's own run of the bundle (its ConfigParser evaluates the configs, its transforms,
    inferer and postprocessing run, SaveImaged writes): ``{name: (labels, probabilities (K, X, Y, Z))}``.

    The configs' ``evaluator`` needs pytorch-ignite, which is not installed; this runs what it
    runs (preprocessing → inferer → postprocessing) item by item."""
    import nibabel as nib
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    out = tmp_path_factory.mktemp("monai_out")
    parser = ConfigParser()
    parser.read_meta(BUNDLE / "configs" / "metadata.json")
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser["bundle_root"] = str(BUNDLE)
    parser["output_dir"] = str(out)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    to_probabilities = Compose(post.transforms[:2])  # Activationsd, Invertd
    result = {}
    for name, path in studies.items():
        data = pre({"image": str(path)})
        with torch.no_grad():
            data["pred"] = inferer(data["image"][None], net)[0]
        probs = to_probabilities(dict(data))["pred"].numpy()
        post(data)
        result[name] = (nib.load(out / f"{name}_seg.nii.gz"), probs)
    return result


@pytest.fixture(scope="module")
def predictor():
    from medseg.inference.kinds import load_predictor

    return load_predictor(BUNDLE, device="cpu", num_threads=2)


@pytest.mark.parametrize("name", ["oblique", "lps"])
def test_labels_equal_monai_bundle_inference(name, studies, monai_reference, predictor):
    from medseg.io import read_volume

    image = read_volume(studies[name])
    pred = predictor.predict(image, keep_probabilities=True)
    ref, ref_probs = monai_reference[name]
    ref_labels = np.asarray(ref.dataobj)
    labels = pred.labels.array
    assert labels.shape == image.shape == ref_labels.shape
    np.testing.assert_allclose(pred.labels.affine, image.affine, atol=1e-6)
    np.testing.assert_allclose(ref.affine, image.affine, atol=1e-4)
    agreement = float((labels == ref_labels).mean())
    assert agreement >= 0.999, agreement
    assert {1, 2} <= set(np.unique(labels))  # liver and spleen found
    probs = pred.probabilities(np.float32)  # (X, Y, Z, K) on the input grid
    assert probs.shape == image.shape + (3,)
    assert np.abs(np.moveaxis(probs, -1, 0) - ref_probs).max() < 2e-3  # float16 kept


def test_window_weights_and_spacing_grid_are_monai_s():
    import torch
    from monai.data.utils import compute_importance_map
    from monai.transforms import Spacing
    from monai.data import MetaTensor

    from medseg.inference.bundle.predictor import monai_importance, monai_spacing_grid
    from medseg.phantoms import phantom_affine

    for roi in [(32, 32, 32), (17, 24, 9)]:
        ours = monai_importance(roi, "gaussian", 0.125)
        theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    affine = phantom_affine((20, 18, 11), (1.3, 0.9, 2.5), "RAS", (8.0, -4.0, 11.0))
    out = Spacing(pixdim=(2.0, 1.5, 1.0))(MetaTensor(torch.zeros(1, 20, 18, 11), affine=torch.as_tensor(affine)))
    new_affine, shape = monai_spacing_grid(affine, (20, 18, 11), (2.0, 1.5, 1.0))
    assert shape == tuple(out.shape[1:])
    np.testing.assert_allclose(new_affine, out.affine.numpy(), atol=1e-6)


def test_describe_reads_configs_without_weights(tmp_path):
    from medseg.inference.kinds import describe_model, detect_kind, model_files

    bundle = tmp_path / "b"
    shutil.copytree(BUNDLE, bundle)
    (bundle / "models" / "model.pt").write_bytes(b"not weights")  # never opened by describe
    info = describe_model(bundle)
    assert detect_kind(bundle) == "monai-bundle"
    assert (info.kind, info.channels, info.labels, info.modality) == ("monai-bundle", ("image",),
                                                                      {1: "liver", 2: "spleen"}, "CT")
    assert info.spacing_mm == (3.5, 3.5, 3.5) and info.patch_size == (32, 32, 32)
    assert info.details["network"] == "UNet" and info.details["overlap"] == 0.5
    assert [p.name for p in model_files(bundle)] == ["inference.json", "metadata.json", "model.pt"]


def _edited_bundle(tmp_path: Path, edit) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    edit(bundle, cfg, meta)
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    return bundle


def _expression_in_keys(bundle, cfg, meta):
    cfg["preprocessing"]["transforms"][3]["pixdim"] = "$[1.5, 1.5, 2.0]"


def _code_target(bundle, cfg, meta):
    cfg["preprocessing"]["transforms"][4] = {"_target_": "monai.transforms.Lambdad", "keys": "image",
                                             "func": "$lambda x: x"}


def _os_system(bundle, cfg, meta):
    cfg["network_def"]["_target_"] = "os.system"


def _no_weights(bundle, cfg, meta):
    (bundle / "models" / "model.pt").unlink()


def _two_channels(bundle, cfg, meta):
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "ct", "1": "pet"}
    cfg["network_def"]["in_channels"] = 2


def _macro_outside(bundle, cfg, meta):
    cfg["network_def"] = "%../../../etc/passwd#x"


@pytest.mark.parametrize("edit, file, problem", [
    (_expression_in_keys, "configs/inference.json",
     '"preprocessing#transforms#3#pixdim": $ expressions are code; medseg does not evaluate them'),
    (_code_target, "configs/inference.json",
     "\"preprocessing#transforms#4#_target_\": _target_ 'monai.transforms.Lambdad' is not allowed"),
    (_os_system, "configs/inference.json", "\"network_def#_target_\": _target_ 'os.system' is not allowed"),
    (_no_weights, "models", "no model.pt or model.ts"),
    (_two_channels, "", "the model takes 2 channel(s) (ct, pet): give one INPUT per channel"),
    (_macro_outside, "configs/inference.json", "\"network_def\": macro file '../../../etc/passwd' lies outside"),
])
def test_bad_bundles_are_one_line_errors(tmp_path, studies, cli, edit, file, problem):
    bundle = _edited_bundle(tmp_path, edit)
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", studies["lps"], "--model", bundle, "-o", out, "--device", "cpu")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medseg: error: {bundle / file}:"), lines
    assert problem in lines[0], lines[0]
    assert not out.exists() and not any(p.name.startswith("seg") for p in tmp_path.iterdir())


def test_weights_that_do_not_fit_name_the_first_mismatching_key(tmp_path):
    import torch

    from medseg.errors import InputError
    from medseg.inference.kinds import load_predictor

    def smaller(bundle, cfg, meta):
        state = torch.load(bundle / "models" / "model.pt", weights_only=True)
        key = next(iter(state))
        state[key] = state[key][:4]
        torch.save({"state_dict": state}, bundle / "models" / "model.pt")  # nested, as some zoo bundles do

    bundle = _edited_bundle(tmp_path, smaller)
    with pytest.raises(InputError, match=r"model\.pt: weights do not fit UNet of network_def: first mismatching key "
                                         r"'model\.0\.conv\.unit0\.conv\.weight' has shape \(4, "):
        load_predictor(bundle, device="cpu")


def test_segment_cli_writes_on_the_input_grid_and_tta_agrees(tmp_path, studies, cli, predictor):
    import nibabel as nib

    from medseg.io import read_volume

    out = tmp_path / "seg.nii.gz"
    r = cli("segment", studies["oblique"], "--model", BUNDLE, "-o", out, "--device", "cpu", "--threads", "2")
    assert r.returncode == 0, r.stderr
    img = nib.load(studies["oblique"])
    seg = nib.load(out)
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-5)
    plain = predictor.predict(read_volume(studies["oblique"]))
    np.testing.assert_array_equal(np.asarray(seg.dataobj), plain.labels.array)
    lps = read_volume(studies["lps"])
    plain = predictor.predict(lps)
    mirrored = predictor.predict(lps, tta=True)
    assert mirrored.labels.shape == plain.labels.shape
    agreement = float((mirrored.labels.array == plain.labels.array).mean())
    assert 0.98 < agreement < 1.0  # the flips change a few voxels, not the anatomy


def test_torchscript_weights_give_the_same_labels(tmp_path, studies, predictor):
    import torch

    from medseg.inference.kinds import load_predictor
    from medseg.io import read_volume

    def scripted(bundle, cfg, meta):
        torch.jit.script(predictor.net).save(str(bundle / "models" / "model.ts"))
        (bundle / "models" / "model.pt").unlink()
        del cfg["network_def"]

    bundle = _edited_bundle(tmp_path, scripted)
    ts = load_predictor(bundle, device="cpu", num_threads=2)
    image = read_volume(studies["lps"])
    np.testing.assert_array_equal(ts.predict(image).labels.array, predictor.predict(image).labels.array)

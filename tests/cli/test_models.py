"""``medseg models --describe MODEL``: what a model folder expects."""

from __future__ import annotations

import json
from pathlib import Path



def test_models_describe_lists_the_channels_in_order(mr_model, cli):
    r = cli("models", "--describe", mr_model / "model", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["channels"] == ["T1", "T2"] and info["modality"] == "MR" and info["labels"]["5"] == "tumour"
    r = cli("models", "--describe", mr_model / "archive")
    assert r.returncode == 1 and "not a model folder" in r.stderr and len(r.stderr.splitlines()) == 1


def test_describe_reads_nnunet_folders_and_bundles_without_loading_weights(tmp_path, cli):
    """`--describe` of each model kind from its configuration files: the weights may be absent."""
    import shutil

    from tests.support_nnunet import write_nnunet_folder

    folder = write_nnunet_folder(tmp_path / "nn", labels={"background": 0, "liver": 1, "tumour": 2},
                                 channels=("T1", "T2"), folds=(0, 1))
    r = cli("models", "--describe", folder, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["kind"] == "nnunet" and info["channels"] == ["T1", "T2"] and info["folds"] == [0, 1]
    assert info["labels"] == {"1": "liver", "2": "tumour"} and info["details"]["configuration"] == "3d_fullres"
    bundle = tmp_path / "bundle"
    shutil.copytree(Path(__file__).parents[1] / "data" / "monai_bundle", bundle)
    (bundle / "models" / "model.pt").unlink()
    r = cli("models", "--describe", bundle)
    assert r.returncode == 0, r.stderr
    assert "monai-bundle" in r.stdout and "1 liver, 2 spleen" in r.stdout

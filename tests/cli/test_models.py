"""``medseg models --describe MODEL``: what a model folder expects."""

from __future__ import annotations

import json



def test_models_describe_lists_the_channels_in_order(mr_model, cli):
    r = cli("models", "--describe", mr_model / "model", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["channels"] == ["T1", "T2"] and info["modality"] == "MR" and info["labels"]["5"] == "tumour"
    r = cli("models", "--describe", mr_model / "archive")
    assert r.returncode == 1 and "not a model folder" in r.stderr and len(r.stderr.splitlines()) == 1

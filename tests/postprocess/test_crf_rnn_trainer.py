"""The trainer's ``crf_rnn`` option: a U-Net trained end to end with a CRF-as-RNN layer on top."""

from __future__ import annotations

import json

import pytest
import torch


def test_trainer_crf_rnn_option_trains_and_writes_plain_weights(tmp_path):
    from medseg.models import create_model
    from medseg.phantoms import write_phantom_archive
    from medseg.training import TrainConfig, train

    manifest = write_phantom_archive(tmp_path / "data", 2, seed=5, splits={"train": 1, "val": 1}, variants=False)
    cfg = TrainConfig.model_validate({
        "model": {"name": "unet", "spatial_dims": 3, "options": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
        "loss": {"name": "dice_ce"},
        "optimiser": {"name": "adamw", "lr": 0.02},
        "patch_size": [24, 24, 16],
        "batch_size": 1,
        "steps": 6,
        "steps_per_epoch": 3,
        "validation": {"every_epochs": 2},
        "data": {"labels": {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"},
                 "preprocess": {"target_spacing": [6.0, 6.0, 6.0], "intensity": [{"kind": "ct", "window": [-150, 250]}]}},
        "autocast": "none",
        "num_threads": 1,
        "crf_rnn": {"iterations": 2, "spatial_sigma_mm": 6.0, "bilateral_sigma_mm": 12.0},
    })
    out = train(cfg, manifest=manifest, out_dir=tmp_path / "run", progress=False)
    log = json.loads((out / "training_log.json").read_text())
    assert log["summary"]["steps_done"] == 6
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in log["epochs"])
    crf = json.loads((out / "crf_rnn.json").read_text())
    assert crf["config"]["iterations"] == 2
    learned = crf["learned"]
    assert learned["bilateral_weight"] != pytest.approx(5.0, abs=1e-6)  # it learned
    assert len(learned["compatibility"]) == 6
    # model.pt is the plain network (inference builds it from plans.json as usual)
    state = torch.load(out / "model.pt", weights_only=True)
    net = create_model("unet", 3, 1, 6, channels=(4, 8), strides=(2,), num_res_units=0)
    net.load_state_dict(state)

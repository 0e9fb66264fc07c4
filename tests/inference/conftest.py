"""Fixtures for inference tests: a small 3D U-Net trained on phantoms once per session by the
project's trainer, as a real model directory (model.pt state_dict + plans.json + labels.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.phantoms import PHANTOM_LABELS

UNET_OPTIONS = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 2}
CT_WINDOW = (-200.0, 300.0)


def phantom_plans(spatial_dims: int = 3, patch_size=(48, 48, 48), slice_axis=None, out_channels: int = 6):
    from medseg.plans import InferenceDefaults, ModelPlans, ModelSpec
    from medseg.preprocess import IntensityConfig, PreprocessConfig

    labels = PHANTOM_LABELS if out_channels == 6 else {i: f"class_{i}" for i in range(1, out_channels)}
    return ModelPlans(
        model=ModelSpec(name="unet", spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels,
                        options=UNET_OPTIONS),
        preprocess=PreprocessConfig(orientation="RAS", target_spacing=(3.0, 3.0, 3.0),
                                    intensity=[IntensityConfig(kind="ct", window=CT_WINDOW)]),
        inference=InferenceDefaults(patch_size=tuple(patch_size), overlap=0.25, slice_axis=slice_axis),
        labels=labels, channel_names=["CT"])


@pytest.fixture(scope="session")
def trained_phantom(quick_phantom_root) -> Path:
    """A real model directory from the real trainer (``medseg.training.quick_train_phantom_model``:
    a 3D U-Net (8..64 channels) on 3 phantoms, 300 deterministic steps, bf16, about 20 s of CPU),
    shared with the training tests. The folder also holds the phantom archive (``phantoms/``:
    3 train, 1 val, 1 test)."""
    return quick_phantom_root


@pytest.fixture(scope="session")
def phantom_archive(trained_phantom) -> Path:
    """The archive the model was trained from; ``phantom_003`` (oblique LAS, 3x3x4 mm) was never trained on."""
    return trained_phantom / "phantoms"


@pytest.fixture(scope="session")
def phantom_model(trained_phantom) -> Path:
    return trained_phantom / "model"


@pytest.fixture(scope="session")
def phantom_predictor(phantom_model):
    from medseg.inference import Predictor

    return Predictor.from_model_dir(phantom_model, device="cpu")


@pytest.fixture(scope="session")
def make_plans():
    """``make_plans(spatial_dims=3, patch_size=(48, 48, 48), slice_axis=None, out_channels=6) -> ModelPlans``
    (the phantom model's plans; ``options`` of the U-Net in :data:`UNET_OPTIONS`)."""
    return phantom_plans

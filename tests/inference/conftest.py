"""Fixtures for inference tests: the phantom model's plans (the trained model itself is the
session's ``phantom_model``, in tests/conftest.py)."""

from __future__ import annotations

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
def make_plans():
    """``make_plans(spatial_dims=3, patch_size=(48, 48, 48), slice_axis=None, out_channels=6) -> ModelPlans``
    (the phantom model's plans; ``options`` of the U-Net in :data:`UNET_OPTIONS`)."""
    return phantom_plans

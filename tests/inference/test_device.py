"""Device and autocast selection (no GPU here: the CUDA branches are checked for their refusals and
their dtype choice; the CUDA path itself ran on a lent GPU machine when one was available)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference import DeviceError, Predictor, autocast_dtype, resolve_device
from medseg.io import read_volume


def test_resolve_device():
    import torch

    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU").type == "cpu"
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="cuda:N"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceError, match="device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_autocast_dtypes():
    import torch

    assert autocast_dtype("cpu", "none") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cuda", "fp16") is torch.float16
    assert autocast_dtype("cuda", "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="none, bf16, fp16"):
        autocast_dtype("cpu", "int8")


def test_fp16_on_cpu_refused_at_load(phantom_model):
    with pytest.raises(ValueError, match="fp16"):
        Predictor.from_model_dir(phantom_model, device="cpu", autocast="fp16")


def test_bf16_agrees_with_fp32(phantom_model, phantom_archive):
    image = read_volume(phantom_archive / "images" / "phantom_003.nii.gz")
    fp32 = Predictor.from_model_dir(phantom_model, device="cpu").predict(image).labels.array
    bf16_predictor = Predictor.from_model_dir(phantom_model, device="cpu", autocast="bf16")
    assert not bf16_predictor.net.training  # eval mode set at load
    bf16 = bf16_predictor.predict(image).labels.array
    assert (fp32 == bf16).mean() >= 0.98

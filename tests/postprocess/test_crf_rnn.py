"""CRF-as-RNN: exact gradients (gradcheck) and end-to-end training on top of a U-Net."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from medseg.postprocess import CRFasRNN, CRFConfig, wrap_with_crf_rnn


def test_gradcheck_logits_weights_and_compatibility():
    torch.manual_seed(0)
    cfg = CRFConfig(iterations=2, spatial_sigma_mm=2.0, bilateral_sigma_mm=3.0, intensity_sigma=[0.5])
    crf = CRFasRNN(3, (1.0, 1.5, 2.0), cfg).double()
    image = torch.randn(1, 1, 4, 3, 3, dtype=torch.float64)
    logits = torch.randn(1, 3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    names = ["spatial_weight", "bilateral_weight", "compatibility"]
    params = tuple(getattr(crf, n).detach().clone().requires_grad_(True) for n in names)

    def f(z, *p):
        return functional_call(crf, dict(zip(names, p)), (z, image))

    assert torch.autograd.gradcheck(f, (logits,) + params, eps=1e-6, atol=1e-5, fast_mode=True)


def test_2d_inputs_and_shape_errors():
    crf = CRFasRNN(2, (1.0, 1.0), CRFConfig(iterations=1, intensity_sigma=[1.0]))
    z = torch.randn(2, 2, 8, 9)
    out = crf(z, torch.randn(2, 1, 8, 9))
    assert out.shape == z.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="channels"):
        crf(torch.randn(1, 3, 8, 9), torch.randn(1, 1, 8, 9))
    with pytest.raises(ValueError, match="spatial shape"):
        crf(z, torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="spacing_mm"):
        CRFasRNN(2, (1.0, -1.0, 1.0))


def test_end_to_end_training_with_unet_and_crf_rnn():
    from medseg.models import create_model

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # a bright sphere in noise: the target is the sphere
    n = 16
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    target = (((grid - 7.5) ** 2).sum(0) < 25).long()[None]
    image = (target.float() + 0.3 * torch.randn((1, n, n, n), generator=gen))[None]
    net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
                       num_res_units=1)
    model = wrap_with_crf_rnn(net, 2, (1.0, 1.0, 1.0), CRFConfig(iterations=2, intensity_sigma=[0.3]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    w0 = float(model.crf.bilateral_weight.detach())
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(image), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.8, losses
    assert float(model.crf.bilateral_weight.detach()) != w0  # the CRF's weights learn too
    assert model.crf.compatibility.grad is not None

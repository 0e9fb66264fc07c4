"""The same contract for every registered architecture, 2D and 3D (SMP's BaseModelTester style)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from medseg.models import MODELS, available_models, create_model

from tests.models.models_tiny import INPUT_SHAPES, TINY_OPTIONS

CASES = [(name, dims) for name in available_models() for dims in MODELS[name].spatial_dims]


def build(name: str, dims: int, in_channels: int = 1, out_channels: int = 3, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return create_model(name, dims, in_channels, out_channels, **{**TINY_OPTIONS[name], **extra})


def test_every_registered_architecture_has_tiny_options():
    assert set(TINY_OPTIONS) == set(available_models())
    assert {"unet", "vnet", "fcn", "pspnet", "deeplabv3", "tiramisu"} <= set(available_models())


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_forward_shape_on_odd_non_square_input(name, dims):
    net = build(name, dims, in_channels=2, out_channels=3)
    x = torch.randn(2, 2, *INPUT_SHAPES[dims])
    y = net(x)
    assert y.shape == (2, 3, *INPUT_SHAPES[dims])
    assert y.dtype == torch.float32
    # logits, not probabilities: no softmax/sigmoid inside
    assert not torch.allclose(y.softmax(1).sum(1), y.sum(1))


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_backward_gives_finite_gradients_on_every_parameter(name, dims):
    net = build(name, dims)
    net.train()
    y = net(torch.randn(1, 1, *INPUT_SHAPES[dims]))
    y.square().mean().backward()
    for pname, param in net.named_parameters():
        assert param.grad is not None, f"{name} {dims}D: no gradient reached {pname}"
        assert torch.isfinite(param.grad).all(), f"{name} {dims}D: non-finite gradient in {pname}"
    assert sum(float(p.grad.abs().sum()) for p in net.parameters()) > 0


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_state_dict_round_trip_gives_identical_outputs_and_eval_is_deterministic(name, dims):
    net = build(name, dims, seed=0)
    net.train()
    net(torch.randn(2, 1, *INPUT_SHAPES[dims]))  # move batch-norm running statistics off their initial values
    net.eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    other = build(name, dims, seed=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    other.eval()
    x = torch.randn(1, 1, *INPUT_SHAPES[dims])
    with torch.no_grad():
        first = net(x)
        assert torch.equal(first, net(x)), "eval-mode forward is not deterministic"
        assert torch.equal(first, other(x)), "reloaded state_dict gives different outputs"


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_a_few_optimisation_steps_on_a_phantom_patch_lower_the_loss(name, dims, phantom_patch):
    image, target = phantom_patch[dims]
    net = build(name, dims, out_channels=3)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss = F.cross_entropy(net(image), target)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], f"{name} {dims}D: loss did not go down: {losses}"


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_input_of_the_wrong_shape_is_refused_with_words(name, dims):
    net = build(name, dims, in_channels=1)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, "):
        net(torch.randn(1, 2, *INPUT_SHAPES[dims]))
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.randn(1, *INPUT_SHAPES[dims]))


@pytest.mark.parametrize("name", available_models())
def test_plans_json_spec_rebuilds_the_same_model(name):
    """The trainer writes {name, spatial_dims, in_channels, out_channels, options} to plans.json and
    the predictor rebuilds from it (tuples come back as lists)."""
    from medseg.plans import ModelSpec

    spec = ModelSpec(name=name, spatial_dims=2, in_channels=1, out_channels=3, options=TINY_OPTIONS[name])
    again = ModelSpec.model_validate_json(spec.model_dump_json())
    a = build(name, 2)
    torch.manual_seed(0)
    b = create_model(again.name, again.spatial_dims, again.in_channels, again.out_channels, **again.options)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize("name", available_models())
def test_bf16_autocast_and_very_small_inputs(name):
    """Inference under bf16 autocast (what the predictor uses on CPU) and a 5×7 slice (padded up)."""
    net = build(name, 2).eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(torch.randn(1, 1, *INPUT_SHAPES[2]))
        small = net(torch.randn(1, 1, 5, 7))
    assert y.shape == (1, 3, *INPUT_SHAPES[2]) and torch.isfinite(y.float()).all()
    assert small.shape == (1, 3, 5, 7) and torch.isfinite(small).all()

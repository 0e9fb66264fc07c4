"""Each architecture's distinctive part, tested by what it does (not only by output shape)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medseg.models import create_model
from medseg.models.blocks import pad_to_multiple

from tests.models.models_tiny import INPUT_SHAPES, TINY_OPTIONS


def build(name: str, dims: int, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return create_model(name, dims, 1, 2, **{**TINY_OPTIONS[name], **extra})


# ---------------------------------------------------------------- size handling (all architectures)

@pytest.mark.parametrize("dims", [2, 3])
def test_pad_to_multiple_pads_evenly_and_the_crop_restores_the_input(dims):
    x = torch.randn(1, 2, *INPUT_SHAPES[dims])
    padded, crop = pad_to_multiple(x, (8,) * dims)
    assert all(s % 8 == 0 and s - o < 8 for s, o in zip(padded.shape[2:], x.shape[2:]))
    assert torch.equal(padded[crop], x)
    same, crop = pad_to_multiple(padded, (8,) * dims)
    assert same is padded
    small, crop = pad_to_multiple(torch.randn(1, 1, *(5,) * dims), (4,) * dims, min_multiple=2)
    assert small.shape[2:] == (8,) * dims and crop[2:] == (slice(1, 6),) * dims


@pytest.mark.parametrize(("name", "divisor"), [("unet", 4), ("vnet", 16), ("fcn", 8), ("pspnet", 4),
                                              ("deeplabv3", 4), ("tiramisu", 4)])
def test_the_network_sees_a_padded_input_of_a_size_it_can_take(name, divisor):
    net = build(name, 3)
    assert net.size_divisor == (divisor,) * 3
    seen = []
    net.forward_padded = lambda x, _f=net.forward_padded: seen.append(x.shape[2:]) or _f(x)
    net(torch.randn(1, 1, *INPUT_SHAPES[3]))
    assert all(s % divisor == 0 for s in seen[0])


# ---------------------------------------------------------------- U-Net

@pytest.mark.parametrize("dims", [2, 3])
def test_unet_skip_carries_the_encoder_features_into_the_decoder(dims):
    net = build("unet", dims).eval()
    top_down, top_up = net.net.model[0], net.net.model[2]  # MONAI: Sequential(down, SkipConnection(...), up)
    captured = {}
    top_down.register_forward_hook(lambda m, i, o: captured.__setitem__("encoder", o))
    top_up.register_forward_pre_hook(lambda m, i: captured.__setitem__("decoder_in", i[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, *INPUT_SHAPES[dims]))
    enc, dec = captured["encoder"], captured["decoder_in"]
    c = enc.shape[1]
    assert dec.shape[1] > c and dec.shape[2:] == enc.shape[2:]
    assert torch.equal(dec[:, :c], enc)  # the decoder input is [encoder features, upsampled deeper features]


def test_unet_residual_units_are_optional():
    plain = build("unet", 2, num_res_units=0)
    residual = build("unet", 2, num_res_units=1)
    from monai.networks.blocks import ResidualUnit

    assert not any(isinstance(m, ResidualUnit) for m in plain.modules())
    assert any(isinstance(m, ResidualUnit) for m in residual.modules())
    assert plain(torch.randn(1, 1, *INPUT_SHAPES[2])).shape == (1, 2, *INPUT_SHAPES[2])


def test_unet_strides_per_axis_keep_a_thick_axis_at_full_resolution():
    """Per-axis strides: the last axis is pooled once instead of three times, so the network takes
    thin inputs along it and pads them less (the size divisor is per axis)."""
    iso = build("unet", 3, channels=(4, 8, 16, 32), strides=(2, 2, 2))
    aniso = build("unet", 3, channels=(4, 8, 16, 32), strides=([2, 2, 1], [2, 2, 1], 2))
    assert iso.size_divisor == (8, 8, 8) and aniso.size_divisor == (8, 8, 2)
    seen = {}
    aniso.net.model[1].register_forward_pre_hook(lambda m, i: seen.__setitem__("level1", i[0].shape[2:]))
    x = torch.randn(1, 1, 32, 24, 6)
    with torch.no_grad():
        assert aniso(x).shape == (1, 2, 32, 24, 6)
    assert tuple(seen["level1"]) == (16, 12, 6)  # the first level halved R and A only


# ---------------------------------------------------------------- V-Net

@pytest.mark.parametrize("dims", [2, 3])
def test_vnet_uses_5_wide_convolutions_prelu_and_strided_downsampling(dims):
    net = build("vnet", dims)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    five = [m for m in convs if m.kernel_size == (5,) * dims]
    down = [m for m in convs if m.kernel_size == (2,) * dims and m.stride == (2,) * dims]
    assert len(five) >= 13 and len(down) == 4
    acts = [m for m in net.modules() if isinstance(m, (nn.PReLU, nn.ReLU, nn.ELU, nn.LeakyReLU))]
    assert acts and all(isinstance(a, nn.PReLU) for a in acts)
    # one learned slope per channel (PReLU, not ReLU)
    assert all(a.num_parameters > 1 for a in acts if a is not acts[-1])


def test_vnet_at_width_16_is_monai_vnet():
    from monai.networks.nets import VNet as MonaiVNet

    with torch.device("meta"):
        ours = create_model("vnet", 3, 1, 2)
        theirs = MonaiVNet(spatial_dims=3, in_channels=1, out_channels=2, act="prelu")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


# ---------------------------------------------------------------- FCN

@pytest.mark.parametrize("dims", [2, 3])
def test_fcn_interpolate_mode_has_no_transposed_convolution_and_transposed_mode_has(dims):
    interp = build("fcn", dims, upsample="interpolate")
    transposed = build("fcn", dims, upsample="transposed")
    is_t = (nn.ConvTranspose2d, nn.ConvTranspose3d)
    assert not any(isinstance(m, is_t) for m in interp.modules())
    assert any(isinstance(m, nn.Upsample) for m in interp.modules())
    assert sum(isinstance(m, is_t) for m in transposed.modules()) == len(TINY_OPTIONS["fcn"]["channels"]) - 1
    x = torch.randn(1, 1, *INPUT_SHAPES[dims])
    assert transposed(x).shape == interp(x).shape == (1, 2, *INPUT_SHAPES[dims])


def test_fcn_fuses_the_configured_number_of_skip_levels():
    net = build("fcn", 2, fused_levels=2).eval()
    used = []
    for level, proj in net.decoder.project.items():
        proj.register_forward_hook(lambda m, i, o, level=level: used.append((int(level), tuple(o.shape[2:]))))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 48))
    assert used == [(3, (4, 6)), (2, (8, 12))]  # deepest (1/8) and the next (1/4)


# ---------------------------------------------------------------- PSPNet

@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_pspnet_pools_to_the_configured_bins(dims, pool):
    bins = (1, 2, 3, 5)
    net = build("pspnet", dims, bins=bins, pool=pool).eval()
    pooled = []
    for p in net.decoder.pyramid.pools:
        p.register_forward_hook(lambda m, i, o: pooled.append((i[0], o)))
    with torch.no_grad():
        net(torch.randn(1, 1, *INPUT_SHAPES[dims]))
    assert [tuple(o.shape[2:]) for _, o in pooled] == [(b,) * dims for b in bins]
    features, one_bin = pooled[0]
    reduce = torch.amax if pool == "max" else torch.mean
    expected = reduce(features, dim=tuple(range(2, 2 + dims)))
    assert torch.allclose(one_bin.flatten(1), expected, atol=1e-6)


def test_pspnet_concatenates_upsampled_branches_with_the_features():
    net = build("pspnet", 3).eval()
    captured = {}
    net.decoder.fuse.register_forward_pre_hook(lambda m, i: captured.__setitem__("in", i[0]))
    net.encoder.register_forward_hook(lambda m, i, o: captured.__setitem__("deep", o[-1]))
    with torch.no_grad():
        net(torch.randn(1, 1, *INPUT_SHAPES[3]))
    deep, fused_in = captured["deep"], captured["in"]
    c = deep.shape[1]
    assert fused_in.shape[1] == c + 4 * (c // 4) and fused_in.shape[2:] == deep.shape[2:]
    assert torch.equal(fused_in[:, :c], deep)


# ---------------------------------------------------------------- DeepLabv3

@pytest.mark.parametrize("dims", [2, 3])
def test_deeplab_aspp_branches_have_the_configured_dilations(dims):
    rates = (1, 2, 3)
    net = build("deeplabv3", dims, rates=rates)
    convs = [branch.conv for branch in net.decoder.aspp.branches]
    assert convs[0].kernel_size == (1,) * dims
    assert [c.dilation for c in convs[1:]] == [(r,) * dims for r in rates]
    # what a dilation does: a 3-wide conv with dilation r sees exactly the taps at offsets -r, 0, +r
    conv = convs[-1]
    probe = nn.Conv2d(1, 1, 3, padding=conv.padding[:2], dilation=conv.dilation[:2], bias=False)
    nn.init.ones_(probe.weight)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1
    hit = probe(impulse)[0, 0].nonzero().tolist()
    r = rates[-1]
    assert sorted(hit) == sorted([7 + a, 7 + b] for a in (-r, 0, r) for b in (-r, 0, r))


def test_deeplab_aspp_image_pooling_branch_is_global():
    net = build("deeplabv3", 3).eval()
    out = {}
    net.decoder.aspp.image_pooling.register_forward_hook(lambda m, i, o: out.__setitem__("o", o))
    with torch.no_grad():
        net(torch.randn(1, 1, *INPUT_SHAPES[3]))
    o = out["o"]
    assert torch.allclose(o, o.flatten(2)[..., :1].reshape(*o.shape[:2], 1, 1, 1).expand_as(o))


@pytest.mark.parametrize("output_stride", [2, 4, 8])
def test_deeplab_cascaded_atrous_keeps_output_stride(output_stride):
    net = build("deeplabv3", 3, output_stride=output_stride, cascade_rates=(2, 4)).eval()
    with torch.no_grad():
        feats = net.encoder(torch.randn(1, 1, 16, 24, 32))
    assert feats[-1].shape[2:] == (16 // output_stride, 24 // output_stride, 32 // output_stride)
    # stages past the output stride keep the resolution and are dilated, doubling each time (cascaded)
    expected = {2: [1, 1, 2, 4], 4: [1, 1, 1, 2], 8: [1, 1, 1, 1]}[output_stride]
    assert net.encoder.dilations == expected
    cascade = [m.conv.unit0.conv.dilation for m in net.decoder.cascade]
    assert cascade == [(2, 2, 2), (4, 4, 4)]


# ---------------------------------------------------------------- Tiramisu

@pytest.mark.parametrize("dims", [2, 3])
def test_tiramisu_memory_efficient_gives_the_same_outputs_gradients_and_statistics(dims):
    plain = build("tiramisu", dims, dropout=0.0)
    efficient = build("tiramisu", dims, dropout=0.0, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, *INPUT_SHAPES[dims])
    outs = []
    for net in (plain, efficient):
        net.train()
        y = net(x)
        y.square().mean().backward()
        outs.append(y.detach())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name
    for (name, a), b in zip(plain.named_buffers(), efficient.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), f"{name} updated differently (recomputation?)"


def test_tiramisu_memory_efficient_keeps_fewer_tensors_for_backward():
    def saved_bytes(net):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.randn(1, 1, 32, 48)).sum()
        return total

    plain = build("tiramisu", 2, down_layers=(4, 4), bottleneck_layers=4).train()
    efficient = copy.deepcopy(plain)
    for m in efficient.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = True
    assert saved_bytes(efficient) < 0.7 * saved_bytes(plain)


def test_tiramisu_dense_layers_see_every_earlier_feature_map():
    net = build("tiramisu", 2, growth_rate=4, first_channels=8, down_layers=(3, 3))
    block = net.encoder.blocks[0]
    assert [layer.conv.in_channels for layer in block.layers] == [8, 12, 16]
    assert block.out_channels == 8 + 3 * 4


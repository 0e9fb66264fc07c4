"""The registry: helpful misses, worded option errors, and the `medseg models` table."""

from __future__ import annotations

import json

import pytest

from medseg.models import MODELS, available_models, create_model


def test_unknown_architecture_suggests_the_closest_and_lists_all():
    with pytest.raises(ValueError) as err:
        create_model("unett", 3, 1, 2)
    message = str(err.value)
    assert "unknown architecture 'unett'" in message and "did you mean 'unet'?" in message
    for name in ("deeplabv3", "fcn", "pspnet", "tiramisu", "unet", "vnet"):
        assert name in message


def test_unknown_option_suggests_the_closest_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option 'chanels' for architecture 'fcn'; did you mean "
                                         r"'channels'\? valid options: channels, decoder_channels, upsample"):
        create_model("fcn", 2, 1, 2, chanels=(4, 8))


def test_unsupported_spatial_dims_is_refused():
    with pytest.raises(ValueError, match=r"supports spatial_dims \(2, 3\), not 4"):
        create_model("unet", 4, 1, 2)


@pytest.mark.parametrize(("name", "options", "error", "words"), [
    ("fcn", {"upsample": "bilinear"}, ValueError, r"upsample must be one of 'interpolate', 'transposed', not 'bilinear'"),
    ("fcn", {"fused_levels": 9}, ValueError, r"fused_levels \(9\) cannot exceed"),
    ("pspnet", {"bins": (1, 2, 3)}, ValueError, r"bins must have exactly 4 values, got 3"),
    ("pspnet", {"pool": "median"}, ValueError, r"pool must be one of 'avg', 'max'"),
    ("deeplabv3", {"output_stride": 3}, ValueError, r"output_stride must be a power of two .* \[2, 4, 8, 16\]"),
    ("deeplabv3", {"rates": ()}, ValueError, r"rates must have at least 1 values"),
    ("deeplabv3", {"rates": (6, "12")}, TypeError, r"rates must contain integers only"),
    ("unet", {"channels": (16, 32), "strides": (2, 2)}, ValueError, r"strides must have exactly 1 values"),
    ("unet", {"channels": (8, 16, 32), "strides": ([2, 2], 2)}, ValueError, r"strides\[0\] must have exactly 3 values"),
    ("unet", {"channels": (8, 16, 32), "strides": (2, 0)}, ValueError, r"every value of strides must be >= 1, got \(2, 0\)"),
    ("unet", {"channels": (8, 16, 32), "strides": (2, "2")}, TypeError, r"strides must contain integers or per-axis"),
    ("unet", {"norm": "layer"}, ValueError, r"norm must be one of 'batch', 'instance', not 'layer'"),
    ("unet", {"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\), not 1.5"),
    ("vnet", {"base_channels": 0}, ValueError, r"base_channels must be a positive integer, not 0"),
    ("vnet", {"act": "relu"}, ValueError, r"act must be one of 'prelu', 'elu'"),
    ("tiramisu", {"memory_efficient": "yes"}, TypeError, r"memory_efficient must be True or False"),
    ("tiramisu", {"growth_rate": 2.5}, TypeError, r"growth_rate must be a positive integer, not 2.5"),
])
def test_bad_option_values_are_refused_with_words(name, options, error, words):
    with pytest.raises(error, match=words):
        create_model(name, 3, 1, 2, **options)


def test_vnet_refuses_a_width_that_is_not_a_multiple_of_the_input_channels():
    with pytest.raises(ValueError, match=r"base_channels \(16\) must be a multiple of in_channels \(3\)"):
        create_model("vnet", 3, 3, 2)


def test_bad_channel_counts_are_refused():
    with pytest.raises(ValueError, match="out_channels must be a positive integer, not 0"):
        create_model("unet", 3, 1, 0)


def test_every_entry_supports_2d_and_3d_and_is_described():
    assert available_models() == sorted(MODELS)
    for name, entry in MODELS.items():
        assert entry.name == name and entry.spatial_dims == (2, 3) and entry.description


def test_medseg_models_prints_the_registry_table(cli):
    result = cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "dims"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(available_models())
    assert "2D, 3D" in rows["unet"] and "4,806,481" in rows["unet"]  # MONAI UNet (16..256, 2 res units), 3D
    assert "45,601,516" in rows["vnet"]  # MONAI VNet's count with PReLU



def test_medseg_models_json_lists_every_architecture():
    from typer.testing import CliRunner

    from medseg.cli import app

    as_json = CliRunner().invoke(app, ["models", "--json"])
    assert as_json.exit_code == 0, as_json.output
    table = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert set(table) == set(available_models())
    assert table["vnet"]["parameters"] == 45601516 and table["fcn"]["spatial_dims"] == [2, 3]
    assert all(row["parameters"] > 0 for row in table.values())

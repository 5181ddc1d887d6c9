"""The MobileNet student backbones: the backbone contract, config validation, BN folding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.modelfiles.counting import count_params
from blazeport.models.mobilenet import MOBILENETS, MobileNetBackbone, MobileNetConfig, MobileNetStage
from blazeport.models.resnet import fold_batchnorm

# backbone params each variant claims (teacher short range: 101k params in all)
PARAM_RANGES = {"mobilenet": (80_000, 150_000), "mobilenet_slim": (25_000, 50_000), "mobilenet_large": (200_000, 350_000)}


def _randomized(name: str) -> MobileNetBackbone:
    """A variant in eval mode with non-trivial BN statistics, so folding has something to do."""
    torch.manual_seed(0)
    model = MobileNetBackbone(MOBILENETS[name]).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_variants_are_the_three_claimed() -> None:
    assert set(MOBILENETS) == set(PARAM_RANGES)


@pytest.mark.parametrize("name", sorted(MOBILENETS))
def test_maps_have_the_claimed_channels_and_strides(name: str) -> None:
    model = MobileNetBackbone(MOBILENETS[name]).eval()
    assert model.feature_strides == (4, 8, 16, 32)
    for size in (128, 192):
        with torch.no_grad():
            maps = model(torch.zeros(1, 3, size, size))
        assert isinstance(maps, list)
        assert tuple(m.shape[1] for m in maps) == model.feature_channels
        assert tuple(size // m.shape[-1] for m in maps) == model.feature_strides
        assert all(m.shape[-1] * s == size and m.shape[-2] * s == size for m, s in zip(maps, model.feature_strides, strict=True))


@pytest.mark.parametrize("name", sorted(MOBILENETS))
def test_widths_depthwise_and_params(name: str) -> None:
    model = MobileNetBackbone(MOBILENETS[name])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    depthwise = [c for c in convs if c.kernel_size[0] > 1 and c.in_channels > 3]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert all(c.padding[0] == c.kernel_size[0] // 2 for c in convs)
    low, high = PARAM_RANGES[name]
    assert low <= count_params(model) <= high


def test_json_round_trip() -> None:
    for config in MOBILENETS.values():
        back = MobileNetConfig.from_json(config.to_json())
        assert back == config and isinstance(back.stages, tuple)
    relu = dataclasses.replace(MOBILENETS["mobilenet_slim"], activation="relu")
    assert MobileNetConfig.from_json(relu.to_json()) == relu


@pytest.mark.parametrize(("change", "field"), [
    ({"channels": 20}, r"stages\[1\]\.channels"),
    ({"stride": 3}, r"stages\[1\]\.stride"),
    ({"stride": 1}, r"stages\[1\]\.stride"),  # would repeat stride 4: maps must have increasing strides
    ({"blocks": 0}, r"stages\[1\]\.blocks"),
    ({"expansion": 0}, r"stages\[1\]\.expansion"),
    ({"kernel": 4}, r"stages\[1\]\.kernel"),
])
def test_bad_stage_is_refused_naming_the_field(change: dict, field: str) -> None:
    good = MOBILENETS["mobilenet"]
    stages = list(good.stages)
    stages[1] = dataclasses.replace(stages[1], **change)
    with pytest.raises(BlazeportError, match=field):
        MobileNetConfig(good.stem_channels, tuple(stages))


def test_bad_stem_and_activation_are_refused() -> None:
    stages = (MobileNetStage(16, 1, 2),)
    with pytest.raises(BlazeportError, match="stem_channels"):
        MobileNetConfig(20, stages)
    with pytest.raises(BlazeportError, match="activation"):
        MobileNetConfig(16, stages, activation="swish")
    assert MobileNetConfig(16, (MobileNetStage(16, 1, 1, expansion=1),)).stages[0].stride == 1  # first stage may keep stride 2


@pytest.mark.parametrize("name", sorted(MOBILENETS))
def test_fold_batchnorm_leaves_no_batchnorm(name: str) -> None:
    folded = fold_batchnorm(_randomized(name))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


@pytest.mark.parametrize("name", sorted(MOBILENETS))
def test_fold_batchnorm_keeps_outputs(name: str) -> None:
    model = _randomized(name)
    folded = fold_batchnorm(model)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        for a, b in zip(model(x), folded(x), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    for conv in (m for m in folded.modules() if isinstance(m, nn.Conv2d)):
        assert conv.bias is not None

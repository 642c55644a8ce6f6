"""The attack-source families (training/models/mobilenet.py, shufflenet.py): standard models of other
families whose attacks the perturbation detector trains on; adapted to 32 px inputs and fully convolutional."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.bundle import load, save
from training.models import ARCHITECTURES, build_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
FAMILIES = [("mobilenetv2", 0.25), ("shufflenetv2", 0.5)]


def trained_looking(arch: str, width: float) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, 10, MEAN, STD, width).train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(16, 3, 32, 32))
    return model.eval()


def test_mobilenet_stem_keeps_a_32px_input_at_full_resolution():
    model = trained_looking("mobilenetv2", 0.25)
    stem = model.net.features[0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 3
    # Four stride-2 stages after the stem: 32 px ends as 2x2 maps (ImageNet's stem would leave 1x1).
    assert model.net.features(torch.rand(1, 3, 32, 32)).shape[-2:] == (2, 2)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_shufflenet_keeps_a_32px_input_at_full_resolution_until_its_stages():
    model = trained_looking("shufflenetv2", 0.5)
    net = model.net
    assert net.conv1[0].stride == (1, 1) and isinstance(net.maxpool, nn.Identity)
    # Three stride-2 stages: 32 px ends as 4x4 maps (ImageNet's stem and max-pool would leave 1x1).
    maps = net.conv5(net.stage4(net.stage3(net.stage2(net.maxpool(net.conv1(torch.rand(1, 3, 32, 32)))))))
    assert maps.shape[-2:] == (4, 4)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_shufflenet_only_comes_in_torchvisions_widths():
    with pytest.raises(ValueError, match="widths"):
        build_model("shufflenetv2", 10, MEAN, STD, 0.25)


@pytest.mark.parametrize(("arch", "width"), FAMILIES)
def test_it_is_fully_convolutional_and_its_input_gradient_is_alive_at_any_size(arch, width):
    """Native-resolution attacks run it on photos as served, so any size must give logits and a gradient."""
    assert arch in ARCHITECTURES
    model = trained_looking(arch, width)
    for size in [(48, 80), (129, 97)]:
        x = torch.rand(2, 3, *size, requires_grad=True)
        (grad,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
        assert grad.shape == x.shape and grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "width"), FAMILIES)
def test_it_round_trips_through_a_bundle(tmp_path, arch, width):
    model = trained_looking(arch, width)
    metadata = {
        "arch": arch, "width": width, "num_classes": 10, "classes": [str(i) for i in range(10)],
        "input_size": [3, 32, 32], "mean": MEAN, "std": STD, "method": "standard", "eps": 8 / 255,
    }  # fmt: skip
    loaded = load(save(model, metadata, tmp_path / "bundle"))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))

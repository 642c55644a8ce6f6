"""The MobileNetV2 family (training/models/mobilenet.py): a training-only attack source for the detector."""

from __future__ import annotations

import torch
from torch import nn

from training.bundle import load, save
from training.models import ARCHITECTURES, build_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def trained_looking(width: float = 0.25) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 10, MEAN, STD, width).train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(16, 3, 32, 32))
    return model.eval()


def test_the_stem_keeps_a_32px_input_at_full_resolution():
    model = trained_looking()
    assert "mobilenetv2" in ARCHITECTURES
    stem = model.net.features[0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 3
    # Four stride-2 stages after the stem: 32 px ends as 2x2 maps (ImageNet's stem would leave 1x1).
    assert model.net.features(torch.rand(1, 3, 32, 32)).shape[-2:] == (2, 2)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_it_is_fully_convolutional_and_its_input_gradient_is_alive_at_any_size():
    """Native-resolution attacks run it on photos as served, so any size must give logits and a gradient."""
    model = trained_looking()
    for size in [(48, 80), (129, 97)]:
        x = torch.rand(2, 3, *size, requires_grad=True)
        (grad,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
        assert grad.shape == x.shape and grad.abs().sum() > 0


def test_it_round_trips_through_a_bundle(tmp_path):
    model = trained_looking()
    metadata = {
        "arch": "mobilenetv2", "width": 0.25, "num_classes": 10, "classes": [str(i) for i in range(10)],
        "input_size": [3, 32, 32], "mean": MEAN, "std": STD, "method": "standard", "eps": 8 / 255,
    }  # fmt: skip
    loaded = load(save(model, metadata, tmp_path / "bundle"))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))

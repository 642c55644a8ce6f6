"""Attacks on web images at their own size: through the service's resize, and at native resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from worker.engine.images import to_model_input
from worker.research.native_attacks import NativeAttack, ResizedInput, fooled


def test_the_differentiable_resize_matches_the_engines_preprocessing():
    """torch's antialiased bicubic stands in for Pillow's: within a few levels of 255 on a smooth photo."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 240 x 360
    image = Image.fromarray(smooth)
    served = to_model_input([image], [3, 32, 32])
    captured = {}

    class Capture(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            captured["x"] = x
            return x.flatten(1)[:, :2]

    ResizedInput(Capture(), [3, 32, 32])(torch.from_numpy(smooth).permute(2, 0, 1)[None].float() / 255)
    assert captured["x"].shape == served.shape
    assert (captured["x"] - served).abs().mean() < 3 / 255


@pytest.mark.parametrize("route", ["resize", "native"])
def test_attacks_stay_in_the_ball_on_the_grid_and_raise_the_loss(engine, route):
    model = engine.standard.model
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    spec = NativeAttack(route, "pgd", 8, steps=5)
    adv = spec.run(model, pixels, engine.input_size, engine.device)
    assert adv.shape == pixels.shape and adv.dtype == np.uint8
    assert np.abs(adv.astype(int) - pixels.astype(int)).max() <= 8
    target = ResizedInput(model, engine.input_size) if route == "resize" else model

    def loss(a: np.ndarray) -> float:
        x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            clean_pred = target(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255).argmax(1)
            return float(F.cross_entropy(target(x), clean_pred))

    assert loss(adv) > loss(pixels)
    assert isinstance(fooled(model, pixels, adv, engine.input_size), bool)

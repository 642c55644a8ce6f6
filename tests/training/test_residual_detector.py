"""The residual detector (training/models/residual_detector.py): what its fixed front end keeps and drops."""

from __future__ import annotations

import torch

from training.models import build_model
from training.models.residual_detector import DEFAULT_TRUNCATION, high_pass_bank

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def detector(seed: int = 0, width: int = 8):
    torch.manual_seed(seed)
    model = build_model("perturbation-residual", 2, MEAN, STD, width)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


def residuals(model, x):
    return model.net.residuals((x - model.mean) / model.std)


def test_residuals_are_in_pixel_units_of_a_unit_norm_kernel():
    """One pixel of one channel raised by 1/255 moves that channel's residuals by the kernel's taps over its
    norm, whatever the channel's normalisation: the truncation threshold means the same on every channel."""
    model = detector()
    flat = torch.full((1, 3, 9, 9), 0.5)
    for channel in range(3):
        bumped = flat.clone()
        bumped[0, channel, 4, 4] += 1 / 255
        change = residuals(model, bumped) - residuals(model, flat)
        maps = slice(6 * channel, 6 * channel + 6)
        # the "square 3x3" predictor (the sixth kernel) has centre tap -4 and norm 6
        torch.testing.assert_close(change[0, 6 * channel + 5, 4, 4], torch.tensor(-4 / 6), atol=1e-4, rtol=0)
        others = torch.ones(18, dtype=torch.bool)
        others[maps] = False
        assert change[0, others].abs().max() < 1e-4  # channels are filtered apart
    assert torch.allclose(high_pass_bank([1.0]).flatten(1).norm(dim=1), torch.full((6,), 255.0))
    assert high_pass_bank(STD)[:6, 1:].abs().max() == 0  # the red maps read red only


def test_brightness_offset_leaves_the_score_unchanged():
    """Every kernel sums to zero, so adding a constant to the image cannot move the detector at all: it reads
    the residual, not the picture's level."""
    model = detector()
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1)) * 0.8
    with torch.no_grad():
        torch.testing.assert_close(model(x + 0.15), model(x), atol=1e-4, rtol=1e-4)


def test_strong_edges_are_truncated_to_the_same_evidence():
    """A hard edge and one twice as strong give the same clamped residuals: content above T is cut off."""
    model = detector()
    x = torch.full((1, 3, 16, 16), 0.2)
    weak, strong = x.clone(), x.clone()
    weak[..., 8:] += 0.3
    strong[..., 8:] += 0.6
    clamp = (-DEFAULT_TRUNCATION, DEFAULT_TRUNCATION)
    torch.testing.assert_close(residuals(model, weak).clamp(*clamp), residuals(model, strong).clamp(*clamp))
    assert residuals(model, strong).abs().max() > DEFAULT_TRUNCATION  # the unclamped ones differ


def test_training_moves_the_learned_layers_but_not_the_filters():
    model = detector().train()
    filters = model.net.residuals.weight.clone()
    learned = model.net.features[0][0].weight.clone()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimiser.step()
    assert torch.equal(model.net.residuals.weight, filters)
    assert not torch.equal(model.net.features[0][0].weight, learned)

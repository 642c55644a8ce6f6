"""Serving copies of the models (worker/engine/serving.py): faster, and the same function as the trained module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models import build_model
from worker.engine.serving import for_serving

CPU = torch.device("cpu")


def trained_looking(arch: str, width: float, channels: int = 3) -> nn.Module:
    """A model whose batch norms have non-trivial running statistics and affine weights, in eval mode."""
    torch.manual_seed(0)
    model = build_model(arch, 2 if arch.startswith("perturbation") else 10, [0.5] * channels, [0.25] * channels, width)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "width", "size", "folded_at_least"),
    [
        ("preact18", 0.25, 32, 8),
        ("perturbation-cnn2", 16, 64, 4),
        ("perturbation-cnn", 16, 48, 4),
        ("perturbation-residual", 16, 64, 3),
        ("perturbation-pair", 16, 64, 7),
        ("perturbation-pair-ensemble", [8, 16], 64, 14),
        ("vgg11", 0.25, 32, 8),
        ("mobilenetv2", 0.25, 32, 30),
        ("shufflenetv2", 0.5, 32, 30),
    ],
)
def test_serving_copy_computes_the_same_logits_and_gradients(arch, width, size, folded_at_least):
    model = trained_looking(arch, width)
    served = for_serving(model, CPU)
    assert batch_norms(model) - batch_norms(served) >= folded_at_least
    x = torch.rand(5, 3, size, size, requires_grad=True)
    reference = model(x)
    out = served(x)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    # Attacks through the serving models (the adaptive evaluation) see the same gradients.
    (grad_ref,) = torch.autograd.grad(reference.logsumexp(1).sum(), x)
    (grad_out,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    torch.testing.assert_close(grad_out, grad_ref, atol=1e-4, rtol=1e-3)


def test_the_trained_module_is_left_as_it_was():
    model = trained_looking("perturbation-cnn2", 16)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    count = batch_norms(model)
    for_serving(model, CPU)
    assert batch_norms(model) == count
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()  # not switched to channels-last under the trainer's feet


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        return out if out.mean() > 0 else -out


def test_an_untraceable_model_is_served_unfolded(caplog):
    torch.manual_seed(0)
    model = DataDependent().eval()
    served = for_serving(model, CPU)
    assert "serving it unfolded" in caplog.text
    assert served is not model
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(served(x), model(x))
    assert served.conv.weight.is_contiguous(memory_format=torch.channels_last)

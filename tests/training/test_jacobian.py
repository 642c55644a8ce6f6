"""Jacobian penalties (training/losses/jacobian.py) against Jacobians computed exactly with torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from tests.support.models import TinyConvNet
from training.losses import jacobian_penalty, random_projection_penalty, random_unit_directions

C = 5


def tiny_setup(batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    net = TinyConvNet(num_classes=C, size=4, dtype=torch.float64)
    x = torch.rand(batch, 3, 4, 4, dtype=torch.float64)
    return net, x


def exact_jacobians(net, x: torch.Tensor) -> torch.Tensor:
    """(B, C, D) Jacobian of each sample's logits with respect to its own flattened input."""
    per_sample = [jacrev(lambda xi: net(xi.unsqueeze(0)).squeeze(0))(xi) for xi in x]
    return torch.stack([j.reshape(C, -1) for j in per_sample])


def test_penalty_matches_the_exact_jacobian_along_given_directions():
    net, x = tiny_setup(batch=4)
    directions = random_unit_directions(4, C, generator=torch.Generator().manual_seed(1)).double()
    x_grad = x.clone().requires_grad_(True)
    penalty = jacobian_penalty(x_grad, net(x_grad), directions)

    jac = exact_jacobians(net, x)
    expected = C * torch.einsum("bc,bcd->bd", directions, jac).pow(2).sum() / len(x)
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=0)


def test_penalty_scales_quadratically_with_the_directions():
    net, x = tiny_setup()
    directions = random_unit_directions(3, C, generator=torch.Generator().manual_seed(2)).double()
    x = x.requires_grad_(True)
    logits = net(x)
    one = jacobian_penalty(x, logits, directions)
    three = jacobian_penalty(x, logits, 3 * directions)
    torch.testing.assert_close(three, 9 * one)


def test_random_projection_estimator_is_unbiased_for_the_squared_frobenius_norm():
    net, x = tiny_setup(batch=3)
    expected = exact_jacobians(net, x).pow(2).sum(dim=(1, 2)).mean()  # mean_b ||J_b||_F^2

    # Each row of the repeated batch gets its own random direction, so one call averages many draws.
    repeats = 20_000
    x_rep = x.repeat(repeats, 1, 1, 1).requires_grad_(True)
    estimate = random_projection_penalty(x_rep, net(x_rep), generator=torch.Generator().manual_seed(0))
    assert estimate.item() == pytest.approx(expected.item(), rel=0.03)

    # A single projection is a noisy estimate: the directions differ between rows.
    x_grad = x.clone().requires_grad_(True)
    logits = net(x_grad)
    single = [random_projection_penalty(x_grad, logits, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    assert len({round(v.item(), 12) for v in single}) > 1


def test_penalty_is_differentiable_with_respect_to_parameters():
    net, x = tiny_setup()
    x = x.requires_grad_(True)
    directions = random_unit_directions(3, C, generator=torch.Generator().manual_seed(3)).double()
    penalty = jacobian_penalty(x, net(x), directions)
    assert penalty.requires_grad
    penalty.backward()
    # The output bias does not change the Jacobian; every other parameter does.
    for param in (net.conv.weight, net.conv.bias, net.fc.weight):
        assert param.grad is not None
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
    assert net.fc.bias.grad is None or torch.all(net.fc.bias.grad == 0)


def test_penalty_passes_gradcheck_in_double_precision():
    net, x = tiny_setup(batch=2)
    directions = random_unit_directions(2, C, generator=torch.Generator().manual_seed(4)).double()
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())

    def penalty(inputs, *weights):
        logits = functional_call(net, dict(zip(names, weights, strict=True)), (inputs,))
        return jacobian_penalty(inputs, logits, directions)

    assert torch.autograd.gradcheck(penalty, (x.clone().requires_grad_(True), *params))


def test_directions_are_treated_as_constants():
    net, x = tiny_setup()
    x = x.requires_grad_(True)
    directions = random_unit_directions(3, C, generator=torch.Generator().manual_seed(5)).double().requires_grad_(True)
    jacobian_penalty(x, net(x), directions).backward()
    assert directions.grad is None


def test_penalty_requires_an_input_that_requires_grad():
    net, x = tiny_setup()
    with pytest.raises(ValueError, match="require grad"):
        jacobian_penalty(x, net(x), torch.ones(3, C, dtype=torch.float64))


def test_linear_model_penalty_is_exact():
    # For logits = W x the Jacobian is W for every sample, so the penalty is C * ||W^T u||^2 averaged.
    torch.manual_seed(0)
    weight = torch.randn(C, 6, dtype=torch.float64)
    x = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    directions = F.normalize(torch.randn(4, C, dtype=torch.float64), dim=1)
    expected = C * (directions @ weight).pow(2).sum() / 4
    torch.testing.assert_close(jacobian_penalty(x, x @ weight.T, directions), expected)

"""Jacobian penalties (training/losses/jacobian.py) against Jacobians computed exactly with torch.func, and the
finite-difference form against the exact term (float64, tiny smooth networks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from tests.support.gradients import parameter_gradient
from tests.support.models import TinyConvNet
from training.losses import (
    finite_difference_penalty,
    finite_difference_term,
    jacobian_penalty,
    random_projection_penalty,
    random_rows,
    random_unit_directions,
)

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


# --- finite-difference form (training/losses/jacobian.py docstring: E, R and P) ---------------------------------
def fd_and_exact(net, x: torch.Tensor, directions: torch.Tensor, step: float):
    """The finite-difference term and the exact penalty, each from its own forward of ``x``."""
    x_exact = x.clone().requires_grad_(True)
    exact = jacobian_penalty(x_exact, net(x_exact), directions)
    x_fd = x.clone().requires_grad_(True)
    return finite_difference_term(net, x_fd, net(x_fd), directions, step), exact


def test_finite_difference_estimate_converges_linearly_to_the_exact_term():
    net, x = tiny_setup(batch=6)
    directions = random_unit_directions(6, C, generator=torch.Generator().manual_seed(1)).double()
    steps = (1e-1, 1e-2, 1e-3, 1e-4)
    errors = []
    for step in steps:
        term, exact = fd_and_exact(net, x, directions, step)
        torch.testing.assert_close(term.exact, exact.detach(), rtol=1e-12, atol=0)
        errors.append(abs(term.estimate.item() - exact.item()) / exact.item())
    # A forward difference: the error falls tenfold with the step (first order), down to 3e-7 at 1e-4.
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 5 < coarse / fine < 20, errors
    assert errors[-1] < 1e-6


def test_finite_difference_penalty_has_the_exact_value_and_gradient():
    net, x = tiny_setup(batch=6)
    directions = random_unit_directions(6, C, generator=torch.Generator().manual_seed(2)).double()
    term, exact = fd_and_exact(net, x, directions, 1e-3)
    torch.testing.assert_close(term.penalty, exact, rtol=1e-12, atol=0)
    exact_grad = parameter_gradient(net, exact)
    fd_grad = parameter_gradient(net, term.penalty)
    assert F.cosine_similarity(fd_grad, exact_grad, dim=0) > 0.9999
    assert fd_grad.norm() / exact_grad.norm() == pytest.approx(1, abs=1e-3)


def test_plain_difference_quotient_has_half_the_exact_gradient():
    # Why the training term is R + 2 (E - sg(E)): E's own gradient is dR / 2 (module docstring).
    net, x = tiny_setup(batch=6)
    directions = random_unit_directions(6, C, generator=torch.Generator().manual_seed(3)).double()
    term, exact = fd_and_exact(net, x, directions, 1e-4)
    ratio = parameter_gradient(net, term.estimate).norm() / parameter_gradient(net, exact).norm()
    assert ratio.item() == pytest.approx(0.5, abs=1e-3)


def test_finite_difference_gradient_direction_converges_as_the_step_shrinks():
    net, x = tiny_setup(batch=6)
    directions = random_unit_directions(6, C, generator=torch.Generator().manual_seed(4)).double()
    gaps = []
    for step in (3e-1, 3e-2, 3e-3):
        term, exact = fd_and_exact(net, x, directions, step)
        cosine = F.cosine_similarity(parameter_gradient(net, term.penalty), parameter_gradient(net, exact), dim=0)
        gaps.append(1 - cosine.item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6, gaps


def test_finite_difference_is_exact_for_a_linear_model_at_any_step():
    torch.manual_seed(0)
    weight = torch.randn(C, 6, dtype=torch.float64)
    x = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    directions = F.normalize(torch.randn(4, C, dtype=torch.float64), dim=1)
    term = finite_difference_term(lambda z: z @ weight.T, x, x @ weight.T, directions, step=0.5)
    expected = C * (directions @ weight).pow(2).sum() / 4
    torch.testing.assert_close(term.estimate, expected)
    torch.testing.assert_close(term.exact, expected)


def test_finite_difference_needs_no_double_backward():
    # The shifted forward reads only detached inputs: backpropagating the term never differentiates a gradient.
    net, x = tiny_setup()
    x = x.requires_grad_(True)
    directions = random_unit_directions(3, C, generator=torch.Generator().manual_seed(5)).double()
    penalty = finite_difference_penalty(net, x, net(x), directions)
    penalty.backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0
    assert x.grad is not None  # through the clean forward, as for any loss on it; no create_graph anywhere


def test_finite_difference_with_zero_directions_is_zero():
    net, x = tiny_setup()
    x = x.requires_grad_(True)
    penalty = finite_difference_penalty(net, x, net(x), torch.zeros(3, C, dtype=torch.float64))
    assert penalty.item() == 0 and penalty.requires_grad
    penalty.backward()
    assert torch.all(net.conv.weight.grad == 0)


def test_finite_difference_rejects_bad_arguments():
    net, x = tiny_setup()
    with pytest.raises(ValueError, match="require grad"):
        finite_difference_term(net, x, net(x), torch.ones(3, C, dtype=torch.float64))
    x = x.requires_grad_(True)
    with pytest.raises(ValueError, match="positive"):
        finite_difference_term(net, x, net(x), torch.ones(3, C, dtype=torch.float64), step=0)


def test_random_rows_are_distinct_sorted_and_sized():
    rows = random_rows(10, 0.3, generator=torch.Generator().manual_seed(0))
    assert len(rows) == 3 and len(set(rows.tolist())) == 3
    assert rows.tolist() == sorted(rows.tolist()) and rows.min() >= 0 and rows.max() < 10
    assert len(random_rows(10, 0.01)) == 1 and random_rows(7, 1.0).tolist() == list(range(7))
    counts = torch.zeros(10)
    for seed in range(2000):
        counts[random_rows(10, 0.3, generator=torch.Generator().manual_seed(seed))] += 1
    assert torch.allclose(counts / 2000, torch.full((10,), 0.3), atol=0.04)  # every row equally likely
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            random_rows(10, bad)

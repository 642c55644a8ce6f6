"""Sliced Wasserstein distance and transport directions (training/losses/sliced_wasserstein.py)."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import random_unit_directions, sliced_wasserstein


def clouds(batch: int = 12, dim: int = 5, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, generator=g, dtype=dtype)
    b = 0.7 * torch.randn(batch, dim, generator=g, dtype=dtype) + 0.5
    return a, b


def fixed_theta(n: int, dim: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return random_unit_directions(n, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


def w2_squared_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between two equal-size empirical measures on the line."""
    return (a.sort().values - b.sort().values).pow(2).mean()


def test_random_unit_directions_are_unit_and_seeded():
    theta = random_unit_directions(64, 7, generator=torch.Generator().manual_seed(3))
    assert theta.shape == (64, 7)
    torch.testing.assert_close(theta.norm(dim=1), torch.ones(64))
    again = random_unit_directions(64, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(theta, again)


def test_distance_of_a_cloud_to_itself_is_zero():
    a, _ = clouds()
    result = sliced_wasserstein(a, a.clone(), 32, generator=torch.Generator().manual_seed(0))
    assert result.distance.item() == 0.0
    assert torch.equal(result.directions, torch.zeros_like(a))  # nothing to move, and no NaN from 0 / 0


def test_distance_is_positive_for_different_clouds():
    a, b = clouds()
    assert sliced_wasserstein(a, b, 32, generator=torch.Generator().manual_seed(0)).distance.item() > 0.1


def test_distance_is_symmetric_for_the_same_directions():
    a, b = clouds()
    theta = fixed_theta(50, a.shape[1])
    forward = sliced_wasserstein(a, b, theta=theta).distance
    backward = sliced_wasserstein(b, a, theta=theta).distance
    torch.testing.assert_close(forward, backward, rtol=1e-12, atol=0)


def test_distance_is_permutation_invariant():
    a, b = clouds()
    theta = fixed_theta(20, a.shape[1])
    shuffled = a[torch.randperm(len(a), generator=torch.Generator().manual_seed(5))]
    torch.testing.assert_close(
        sliced_wasserstein(a, b, theta=theta).distance, sliced_wasserstein(shuffled, b, theta=theta).distance
    )


def test_one_dimensional_case_is_the_squared_w2():
    a, b = clouds(batch=17, dim=1)
    # In R^1 every unit direction is +1 or -1, and both give the same 1-D distance.
    for seed in range(3):
        distance = sliced_wasserstein(a, b, 9, generator=torch.Generator().manual_seed(seed)).distance
        torch.testing.assert_close(distance, w2_squared_1d(a[:, 0], b[:, 0]), rtol=1e-6, atol=0)
    for theta in (torch.ones(1, 1, dtype=torch.float64), -torch.ones(1, 1, dtype=torch.float64)):
        torch.testing.assert_close(
            sliced_wasserstein(a, b, theta=theta).distance, w2_squared_1d(a[:, 0], b[:, 0]), rtol=1e-12, atol=0
        )


def test_fixed_directions_give_the_mean_of_one_dimensional_distances():
    a, b = clouds()
    theta = fixed_theta(6, a.shape[1])
    expected = torch.stack([w2_squared_1d(a @ t, b @ t) for t in theta]).mean()
    torch.testing.assert_close(sliced_wasserstein(a, b, theta=theta).distance, expected, rtol=1e-12, atol=0)


def exact_sliced_distance_2d(a: torch.Tensor, b: torch.Tensor, n_angles: int = 20_000) -> float:
    """SW_2^2 in R^2: average of the 1-D W2^2 over directions uniform on the circle (midpoint rule on [0, pi))."""
    angles = (torch.arange(n_angles, dtype=torch.float64) + 0.5) * math.pi / n_angles
    theta = torch.stack([angles.cos(), angles.sin()], dim=1)  # theta and -theta give the same 1-D distance
    proj_a, proj_b = (a @ theta.T).sort(dim=0).values, (b @ theta.T).sort(dim=0).values
    return (proj_a - proj_b).pow(2).mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_monte_carlo_estimate_converges_to_the_exact_sliced_distance(seed):
    a, b = clouds(batch=10, dim=2, seed=seed)
    b = b * torch.tensor([3.0, 0.2], dtype=torch.float64)  # anisotropic, so the distance depends on the angle
    exact = exact_sliced_distance_2d(a, b)
    estimate = sliced_wasserstein(a, b, 20_000, generator=torch.Generator().manual_seed(seed)).distance.item()
    assert estimate == pytest.approx(exact, rel=0.03)
    # The estimate is a seeded computation: the same generator seed gives the same number.
    again = sliced_wasserstein(a, b, 20_000, generator=torch.Generator().manual_seed(seed)).distance.item()
    assert again == estimate
    # The distance really does depend on the angle, so a single direction would not do.
    per_direction = [
        sliced_wasserstein(a, b, theta=torch.tensor([t], dtype=torch.float64)).distance.item()
        for t in ([1.0, 0.0], [0.0, 1.0])
    ]
    assert abs(per_direction[0] - per_direction[1]) > 0.1 * exact


def test_gradients_flow_into_both_clouds():
    a, b = clouds()
    a.requires_grad_(True)
    b.requires_grad_(True)
    sliced_wasserstein(a, b, 16, generator=torch.Generator().manual_seed(0)).distance.backward()
    for cloud in (a, b):
        assert cloud.grad is not None
        assert torch.isfinite(cloud.grad).all()
        assert cloud.grad.abs().sum() > 0


def test_distance_passes_gradcheck_for_fixed_directions():
    a, b = clouds(batch=6, dim=3)
    theta = fixed_theta(4, 3)
    assert torch.autograd.gradcheck(
        lambda s, t: sliced_wasserstein(s, t, theta=theta).distance,
        (a.requires_grad_(True), b.requires_grad_(True)),
    )


def test_rejects_clouds_of_different_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        sliced_wasserstein(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.zeros(4), torch.zeros(4))


# --- transport directions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_directions_are_the_normalised_negative_gradient_wrt_the_source(seed):
    source, target = clouds(batch=9, dim=4, seed=seed)
    source.requires_grad_(True)
    theta = fixed_theta(7, 4, seed=seed + 10)
    result = sliced_wasserstein(source, target, theta=theta)
    (grad,) = torch.autograd.grad(result.distance, source)
    expected = -grad / grad.norm(dim=1, keepdim=True)
    torch.testing.assert_close(result.directions, expected, rtol=1e-9, atol=1e-12)
    assert not result.directions.requires_grad


def test_directions_are_unit_vectors_for_random_directions():
    source, target = clouds(batch=16, dim=10)
    directions = sliced_wasserstein(source, target, 32, generator=torch.Generator().manual_seed(0)).directions
    torch.testing.assert_close(directions.norm(dim=1), torch.ones(16, dtype=torch.float64))


def test_moving_along_the_directions_reduces_the_distance():
    source, target = clouds(batch=16, dim=6)
    theta = fixed_theta(32, 6)
    result = sliced_wasserstein(source, target, theta=theta)
    moved = sliced_wasserstein(source + 1e-3 * result.directions, target, theta=theta).distance
    assert moved < result.distance


def test_zero_displacement_row_gets_a_zero_direction():
    # Every direction has positive coordinates, so point 0 is the lowest of both clouds in every projection
    # and is matched to itself; point 1 must move.
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    source = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0], [2.0, 3.0]], dtype=torch.float64)
    directions = sliced_wasserstein(source, target, theta=theta).directions
    assert torch.isfinite(directions).all()
    assert torch.equal(directions[0], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(directions[1].norm(), torch.tensor(1.0, dtype=torch.float64))
    assert (directions[1] > 0).all()  # towards the target point

"""Sliced Wasserstein distance between two logit clouds and the transport direction of each point.

For every random unit direction the 1-D optimal matching pairs equal ranks, so the whole distance costs a
sort per direction.  The same matching tells each adversarial point where the transport moves it, which OTJR
uses as the direction of its Jacobian penalty.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class SlicedTransport(NamedTuple):
    distance: torch.Tensor  # scalar, differentiable in both clouds
    directions: torch.Tensor  # (B, C) unit transport direction of each source point, detached


def random_unit_directions(
    n: int, dim: int, *, device: torch.device | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` directions drawn uniformly on the unit sphere of R^dim, shape (n, dim)."""
    theta = torch.randn(n, dim, device=device, generator=generator)
    return theta / theta.norm(dim=1, keepdim=True)


def sliced_wasserstein(
    source: torch.Tensor,
    target: torch.Tensor,
    n_projections: int = 32,
    *,
    theta: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SlicedTransport:
    """SW_2^2 between the clouds ``source`` (B, C) and ``target`` (B, C), with transport directions.

    ``distance`` is the mean over directions and ranks of (target - source)^2 at equal rank;
    ``directions[b]`` is the normalised sum over directions of that displacement times the direction,
    which is exactly the steepest-descent direction of ``distance`` at ``source[b]``.
    """
    if source.shape != target.shape or source.dim() != 2:
        raise ValueError(f"need two (B, C) clouds of equal shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    if theta is None:
        theta = random_unit_directions(n_projections, source.shape[1], device=source.device, generator=generator).to(
            source.dtype
        )
    source_proj = source @ theta.T  # (B, L)
    target_proj = target @ theta.T
    source_sorted, source_rank_index = source_proj.sort(dim=0)
    target_sorted, _ = target_proj.sort(dim=0)
    displacement_by_rank = target_sorted - source_sorted  # (B, L)
    distance = displacement_by_rank.pow(2).mean()

    with torch.no_grad():
        # Send each rank's displacement back to the source point that holds that rank.
        displacement = torch.empty_like(displacement_by_rank).scatter_(0, source_rank_index, displacement_by_rank)
        movement = displacement @ theta  # (B, C)
        norm = movement.norm(dim=1, keepdim=True)
        directions = torch.where(norm > 0, movement / norm.clamp_min(1e-12), torch.zeros_like(movement))
    return SlicedTransport(distance, directions.detach())

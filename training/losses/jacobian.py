"""Jacobian regularisation of logits with respect to inputs, by vector-Jacobian products.

``jacobian_penalty(x, logits, u)`` is C * sum_b ||u_b^T J_b||^2 / B.  With ``u`` drawn uniformly on the unit
sphere this is an unbiased estimate of the mean squared Frobenius norm ||J_b||_F^2 (Hoffman et al. 2019);
OTJR uses the transport directions instead, penalising the Jacobian only where the logits must move.
"""

from __future__ import annotations

import torch

from training.losses.sliced_wasserstein import random_unit_directions


def jacobian_penalty(x: torch.Tensor, logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """C * mean_b ||d<directions_b, logits_b>/dx_b||^2; differentiable (``create_graph``) for training.

    ``x`` must require grad and ``logits`` must have been computed from it.
    """
    if not x.requires_grad:
        raise ValueError("x must require grad: the penalty differentiates the logits with respect to it")
    batch, num_classes = logits.shape
    (vjp,) = torch.autograd.grad((logits * directions.detach()).sum(), x, create_graph=True)
    return num_classes * vjp.pow(2).sum() / batch


def random_projection_penalty(
    x: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hoffman et al.'s one-projection estimator of mean ||J||_F^2."""
    directions = random_unit_directions(logits.shape[0], logits.shape[1], device=logits.device, generator=generator)
    return jacobian_penalty(x, logits, directions.to(logits.dtype))

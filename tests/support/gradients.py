"""Gradients with respect to a network's parameters, for the Jacobian-term tests."""

from __future__ import annotations

import torch
from torch import nn


def parameter_gradient(net: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d parameters, flattened into one vector (zeros for parameters the loss does not reach)."""
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )

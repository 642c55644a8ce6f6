"""Losses in the network's output space: sliced Wasserstein transport and Jacobian penalties."""

from training.losses.jacobian import jacobian_penalty, random_projection_penalty
from training.losses.sliced_wasserstein import SlicedTransport, random_unit_directions, sliced_wasserstein

__all__ = [
    "SlicedTransport",
    "jacobian_penalty",
    "random_projection_penalty",
    "random_unit_directions",
    "sliced_wasserstein",
]

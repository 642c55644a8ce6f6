"""Losses in the network's output space: sliced Wasserstein transport and Jacobian penalties."""

from training.losses.gates import GateRecord
from training.losses.jacobian import (
    DEFAULT_FD_STEP,
    FiniteDifferenceTerm,
    finite_difference_penalty,
    finite_difference_term,
    jacobian_penalty,
    random_projection_penalty,
    random_rows,
)
from training.losses.sliced_wasserstein import SlicedTransport, random_unit_directions, sliced_wasserstein

__all__ = [
    "DEFAULT_FD_STEP",
    "FiniteDifferenceTerm",
    "GateRecord",
    "SlicedTransport",
    "finite_difference_penalty",
    "finite_difference_term",
    "jacobian_penalty",
    "random_projection_penalty",
    "random_rows",
    "random_unit_directions",
    "sliced_wasserstein",
]

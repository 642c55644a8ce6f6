"""Jacobian regularisation of logits with respect to inputs: exactly, or by a finite difference.

Notation: X is a batch (B images), F(X) its logits (B, C), U (B, C) detached directions, and
G = d<U, F(X)>/dX the gradient of the logits projected on U, computed by one backward.  For a network that
treats images independently (eval mode, no batch norm) row b of G is the VJP u_b^T J_b.

Exact term (``jacobian_penalty``)
    R = C * ||G||^2 / B = C * mean_b ||u_b^T J_b||^2.  With U uniform on the unit sphere R is an unbiased
    estimate of mean_b ||J_b||_F^2 (Hoffman et al. 2019); OTJR uses the transport directions instead, which
    penalises the Jacobian only where the logits must move.  Training on R needs ``create_graph``: the
    gradient in the parameters of a gradient, a double backward.

Finite-difference term (``finite_difference_term``)
    R is a VJP norm; a forward difference measures a JVP, J v.  They meet through one identity.  With J the
    batch Jacobian dF/dX, G = J^T U, so

        ||G||^2 = <G, J^T U> = <U, J G>:

    ||G||^2 is the derivative of phi(X) = <U, F(X)> along G itself.  Take G from an ordinary backward (no
    ``create_graph``) and hold it constant (Gbar), let V = Gbar / ||Gbar|| and step s.  Then by Taylor,
    F(X + sV) = F(X) + s J V + O(s^2), so

        E = C/B * <U, F(X + sV) - F(X)> * ||Gbar|| / s = C/B * <U, J Gbar> + O(s) = R + O(s),

    from two forwards (the clean one is already there) and differentiable through them alone.

    Its gradient is the subtle part.  In the parameters theta, with dJ the change of J:

        dR = 2C/B * <G, dG> = 2C/B * <G, (dJ)^T U> = 2C/B * <U, (dJ) Gbar>
        dE =  C/B * <U, (dJ) Gbar> + O(s)          (Gbar is a constant in E)

    so dE is half of dR, whatever the step: training on the plain difference quotient would apply beta_jr / 2
    (and report a value with an O(s) error).  The training term is therefore

        P = R + 2 * (E - stop_gradient(E)),

    whose value is the exact R (free: ||Gbar||^2 comes with the backward) and whose gradient is
    2 dE = dR + O(s).  No double backward: one input-only backward, one forward, and that forward's ordinary
    backward inside the loss's.

    The step moves the whole batch along V, not each image along its own unit direction: batch norm in train
    mode couples the images, and only the whole-batch direction keeps <U, J Gbar> = ||Gbar||^2 exact for the
    batch function.  s = h * sqrt(B), so h is the root mean square of the per-image L2 steps (pixel units),
    independent of the batch size.  The forward difference's error is O(h) (curvature of F along V) plus
    O(rounding / h).

    Two things the caller must do for a network with ReLUs or batch norm (training/methods.py does both):
    * The Taylor step needs F smooth along the segment and in theta.  A ReLU network is not: its Jacobian
      jumps where a unit switches, and each unit switching between X and X + sV adds an O(1/s) term to dE,
      noise that grows as s shrinks (PreActResNet-18: cosine 0.05 to 0.2 with dR for h from 1e-1 to 1e-4).
      The shifted forward must replay the clean forward's gates (training/losses/gates.py), which makes F
      smooth with the same value and Jacobian at X; then dE -> dR/2 as s -> 0 (PreActResNet-18, train mode,
      float32: cosine 0.9997 at h = 1e-2, 0.999999 at 1e-3; in eval mode the gated network is linear in X
      and the quotient is exact at any step).
    * The shifted batch is a measurement, not training data: keep it out of batch norm's running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from training.losses.sliced_wasserstein import random_unit_directions

# RMS per-image L2 step of the finite difference, in [0, 1] pixel units.  With the gates replayed the error is
# smallest near 1e-3 in float32 (PreActResNet-18: relative error 1e-4 in the value, gradient cosine 0.999999);
# below it the rounding of the logits (1e-7 relative) takes over.
DEFAULT_FD_STEP = 1e-3


def jacobian_penalty(x: torch.Tensor, logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """C * mean_b ||d<directions_b, logits_b>/dx_b||^2; differentiable (``create_graph``) for training.

    ``x`` must require grad and ``logits`` must have been computed from it.
    """
    _require_grad(x)
    batch, num_classes = logits.shape
    (vjp,) = torch.autograd.grad((logits * directions.detach()).sum(), x, create_graph=True)
    return num_classes * vjp.pow(2).sum() / batch


class FiniteDifferenceTerm(NamedTuple):
    """The finite-difference Jacobian term's two parts (module docstring: E and R)."""

    estimate: torch.Tensor  # E: the difference quotient, differentiable; its gradient is half of R's
    exact: torch.Tensor  # R = C/B ||G||^2 from the one backward, detached

    @property
    def penalty(self) -> torch.Tensor:
        """The training term: value R, gradient 2 dE (= dR up to O(step))."""
        return self.exact + 2 * (self.estimate - self.estimate.detach())


def finite_difference_term(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    logits: torch.Tensor,
    directions: torch.Tensor,
    step: float = DEFAULT_FD_STEP,
) -> FiniteDifferenceTerm:
    """R and its difference quotient E along G (module docstring), from one backward and one forward.

    ``logits = forward(x)`` with ``x`` requiring grad; ``forward`` is called once more, at x + s V.
    """
    _require_grad(x)
    if step <= 0:
        raise ValueError(f"the finite-difference step must be positive, got {step}")
    batch, num_classes = logits.shape
    directions = directions.detach()
    (grad,) = torch.autograd.grad((logits * directions).sum(), x, retain_graph=True)
    norm = grad.norm()
    exact = num_classes * norm.pow(2) / batch
    if norm == 0:
        # No direction to step along; R's gradient 2C/B <G, dG> is zero too.
        return FiniteDifferenceTerm(0 * logits.sum(), exact)
    s = step * math.sqrt(batch)
    shifted = forward(x.detach() + (s / norm) * grad)
    quotient = ((shifted - logits) * directions).sum() * (norm / s)
    return FiniteDifferenceTerm(num_classes * quotient / batch, exact)


def finite_difference_penalty(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    logits: torch.Tensor,
    directions: torch.Tensor,
    step: float = DEFAULT_FD_STEP,
) -> torch.Tensor:
    """The exact term's value with the finite difference's gradient, for training (no double backward)."""
    return finite_difference_term(forward, x, logits, directions, step).penalty


def random_rows(
    batch: int, fraction: float, *, device: torch.device | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random choice of round(fraction * batch) distinct rows (at least one), sorted.

    The mean of a per-row term over such a choice is an unbiased estimate of its mean over the batch.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the fraction of rows must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * batch))
    return torch.randperm(batch, device=device, generator=generator)[:count].sort().values


def random_projection_penalty(
    x: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hoffman et al.'s one-projection estimator of mean ||J||_F^2."""
    directions = random_unit_directions(logits.shape[0], logits.shape[1], device=logits.device, generator=generator)
    return jacobian_penalty(x, logits, directions.to(logits.dtype))


def _require_grad(x: torch.Tensor) -> None:
    if not x.requires_grad:
        raise ValueError("x must require grad: the penalty differentiates the logits with respect to it")

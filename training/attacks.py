"""Attacks in [0, 1] pixel space (models normalise their own inputs, so eps is in pixels).

``pgd`` is written here because training needs control the libraries do not give: a Gaussian or uniform
start, and the cross-entropy, margin (CW-inf) or KL (TRADES) objective.  AutoAttack is composed from
torchattacks' APGD, APGD-T, FAB-T and Square with the settings of the reference "standard" version written
out, because torchattacks' own ``AutoAttack`` class runs 10 iterations and other non-standard defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse_eps(text: str | float) -> float:
    """'8/255' -> 0.03137..., '0.031' -> 0.031."""
    return float(Fraction(text)) if isinstance(text, str) else float(text)


def budget_eps(kind: str, budget: float) -> float:
    """An attack budget as written in attack names ("pgd-8-s", "l2-0.5-t") in the units the attack takes: L2
    radii ("l2") as written, L-inf eps written in 1/255."""
    return budget if kind == "l2" else budget / 255


def cross_entropy_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the Carlini-Wagner margin: best other logit minus the true logit (positive once misclassified)."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def margin_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return margin(logits, y).sum()


def kl_objective(clean_logits: torch.Tensor) -> Objective:
    """TRADES' inner objective: KL(f(x) || f(x')) with the clean distribution fixed."""
    clean_prob = F.softmax(clean_logits.detach(), dim=1)

    def objective(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), clean_prob, reduction="sum")

    return objective


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    objective: Objective = cross_entropy_objective,
    start: str = "uniform",
    start_scale: float = 0.001,
) -> torch.Tensor:
    """L-inf projected gradient ascent on ``objective``; the result lies in the eps ball and in [0, 1].

    ``start``: "uniform" in the ball, "normal" (x + start_scale * N(0, 1), the OTJR/TRADES authors'
    choice) or "none".  The caller chooses the model's mode (training attacks in eval mode).
    """
    x = x.detach()
    if start == "uniform":
        x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "normal":
        x_adv = x + start_scale * torch.randn_like(x)
    elif start == "none":
        x_adv = x.clone()
    else:
        raise ValueError(f"unknown PGD start {start!r}")
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return pgd(model, x, y, eps, eps, 1, start="none")


def _signed_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(model(x_adv), y), x_adv)
    return grad.sign()


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float | None = None,
    *,
    objective: Objective = cross_entropy_objective,
) -> torch.Tensor:
    """FGSM with a random start (Wong, Rice and Kolter 2020, "Fast is better than free").

    delta ~ U(-eps, eps); one signed-gradient step of ``alpha`` (default 1.25 eps) from x + delta; the result
    is projected to the eps ball around x and to [0, 1].
    """
    alpha = 1.25 * eps if alpha is None else alpha
    x = x.detach()
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
    x_adv = start + alpha * _signed_gradient(model, start, y, objective)
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1).detach()


def n_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    noise: float | None = None,
    alpha: float | None = None,
    *,
    objective: Objective = cross_entropy_objective,
) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022, "Make some noise"): x + eta with eta ~ U(-noise, noise) (default 2 eps),
    one signed-gradient step of ``alpha`` (default eps), clipped to [0, 1] but *not* projected to the eps
    ball: the training perturbation may reach noise + alpha (3 eps by default), which is the point of it.
    """
    noise = 2 * eps if noise is None else noise
    alpha = eps if alpha is None else alpha
    x = x.detach()
    start = (x + torch.empty_like(x).uniform_(-noise, noise)).clamp_(0, 1)
    return (start + alpha * _signed_gradient(model, start, y, objective)).clamp_(0, 1).detach()


TRAINING_ATTACKS = ("pgd", "fgsm-rs", "n-fgsm")


@dataclass(frozen=True)
class NamedAttack:
    name: str
    eps: float
    run: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def evaluation_attack(name: str, eps: float, num_classes: int, seed: int = 0) -> list[NamedAttack]:
    """The attacks behind an evaluation name; an input counts as robust only if it survives all of them."""
    step = 2 / 255
    if name == "fgsm":
        return [NamedAttack("fgsm", eps, lambda m, x, y: fgsm(m, x, y, eps))]
    if name.startswith("pgd"):
        if not (name[3:] == "" or name[3:].isdigit()) or name[3:] == "0":
            raise ValueError(f"bad PGD attack name {name!r}: use pgd or pgdN with N > 0 steps")
        steps = int(name[3:] or 20)
        return [NamedAttack(name, eps, lambda m, x, y: pgd(m, x, y, eps, step, steps))]
    if name == "cw":
        return [NamedAttack("cw", eps, lambda m, x, y: pgd(m, x, y, eps, step, 30, objective=margin_objective))]
    if name == "autoattack":
        return autoattack_standard(eps, num_classes, seed)
    raise ValueError(f"unknown attack {name!r}; choose from fgsm, pgdN, cw, autoattack")


def autoattack_standard(eps: float, num_classes: int, seed: int = 0) -> list[NamedAttack]:
    """AutoAttack 'standard' (Croce & Hein 2020), L-inf: APGD-CE, APGD-T, FAB-T, Square.

    Settings of the reference implementation: 100 iterations and 1 restart for APGD-CE, APGD-T (DLR loss,
    9 target classes) and FAB-T (9 target classes); Square with 5,000 queries and p_init 0.8.
    """
    import torchattacks

    n_targets = min(9, num_classes - 1)

    def build(factory):
        def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return factory(model)(x, y)

        return run

    return [
        NamedAttack(
            "apgd-ce",
            eps,
            build(
                lambda m: torchattacks.APGD(
                    m, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", rho=0.75, seed=seed
                )
            ),
        ),
        NamedAttack(
            "apgd-t",
            eps,
            build(
                lambda m: torchattacks.APGDT(
                    m, norm="Linf", eps=eps, steps=100, n_restarts=1, rho=0.75, seed=seed, n_classes=n_targets + 1
                )
            ),
        ),
        NamedAttack(
            "fab-t",
            eps,
            build(
                lambda m: torchattacks.FAB(
                    m,
                    norm="Linf",
                    eps=eps,
                    steps=100,
                    n_restarts=1,
                    multi_targeted=True,
                    n_classes=n_targets + 1,
                    seed=seed,
                )
            ),
        ),
        NamedAttack(
            "square",
            eps,
            build(
                lambda m: torchattacks.Square(
                    m,
                    norm="Linf",
                    eps=eps,
                    n_queries=5000,
                    n_restarts=1,
                    p_init=0.8,
                    loss="margin",
                    resc_schedule=True,
                    seed=seed,
                )
            ),
        ),
    ]


@torch.no_grad()
def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, seed: int = 0) -> torch.Tensor:
    """Square (Andriushchenko et al. 2020), L-inf, as the reference runs it inside AutoAttack: margin loss,
    p_init 0.8, one restart, ``queries`` model queries per image, no gradients.  Images the model already
    gets wrong come back unchanged (torchattacks attacks only the correct ones)."""
    import torchattacks

    attack = torchattacks.Square(
        model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, loss="margin",
        resc_schedule=True, seed=seed,
    )  # fmt: skip
    x_adv = attack(x, y)
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)  # guard the budget


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """L2 PGD on the cross-entropy (torchattacks ``PGDL2``): random start in the ball, ``steps`` normalised
    gradient steps of 2.5 eps / steps, each projected back onto the L2 ball of radius ``eps`` and [0, 1]."""
    import torchattacks

    attack = torchattacks.PGDL2(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    x_adv = attack(x, y)
    # torchattacks leaves the model in eval mode and returns a detached tensor; guard the budget anyway.
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta * (eps / norms).clamp(max=1.0)).clamp(0, 1).detach()


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def robust_mask(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[NamedAttack],
    batch_size: int = 250,
    on_progress: Callable[[str, int], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Worst case over ``attacks`` per point: each attack runs only on the points still classified correctly.

    Returns the robust mask and the robust accuracy after each attack in turn.
    """
    robust = predict(model, x) == y
    after: dict[str, float] = {}
    for attack in attacks:
        index = robust.nonzero().squeeze(1)
        for start in range(0, len(index), batch_size):
            chunk = index[start : start + batch_size]
            x_adv = attack.run(model, x[chunk], y[chunk])
            # Guard against a library attack that ignores its budget: such a point would count as broken.
            x_adv = torch.min(torch.max(x_adv, x[chunk] - attack.eps), x[chunk] + attack.eps).clamp(0, 1)
            robust[chunk] = predict(model, x_adv) == y[chunk]
            if on_progress:
                on_progress(attack.name, len(chunk))
        after[attack.name] = robust.float().mean().item()
    return robust, after

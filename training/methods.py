"""Training objectives by name: OTJR and the baselines it is compared with.

Each method turns a clean batch into a loss.  Inner maximisation runs with the model in eval mode (so batch
norm statistics see only the training forwards), then the model goes back to train mode.  Defaults follow
the method note (../shared/docs/otjr-method.md): PGD-10 at 8/255 with step 0.007 from x + 0.001 N(0, 1),
beta_sw = 64, beta_jr = 0.005, 32 projections; TRADES beta = 6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import TRAINING_ATTACKS, cross_entropy_objective, fgsm_rs, kl_objective, n_fgsm, pgd
from training.losses import jacobian_penalty, random_projection_penalty, sliced_wasserstein

METHODS = ("standard", "pgd-at", "trades", "jr", "sw", "sw-jr", "otjr")


@dataclass
class MethodConfig:
    eps: float = 8 / 255
    step_size: float = 0.007
    attack_steps: int = 10
    attack_start: str = "normal"  # "normal" (authors) or "uniform"
    # The inner attack: "pgd" (attack_steps steps of step_size from attack_start), or a single-step one:
    # "fgsm-rs" (Wong et al. 2020) or "n-fgsm" (de Jorge et al. 2022).  Their step and noise default to the
    # papers' 1.25 eps (FGSM-RS), eps and 2 eps (N-FGSM) when left as None.
    attack: str = "pgd"
    attack_alpha: float | None = None
    attack_noise: float | None = None
    beta_sw: float = 64.0
    beta_jr: float = 0.005
    n_projections: int = 32
    trades_beta: float = 6.0

    def relevant(self, method: str) -> dict[str, float | int | str]:
        """The hyperparameters that ``method`` actually uses, for the bundle's record."""
        if self.attack == "pgd":
            attack = {"attack", "eps", "step_size", "attack_steps", "attack_start"}
        else:
            attack = {"attack", "eps", *self.resolved_attack_parameters()}
        keys = {
            "standard": set(),
            "pgd-at": attack,
            "trades": attack | {"trades_beta"},
            "jr": {"beta_jr"},
            "sw": attack | {"beta_sw", "n_projections"},
            "sw-jr": attack | {"beta_jr", "n_projections"},
            "otjr": attack | {"beta_sw", "beta_jr", "n_projections"},
        }[method]
        values = {**asdict(self), **self.resolved_attack_parameters()}
        return {k: v for k, v in values.items() if k in keys}

    def resolved_attack_parameters(self) -> dict[str, float | None]:
        """The single-step attacks' step and noise in pixels, with the papers' defaults filled in."""
        if self.attack == "fgsm-rs":
            return {"attack_alpha": 1.25 * self.eps if self.attack_alpha is None else self.attack_alpha}
        if self.attack == "n-fgsm":
            return {
                "attack_alpha": self.eps if self.attack_alpha is None else self.attack_alpha,
                "attack_noise": 2 * self.eps if self.attack_noise is None else self.attack_noise,
            }
        return {}

    def __post_init__(self) -> None:
        if self.attack not in TRAINING_ATTACKS:
            raise ValueError(f"unknown training attack {self.attack!r}; choose one of {', '.join(TRAINING_ATTACKS)}")


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # the logits the accuracy is reported on (adversarial for AT methods)
    parts: dict[str, float] = field(default_factory=dict)


Method = Callable[[nn.Module, torch.Tensor, torch.Tensor, MethodConfig], StepOutput]


def _adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig, objective=None) -> torch.Tensor:
    model.eval()
    objective = cross_entropy_objective if objective is None else objective
    # Attack the bare module: a DistributedDataParallel forward would wait for a parameter backward.
    bare = getattr(model, "module", model)
    if cfg.attack == "fgsm-rs":
        x_adv = fgsm_rs(bare, x, y, cfg.eps, cfg.attack_alpha, objective=objective)
    elif cfg.attack == "n-fgsm":
        x_adv = n_fgsm(bare, x, y, cfg.eps, cfg.attack_noise, cfg.attack_alpha, objective=objective)
    else:
        x_adv = pgd(bare, x, y, cfg.eps, cfg.step_size, cfg.attack_steps, start=cfg.attack_start, objective=objective)
    model.train()
    return x_adv


def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return StepOutput(loss, logits, {"ce": loss.item()})


def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    logits = model(_adversarial(model, x, y, cfg))
    loss = F.cross_entropy(logits, y)
    return StepOutput(loss, logits, {"ce_adv": loss.item()})


def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    model.eval()
    with torch.no_grad():
        clean_for_attack = getattr(model, "module", model)(x)
    x_adv = _adversarial(model, x, y, cfg, objective=kl_objective(clean_for_attack))
    logits, logits_adv = model(x), model(x_adv)
    ce = F.cross_entropy(logits, y)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
    return StepOutput(ce + cfg.trades_beta * kl, logits_adv, {"ce": ce.item(), "kl": kl.item()})


def jr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    penalty = random_projection_penalty(x, logits)
    return StepOutput(ce + cfg.beta_jr * penalty, logits, {"ce": ce.item(), "jr": penalty.item()})


def _transport_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig, *, need_jr: bool):
    """Clean and adversarial forwards, SW between them, and JR along the transport directions."""
    x_adv = _adversarial(model, x, y, cfg)
    x = x.clone().requires_grad_(need_jr)
    logits, logits_adv = model(x), model(x_adv)
    transport = sliced_wasserstein(logits_adv, logits, cfg.n_projections)
    penalty = jacobian_penalty(x, logits, transport.directions) if need_jr else None
    return logits, logits_adv, transport.distance, penalty


def sw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    _, logits_adv, distance, _ = _transport_terms(model, x, y, cfg, need_jr=False)
    ce = F.cross_entropy(logits_adv, y)
    return StepOutput(ce + cfg.beta_sw * distance, logits_adv, {"ce_adv": ce.item(), "sw": distance.item()})


def sw_jr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    logits, _, distance, penalty = _transport_terms(model, x, y, cfg, need_jr=True)
    ce = F.cross_entropy(logits, y)
    return StepOutput(
        ce + cfg.beta_jr * penalty, logits, {"ce": ce.item(), "sw": distance.item(), "jr": penalty.item()}
    )


def otjr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig) -> StepOutput:
    _, logits_adv, distance, penalty = _transport_terms(model, x, y, cfg, need_jr=True)
    ce = F.cross_entropy(logits_adv, y)
    loss = ce + cfg.beta_sw * distance + cfg.beta_jr * penalty
    return StepOutput(loss, logits_adv, {"ce_adv": ce.item(), "sw": distance.item(), "jr": penalty.item()})


REGISTRY: dict[str, Method] = {
    "standard": standard,
    "pgd-at": pgd_at,
    "trades": trades,
    "jr": jr,
    "sw": sw,
    "sw-jr": sw_jr,
    "otjr": otjr,
}


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None

"""Training objectives by name: OTJR and the baselines it is compared with.

Each method turns a clean batch into a loss.  Inner maximisation runs with the model in eval mode (so batch
norm statistics see only the training forwards), then the model goes back to train mode.  Defaults follow
the method note (../shared/docs/otjr-method.md): PGD-10 at 8/255 with step 0.007 from x + 0.001 N(0, 1),
beta_sw = 64, beta_jr = 0.005, 32 projections; TRADES beta = 6.

The Jacobian term (jr, sw-jr, otjr) is exact by default (a double backward); ``jr_mode="finite-difference"``
trades it for one extra forward (derivation in training/losses/jacobian.py), and ``jr_fraction`` below 1
computes it on a random part of each batch.  The output-space terms run in fp32 even under the trainer's
bfloat16 autocast (``terms_precision``): in bfloat16 the transport directions drift from fp64 (cosine 0.96).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import TRAINING_ATTACKS, cross_entropy_objective, fgsm_rs, kl_objective, n_fgsm, pgd
from training.losses import (
    DEFAULT_FD_STEP,
    GateRecord,
    finite_difference_penalty,
    jacobian_penalty,
    random_rows,
    random_unit_directions,
    sliced_wasserstein,
)

METHODS = ("standard", "pgd-at", "trades", "jr", "sw", "sw-jr", "otjr")
JR_MODES = ("exact", "finite-difference")
TERMS_PRECISIONS = ("fp32", "autocast")


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
    # The Jacobian term: "exact" (double backward) or "finite-difference" (one extra forward at the RMS
    # per-image L2 step jr_step, in pixels), on a uniformly random jr_fraction of each batch's rows.
    jr_mode: str = "exact"
    jr_step: float = DEFAULT_FD_STEP
    jr_fraction: float = 1.0
    # "fp32": the clean and adversarial forwards behind SW and JR, and SW and JR themselves, run with autocast
    # off (the inner attack keeps the trainer's autocast); "autocast": all of it under the trainer's autocast.
    terms_precision: str = "fp32"

    def relevant(self, method: str) -> dict[str, float | int | str]:
        """The hyperparameters that ``method`` actually uses, for the bundle's record."""
        if self.attack == "pgd":
            attack = {"attack", "eps", "step_size", "attack_steps", "attack_start"}
        else:
            attack = {"attack", "eps", *self.resolved_attack_parameters()}
        jacobian = {"beta_jr", "jr_mode", "jr_fraction", "terms_precision"}
        if self.jr_mode == "finite-difference":
            jacobian.add("jr_step")
        keys = {
            "standard": set(),
            "pgd-at": attack,
            "trades": attack | {"trades_beta"},
            "jr": jacobian,
            "sw": attack | {"beta_sw", "n_projections", "terms_precision"},
            "sw-jr": attack | {"n_projections"} | jacobian,
            "otjr": attack | {"beta_sw", "n_projections"} | jacobian,
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
        if self.jr_mode not in JR_MODES:
            raise ValueError(f"unknown jr_mode {self.jr_mode!r}; choose one of {', '.join(JR_MODES)}")
        if self.terms_precision not in TERMS_PRECISIONS:
            raise ValueError(f"unknown terms_precision {self.terms_precision!r}; choose {', '.join(TERMS_PRECISIONS)}")
        if not 0 < self.jr_fraction <= 1:
            raise ValueError(f"jr_fraction must be in (0, 1], got {self.jr_fraction}")
        if self.jr_step <= 0:
            raise ValueError(f"jr_step must be positive, got {self.jr_step}")
        if self.jr_mode == "finite-difference" and self.terms_precision == "autocast":
            # bfloat16 logits carry ~4e-3 relative rounding: it would swamp a difference at a small step.
            raise ValueError("the finite-difference Jacobian term needs terms_precision='fp32'")


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
    with terms_precision(x, cfg):
        x, logits, gates = _clean_forward(model, x, cfg, need_jr=True)
        # Hoffman et al.: one random unit projection per row, an unbiased estimate of mean ||J||_F^2.
        directions = random_unit_directions(*logits.shape, device=logits.device).to(logits.dtype)
        penalty = jacobian_term(model, x, logits, directions, cfg, gates)
    ce = F.cross_entropy(logits, y)
    return StepOutput(ce + cfg.beta_jr * penalty, logits, {"ce": ce.item(), "jr": penalty.item()})


def terms_precision(x: torch.Tensor, cfg: MethodConfig) -> contextlib.AbstractContextManager:
    """Where the output-space terms run: autocast off (fp32) unless cfg.terms_precision is "autocast"."""
    if cfg.terms_precision == "autocast":
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def norm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Batch norm's running statistics left as they are: for forwards that measure rather than train (the
    finite difference's shifted batch, JR's re-forward of part of a batch already seen).

    Momentum 0 makes the kernel's own update (1 - 0) * running + 0 * batch, an exact no-op; restoring saved
    values instead would bump the version of buffers that earlier forwards saved for the backward.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.running_mean is not None]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


def _clean_forward(
    model: nn.Module, x: torch.Tensor, cfg: MethodConfig, *, need_jr: bool
) -> tuple[torch.Tensor, torch.Tensor, GateRecord | None]:
    """The clean forward.  When the JR term reads it, x requires grad and, for the finite difference, the
    forward's gates are recorded (training/losses/gates.py: why the shifted forward must replay them)."""
    reads = need_jr and cfg.jr_fraction == 1
    x = x.clone().requires_grad_(reads)
    gates = GateRecord() if reads and cfg.jr_mode == "finite-difference" else None
    with gates.recording() if gates else contextlib.nullcontext():
        logits = model(x)
    return x, logits, gates


def jacobian_term(
    model: nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    directions: torch.Tensor,
    cfg: MethodConfig,
    gates: GateRecord | None,
) -> torch.Tensor:
    """The configured JR term along ``directions`` at the clean batch ``x`` whose logits are ``logits``.

    With jr_fraction below 1 the chosen rows get a forward of their own, so the term's backward runs over
    those rows only: a term read off the whole batch's graph would cost a full double backward whatever rows
    it reads.  Batch norm then normalises the rows by their own statistics: for a network without it the term
    is exactly the full term's mean over the chosen rows, an unbiased estimate; with it, close while the part
    is not tiny (PreActResNet-18 width 0.125, batch 128, means of 12 draws +- their standard errors: 22.38 +-
    0.16, 22.10 +- 0.23, 21.98 +- 0.37 at fractions 1/2, 1/4, 1/8 against the full 22.20; 4 rows of 8x8 images
    make it ill-conditioned).
    """
    if cfg.jr_fraction < 1:
        rows = random_rows(len(x), cfg.jr_fraction, device=x.device)
        x, directions = x[rows].detach().requires_grad_(True), directions[rows]
        gates = GateRecord() if cfg.jr_mode == "finite-difference" else None
        with norm_statistics_kept(model), gates.recording() if gates else contextlib.nullcontext():
            logits = model(x)
    if cfg.jr_mode == "exact":
        return jacobian_penalty(x, logits, directions)

    def forward(shifted: torch.Tensor) -> torch.Tensor:
        with norm_statistics_kept(model), gates.replaying():
            return model(shifted)

    return finite_difference_penalty(forward, x, logits, directions, cfg.jr_step)


class TransportTerms(NamedTuple):
    logits: torch.Tensor  # clean
    logits_adv: torch.Tensor
    distance: torch.Tensor  # SW between the two clouds
    directions: torch.Tensor  # (B, C) unit transport direction of each adversarial point, detached
    penalty: torch.Tensor | None  # JR along them, when asked for


def transport_terms(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, cfg: MethodConfig, *, need_jr: bool
) -> TransportTerms:
    """Clean and adversarial forwards, SW between them, and JR along the transport directions."""
    with terms_precision(x, cfg):
        x, logits, gates = _clean_forward(model, x, cfg, need_jr=need_jr)
        logits_adv = model(x_adv)
        transport = sliced_wasserstein(logits_adv, logits, cfg.n_projections)
        penalty = jacobian_term(model, x, logits, transport.directions, cfg, gates) if need_jr else None
    return TransportTerms(logits, logits_adv, transport.distance, transport.directions, penalty)


def _transport_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: MethodConfig, *, need_jr: bool):
    """The inner attack (under the caller's autocast, if any), then ``transport_terms``."""
    terms = transport_terms(model, x, _adversarial(model, x, y, cfg), cfg, need_jr=need_jr)
    return terms.logits, terms.logits_adv, terms.distance, terms.penalty


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

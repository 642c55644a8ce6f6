"""Attacks on model-space batches (CIFAR-10 size), as the calibration, the detector's training and the
evaluation name and run them.

An attack is named ``objective-budget-target``: ``pgd-8-s`` is L-inf PGD at 8/255 against the standard model,
``l2-0.5-t`` L2 PGD at radius 0.5 against the evaluation's transfer source; a model of another family is named
by its architecture's initial (``pgd-8-m``, a MobileNetV2 attack source).  Web images are attacked at their
own size instead (``worker.research.native_attacks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from rich.progress import Progress
from torch import nn

from training.attacks import budget_eps, margin_objective, pgd, pgd_l2, square
from worker.engine import detectors as det
from worker.engine.engine import Engine
from worker.research.delivery import quantise

SQUARE_QUERIES = 500  # as worker.research.evaluate and the audits' robustness check run it


@dataclass(frozen=True)
class AttackSpec:
    # "standard", "robust", "transfer" (the evaluation's source) or the architecture of an extra attack source
    target: str
    # "pgd" (cross-entropy), "cw" (margin), "square" (black-box), "l2" or "adaptive" (``research.adaptive_attack``)
    objective: str
    budget: float  # L-inf eps in 1/255; for "l2" (L2 PGD on the cross-entropy) the L2 radius on [0, 1] pixels
    label: str = ""  # the name where it is not ``objective-budget-target`` (the evaluation's, as typed)

    @property
    def name(self) -> str:
        return self.label or f"{self.objective}-{self.budget:g}-{self.target[0]}"

    @property
    def eps(self) -> float:
        return budget_eps(self.objective, self.budget)

    @property
    def eps_text(self) -> str:
        return f"L2 {self.budget:g}" if self.objective == "l2" else f"{self.budget:g}/255"

    @property
    def family(self) -> str:
        """How the evaluation groups it: black-box, adaptive, transfer or white-box against one of the pair."""
        if self.objective in ("square", "adaptive"):
            return "black-box" if self.objective == "square" else "adaptive"
        return "transfer" if self.target == "transfer" else f"white-box {self.target}"

    def describe(self, steps: int | None = None) -> str:
        if self.objective == "l2":
            budget = f"L2 pgd, eps {self.budget:g}"
        else:
            budget = f"L-inf {self.objective}, eps {self.budget:g}/255"
        return f"{self.name} ({budget} vs {self.target}" + (f", {steps} steps)" if steps else ")")

    def model(self, engine: Engine, sources: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """The model attacked: one of the engine's pair, or an extra source model named by its architecture."""
        if self.target == det.ROBUST:
            return engine.robust.model
        if self.target == det.STANDARD:
            return engine.standard.model
        if sources and self.target in sources:
            return sources[self.target]
        raise ValueError(f"attack {self.name} targets {self.target!r}, which is not among the attacked models")

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        *,
        queries: int = SQUARE_QUERIES,
        seed: int = 0,
    ) -> torch.Tensor:
        """The adversarial copy of ``x`` against ``model`` (not yet on the 8-bit grid); ``steps`` of PGD, or
        ``queries`` of Square drawn with ``seed``."""
        if self.objective == "square":
            return square(model, x, y, self.eps, queries, seed)
        if self.objective == "l2":
            return pgd_l2(model, x, y, self.eps, steps)
        if self.objective not in ("pgd", "cw"):
            raise ValueError(f"attack {self.name}: the {self.objective} attack needs the engine's detectors")
        objective = {"objective": margin_objective} if self.objective == "cw" else {}
        with torch.enable_grad():
            return pgd(model, x, y, self.eps, 2.5 * self.eps / steps, steps, **objective)


def attack_all(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int,
    seed: int,
    progress: Progress,
    *,
    mix: Sequence[AttackSpec],
    sources: Mapping[str, nn.Module] | None = None,
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Adversarial copies (8-bit), the attack name of each (round-robin over ``mix``) and whether it fooled
    its target (the engine's models, or ``sources`` by architecture)."""
    torch.manual_seed(seed)
    assignment = torch.arange(len(x)) % len(mix)
    out = torch.empty_like(x)
    fooled = torch.zeros(len(x), dtype=torch.bool)
    task = progress.add_task("attacking (train split)", total=len(x))
    for index, spec in enumerate(mix):
        chosen = (assignment == index).nonzero().squeeze(1)
        for start in range(0, len(chosen), batch):
            idx = chosen[start : start + batch]
            model = spec.model(engine, sources)
            xs, ys = x[idx].to(engine.device), y[idx].to(engine.device)
            adv = quantise(spec.run(model, xs, ys, steps))
            with torch.no_grad():
                fooled[idx] = (model(adv).argmax(1) != ys).cpu()
            out[idx] = adv.cpu()
            progress.advance(task, len(idx))
    return out, [mix[int(i)].name for i in assignment], fooled

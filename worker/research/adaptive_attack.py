"""The adaptive attack: white box against the models AND the detector, through differentiable detector scores.

PGD on ``min(margin, kappa) - lambda * max(combined - threshold, -kappa)`` on the 8-bit grid, where
``combined`` is the calibration's combiner (``Combiner.logit_of``) on the detectors' scores, each computed with
gradients: exactly where the detector's view is differentiable, through BPDA where it is not (bit-depth
reduction, libjpeg).  The first misclassified-and-unflagged iterate is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import margin
from worker.engine import detectors as det
from worker.engine import native
from worker.engine.combiner import Combiner
from worker.engine.engine import Engine
from worker.research.delivery import quantise

NON_DIFFERENTIABLE_VIEWS = frozenset({"bits", "jpeg"})  # rounding and libjpeg; median, noise are exact


def bpda_view(views: det.ViewComputer, view: str, x: torch.Tensor) -> torch.Tensor:
    """A detector view with gradients: exact where the transform is differentiable, BPDA where not."""
    if view in NON_DIFFERENTIABLE_VIEWS:
        with torch.no_grad():
            squeezed = views.transform(view, x.detach())
        return x + (squeezed - x).detach()  # forward: the real view; backward: the identity
    return views.transform(view, x)


def differentiable_scores(engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each served detector's scores with gradients with respect to ``x`` (same values as ``Engine.scores``)."""
    compared = [d for d in engine.detectors if d.name != det.NATIVE_DETECTOR]
    needs = det.needs_of(compared)
    probs: dict[tuple[str, str], torch.Tensor] = {}
    for model_name, model in engine.views.models.items():
        views = [v for m, v in needs if m == model_name]
        if views:
            batch = torch.cat([bpda_view(engine.views, v, x) for v in views])
            out = F.softmax(model(batch).float(), dim=1).split(len(x))
            probs.update({(model_name, v): p for v, p in zip(views, out, strict=True)})
    scores = det.score(compared, probs)
    if engine.detector is not None and any(d.name == det.NATIVE_DETECTOR for d in engine.detectors):
        # Model-space inputs (CIFAR-10 size) have no native tiles: the detector reads the model input.
        scores[det.NATIVE_DETECTOR] = F.softplus(native.adversarial_logit(engine.serving[det.DETECTOR], x))
    return scores


def differentiable_combined(combiner: Combiner, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """The combiner's logit of scores that carry gradients (in float32, on their device)."""
    return combiner.logit_of(torch.stack([scores[f].float() for f in combiner.features], dim=1))


def adaptive_attack(
    engine: Engine,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    lam: float,
    kappa: float = 1.0,
) -> torch.Tensor:
    """PGD against ``model`` and the engine's detector together (see the module docstring); 8-bit output."""
    assert engine.calibration is not None
    combiner, threshold = engine.calibration.combiner, engine.calibration.threshold
    # Model-space (32 px) images have no native tiles: their served score carries the calibration's offset.
    threshold -= engine.calibration.untiled_offset
    step = max(2.5 * eps / steps, 1 / 255)
    x = x.detach()
    x_adv = quantise(torch.min(torch.max(x + torch.empty_like(x).uniform_(-eps, eps), x - eps), x + eps))
    best = x_adv.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(steps + 1):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        combined = differentiable_combined(combiner, differentiable_scores(engine, x_adv))
        with torch.no_grad():  # this iterate is on the grid, so these are the served values
            success = ~found & (logits.argmax(1) != y) & (combined <= threshold)
            best[success] = x_adv.detach()[success]
            found |= success
        if i == steps:
            break
        objective = margin(logits, y).clamp(max=kappa) - lam * (combined - threshold).clamp(min=-kappa)
        (grad,) = torch.autograd.grad(objective.sum(), x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = quantise(torch.min(torch.max(x_adv, x - eps), x + eps))
    return torch.where(found.view(-1, 1, 1, 1), best, x_adv.detach())

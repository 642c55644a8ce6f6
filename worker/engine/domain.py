"""Is the image one of the robust model's classes at all?  The fallback for ``in_domain`` and "no confident class".

The engine's first choice is the domain gate (``worker.engine.domain_gate``), a network trained on the outside
world with outlier exposure; this logistic regression, kept in the calibration artefact, decides only when
the robust bundle has no ``domain-gate/`` folder.  It gave "no confident class" to 29% of the web-image test
split, 26% of its ordinary images that show none of the classes, while keeping 96% of CIFAR-10 labels
(``results/domain_gate.json`` compares it with the gate: 98% and 96%).

A CIFAR-10 model names one of its ten classes for every input, so a portrait comes back as a "truck".  A
logistic regression (``combiner``) on what the models already computed — the robust model's top probability
and the entropy of its prediction, and how far the standard model disagrees with it (``kl_rs``,
``disagree``) — separates images of the model's own data set (in domain) from ordinary web images (photos,
artwork, rendered pages).  The calibration fits it and sets its threshold so that a stated share of held-out
in-domain images keep their label (``keep``); below the threshold the verdict carries no class name.

``in_domain`` is the regression's probability: a score in [0, 1] for ordering and display, not a
calibrated probability of anything (its classes were weighted equally).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from worker.engine.combiner import Combiner, fit_combiner

FEATURES = ("robust_max", "robust_entropy", "kl_rs", "disagree")
DEFAULT_KEEP = 0.95


def features(robust_probs: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The regression's inputs from the robust softmax (B, K) and the detector scores."""
    p = robust_probs.double().cpu()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    return {"robust_max": p.amax(1), "robust_entropy": entropy, **{k: scores[k] for k in FEATURES[2:] if k in scores}}


@dataclass(frozen=True)
class DomainModel:
    combiner: Combiner
    threshold: float  # on the regression's logit; at or above it the label is kept
    keep: float  # the share of held-out in-domain images at or above the threshold when it was set

    def logit(self, robust_probs: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.combiner.logit(features(robust_probs, scores))

    def to_dict(self) -> dict[str, Any]:
        return {"combiner": self.combiner.to_dict(), "threshold": self.threshold, "keep": self.keep}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainModel:
        return cls(Combiner.from_dict(data["combiner"]), float(data["threshold"]), float(data["keep"]))


def fit_domain(
    inside: tuple[torch.Tensor, Mapping[str, torch.Tensor]],
    outside: tuple[torch.Tensor, Mapping[str, torch.Tensor]],
    held_inside: tuple[torch.Tensor, Mapping[str, torch.Tensor]],
    keep: float = DEFAULT_KEEP,
    seed: int = 0,
) -> DomainModel:
    """Fit on in-domain and outside images ((robust probs, scores) each); the threshold keeps ``keep`` of the
    held-out in-domain images."""
    names = [f for f in FEATURES if f in features(*inside)]
    combiner = fit_combiner(features(*outside), features(*inside), names, seed=seed)
    held = combiner.logit(features(*held_inside))
    threshold = float(torch.quantile(held, 1 - keep))
    return DomainModel(combiner, threshold, float((held >= threshold).double().mean()))

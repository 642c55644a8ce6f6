"""A learned combiner of detector scores: logistic regression, small enough to live in a JSON file.

Why logistic regression: the detectors are few and individually meaningful, so a linear model on their
(log-compressed, standardised) scores is enough, trains in milliseconds, cannot memorise its training set,
and its weights say which detector carries the decision.  Scores are compressed with log1p because KL
divergences are heavy-tailed; classes are weighted equally whatever their counts.  The combined score is the
logit (not the probability), so scores far from the boundary never tie at 1.0 and a threshold stays sharp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Combiner:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def logit(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Combined score per image (higher = more suspicious) from each detector's scores."""
        missing = [f for f in self.features if f not in scores]
        if missing:
            raise KeyError(f"combiner needs detector scores {', '.join(missing)}")
        return self.logit_of(stack_features(scores, self.features))

    def logit_of(self, features: torch.Tensor) -> torch.Tensor:
        """The combined score of an (N, F) matrix of detector scores in ``features`` order, in its dtype and on
        its device, keeping autograd: ``logit`` detaches, and the adaptive attack of ``worker.research`` follows
        this one's gradient."""
        like = {"dtype": features.dtype, "device": features.device}
        z = (transform(features) - torch.tensor(self.mean, **like)) / torch.tensor(self.std, **like)
        return z @ torch.tensor(self.weights, **like) + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Combiner:
        fields = ("features", "mean", "std", "weights")
        lengths = {len(data[k]) for k in fields}
        if len(lengths) != 1:
            raise ValueError("combiner fields features, mean, std and weights differ in length")
        return cls(*(tuple(data[k]) for k in fields), float(data["bias"]))


def stack_features(scores: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """(N, F) float64 matrix of the named detector scores, on the CPU."""
    return torch.stack([scores[n].detach().double().cpu().reshape(-1) for n in names], dim=1)


def transform(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(x.clamp_min(0))


def fit_combiner(
    clean: Mapping[str, torch.Tensor],
    adversarial: Mapping[str, torch.Tensor],
    features: Sequence[str],
    l2: float = 1e-3,
    seed: int = 0,
    max_iter: int = 500,
) -> Combiner:
    """Fit on clean (label 0) and adversarial (label 1) detector scores; deterministic for a given seed."""
    torch.manual_seed(seed)
    x = transform(torch.cat([stack_features(clean, features), stack_features(adversarial, features)]))
    n_clean = len(next(iter(clean.values())))
    y = torch.cat([torch.zeros(n_clean, dtype=x.dtype), torch.ones(len(x) - n_clean, dtype=x.dtype)])
    if n_clean == 0 or n_clean == len(x):
        raise ValueError("the combiner needs both clean and adversarial examples")
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    sample_weight = torch.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())

    params = torch.zeros(z.shape[1] + 1, dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = z @ params[:-1] + params[-1]
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * sample_weight).sum()
        loss = loss + l2 * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    weights = params.detach()
    return Combiner(
        tuple(features), tuple(mean.tolist()), tuple(std.tolist()), tuple(weights[:-1].tolist()), float(weights[-1])
    )

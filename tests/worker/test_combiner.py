"""The logistic-regression combiner."""

from __future__ import annotations

import json

import pytest
import torch

from worker.engine.calibration import roc_auc
from worker.engine.combiner import Combiner, fit_combiner


def synthetic(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Linearly separable in log1p space along a + b; c is pure noise shared by both classes."""
    g = torch.Generator().manual_seed(seed)
    clean = {"a": torch.rand(200, generator=g), "b": torch.rand(200, generator=g), "c": torch.rand(200, generator=g)}
    adv = {
        "a": torch.rand(100, generator=g) + 1.5,
        "b": torch.rand(100, generator=g) + 1.5,
        "c": torch.rand(100, generator=g),
    }
    return clean, adv


def test_separates_a_linearly_separable_set():
    clean, adv = synthetic()
    combiner = fit_combiner(clean, adv, ["a", "b", "c"])
    clean_logit, adv_logit = combiner.logit(clean), combiner.logit(adv)
    assert clean_logit.max() < 0 < adv_logit.min()
    assert roc_auc(clean_logit, adv_logit) == 1.0
    weights = dict(zip(combiner.features, combiner.weights, strict=True))
    assert weights["a"] > 0 and weights["b"] > 0 and abs(weights["c"]) < min(weights["a"], weights["b"]) / 5


def test_fit_is_deterministic_and_round_trips_through_json():
    clean, adv = synthetic()
    first, second = fit_combiner(clean, adv, ["a", "b"]), fit_combiner(clean, adv, ["a", "b"])
    assert first == second
    restored = Combiner.from_dict(json.loads(json.dumps(first.to_dict())))
    assert restored == first and torch.equal(restored.logit(adv), first.logit(adv))


def test_needs_both_classes_and_all_features():
    clean, adv = synthetic()
    with pytest.raises(ValueError, match="both clean and adversarial"):
        fit_combiner(clean, {k: v[:0] for k, v in adv.items()}, ["a"])
    combiner = fit_combiner(clean, adv, ["a", "b"])
    with pytest.raises(KeyError, match="b"):
        combiner.logit({"a": clean["a"]})

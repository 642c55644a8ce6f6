"""The detection metrics (worker.research.detection_metrics) on inputs whose answer is known, not merely
"between 0 and 1": a perfect detector, an inverted one, a useless one, and an attack that changes nothing.

Only the small metric functions are used (auroc, tpr_at_fpr, roc_curve, trapezoid_area, detection_stats, rate),
so the test holds however the evaluation around them is organised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.research.detection_metrics import auroc, detection_stats, rate, roc_curve, tpr_at_fpr, trapezoid_area

RNG = np.random.default_rng(20261129)
CLEAN = RNG.normal(0.0, 1.0, 20_000)


def test_a_perfect_detector() -> None:
    attacked = CLEAN.max() + 1.0 + RNG.random(5_000)
    assert auroc(CLEAN, attacked) == 1.0
    for fpr in (0.01, 0.05):
        assert tpr_at_fpr(CLEAN, attacked, fpr) == 1.0
    stats = detection_stats(CLEAN, attacked, threshold=float(CLEAN.max()) + 0.5)
    assert stats["auroc"] == 1.0 and stats["flag_rate"] == 1.0
    assert all(value == 1.0 for key, value in stats.items() if key.startswith("tpr_at_"))


def test_an_inverted_detector() -> None:
    attacked = CLEAN.min() - 1.0 - RNG.random(5_000)
    assert auroc(CLEAN, attacked) == 0.0
    assert tpr_at_fpr(CLEAN, attacked, 0.05) == 0.0


def test_a_useless_detector_scores_both_alike() -> None:
    attacked = RNG.normal(0.0, 1.0, 20_000)  # the same distribution as the clean scores
    assert auroc(CLEAN, attacked) == pytest.approx(0.5, abs=0.015)
    assert tpr_at_fpr(CLEAN, attacked, 0.05) == pytest.approx(0.05, abs=0.01)
    assert tpr_at_fpr(CLEAN, attacked, 0.01) == pytest.approx(0.01, abs=0.005)


def test_constant_scores_tell_nothing() -> None:
    same = np.zeros(1_000)
    assert auroc(same, same) == 0.5  # every pair is a tie, counted half
    assert tpr_at_fpr(same, same, 0.05) == 0.0  # no threshold flags positives without flagging all negatives


def test_an_attack_that_does_nothing() -> None:
    """Adversarial images identical to the clean ones: chance AUROC, the flag rate is the false-positive rate,
    and every prediction survives."""
    assert auroc(CLEAN, CLEAN.copy()) == 0.5
    threshold = float(np.quantile(CLEAN, 0.95))
    stats = detection_stats(CLEAN, CLEAN.copy(), threshold)
    assert stats["flag_rate"] == pytest.approx(0.05, abs=0.002)
    assert stats["tpr_at_5pct_fpr"] is not None and stats["tpr_at_5pct_fpr"] <= 0.05
    unchanged = torch.ones(500, dtype=torch.bool)
    assert rate(unchanged) == 1.0 and rate(~unchanged) == 0.0 and rate(unchanged[:0]) is None


@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0, -1.0])
def test_the_roc_curve_runs_from_0_to_1_and_its_area_is_the_auroc(shift: float) -> None:
    attacked = RNG.normal(shift, 1.0, 3_000).round(1)  # rounding makes ties, which the area must count half
    negatives = CLEAN[:3_000].round(1)
    fpr, tpr = roc_curve(negatives, attacked)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert trapezoid_area(fpr, tpr) == pytest.approx(auroc(negatives, attacked), abs=1e-9)

"""How well a score tells attacked images from clean ones: AUROC, TPR at a false-positive rate, ROC curves, and
rates with their 95% Wilson intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.stats import wilson_interval
from worker.engine import calibration as calib

FPRS = (0.01, 0.05)


def auroc(negatives: Any, positives: Any) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney U)."""
    return calib.roc_auc(negatives, positives)


def tpr_at_fpr(negatives: Any, positives: Any, fpr: float) -> float:
    """Fraction of positives above the threshold that at most ``fpr`` of the negatives exceed."""
    return calib.flag_rate(positives, calib.threshold_for_fpr(negatives, fpr))


def roc_curve(negatives: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct score, flagging score >= value, from (0, 0) to (1, 1).

    The trapezoid area under these points equals ``auroc`` (ties give diagonal segments, i.e. count half).
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64).reshape(-1))
    pos = np.sort(np.asarray(positives, dtype=np.float64).reshape(-1))
    values = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = 1 - np.searchsorted(neg, values, side="left") / max(len(neg), 1)
    tpr = 1 - np.searchsorted(pos, values, side="left") / max(len(pos), 1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def detection_stats(clean: Any, adversarial: Any, threshold: float | None) -> dict[str, float | None]:
    """AUROC, TPR at 1% and 5% FPR against the clean scores, and the flag rate at the operating point."""
    stats: dict[str, float | None] = {"auroc": auroc(clean, adversarial)}
    for fpr in FPRS:
        stats[f"tpr_at_{round(fpr * 100)}pct_fpr"] = tpr_at_fpr(clean, adversarial, fpr) if len(adversarial) else None
    stats["flag_rate"] = calib.flag_rate(adversarial, threshold) if threshold is not None else None
    return stats


def rate(mask: torch.Tensor) -> float | None:
    return float(mask.double().mean()) if len(mask) else None


def interval(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of successes / n; (0, 1) when nothing was measured."""
    return wilson_interval(successes, n) if n else (0.0, 1.0)


def rate_with_interval(mask: torch.Tensor) -> dict[str, Any]:
    """A rate with its 95% Wilson interval and count."""
    k, n = int(mask.sum()), len(mask)
    low, high = interval(k, n)
    return {"rate": k / n if n else None, "ci95": [low, high], "k": k, "n": n}

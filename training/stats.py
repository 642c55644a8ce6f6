"""Confidence intervals for accuracies measured on a sample of test images."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps close to its nominal coverage at
    accuracies near 0 or 1 and at a few hundred images, which is where robust accuracies live.
    """
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes one bound is exactly 0 or 1; rounding must not leave it a hair away.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def accuracy_with_interval(correct: int, n: int) -> dict[str, float | int | list[float]]:
    """{"accuracy", "n", "ci95": [low, high]} for the JSON records."""
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n, "n": n, "ci95": [low, high]}


def format_interval(correct: int, n: int) -> str:
    """'41.5 [38.5, 44.6]' (percent)."""
    low, high = wilson_interval(correct, n)
    return f"{100 * correct / n:.1f} [{100 * low:.1f}, {100 * high:.1f}]"

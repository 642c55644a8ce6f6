"""Confidence intervals for accuracies measured on a sample of test images."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> dict[str, float | int]:
    """Difference of two accuracies measured on the SAME images (second minus first), for comparing models.

    Pairing removes the images both models get right or both get wrong, so it is far sharper than comparing two
    Wilson intervals: only the discordant images (``b``: first right, second wrong; ``c``: the reverse) carry
    information.  The interval is the normal one for paired proportions (Agresti, Categorical Data Analysis,
    10.1.1), the p-value McNemar's exact test (a two-sided binomial test of ``c`` among ``b + c`` at 1/2).
    """
    from scipy.stats import binomtest

    if len(first) != len(second) or not first:
        raise ValueError("a paired difference needs two outcomes for each of at least one image")
    n = len(first)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    difference = (c - b) / n
    half = z * math.sqrt(max(0.0, (b + c) / n - difference**2) / n)
    p_value = binomtest(c, b + c, 0.5).pvalue if b + c else 1.0
    return {"n": n, "difference": difference, "ci95_low": difference - half, "ci95_high": difference + half,
            "first_only": b, "second_only": c, "p_value": float(p_value)}  # fmt: skip

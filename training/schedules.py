"""Learning-rate schedules as multipliers of the base rate, a function of fractional epochs."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("piecewise", "cosine", "onecycle")


def lr_multiplier(name: str, total_epochs: int) -> Callable[[float], float]:
    """``piecewise``: the OTJR authors' x0.1 at 75% and x0.01 at 90% of training (epochs 75 and 90 of 100);
    ``cosine``: cosine decay to 0; ``onecycle``: linear warm-up to the peak over the first 40%, then down to 0.
    """
    if name == "piecewise":
        return lambda epoch: 1.0 if epoch < 0.75 * total_epochs else 0.1 if epoch < 0.9 * total_epochs else 0.01
    if name == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch / total_epochs, 1.0)))
    if name == "onecycle":
        peak = 0.4 * total_epochs

        def onecycle(epoch: float) -> float:
            if epoch < peak:
                return epoch / peak
            return max(0.0, (total_epochs - epoch) / (total_epochs - peak))

        return onecycle
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")

"""Perturbation detectors of several widths, trained apart and averaged (``perturbation-pair-ensemble``).

Why: ``perturbation-pair`` detectors of different widths fail on different clean images.  The width-32 pair
flags drawn patterns (fine stripes aliased into something like noise) far less than the width-16 one, but
reads sharpened photos more like a perturbation (results/README.md).  Averaging their logits, as
``DetectorPair`` averages its two branches, halves the excess score an image gets from one member alone,
while a perturbation that every member sees keeps its full score.

The members are whole trained detectors (``python -m worker.research.ensemble_detector`` puts their bundles together);
nothing is trained here.  The bundle's ``width`` is the list of the members' widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.models.detector_pair import DetectorPair


class DetectorEnsemble(nn.Module):
    def __init__(self, std: Sequence[float], num_classes: int, widths: Sequence[int]) -> None:
        super().__init__()
        if not widths:
            raise ValueError("an ensemble needs at least one member width")
        self.members = nn.ModuleList(DetectorPair(std, num_classes, int(w)) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

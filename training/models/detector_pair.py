"""Two perturbation detectors in one model, trained each on its own and averaged (``perturbation-pair``).

Why: the picture-reading ``perturbation-cnn2`` and the residual-reading ``perturbation-residual`` fail on
different clean images.  On the held-out web images the first's highest clean scores were crops of one striped
wallpaper, the second's a flat page with text and a few photo stamps (results/README.md), and at a 0.5%
false-positive rate such a single picture sets the threshold.  Averaging the two detectors' logits (the
geometric mean of their odds) halves the excess score an image gets from one detector alone, while a
perturbation that both see keeps its full score.

Each branch is trained with its own loss (``branch_logits``), so the two stay independent detectors, as in
an ensemble, rather than a wider network whose halves could lean on one another; the averaged logit is what
the engine, the calibration and the attacks use (``forward``).  It costs about the two designs together:
2.1x ``perturbation-cnn2`` per tile and per 32 px input (``benchmarks/detector.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.models.perturbation_cnn import PerturbationCNN
from training.models.residual_detector import ResidualPerturbationNet


class DetectorPair(nn.Module):
    def __init__(self, std: Sequence[float], num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.picture = PerturbationCNN(num_classes, len(std), width, full_resolution_layers=1)
        self.residual = ResidualPerturbationNet(std, num_classes, width)

    def branch_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each branch's logits on normalised inputs: what training fits, one loss per branch."""
        return self.picture(x), self.residual(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picture, residual = self.branch_logits(x)
        return (picture + residual) / 2

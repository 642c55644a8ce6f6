"""A perturbation detector that reads noise residuals, not the picture (``perturbation-residual``).

Steganalysis's lesson (SRM, Fridrich and Kodovsky 2012; Xu-Net and Ye-Net after it): a faint signal added
to a picture is found best by first taking the picture away.  A fixed bank of high-pass filters predicts
every pixel from its neighbours and keeps the error, which is mostly sensor noise, compression residue
and whatever was added; a truncation (the TLU, ``clamp(-T, T)`` in 1/255 units) then cuts the large residuals
of edges and texture, so that content cannot dominate what the learned layers see.  The first learned
convolution reads the clamped residuals of all three colour channels together (an attack's gradient-sign
pattern is correlated across channels, camera noise much less so); the rest is ``perturbation-cnn2``'s
strided stack with mean and max pooling.  At width 16 it costs 1.2x ``perturbation-cnn2`` per 64 px tile
and 1.3x per 32 px input (``benchmarks/detector.py``, one idle core).  A learned 1x1 mixing of the residuals
at full resolution cost about 2x and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.models.perturbation_cnn import _conv_bn_relu

# 3x3 high-pass kernels (each sums to zero): first and second differences along both axes, the cross
# derivative, and SRM's "square 3x3" predictor of a pixel from its eight neighbours.
_KERNELS = (
    ((0, 0, 0), (0, -1, 1), (0, 0, 0)),
    ((0, 0, 0), (0, -1, 0), (0, 1, 0)),
    ((0, 0, 0), (1, -2, 1), (0, 0, 0)),
    ((0, 1, 0), (0, -2, 0), (0, 1, 0)),
    ((1, 0, -1), (0, 0, 0), (-1, 0, 1)),
    ((-1, 2, -1), (2, -4, 2), (-1, 2, -1)),
)
DEFAULT_TRUNCATION = 12.0  # in 1/255: above an 8/255 attack's residual, below an edge's


def high_pass_bank(std: Sequence[float]) -> torch.Tensor:
    """Convolution weights (C * K, C, 3, 3): every kernel at unit norm on every channel alone (block diagonal:
    a dense convolution runs faster on the CPU than the grouped one, measured 1.5x), scaled by that channel's
    std times 255, so that on normalised inputs ``(x - mean) / std`` the residuals come out in 1/255 of a pixel
    (the mean drops out: each kernel sums to zero)."""
    kernels = torch.tensor(_KERNELS, dtype=torch.float32)
    kernels = kernels / kernels.flatten(1).norm(dim=1).view(-1, 1, 1)
    bank = torch.zeros(len(std) * len(kernels), len(std), 3, 3)
    for channel, s in enumerate(std):
        bank[channel * len(kernels) : (channel + 1) * len(kernels), channel] = kernels * (255.0 * s)
    return bank


class ResidualPerturbationNet(nn.Module):
    def __init__(
        self, std: Sequence[float], num_classes: int = 2, width: int = 16, truncation: float = DEFAULT_TRUNCATION
    ) -> None:
        super().__init__()
        bank = high_pass_bank(std)
        # Reflected borders: with zero padding the edge pixels would leak the picture's level into the residuals.
        self.residuals = nn.Conv2d(len(std), len(bank), 3, 1, 1, bias=False, padding_mode="reflect")
        self.residuals.weight.data.copy_(bank)
        self.residuals.weight.requires_grad_(False)  # fixed: the filters are what keeps content out
        self.truncation = truncation
        self.features = nn.Sequential(
            _conv_bn_relu(len(bank), width, 2),
            _conv_bn_relu(width, 2 * width, 1),
            _conv_bn_relu(2 * width, 2 * width, 2),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: the out-of-place clamp of the convolution's output took five times as long on the CPU
        residual = self.residuals(x).clamp_(-self.truncation, self.truncation)
        features = self.features(residual)
        pooled = torch.cat([features.mean((2, 3)), features.amax((2, 3))], dim=1)
        return self.head(pooled)

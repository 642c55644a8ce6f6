"""WideResNet-depth-k (Zagoruyko & Komodakis 2016) as used by Madry/TRADES-style CIFAR training.

``width`` multiplies every stage's channel count on top of the widen factor, so ``wrn34-10`` at
``width=0.25`` keeps the depth of the paper's model at a sixteenth of its cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        channels = [max(1, round(c * width)) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
        self.stem = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        layers, in_planes = [], channels[0]
        for stage, planes in enumerate(channels[1:]):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(WideBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

"""PreActResNet-18 (He et al. 2016, identity mappings) with a width multiplier.

The common CIFAR variant used by the adversarial-training literature: a 3x3 stem, four stages of two
pre-activation basic blocks, global average pooling.  ``width=1.0`` gives the usual 64-128-256-512 channels;
smaller multipliers give models that train on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
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
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

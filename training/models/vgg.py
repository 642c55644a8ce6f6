"""A VGG-style plain convolutional network (Simonyan and Zisserman 2015), CIFAR variant, with a width multiplier.

No residual connections, max-pool downsampling, global average pooling before one linear layer.  It is a
different model family from the ResNets: the perturbation detector's evaluation attacks are crafted against
it and nothing of it is used in training, so a detection rate on its attacks measures transfer to a family
the detector never saw.  Global pooling keeps it fully convolutional, so it can be attacked at any image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# VGG-11's configuration: channels per convolution, "M" for a 2x2 max pool.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(item) * width))
            layers += [nn.Conv2d(channels, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

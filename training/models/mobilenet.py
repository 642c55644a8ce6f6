"""MobileNetV2 (Sandler et al. 2018), torchvision's implementation adapted to 32 px inputs.

Depthwise-separable inverted residual blocks with linear bottlenecks: a model family unlike both the
pre-activation ResNets of the shipped pair and the plain VGG kept for evaluation, so the perturbation
detector's training attacks come from more than one family.  For CIFAR-sized inputs the stem keeps full
resolution (ImageNet's 32x downsampling would leave 1x1 maps); the stages keep torchvision's strides, so 32 px
becomes 2 px (keeping the second stage at full resolution too, the usual CIFAR variant, costs 4x per step on
the CPU).  Global average pooling keeps it fully convolutional, so it can be attacked at any image size.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2


def mobilenet_v2(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MobileNetV2 with channel multiplier ``width`` and a stride-1 stem for 32 px inputs."""
    net = MobileNetV2(num_classes=num_classes, width_mult=width)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return net

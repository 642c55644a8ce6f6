"""ShuffleNetV2 (Ma et al. 2018), torchvision's implementation adapted to 32 px inputs.

Channel split, grouped depthwise convolutions and channel shuffles: a third model family, unlike the
pre-activation ResNets of the shipped pair, MobileNetV2's inverted residuals and the plain VGG kept for
evaluation, so the perturbation detector's training attacks come from more kinds of gradient texture.  For
CIFAR-sized inputs the stem keeps full resolution and the max-pool is dropped (ImageNet's 4x reduction before
the stages would leave 1x1 maps); the three stages keep their strides, so 32 px ends as 4x4 maps.  The global
mean pooling keeps it fully convolutional, so it can be attacked at any image size.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models

# torchvision builds ShuffleNetV2 at exactly these width multipliers, one factory each
BUILDERS: dict[float, Callable[..., models.ShuffleNetV2]] = {
    0.5: models.shufflenet_v2_x0_5,
    1.0: models.shufflenet_v2_x1_0,
    1.5: models.shufflenet_v2_x1_5,
    2.0: models.shufflenet_v2_x2_0,
}


def shufflenet_v2(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """ShuffleNetV2 at torchvision's ``width`` (0.5, 1.0, 1.5 or 2.0) with a stride-1 stem and no max-pool."""
    if width not in BUILDERS:
        raise ValueError(f"shufflenetv2 comes in widths {', '.join(map(str, BUILDERS))}, not {width}")
    net = BUILDERS[width](weights=None, num_classes=num_classes)
    stem = net.conv1[0]
    net.conv1[0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net

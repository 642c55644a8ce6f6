"""ShuffleNetV2 (Ma et al. 2018), torchvision's implementation adapted to 32 px inputs.

Channel split, grouped depthwise convolutions and channel shuffles: a third model family, unlike the
pre-activation ResNets of the shipped pair, MobileNetV2's inverted residuals and the plain VGG kept for
evaluation, so the perturbation detector's training attacks come from more kinds of gradient texture.  For
CIFAR-sized inputs the stem keeps full resolution and the max-pool is dropped (ImageNet's 4x reduction before
the stages would leave 1x1 maps); the three stages keep their strides, so 32 px ends as 4x4 maps.  The global
mean pooling keeps it fully convolutional, so it can be attacked at any image size.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ShuffleNetV2

# torchvision's stage widths per width multiplier (it defines exactly these four)
STAGE_CHANNELS: dict[float, list[int]] = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}
STAGE_REPEATS = [4, 8, 4]


def shufflenet_v2(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """ShuffleNetV2 at torchvision's ``width`` (0.5, 1.0, 1.5 or 2.0) with a stride-1 stem and no max-pool."""
    if width not in STAGE_CHANNELS:
        raise ValueError(f"shufflenetv2 comes in widths {', '.join(map(str, STAGE_CHANNELS))}, not {width}")
    net = ShuffleNetV2(STAGE_REPEATS, STAGE_CHANNELS[width], num_classes=num_classes)
    stem = net.conv1[0]
    net.conv1[0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net

"""Benign changes an ordinary image goes through on the web; a detector must not flag them.

Each takes a float batch (B, C, H, W) in [0, 1] and returns one on the 8-bit grid (as a re-saved image
would be).  Randomness comes only from the generator passed in, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from worker.engine.detectors import jpeg


def quantise(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round_().div_(255)


def jpeg_recompress(quality: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    return lambda x, _g: jpeg(x, quality)


def resize_round_trip(x: torch.Tensor, _g: torch.Generator, scale: float = 0.75) -> torch.Tensor:
    """Down to ``scale`` and back up, antialiased (a thumbnail re-enlarged by a CMS)."""
    size = x.shape[-2:]
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    return quantise(F.interpolate(small, size=size, mode="bicubic", align_corners=False))


def blur(x: torch.Tensor, _g: torch.Generator, sigma: float = 0.6) -> torch.Tensor:
    return quantise(gaussian_blur(x, kernel_size=3, sigma=sigma))


def mild_noise(x: torch.Tensor, generator: torch.Generator, sigma: float | torch.Tensor = 2 / 255) -> torch.Tensor:
    """Gaussian noise of ``sigma`` (a number, or a tensor broadcast against the batch: one per image)."""
    noise = torch.randn(x.shape, generator=generator).to(x.device) * sigma
    return quantise(x + noise)


BENIGN: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "jpeg90": jpeg_recompress(90),
    "jpeg75": jpeg_recompress(75),
    "jpeg50": jpeg_recompress(50),
    "resize": resize_round_trip,
    "blur": blur,
    "noise": mild_noise,
}

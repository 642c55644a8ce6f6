"""Attacks on web images at their own size, the two ways an attacker can make them.

- Through the resize: the perturbation lives on the full image, and the model sees it after the service's
  centre crop and antialiased resize to its small input (done differentiably here, with torch's bicubic
  antialias filter standing in for Pillow's).  This is how an attacker targets a 32 px model with a 512 px
  image.
- At native resolution: a fully convolutional classifier (global pooling) is attacked on the image as it
  is, so the perturbation is crafted pixel by pixel at the served size.

Natural images carry no label of the model's classes, so both attacks are untargeted against the model's
own prediction on the clean image: they push it off whatever it sees.  Each image is attacked on its own
(sizes differ) and the result is rounded to 8 bits, as a saved file would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import margin_objective, pgd
from worker.engine.imaging import crop_box


class ResizedInput(nn.Module):
    """``model`` applied after the engine's preprocessing: centre crop to the model's aspect, then resize."""

    def __init__(self, model: nn.Module, input_size: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.height, self.width = int(input_size[1]), int(input_size[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        left, top, right, bottom = (round(v) for v in crop_box(w, h, self.width, self.height))
        x = x[..., top : max(bottom, top + 1), left : max(right, left + 1)]
        x = F.interpolate(x, size=(self.height, self.width), mode="bicubic", antialias=True, align_corners=False)
        return self.model(x.clamp(0, 1))


@dataclass(frozen=True)
class NativeAttack:
    route: str  # "resize" (through the service's resize) or "native" (fully convolutional, at full size)
    objective: str  # "pgd" (cross-entropy) or "cw" (margin)
    eps_255: int
    steps: int = 10

    @property
    def name(self) -> str:
        return f"{self.route}-{self.objective}-{self.eps_255}"

    def run(self, model: nn.Module, pixels: np.ndarray, input_size: Sequence[int], device: torch.device) -> np.ndarray:
        """The attacked copy (uint8, same shape) of one uint8 image (H, W, C)."""
        x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).unsqueeze(0).to(device, torch.float32).div(255)
        target = ResizedInput(model, input_size) if self.route == "resize" else model
        with torch.no_grad():
            y = target(x).argmax(1)
        eps = self.eps_255 / 255
        objective = {"objective": margin_objective} if self.objective == "cw" else {}
        with torch.enable_grad():
            adv = pgd(target, x, y, eps, 2.5 * eps / self.steps, self.steps, **objective)
        return adv.squeeze(0).permute(1, 2, 0).mul(255).round().clamp(0, 255).byte().cpu().numpy()


def fooled(model: nn.Module, clean: np.ndarray, attacked: np.ndarray, input_size: Sequence[int]) -> bool:
    """Whether the attack changed the model's prediction as the service computes it (through the resize)."""
    target = ResizedInput(model, input_size)
    with torch.no_grad():
        pair = [torch.from_numpy(np.array(a)).permute(2, 0, 1).unsqueeze(0).float().div(255) for a in (clean, attacked)]
        device = next(model.parameters()).device
        return bool(target(pair[0].to(device)).argmax(1) != target(pair[1].to(device)).argmax(1))

"""Tiny real models: a smooth per-sample network for the attack and evaluation tests, and bundles as the engine
loads them (PreActResNet-18 at width 1/16 on 8x8 inputs, the two classes of the tiny data set; a tiny standard
model of another family; a tiny perturbation detector)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training import bundle
from training.models import build_model

CLASSES = ["bright", "dark"]
INPUT_SIZE = [3, 8, 8]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def make_bundle(directory: Path, seed: int, method: str, train_images: int = 6) -> Path:
    torch.manual_seed(seed)
    model = build_model("preact18", len(CLASSES), MEAN, STD, width=0.0625)
    # Non-trivial batch-norm statistics, so the two models differ in more than their initial weights.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    metadata = {
        "arch": "preact18",
        "width": 0.0625,
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "input_size": INPUT_SIZE,
        "mean": MEAN,
        "std": STD,
        "method": method,
        "eps": 8 / 255,
        "dataset": "imagefolder",
        "data_source": "imagefolder:tiny.tar.gz",
        "training": {"seed": seed, "train_images": train_images},
        "command": f"python -m training train --method {method} --holdout 8",
        "metrics": {},
    }
    return bundle.save(model, metadata, directory)


def make_source_model(arch: str = "mobilenetv2", num_classes: int = len(CLASSES), seed: int = 7) -> torch.nn.Module:
    """A tiny classifier whose logits depend on its input (torchvision's initialisation leaves them near 0)."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, MEAN, STD, width=0.1).train()
    with torch.no_grad():
        model(torch.rand(16, *INPUT_SIZE))  # batch-norm statistics of images, not of nothing
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 1)
    return model.eval()


def make_source_bundle(directory: Path, arch: str = "mobilenetv2", seed: int = 7, classes: list[str] = CLASSES) -> Path:
    """A tiny standard model of another family, for ``worker.research.train_detector --attack-source``."""
    model = make_source_model(arch, len(classes), seed)
    metadata = {
        "arch": arch, "width": 0.1, "num_classes": len(classes), "classes": classes, "input_size": INPUT_SIZE,
        "mean": MEAN, "std": STD, "method": "standard", "eps": 8 / 255, "training": {"seed": seed},
        "command": f"python -m training train --method standard --arch {arch}", "metrics": {},
    }  # fmt: skip
    return bundle.save(model, metadata, directory)


def make_detector_bundle(directory: Path, seed: int = 3, pool_images: int = 4) -> Path:
    """A tiny perturbation detector (width 4), with the training record ``worker.research.calibrate`` reads."""
    torch.manual_seed(seed)
    model = build_model("perturbation-cnn", 2, MEAN, STD, width=4)
    metadata = {
        "arch": "perturbation-cnn",
        "width": 4,
        "num_classes": 2,
        "classes": ["clean", "adversarial"],
        "input_size": INPUT_SIZE,
        "mean": MEAN,
        "std": STD,
        "method": "perturbation-detector",
        "training": {"kind": "perturbation-detector", "seed": seed, "pool_images": pool_images},
        "command": f"python -m worker.research.train_detector --n {pool_images} --seed {seed}",
        "metrics": {},
    }
    return bundle.save(model, metadata, directory)


class TinyConvNet(nn.Module):
    """Per-sample (no batch norm) smooth network: conv 3->4, tanh, linear to ``num_classes``."""

    def __init__(self, num_classes: int = 5, size: int = 4, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, dtype=dtype)
        self.fc = nn.Linear(4 * size * size, num_classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))

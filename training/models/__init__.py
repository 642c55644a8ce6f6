"""Architectures, each wrapped so that it takes images in [0, 1] and normalises them itself.

Keeping the normalisation inside the model means every attack and every eps works in pixel units, and a
bundle carries everything needed to reproduce its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.models.detector_ensemble import DetectorEnsemble
from training.models.detector_pair import DetectorPair
from training.models.mobilenet import mobilenet_v2
from training.models.perturbation_cnn import PerturbationCNN
from training.models.preact_resnet import PreActResNet18
from training.models.residual_detector import ResidualPerturbationNet
from training.models.shufflenet import shufflenet_v2
from training.models.vgg import VGG
from training.models.wide_resnet import WideResNet

# classifiers (``python -m training train --arch``)
ARCHITECTURES = ("preact18", "wrn34-10", "wrn28-10", "vgg11", "mobilenetv2", "shufflenetv2")
# detectors (``python -m worker.research.train_detector --arch``)
DETECTOR_ARCHITECTURES = ("perturbation-cnn", "perturbation-cnn2", "perturbation-residual", "perturbation-pair")
# put together from trained detectors (``python -m worker.research.ensemble_detector``), not trained as such
ENSEMBLE_ARCHITECTURE = "perturbation-pair-ensemble"


class Normalized(nn.Module):
    """``net((x - mean) / std)`` with mean and std stored as buffers (they travel with the weights)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))


def build_model(
    arch: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    width: float | Sequence[int] = 1.0,
) -> Normalized:
    """Build ``arch`` for inputs with ``len(mean)`` channels in [0, 1].

    ``width`` multiplies the classifiers' channels; for the detectors it is the channel count itself, and for
    an ensemble of detectors the list of its members' channel counts.
    """
    in_channels = len(mean)
    if arch == "preact18":
        net: nn.Module = PreActResNet18(num_classes, in_channels, width)
    elif arch in ("wrn34-10", "wrn28-10"):
        depth = int(arch[3:5])
        net = WideResNet(depth, 10, num_classes, in_channels, width)
    elif arch == "vgg11":
        net = VGG(num_classes, in_channels, width)
    elif arch == "mobilenetv2":
        net = mobilenet_v2(num_classes, in_channels, width)
    elif arch == "shufflenetv2":
        net = shufflenet_v2(num_classes, in_channels, width)
    elif arch == "perturbation-residual":
        net = ResidualPerturbationNet(std, num_classes, int(width))
    elif arch == "perturbation-pair":
        net = DetectorPair(std, num_classes, int(width))
    elif arch == ENSEMBLE_ARCHITECTURE:
        if not isinstance(width, Sequence):
            raise ValueError(f"{arch} takes a list of member widths, not {width!r}")
        net = DetectorEnsemble(std, num_classes, width)
    elif arch in DETECTOR_ARCHITECTURES:
        full_resolution_layers = 1 if arch == "perturbation-cnn2" else 2
        net = PerturbationCNN(num_classes, in_channels, int(width), full_resolution_layers)
    else:
        known = ", ".join((*ARCHITECTURES, *DETECTOR_ARCHITECTURES, ENSEMBLE_ARCHITECTURE))
        raise ValueError(f"unknown architecture {arch!r}; choose one of {known}")
    return Normalized(net, mean, std)

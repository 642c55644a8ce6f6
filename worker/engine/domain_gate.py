"""The domain gate: does the image show one of the robust model's classes?  Trained on the outside world.

A ten-class 32 px model names one of its classes for every input, so a portrait comes back as a "truck".  The
gate is a small network trained with outlier exposure (Hendrycks et al. 2019): CIFAR-10 training images are
its inliers, the web-image set's training split (wallpapers, photos, stamps, rendered pages, drawn patterns)
its outliers (``worker.research.train_gate``).  It reads what the robust model computed anyway, its
penultimate features and the statistics of its logits (the energy score of Liu et al. 2020 among them), and,
if its bundle says so, cues of the image as served (``CUES``: size, flat areas, native detail, colour count)
and the standard model's penultimate features (from the standard forward the detectors then reuse).
The robust model's weights are never touched, so its robustness is what it was.

Its output is a probability (Platt-scaled on held-out images, in-domain and outside weighted equally) that
the image shows one of the classes; at or above the bundle's ``threshold`` the verdict keeps its label, below
it the label is null ("no confident class").  The bundle lives in the robust bundle's ``domain-gate/``
folder: ``weights.safetensors`` and ``bundle.json`` (the training command, data and metrics), versioned by a
content hash as the model bundles are (``training.bundle``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FOLDER = "domain-gate"
FORMAT = "robust-scanner-gate/1"
ARCH = "domain-gate-mlp"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "bundle.json"
# What the logits say, beside the features: the energy score (logsumexp), the top logit, the top probability
# and the entropy of the prediction.
STATS = ("energy", "max_logit", "max_prob", "entropy")
# Cues of the image as served.  ``log_side``/``log_aspect`` are its size; the others are read at its own
# resolution, on a centre crop of at most ``CUE_CROP`` px a side (the cost stays bounded whatever the size).
CUES = ("log_side", "log_aspect", "flat", "detail", "colours")
CUE_GROUPS = {"size": ("log_side", "log_aspect"), "native": ("flat", "detail", "colours")}
CUE_CROP = 128  # 256 cost as much as the robust forward itself (0.50 against 0.54 ms an image)


class GateError(ValueError):
    """A gate bundle that is missing, tampered with, or not made for the robust bundle served."""


# --- inputs ---------------------------------------------------------------------------------------------------
def image_cues(image: Image.Image | np.ndarray) -> np.ndarray:
    """``CUES`` of one RGB image as served (PIL image or (H, W, 3) uint8 array), as float32."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    top, left = max(0, (height - CUE_CROP) // 2), max(0, (width - CUE_CROP) // 2)
    crop = pixels[top : top + CUE_CROP, left : left + CUE_CROP]
    r, g, b = (crop[..., k].astype(np.int32) for k in range(3))
    # Drawn pages and flat artwork repeat a pixel exactly; a photo (and a JPEG of one) almost never does.
    rgb = (r << 16) | (g << 8) | b
    flat = float((rgb[:, 1:] == rgb[:, :-1]).mean()) if width > 1 else 1.0
    # Native detail: an image upscaled from a thumbnail is smooth at its own resolution, a photo is not.
    grey = r + g + b
    steps = [np.abs(np.diff(grey, axis=axis)).mean() for axis in (0, 1) if grey.shape[axis] > 1]
    detail = math.log(1e-3 + (float(np.mean(steps)) / 3 if steps else 0.0))
    # Colours at 5 bits a channel (at most 2^15): a drawing has tens, a photo thousands.
    codes = ((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3)
    colours = math.log2(max(1, np.count_nonzero(np.bincount(codes.ravel(), minlength=1 << 15)))) / 15
    return np.array(
        [math.log2(max(height, width)), abs(math.log2(width / height)), flat, detail, colours], dtype=np.float32
    )


def cues_of(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """``image_cues`` of each image, as an (N, len(CUES)) float32 tensor."""
    if not images:
        return torch.empty(0, len(CUES))
    return torch.from_numpy(np.stack([image_cues(image) for image in images]))


def model_space_cues(x: torch.Tensor) -> torch.Tensor:
    """The cues of a model-space batch (float (B, 3, H, W) in [0, 1]) taken as images served at that size."""
    pixels = x.detach().mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    return cues_of(list(pixels))


def logit_stats(logits: torch.Tensor) -> torch.Tensor:
    """``STATS`` of a batch of logits (B, K), as (B, len(STATS))."""
    logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return torch.stack([logits.logsumexp(1), logits.amax(1), log_p.amax(1).exp(), entropy], dim=1)


class _Caught:
    value: torch.Tensor | None = None


@contextlib.contextmanager
def penultimate(model: nn.Module) -> Iterator[_Caught]:
    """Catch the input of ``model``'s last linear layer (its penultimate features) while the block runs: the
    features come from the forward the verdict makes anyway, so the gate costs no second pass."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise GateError(f"{type(model).__name__} has no linear layer to read features from")
    caught = _Caught()

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        caught.value = args[0].detach()

    handle = linear[-1].register_forward_pre_hook(keep)
    try:
        yield caught
    finally:
        handle.remove()


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's penultimate features (B, D) and logits (B, K) from one forward."""
    with penultimate(model) as caught:
        logits = model(x)
    assert caught.value is not None
    return caught.value.flatten(1), logits


# --- the model -------------------------------------------------------------------------------------------------
class GateNet(nn.Module):
    """Standardised inputs, then a one-hidden-layer perceptron to one logit (in domain: high)."""

    def __init__(self, n_inputs: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("std", torch.ones(n_inputs))
        self.hidden = nn.Linear(n_inputs, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden((v - self.mean) / self.std))).squeeze(1)


def gate_inputs(
    features: torch.Tensor,
    logits: torch.Tensor,
    cues: torch.Tensor,
    used: Sequence[str],
    standard_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gate's input vectors: features, logit statistics, the cues it was trained with (``used``) and, for a
    gate that reads them, the standard model's features."""
    columns = [CUES.index(name) for name in used]
    parts = [features.float().cpu(), logit_stats(logits).cpu(), cues[:, columns].float().cpu()]
    if standard_features is not None:
        parts.append(standard_features.float().cpu())
    return torch.cat(parts, dim=1)


@dataclass
class DomainGate:
    net: GateNet
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def cues(self) -> tuple[str, ...]:
        return tuple(self.metadata["inputs"]["cues"])

    @property
    def reads_standard(self) -> bool:
        """Whether it reads the standard model's features too (taken from the forward the detectors make)."""
        return int(self.metadata["inputs"].get("standard_features", 0)) > 0

    @property
    def threshold(self) -> float:
        """On the calibrated probability: at or above it the label is kept."""
        return float(self.metadata["threshold"])

    def logit(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        cues: torch.Tensor,
        standard_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's raw logit per image (before calibration)."""
        if self.reads_standard and standard_features is None:
            raise GateError(f"the domain gate {self.version} reads the standard model's features: pass them")
        extra = standard_features if self.reads_standard else None
        with torch.no_grad():
            return self.net(gate_inputs(features, logits, cues, self.cues, extra))

    def probability(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        cues: torch.Tensor,
        standard_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The calibrated probability that each image shows one of the classes."""
        return calibrated(self.logit(features, logits, cues, standard_features), self.metadata["calibration"])

    def confident(self, probability: torch.Tensor) -> torch.Tensor:
        """The threshold rule: the label is kept where the probability is at or above the threshold."""
        return probability >= self.threshold


def calibrated(logit: torch.Tensor, calibration: Mapping[str, float]) -> torch.Tensor:
    """Platt scaling: sigmoid(scale * logit + bias)."""
    return torch.sigmoid(float(calibration["scale"]) * logit.double() + float(calibration["bias"]))


# --- the bundle ------------------------------------------------------------------------------------------------
def _content_hash(weights: bytes, metadata: Mapping[str, Any]) -> str:
    """As ``training.bundle`` versions model bundles: the weights and every metadata field but the version."""
    unversioned = {k: v for k, v in metadata.items() if k != "version"}
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(unversioned, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


REQUIRED = ("arch", "inputs", "hidden", "for_bundles", "calibration", "threshold")


def save(net: GateNet, metadata: Mapping[str, Any], directory: str | Path) -> DomainGate:
    """Write the gate bundle (weights and ``bundle.json``, versioned); returns it as loaded."""
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise GateError(f"gate metadata lacks {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    record = {**metadata, "format": FORMAT}
    record["version"] = _content_hash((directory / WEIGHTS_FILE).read_bytes(), record)
    (directory / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return load(directory)


def load(directory: str | Path) -> DomainGate:
    """Load a gate bundle, verifying its content hash and that the weights fit what it declares."""
    directory = Path(directory)
    metadata_path, weights_path = directory / METADATA_FILE, directory / WEIGHTS_FILE
    if not metadata_path.is_file() or not weights_path.is_file():
        raise GateError(f"{directory} is not a gate bundle (needs {METADATA_FILE} and {WEIGHTS_FILE})")
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as err:
        raise GateError(f"{metadata_path} is not valid JSON: {err}") from err
    if metadata.get("format") != FORMAT or metadata.get("arch") != ARCH:
        raise GateError(f"{directory}: not a {FORMAT} {ARCH} bundle")
    weights = weights_path.read_bytes()
    if metadata.get("version") != _content_hash(weights, metadata):
        raise GateError(f"{directory}: content hash does not match its version; the bundle was modified after export")
    unknown = sorted(set(metadata["inputs"]["cues"]) - set(CUES))
    if unknown:
        raise GateError(f"{directory}: cues {', '.join(unknown)} are not computed by this code")
    inputs = metadata["inputs"]
    width = int(inputs["features"]) + len(STATS) + len(inputs["cues"]) + int(inputs.get("standard_features", 0))
    net = GateNet(width, int(metadata["hidden"]))
    try:
        net.load_state_dict(load_file(str(weights_path)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise GateError(f"{weights_path}: weights do not fit the declared gate: {err}") from err
    return DomainGate(net.eval(), metadata, directory)


def default_dir(robust_dir: str | Path) -> Path:
    """Where a robust bundle's gate lives (trained on its features, like its calibration on its scores)."""
    return Path(robust_dir) / FOLDER


def find(robust_dir: str | Path, gate_dir: str | Path | None = None) -> DomainGate | None:
    """The gate: ``gate_dir`` if given, else the robust bundle's own if it has one, else None."""
    if gate_dir is None and default_dir(robust_dir).is_dir():
        gate_dir = default_dir(robust_dir)
    return load(gate_dir) if gate_dir is not None else None

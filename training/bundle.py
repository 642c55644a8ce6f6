"""Model bundles: what the worker serves.

A bundle is a folder holding ``weights.safetensors`` and ``bundle.json`` (architecture, classes, input size,
normalisation, method and hyperparameters, eps, data set, metrics, the training command).  Its version is a
content hash over the weights and the metadata, so any edit to either is detected at load time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from training.models import build_model

FORMAT = "robust-scanner-bundle/1"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "bundle.json"
REQUIRED_FIELDS = ("arch", "width", "num_classes", "classes", "input_size", "mean", "std")


class BundleError(ValueError):
    """A bundle is missing, tampered with, or does not match its declared architecture."""


@dataclass
class Bundle:
    model: nn.Module
    metadata: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]


def _content_hash(weights: bytes, metadata: dict[str, Any]) -> str:
    unversioned = {k: v for k, v in metadata.items() if k != "version"}
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(unversioned, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def save(model: nn.Module, metadata: dict[str, Any], directory: str | Path) -> Path:
    """Write ``model`` (a ``training.models.Normalized``) and its metadata; returns the bundle folder."""
    missing = [k for k in REQUIRED_FIELDS if k not in metadata]
    if missing:
        raise BundleError(f"bundle metadata lacks {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights_path = directory / WEIGHTS_FILE
    save_file(state, str(weights_path), metadata={"format": FORMAT})
    metadata = {**metadata, "format": FORMAT}
    metadata["version"] = _content_hash(weights_path.read_bytes(), metadata)
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return directory


def load(directory: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Load a bundle in eval mode, verifying its content hash and that the weights fit the architecture."""
    directory = Path(directory)
    metadata_path, weights_path = directory / METADATA_FILE, directory / WEIGHTS_FILE
    if not metadata_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{directory} is not a model bundle (needs {METADATA_FILE} and {WEIGHTS_FILE})")
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{metadata_path} is not valid JSON: {err}") from err
    if metadata.get("format") != FORMAT:
        raise BundleError(f"{directory}: unsupported bundle format {metadata.get('format')!r} (expected {FORMAT})")
    weights = weights_path.read_bytes()
    expected = _content_hash(weights, metadata)
    if metadata.get("version") != expected:
        raise BundleError(
            f"{directory}: content hash {expected} does not match version {metadata.get('version')!r}; "
            "the weights or metadata were modified after export"
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise BundleError(f"{weights_path} is not a readable safetensors file: {err}") from err
    missing = [k for k in REQUIRED_FIELDS if k not in metadata]
    if missing:
        raise BundleError(f"{directory}: bundle metadata lacks {', '.join(missing)}")
    try:
        model = build_model(
            metadata["arch"], metadata["num_classes"], metadata["mean"], metadata["std"], metadata["width"]
        )
    except (ValueError, TypeError) as err:
        raise BundleError(f"{directory}: cannot build the declared model: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundleError(
            f"{directory}: weights do not match {metadata['arch']} width {metadata['width']}: {err}"
        ) from err
    return Bundle(model.to(device).eval(), metadata, directory)

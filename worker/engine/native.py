"""The perturbation detector's view of an image at its own resolution: tiles of the pixels as served.

A perturbation lives at the resolution it was made at.  Shrinking a 512 px image to the classifier's 32 px
input averages most of an attack crafted at 512 px away, so the detector also reads square tiles of the
decoded image before any resize.  A dense perturbation covers the whole image, so a few tiles suffice: up
to ``MAX_TILES`` tiles of ``TILE`` pixels on an even grid (deterministic, so a verdict never depends on
chance), which caps the detector's cost whatever the image's size.  Images smaller than a tile have no
tiles; for them the model input is already (nearly) the image as served.

The detector's score for an image is the larger of its logit on the model input and the mean of its
logits over the tiles: either view may carry the evidence (an attack made through the resize shows in the
model input, one made at native resolution in the tiles), and averaging tiles keeps one textured patch
from deciding alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

TILE = 64
MAX_TILES = 6


def has_tiles(height: int, width: int, tile: int = TILE) -> bool:
    """Whether an image this size gets native tiles (both sides at least a tile); smaller ones are read by the
    detector through the model input alone, and form their own population for the threshold."""
    return height >= tile and width >= tile


def tiled(images: Sequence[Image.Image]) -> torch.Tensor:
    """``has_tiles`` per decoded image, as a bool tensor."""
    return torch.tensor([has_tiles(image.height, image.width) for image in images], dtype=torch.bool)


def tile_grid(height: int, width: int, tile: int = TILE, max_tiles: int = MAX_TILES) -> list[tuple[int, int]]:
    """Top-left corners of up to ``max_tiles`` non-overlapping tiles on an even grid; none if a side < tile."""
    if not has_tiles(height, width, tile):
        return []
    rows = max(1, min(height // tile, round(math.sqrt(max_tiles * height / width))))
    cols = max(1, min(width // tile, max_tiles // rows))
    rows = max(1, min(rows, max_tiles // cols))
    return [(top, left) for top in _spread(height, tile, rows) for left in _spread(width, tile, cols)]


def _spread(length: int, tile: int, count: int) -> list[int]:
    """``count`` tile offsets from edge to edge (the centre for one); apart by >= tile as count <= length // tile."""
    if count == 1:
        return [(length - tile) // 2]
    return [(length - tile) * k // (count - 1) for k in range(count)]


def native_tiles(
    pixels: Sequence[np.ndarray], tile: int = TILE, max_tiles: int = MAX_TILES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles (T, C, tile, tile) in [0, 1] of uint8 images (H, W, C), and the index of the image each came from."""
    tiles: list[np.ndarray] = []
    owner: list[int] = []
    for index, array in enumerate(pixels):
        for top, left in tile_grid(array.shape[0], array.shape[1], tile, max_tiles):
            tiles.append(array[top : top + tile, left : left + tile])
            owner.append(index)
    if not tiles:
        channels = pixels[0].shape[2] if pixels else 3
        return torch.empty(0, channels, tile, tile), torch.empty(0, dtype=torch.long)
    batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float().div_(255)
    return batch, torch.tensor(owner, dtype=torch.long)


def tiles_of(image: Image.Image, tile: int = TILE, max_tiles: int = MAX_TILES) -> list[np.ndarray]:
    """The grid's tiles (tile, tile, C) of a decoded image, cut from it directly: the same pixels as
    ``native_tiles`` cuts from its array, without copying the whole image into one first."""
    return [
        np.asarray(image.crop((left, top, left + tile, top + tile)))
        for top, left in tile_grid(image.height, image.width, tile, max_tiles)
    ]


def stack_tiles(per_image: Sequence[list[np.ndarray]], channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``native_tiles``'s output from each image's ``tiles_of``: tiles (T, C, tile, tile) in [0, 1] and owners."""
    owner = [index for index, tiles in enumerate(per_image) for _ in tiles]
    if not owner:
        return torch.empty(0, channels, TILE, TILE), torch.empty(0, dtype=torch.long)
    batch = np.stack([tile for tiles in per_image for tile in tiles])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255), torch.tensor(owner, dtype=torch.long)


def adversarial_logit(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The detector's adversarial-minus-clean logit per input (monotone in its adversarial probability)."""
    parts = []
    for start in range(0, len(x), batch):
        out = model(x[start : start + batch]).float()
        parts.append(out[:, 1] - out[:, 0])
    return torch.cat(parts) if parts else torch.empty(0, device=x.device)


def image_logits(model: nn.Module, model_input: torch.Tensor, tiles: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image: max(logit on the model input, mean logit over its tiles); the model-input logit alone for
    images without tiles."""
    logits = adversarial_logit(model, model_input)
    if len(tiles) == 0:
        return logits
    tile_logits = adversarial_logit(model, tiles.to(model_input.device))
    owner = owner.to(model_input.device)
    sums = torch.zeros_like(logits).index_add_(0, owner, tile_logits)
    counts = torch.zeros_like(logits).index_add_(0, owner, torch.ones_like(tile_logits))
    has_tiles = counts > 0
    mean = sums / counts.clamp_min(1)
    return torch.where(has_tiles, torch.maximum(logits, mean), logits)

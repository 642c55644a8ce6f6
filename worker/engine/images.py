"""The model's input from decoded images; the decoding rules themselves live in ``worker.engine.imaging``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from worker.engine.imaging import (  # noqa: F401 - re-exported: the engine's public image API
    ALLOWED_FORMATS,
    BACKGROUND,
    JPEG_FORMATS,
    CorruptImage,
    EmptyImage,
    ImageError,
    ImageInfo,
    ImageLimits,
    TooManyBytes,
    TooManyFrames,
    TooManyPixels,
    TruncatedImage,
    UnsupportedFormat,
    _count_gif_frames,
    crop_box,
    decode_image,
    decoding,
    holding,
    normalise_image,
    probe_image,
    resize_for_model,
    sniff_format,
    to_rgb,
)


def to_model_input(images: Sequence[Image.Image], input_size: Sequence[int]) -> torch.Tensor:
    """A float batch (B, C, H, W) in [0, 1] from RGB images of any size, by ``resize_for_model``.

    Values stay on the 8-bit grid, as every image on the web is.
    """
    channels, height, width = input_size
    batch = np.empty((len(images), height, width, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        array = np.asarray(resize_for_model(image, input_size))
        batch[i] = array.reshape(height, width, channels)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)

"""Small real images for tests that submit, serve or seed pictures; each maker gives the same bytes for the same
arguments, so a test can submit an image again and expect the same SHA-256."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image


def random_png(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    """Random pixels (``size`` is width, height): distinct images per seed, as a shop's photos are."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def flat_png(seed: int) -> bytes:
    """One colour, 40x32: a tiny body, for the tests of the API's edge that never need a verdict to differ."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (seed % 256, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def crawlable_png(seed: int, size: int = 64) -> bytes:
    """A distinct noisy picture per seed, big enough for the crawler (it skips icons under 50 px)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()

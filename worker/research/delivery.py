"""What happens to an image on its way to a viewer, as Pillow operations on RGB images.

Two catalogues, used by the detector's training, the calibration and the evaluation alike:

- ``DELIVERIES``: how a server hands an image over: as it is (PNG), re-encoded as JPEG (quality 70-95) or
  WebP, or downscaled to 0.75x by a CDN.  An attack must still be flagged after each of them: "save it as a
  JPEG" must not be a way to evade the detector.
- ``BENIGN``: what happens to ordinary images that must never be flagged: camera and web JPEG histories,
  re-encoding at quality 50-95, resizing, unsharp-mask sharpening, blur, sensor-like noise up to sigma
  4/255, gamma and brightness changes.

Each function takes an RGB ``PIL.Image`` and a ``random.Random`` (the only source of randomness, so a run
is repeatable) and returns an RGB image on the 8-bit grid, as a decoded file would be.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

Transform = Callable[[Image.Image, random.Random], Image.Image]


def quantise(x: torch.Tensor) -> torch.Tensor:
    """A float batch in [0, 1] rounded to the 8-bit grid, as a saved image is."""
    return x.clamp(0, 1).mul(255).round_().div_(255)


def encode_decode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    """Save as ``fmt`` at ``quality`` and decode again (libjpeg's 4:2:0 below quality 90, 4:4:4 above)."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        image.save(buffer, fmt, quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def jpeg(quality: int) -> Transform:
    return lambda image, _rng: encode_decode(image, "JPEG", quality)


def jpeg_between(low: int, high: int) -> Transform:
    return lambda image, rng: encode_decode(image, "JPEG", rng.randrange(low, high + 1))


def webp(image: Image.Image, rng: random.Random) -> Image.Image:
    return encode_decode(image, "WEBP", rng.randrange(70, 91))


def scale(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BICUBIC)


def thumbnail(image: Image.Image, rng: random.Random, below: int = 64) -> Image.Image:
    """Shrunk until its shorter side is 24 to ``below`` - 1 px: the icons and thumbnails of a page, smaller than
    the detector's native tiles (not a BENIGN change: the calibration and evaluation use it to measure that
    population)."""
    return scale(image, rng.randrange(24, below) / min(image.size))


def downscale(image: Image.Image, _rng: random.Random) -> Image.Image:
    """A CDN's 0.75x rendition (Lanczos)."""
    return scale(image, 0.75)


def as_is(image: Image.Image, _rng: random.Random) -> Image.Image:
    return image


DELIVERIES: dict[str, Transform] = {
    "png": as_is,
    "jpeg95": jpeg(95),
    "jpeg90": jpeg(90),
    "jpeg85": jpeg(85),
    "jpeg75": jpeg(75),
    "jpeg70": jpeg(70),
    "webp": webp,
    "downscale0.75": downscale,
}
# The mix the detector is trained with (the evaluation reports each delivery on its own).
TRAINING_DELIVERY_WEIGHTS = {
    "png": 3, "jpeg95": 1, "jpeg90": 1, "jpeg85": 1, "jpeg75": 1, "jpeg70": 1, "webp": 1, "downscale0.75": 1,
}  # fmt: skip


def resize_round_trip(image: Image.Image, rng: random.Random) -> Image.Image:
    """Down to 50-90% and back (a thumbnail re-enlarged by a CMS)."""
    small = scale(image, rng.uniform(0.5, 0.9))
    return small.resize(image.size, Image.Resampling.BICUBIC)


def resize_down(image: Image.Image, rng: random.Random) -> Image.Image:
    return scale(image, rng.uniform(0.4, 0.9))


def unsharp(image: Image.Image, rng: random.Random) -> Image.Image:
    radius, percent = rng.uniform(0.8, 2.5), rng.randrange(50, 151)
    return image.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=rng.randrange(0, 4)))


def blur(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))


NOISE_SIGMA_255 = (1.0, 4.0)  # the sensor noise that must not be flagged, in 1/255 (also the detector's augmentation)


def noise(image: Image.Image, rng: random.Random, max_sigma: float = NOISE_SIGMA_255[1]) -> Image.Image:
    """Gaussian sensor-like noise, sigma up to 4/255 (per pixel and channel)."""
    sigma = rng.uniform(NOISE_SIGMA_255[0], max_sigma)
    generator = np.random.default_rng(rng.randrange(2**32))
    array = np.asarray(image, dtype=np.float32) + generator.normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def gamma(image: Image.Image, rng: random.Random) -> Image.Image:
    g = rng.uniform(0.7, 1.4)
    table = [round(255 * (i / 255) ** g) for i in range(256)] * 3
    return image.point(table)


def brightness(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))


BENIGN: dict[str, Transform] = {
    "jpeg-q50-95": jpeg_between(50, 95),
    "webp": webp,
    "resize-round-trip": resize_round_trip,
    "resize-down": resize_down,
    "unsharp": unsharp,
    "blur": blur,
    "noise-4": noise,
    "gamma": gamma,
    "brightness": brightness,
}


def pick(catalogue: dict[str, Transform], rng: random.Random, weights: dict[str, int] | None = None) -> str:
    names = list(catalogue)
    return rng.choices(names, weights=[weights[n] for n in names] if weights else None)[0]


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def from_array(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8), "RGB")


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """PIL images of a float batch (B, C, H, W) in [0, 1] (8-bit, as saved)."""
    arrays = x.mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return [from_array(a) for a in arrays]


def deliver_all(images: Sequence[Image.Image], name: str, seed: int) -> list[Image.Image]:
    """Every image through the delivery ``name``."""
    rng = random.Random(seed)
    return [DELIVERIES[name](image, rng) for image in images]


def thumbnailed(images: Sequence[Image.Image], seed: int) -> list[Image.Image]:
    """Every image as a thumbnail (``thumbnail``)."""
    rng = random.Random(seed)
    return [thumbnail(image, rng) for image in images]

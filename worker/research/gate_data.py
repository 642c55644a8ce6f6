"""The domain gate's images and its inputs computed from them (``worker.research.train_gate``).

- Inliers: CIFAR-10 images as a service receives them: at 32 px through a delivery (PNG, JPEG 70-95, WebP), or
  laid out larger (40-800 px on the longest side, square or cropped to 4:3 ... 16:9, by a browser-like
  filter, then saved as PNG, JPEG or WebP), so that neither format, size nor shape tells the gate that an
  image is CIFAR-10.
- Outliers: the web-image set (``worker.research.web_images``) less the pictures that show one of the ten
  classes (``shows_a_class``), as served, as a thumbnail (24-63 px), as a smaller crop re-delivered, and at
  CIFAR-10's 32 px square.
- Inputs: the robust model's penultimate features and logits on the model input, and the cues of the image
  as served (``domain_gate.CUES``), computed in chunks cached on disk, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from worker.engine import domain_gate
from worker.engine.images import crop_box, to_model_input
from worker.research import delivery, web_images

# Wallpapers that show one of the classes (looked at one by one, web-images/4): not outliers, and not among
# the "shows none of the classes" images the targets are measured on.
WALLPAPERS_SHOWING_A_CLASS = {
    "lomiri-wallpapers-16.04:friends_by_Aitzol_Berasategi": "dog",  # two spaniels at a window
    "lomiri-wallpapers-20.04:Kleiber_by_Lukas_Baubkus": "bird",  # a nuthatch on a trunk
    "lomiri-wallpapers-16.04:free_by_Peter_Nerlich": "bird",  # a toy bird under lamps
    "plasma-workspace-wallpapers:EveningGlow": "ship",  # rowing boats on a shore
}
# Tux Paint stamp folders whose pictures show (or may show) a class: birds, mammals (cats, dogs, horses,
# deer, ...), frogs, and every vehicle (cars, trucks, planes, boats).  Conservative: a zebra or a bus is left
# out too, since telling them from the classes is what the targets must not depend on.
STAMP_FOLDERS_SHOWING_CLASSES = (
    "animals/birds/",
    "animals/mammals/",
    "animals/amphibians/",
    "animals/marsupials/",
    "vehicles/",
    "military/vehicles/",
)
CLASS_WORDS = re.compile(
    r"plane|jet|aircraft|car\b|auto|truck|lorry|bird|cat\b|kitten|deer|dog|puppy|frog|horse|pony|ship|boat",
    re.IGNORECASE,
)
STAMP_ROOT = "/usr/share/tuxpaint/stamps/"


def stamp_folders() -> dict[str, str]:
    """Source id -> the stamp's path under the Tux Paint stamps folder (the manifest keeps only the id)."""
    return {
        s.id: s.path.removeprefix(STAMP_ROOT)
        for s in web_images.packaged_sources()
        if s.kind == "stamp" and s.path is not None
    }


def shows_a_class(record: web_images.WebImage, stamps: dict[str, str]) -> bool:
    """Whether the picture shows (or may show) one of the CIFAR-10 classes."""
    if record.source in WALLPAPERS_SHOWING_A_CLASS:
        return True
    if record.kind != "stamp":
        return False
    path = stamps.get(record.source, record.source)
    return path.startswith(STAMP_FOLDERS_SHOWING_CLASSES) or bool(CLASS_WORDS.search(path))


# --- images as served ------------------------------------------------------------------------------------------
UPSCALE_FILTERS = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)


def saved(image: Image.Image, rng: random.Random) -> Image.Image:
    """Through one of the ways a server hands an image over: PNG, JPEG 70-95 or WebP."""
    choice = rng.random()
    if choice < 0.3:
        return image
    if choice < 0.8:
        return delivery.encode_decode(image, "JPEG", rng.randrange(70, 96))
    return delivery.webp(image, rng)


def upscaled(image: Image.Image, side: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    return image.resize((side, side), resample)


ASPECTS = (1.0, 1.0, 1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9)  # width / height; square half the time


def presented(image: Image.Image, longest: int, aspect: float, rng: random.Random) -> Image.Image:
    """A small picture as a page lays it out: cropped to ``aspect`` (a random window of it), then drawn with
    its longest side ``longest`` px by a browser-like filter."""
    width, height = image.size
    w, h = (width, round(width / aspect)) if aspect >= 1 else (round(height * aspect), height)
    w, h = min(width, max(1, w)), min(height, max(1, h))
    left, top = rng.randrange(width - w + 1), rng.randrange(height - h + 1)
    crop = image.crop((left, top, left + w, top + h))
    scale = longest / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return crop.resize(size, rng.choice(UPSCALE_FILTERS))


def served_inlier(image: Image.Image, rng: random.Random, native_share: float = 0.35) -> Image.Image:
    """A CIFAR-10 image as a page serves it: at its own 32 px, or laid out at 40-800 px on its longest side in
    one of ``ASPECTS``, then saved.  Sizes and shapes as wide as the web's, so that neither tells the gate
    that an image is CIFAR-10: only its content and its look at its own resolution can."""
    if rng.random() >= native_share:
        image = presented(image, round(math.exp(rng.uniform(math.log(40), math.log(800)))), rng.choice(ASPECTS), rng)
    return saved(image, rng)


def shown_larger(image: Image.Image, rng: random.Random) -> Image.Image:
    """The targets' upscaled CIFAR-10: 96-128 px (bicubic, as browsers draw it), then JPEG quality 90."""
    return delivery.encode_decode(upscaled(image, rng.randrange(96, 129)), "JPEG", 90)


def shown_large(image: Image.Image, rng: random.Random) -> Image.Image:
    """Far larger than any target: 256-1024 px (bicubic), JPEG quality 90 (does size alone decide?)."""
    return delivery.encode_decode(upscaled(image, round(256 * 4 ** rng.random())), "JPEG", 90)


def shown_oblong(image: Image.Image, rng: random.Random) -> Image.Image:
    """Cropped to 4:3 or 3:4 and drawn 128 px on its longest side, JPEG quality 90 (does the shape decide?)."""
    aspect = rng.choice((4 / 3, 3 / 4))
    return delivery.encode_decode(presented(image, 128, aspect, rng), "JPEG", 90)


def cifar_sized(image: Image.Image, side: int = 32) -> Image.Image:
    """A web image as CIFAR-10 shows its pictures: the centred square, shrunk to ``side`` px (antialiased)."""
    left, top, right, bottom = (round(v) for v in crop_box(image.width, image.height, side, side))
    return image.crop((left, top, right, bottom)).resize((side, side), Image.Resampling.BICUBIC)


def web_views(image: Image.Image, rng: random.Random) -> list[Image.Image]:
    """An outlier five ways: as served, as a thumbnail (24-63 px), a crop of 40-80% of it re-delivered, at
    CIFAR-10's own 32 px square, and that 32 px square laid out larger as the inliers are: size, shape and an
    upscaled look say nothing, only the content can."""
    thumbnail = delivery.thumbnail(image, rng)
    width, height = image.size
    share = rng.uniform(0.4, 0.8)
    w, h = max(8, round(width * share)), max(8, round(height * share))
    left, top = rng.randrange(width - w + 1), rng.randrange(height - h + 1)
    crop = saved(image.crop((left, top, left + w, top + h)), rng)
    small = cifar_sized(image)
    longest = round(math.exp(rng.uniform(math.log(40), math.log(800))))
    laid_out = saved(presented(small, longest, rng.choice(ASPECTS), rng), rng)
    return [image, saved(thumbnail, rng), crop, saved(small, rng), laid_out]


WEB_VIEWS = 5  # images ``web_views`` makes of each


def arrays_to_images(arrays: torch.Tensor | np.ndarray) -> list[Image.Image]:
    """PIL images of uint8 arrays (N, H, W, 3) or (N, 3, H, W)."""
    data = arrays.numpy() if isinstance(arrays, torch.Tensor) else arrays
    if data.shape[1] == 3 and data.shape[-1] != 3:
        data = data.transpose(0, 2, 3, 1)
    return [Image.fromarray(np.ascontiguousarray(a)) for a in data]


# --- the gate's inputs -----------------------------------------------------------------------------------------
@dataclass
class GateInputs:
    """What the gate reads, for N images: robust features (N, D), logits (N, K), cues (N, len(CUES)); and the
    standard model's features (N, D') and logits (N, K): a gate may read them too, and the domain model the
    gate replaces reads the logits (for the comparison)."""

    features: torch.Tensor
    logits: torch.Tensor
    cues: torch.Tensor
    standard_features: torch.Tensor
    standard_logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, index: torch.Tensor | slice) -> GateInputs:
        return GateInputs(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[GateInputs]) -> GateInputs:
        return GateInputs(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(GateInputs)))


@torch.no_grad()
def compute_inputs(
    models: Models, images: Sequence[Image.Image], input_size: Sequence[int], batch: int = 256
) -> GateInputs | None:
    """``GateInputs`` of decoded RGB images: the model input as the engine makes it, the cues as served."""
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = to_model_input(chunk, input_size)
        features, logits = domain_gate.features_and_logits(models.robust, x)
        standard_features, standard = domain_gate.features_and_logits(models.standard, x)
        parts.append(
            GateInputs(features, logits.float(), domain_gate.cues_of(chunk), standard_features, standard.float())
        )
    return GateInputs.concat(parts) if parts else None


@dataclass(frozen=True)
class Models:
    robust: nn.Module  # the gate reads its features
    standard: nn.Module  # only for the comparison with the domain model the gate replaces


def cached_inputs(
    cache: Path,
    name: str,
    n_chunks: int,
    make_chunk: Callable[[int], list[Image.Image]],
    models: Models,
    input_size: Sequence[int],
    log: Callable[[str], None] = print,
) -> GateInputs:
    """``compute_inputs`` of the images ``make_chunk(k)`` makes for k < n_chunks, each chunk saved under
    ``cache/name`` as it is done; chunks already there are read back (the run resumes where it stopped)."""
    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(n_chunks):
        path = folder / f"{k:04d}.pt"
        if not path.is_file():
            images = make_chunk(k)
            computed = compute_inputs(models, images, input_size)
            if computed is None:
                empty = torch.empty(0, 0)
                computed = GateInputs(empty, empty, torch.empty(0, len(domain_gate.CUES)), empty, empty)
            tmp = path.with_suffix(".tmp")
            torch.save(computed.__dict__, tmp)
            tmp.replace(path)  # a chunk is there whole or not at all
            log(f"{name}: chunk {k + 1}/{n_chunks} ({len(images)} images)")
        part = GateInputs(**torch.load(path))
        if len(part):
            parts.append(part)
    return GateInputs.concat(parts)


def seeded(*parts: object) -> random.Random:
    """A generator seeded by a name (so each chunk's draws are its own, whatever ran before)."""
    return random.Random(int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16))

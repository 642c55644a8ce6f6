"""Examples for the perturbation detector, in the two views the engine gives it (``worker.engine.native``).

Every example is one image after a whole history: clean, benignly changed (``delivery.BENIGN``) or
attacked, and then delivered (``delivery.DELIVERIES``: PNG, JPEG 70-95, WebP, a 0.75x downscale) — clean
and attacked images go through the same deliveries, so compression says nothing about the label.  From
each image come its model input (32 px, the engine's resize) and up to ``TILES_PER_IMAGE`` native tiles.

Two sources:
- CIFAR-10 images that no bundle trained on (32 px: the model input is the image; no tiles), attacked by
  ``TRAINING_ATTACKS`` of ``worker.research.train_detector`` against the standard and robust bundles;
- the web-image set's *train* split (photos, stamps, rendered pages at 64-1024 px, capped at
  ``MAX_SIDE``), attacked through the resize or at native resolution (``worker.research.native_attacks``).

A view is labelled adversarial only where the attack is visible in it: an attack made at native
resolution on a large image is averaged away in the 32 px model input, so that input is not used as a
positive (it would teach the detector to flag faint noise on clean images).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from worker.engine import native
from worker.engine.images import to_model_input
from worker.research import delivery
from worker.research.native_attacks import NativeAttack

MAX_SIDE = 384  # natural images are attacked at most this large (cost); the evaluation uses them as served
NATIVE_CROP = 96  # native-resolution attacks run on a crop of this size (the tiles come from it)
TILES_PER_IMAGE = 2
# The benign change closest to an attack: sensor noise of sigma up to 4/255 has the energy of a 4/255 L-inf
# perturbation, and it was the kind that set the calibrated threshold (every other kind stayed at 0%).  With
# ``hard_negatives`` every image gives one extra example with it, on top of its randomly chosen benign change,
# so the detector sees noise as often as it sees attacks instead of in one benign example of nine.
HARD_NEGATIVE = "noise-4"
# What an extra clean copy of a web image may be (``--web-hard-negatives``): a benign change, or a thumbnail
# (24-63 px, read through the model input alone: an image kind the service meets that no benign change makes).
EXTRA_NEGATIVES = {**delivery.BENIGN, "thumbnail": delivery.thumbnail}

# Against the standard and the robust bundle in turn; eps 4-16/255, as for CIFAR-10.  Five PGD steps (step
# 2.5 eps / 5) keep one image's attack near a second on two CPU cores; the perturbations look the same.
WEB_ATTACK_STEPS = 5
NATURAL_ATTACKS: tuple[NativeAttack, ...] = tuple(
    NativeAttack(route, objective, eps, WEB_ATTACK_STEPS)
    for route, objective, eps in (
        ("resize", "pgd", 4), ("resize", "pgd", 8), ("resize", "pgd", 16), ("resize", "cw", 8),
        ("native", "pgd", 4), ("native", "pgd", 8), ("native", "pgd", 16), ("native", "cw", 8),
    )
)  # fmt: skip


@dataclass
class ViewSet:
    """uint8 examples of one view size, with labels (0 clean, 1 adversarial) and a tag per example."""

    images: list[np.ndarray] = field(default_factory=list)  # (C, H, W) uint8
    labels: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    def add(self, image: np.ndarray, label: int, tag: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.tags.append(tag)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.images:
            return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.stack(self.images)), torch.tensor(self.labels, dtype=torch.long)


@dataclass
class DetectorExamples:
    model_inputs: ViewSet = field(default_factory=ViewSet)  # 32 px
    tiles: ViewSet = field(default_factory=ViewSet)  # native.TILE px
    # The deliveries every example goes through one of (``delivery.DELIVERIES`` names); fewer than all of them
    # makes a detector for those deliveries only (e.g. lossless files, where a perturbation survives intact).
    deliveries: tuple[str, ...] = tuple(delivery.DELIVERIES)


def model_view(image: Image.Image, input_size: Sequence[int]) -> np.ndarray:
    return to_model_input([image], input_size)[0].mul(255).round().byte().numpy()


def random_tiles(pixels: np.ndarray, rng: random.Random, count: int = TILES_PER_IMAGE) -> list[np.ndarray]:
    """Up to ``count`` tiles at random places (training sees every offset; serving uses a fixed grid)."""
    height, width = pixels.shape[:2]
    if height < native.TILE or width < native.TILE:
        return []
    out = []
    for _ in range(count):
        top, left = rng.randrange(height - native.TILE + 1), rng.randrange(width - native.TILE + 1)
        out.append(np.ascontiguousarray(pixels[top : top + native.TILE, left : left + native.TILE].transpose(2, 0, 1)))
    return out


def spread(n: int, k: int) -> set[int]:
    """``min(k, n)`` indices of ``range(n)`` spread evenly (so a held-out tail holds its share of them)."""
    k = max(0, min(k, n))
    return {j * n // k for j in range(k)}


def web_attack_for(index: int, models: Sequence[torch.nn.Module]) -> tuple[NativeAttack, torch.nn.Module]:
    """The attack and the model for the ``index``-th web image: round-robin over the attacks, then the models."""
    return NATURAL_ATTACKS[index % len(NATURAL_ATTACKS)], models[(index // len(NATURAL_ATTACKS)) % len(models)]


def deliver(
    image: Image.Image, rng: random.Random, names: Sequence[str] = tuple(delivery.DELIVERIES)
) -> tuple[Image.Image, str]:
    """``image`` through one of the deliveries ``names``, drawn with the training weights."""
    catalogue = {name: delivery.DELIVERIES[name] for name in names}
    name = delivery.pick(catalogue, rng, delivery.TRAINING_DELIVERY_WEIGHTS)
    return catalogue[name](image, rng), name


def add_image(
    examples: DetectorExamples,
    image: Image.Image,
    label: int,
    tag: str,
    rng: random.Random,
    input_size: Sequence[int],
    *,
    model_view_label: int | None = None,
) -> None:
    """Deliver ``image`` and add its views; ``model_view_label`` None leaves the model input out."""
    delivered, how = deliver(image, rng, examples.deliveries)
    if model_view_label is not None:
        examples.model_inputs.add(model_view(delivered, input_size), model_view_label, f"{tag}|{how}")
    for tile in random_tiles(delivery.to_array(delivered), rng):
        examples.tiles.add(tile, label, f"{tag}|{how}")


def add_benign(
    examples: DetectorExamples,
    image: Image.Image,
    source: str,
    rng: random.Random,
    input_size: Sequence[int],
    hard_negatives: bool,
    extra: Sequence[str] = (),
) -> None:
    """One randomly chosen benign change of ``image``, with ``hard_negatives`` a noisy copy, and one copy with
    each ``extra`` kind (``EXTRA_NEGATIVES``); delivered."""
    kinds = [delivery.pick(delivery.BENIGN, rng)] + ([HARD_NEGATIVE] if hard_negatives else []) + list(extra)
    for kind in kinds:
        changed = EXTRA_NEGATIVES[kind](image, rng)
        add_image(examples, changed, 0, f"{source}|benign:{kind}", rng, input_size, model_view_label=0)


def cifar_examples(
    examples: DetectorExamples,
    clean: torch.Tensor,
    adversarial: torch.Tensor,
    attack_names: Sequence[str],
    usable: torch.Tensor,
    seed: int,
    input_size: Sequence[int],
    hard_negatives: bool = False,
) -> None:
    """Each CIFAR image clean, benignly changed (``add_benign``) and attacked (where the attack changed it);
    delivered."""
    rng = random.Random(seed)
    attacked = delivery.to_images(adversarial)
    for i, image in enumerate(delivery.to_images(clean)):
        add_image(examples, image, 0, "cifar|clean", rng, input_size, model_view_label=0)
        add_benign(examples, image, "cifar", rng, input_size, hard_negatives)
        if usable[i]:
            add_image(examples, attacked[i], 1, f"cifar|{attack_names[i]}", rng, input_size, model_view_label=1)


def cap_size(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    return delivery.scale(image, max_side / max(image.size))


def natural_examples(
    examples: DetectorExamples,
    images: Sequence[Image.Image],
    models: Sequence[torch.nn.Module],
    input_size: Sequence[int],
    seed: int,
    device: torch.device,
    progress: Progress | None = None,
    attack_n: int | None = None,
    hard_negatives: bool = False,
    extra_negatives: Sequence[str] = (),
) -> dict[str, int]:
    """Each natural image clean and benignly changed (``add_benign``, with a copy for each ``extra_negatives``
    kind); ``attack_n`` of them (all when None),
    spread evenly through the list, also once attacked (round-robin over the attacks and the ``models``).
    Clean and benign examples cost no attack, so more images than the attack budget covers still teach the
    detector what ordinary pictures look like.  Returns how many of each attack ran."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    counts: dict[str, int] = {}
    attacked_ones = spread(len(images), len(images) if attack_n is None else attack_n)
    task = progress.add_task("attacking web images", total=len(images)) if progress else None
    for i, original in enumerate(images):
        image = cap_size(original)
        add_image(examples, image, 0, "web|clean", rng, input_size, model_view_label=0)
        add_benign(examples, image, "web", rng, input_size, hard_negatives, extra_negatives)
        if i not in attacked_ones:
            if progress is not None and task is not None:
                progress.advance(task)
            continue
        spec, model = web_attack_for(sum(counts.values()), models)  # the i-th attacked image, round-robin
        target = image
        if spec.route == "native" and max(image.size) > NATIVE_CROP:
            left = rng.randrange(max(1, image.width - NATIVE_CROP + 1))
            top = rng.randrange(max(1, image.height - NATIVE_CROP + 1))
            target = image.crop((left, top, left + min(NATIVE_CROP, image.width), top + min(NATIVE_CROP, image.height)))
        attacked = delivery.from_array(spec.run(model, delivery.to_array(target), input_size, device))
        # Through the resize, the model input carries the full perturbation; at native size it is averaged away.
        view_label = 1 if spec.route == "resize" else None
        add_image(examples, attacked, 1, f"web|{spec.name}", rng, input_size, model_view_label=view_label)
        counts[spec.name] = counts.get(spec.name, 0) + 1
        if progress is not None and task is not None:
            progress.advance(task)
    return counts

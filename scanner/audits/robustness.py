"""The optional robustness check of an audit run: an online black-box attack on the deployed model.

For a sample of the images a run met, Square (Andriushchenko et al., 2020: random square-shaped L-inf updates,
model outputs only, no gradients) tries to change the deployed robust model's prediction within ``eps`` and a
query budget.  The count of predictions it flipped is what an attacker who can only query the service would
achieve: the OTJR paper's online-attack demonstration, made into a recurring measurement of a live site.

The reference label is the model's own prediction on the clean image (a site's images carry no ground truth),
so "flipped" means "the attacker changed what the service says", right or wrong before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_EPS = 8 / 255
DEFAULT_QUERIES = 500


@dataclass(frozen=True)
class RobustnessResult:
    sample: int  # images attacked
    flipped: int  # predictions changed within eps and the query budget
    skipped: int  # images that could not be decoded
    eps: float
    queries: int
    model_version: str

    @property
    def flip_rate(self) -> float:
        return self.flipped / self.sample if self.sample else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flip_rate": round(self.flip_rate, 4)}


def sample_images(items: Sequence[T], size: int, seed: int = 0) -> list[T]:
    """A seeded sample, so that consecutive runs of an unchanged site attack the same images."""
    if len(items) <= size:
        return list(items)
    return random.Random(seed).sample(list(items), size)


def check(
    engine: Any, blobs: Sequence[bytes], eps: float = DEFAULT_EPS, queries: int = DEFAULT_QUERIES, seed: int = 0
) -> RobustnessResult:
    """Attack the engine's robust model on ``blobs`` (image file bytes) with Square under L-inf ``eps``."""
    import torch

    from training.attacks import square
    from worker.engine.images import ImageError, decoding, to_model_input

    inputs, skipped = [], 0
    for data in blobs:
        try:  # only the model input is kept: the decoded pixels go as soon as it is cut (the pixel budget)
            with decoding(data, engine.limits, engine.draft_size) as image:
                inputs.append(to_model_input([image], engine.input_size))
        except ImageError:
            skipped += 1
    if not inputs:
        return RobustnessResult(0, 0, skipped, eps, queries, engine.model_version)
    model = engine.robust.model.eval()
    x = torch.cat(inputs).to(engine.device)
    with torch.no_grad():
        clean = model(x).argmax(1)
    adversarial = square(model, x, clean, eps, queries, seed)
    with torch.no_grad():
        flipped = int((model(adversarial).argmax(1) != clean).sum())
    return RobustnessResult(len(inputs), flipped, skipped, eps, queries, engine.model_version)

"""The images each research tool draws on, so that none measures on what another trained on.

- CIFAR-10's training split in two disjoint pools: the images some bundle trained on (``seen_pool``, where the
  perturbation detector learns by default, ``SEEN_POOL``) and the ones no bundle trained on (``unseen_pool``,
  the calibration's, less whatever the perturbation detector took from it).
- The web-image set's splits (``worker.research.web_images``), decoded as the engine decodes a file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from training.bundle import Bundle
from worker.engine.engine import NATIVE_DRAFT_SIZE
from worker.engine.images import ImageLimits, decode_image
from worker.research import web_images

DEFAULT_HOLDOUT = 1000  # training.trainer.TrainConfig.holdout
SEEN_POOL = "models-trained"  # a detector's pool kind: images the models trained on (see seen_pool)


def holdout_of(metadata: dict[str, Any]) -> int:
    """The --holdout a bundle was trained with (read from its recorded command; the trainer's default)."""
    match = re.search(r"--holdout[ =](\d+)", metadata.get("command", ""))
    return int(match.group(1)) if match else DEFAULT_HOLDOUT


def detector_images(pool: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """The pool images a perturbation detector trained with ``seed`` and ``n`` used (``research.train_detector``)."""
    if n > len(pool):
        raise ValueError(f"asked for {n} images but the pool holds {len(pool)}")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


def seen_pool(n_train: int, bundles: Sequence[Bundle]) -> tuple[torch.Tensor, str]:
    """Indices of training images some bundle trained on.  Models trained on the whole training split leave
    only their held-out images unseen (1,000 of 50,000), and those are what the calibration needs: images
    whose model scores look like the service's.  The perturbation detector reads pixels, not model scores,
    so it can learn from images the models saw, and the two pools are disjoint by construction."""
    unseen, _note = _models_unseen_pool(n_train, bundles)
    seen = torch.ones(n_train, dtype=torch.bool)
    seen[unseen] = False
    pool = seen.nonzero().squeeze(1)
    return pool, f"{len(pool)} training images the bundles trained on"


def unseen_pool(n_train: int, bundles: Sequence[Bundle], detector: Bundle | None = None) -> tuple[torch.Tensor, str]:
    """Indices of training images no bundle trained on (as trainer.py selects them), and how they were found.

    With a perturbation detector drawn from the same pool, the images it trained on are left out too (a
    detector drawn from the models' training images, ``SEEN_POOL``, shares none with this pool).
    """
    pool, note = _models_unseen_pool(n_train, bundles)
    if detector is None:
        return pool, note
    record = detector.metadata.get("training") or {}
    if record.get("pool_kind") == SEEN_POOL:
        return pool, f"{note} (the perturbation detector trained on images the bundles saw)"
    if "seed" not in record or "pool_images" not in record:
        raise ValueError(f"{detector.path} records no training images; retrain it with worker.research.train_detector")
    used = torch.zeros(n_train, dtype=torch.bool)
    used[detector_images(pool, int(record["seed"]), int(record["pool_images"]))] = True
    keep = pool[~used[pool]]
    return keep, f"{len(keep)} training images that neither bundle nor the perturbation detector trained on"


def _models_unseen_pool(n_train: int, bundles: Sequence[Bundle]) -> tuple[torch.Tensor, str]:
    used = torch.zeros(n_train, dtype=torch.bool)
    for bundle in bundles:
        record = bundle.metadata.get("training") or {}
        if "seed" not in record or "train_images" not in record:
            return torch.arange(n_train), f"whole training split ({bundle.path} has no training record)"
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(record["seed"])))
        start = holdout_of(bundle.metadata)
        used[order[start : start + int(record["train_images"])]] = True
    pool = (~used).nonzero().squeeze(1)
    return pool, f"{len(pool)} training images that neither bundle trained on"


def decode_web_images(folder: Path, records: Sequence[web_images.WebImage], limits: ImageLimits) -> list[Image.Image]:
    """The files of ``records`` decoded as the engine decodes them (at native resolution)."""
    return [decode_image((folder / r.file).read_bytes(), limits, NATIVE_DRAFT_SIZE) for r in records]


def load_web_split(folder: Path, split: str, limits: ImageLimits) -> list[tuple[web_images.WebImage, Image.Image]]:
    """A split of the web-image set, each record with its file decoded (``decode_web_images``)."""
    records = web_images.load_manifest(folder, split)
    return list(zip(records, decode_web_images(folder, records, limits), strict=True))

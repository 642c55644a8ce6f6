"""The images the calibration is set on, attacked, changed, delivered and scored, by role (``CalibrationSets``);
saved with ``save_sets`` so that the operating point can be set again without scoring again.
See ``worker.research.calibrate`` for what each set is for."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from training.data import ArrayDataset, to_float
from worker.engine.engine import Engine
from worker.research import delivery, web_images
from worker.research.cifar_attacks import AttackSpec, attack_all
from worker.research.delivery import thumbnailed, to_images
from worker.research.detector_data import cap_size, deliver, web_attack_for
from worker.research.scoring import Scored, score_images
from worker.research.terminal import make_progress

# Most against the standard model (what transfers to the web), a third of the L-inf ones against the robust
# model; L2 at the usual CIFAR-10 radii (0.5 is about 2.3/255 per pixel, as quiet as the sensor noise).
ATTACK_MIX: tuple[AttackSpec, ...] = (
    AttackSpec("standard", "pgd", 2),
    AttackSpec("standard", "pgd", 4),
    AttackSpec("standard", "pgd", 8),
    AttackSpec("standard", "pgd", 16),
    AttackSpec("standard", "cw", 4),
    AttackSpec("standard", "cw", 8),
    AttackSpec("robust", "pgd", 4),
    AttackSpec("robust", "pgd", 8),
    AttackSpec("robust", "pgd", 16),
    AttackSpec("standard", "l2", 0.5),
    AttackSpec("standard", "l2", 1.0),
)


def delivered(images: Sequence[Image.Image], seed: int) -> tuple[list[Image.Image], list[str]]:
    """Each image through one delivery (the detector's training mix)."""
    rng = random.Random(seed)
    pairs = [deliver(image, rng) for image in images]
    return [image for image, _ in pairs], [name for _, name in pairs]


def every_benign_version(images: Sequence[Image.Image], seed: int) -> tuple[list[Image.Image], list[str]]:
    """Every benign change of every image, kind by kind (``len(BENIGN)`` blocks of ``len(images)``).

    A kind's flag rate is a tail (1%) that one round-robin change per image leaves too few images to see:
    about 40 web images per kind, and sigma-4/255 noise on smooth wallpapers was flagged at 8% on the test
    split while its round-robin group showed 1%."""
    rng = random.Random(seed)
    out, names = [], []
    for kind, change in delivery.BENIGN.items():
        out += [change(image, rng) for image in images]
        names += [kind] * len(images)
    return out, names


def web_attacked(
    engine: Engine, images: Sequence[Image.Image], seed: int, progress: Progress
) -> tuple[list[Image.Image], list[str]]:
    """Web images attacked (``detector_data.NATURAL_ATTACKS`` against both bundles, round-robin), delivered."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    models = [engine.standard.model, engine.robust.model]
    task = progress.add_task("attacking web images", total=len(images))
    out, names = [], []
    for i, image in enumerate(images):
        spec, model = web_attack_for(i, models)
        image = cap_size(image)
        attacked = delivery.from_array(spec.run(model, delivery.to_array(image), engine.input_size, engine.device))
        delivered_image, how = deliver(attacked, rng)
        out.append(delivered_image)
        names.append(f"{spec.name}|{how}")
        progress.advance(task)
    return out, names


# One web source in this many fits the combiner, the rest set the threshold.  A combiner of three or four
# weights needs few negatives; the threshold is a 0.3-0.5% tail of each group, and the more images the group
# holds, the less one picture's highest crop decides it (halves left 300-400 per group, web-images/3).
FIT_ONE_SOURCE_IN = 3


def fitting_sources(records: Sequence[web_images.WebImage]) -> torch.Tensor:
    """True for the images whose source fits the combiner (the rest set the threshold): no source image is in
    both."""
    return torch.tensor(
        [int(hashlib.sha256(r.source.encode()).hexdigest()[:8], 16) % FIT_ONE_SOURCE_IN == 0 for r in records]
    )


@dataclass
class CalibrationSets:
    """Everything the calibration scored, by role."""

    cifar_clean_fit: Scored
    cifar_clean_held: Scored
    cifar_benign_fit: Scored
    cifar_benign_held: Scored
    cifar_benign_names: list[str]
    cifar_adv: Scored
    cifar_adv_names: list[str]
    web_clean_fit: Scored
    web_clean_held: Scored
    web_outside_fit: torch.Tensor  # which fitting web images count as outside the classes (not stamps)
    web_benign_fit: Scored
    web_benign_held: Scored
    web_benign_names: list[str]
    web_adv: Scored
    web_adv_names: list[str]
    web_small_held: Scored  # the held-out web images as thumbnails (``delivery.thumbnail``), then delivered
    web_drawn_held: Scored  # the held-out drawn patterns as served: reported, never setting the threshold


def collect(
    engine: Engine,
    train: ArrayDataset,
    pool: torch.Tensor,
    web: Sequence[tuple[web_images.WebImage, Image.Image]],
    *,
    n_clean: int,
    n_adv: int,
    n_web_adv: int,
    seed: int,
    steps: int,
    batch: int,
    console: Console,
) -> CalibrationSets:
    if n_clean < 4 or n_adv < 2:
        raise ValueError("need at least 4 clean and 2 adversarial images")
    if n_clean + n_adv > len(pool):
        raise ValueError(f"asked for {n_clean + n_adv} images but the pool holds {len(pool)}")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    clean_idx, adv_idx = order[:n_clean], order[n_clean : n_clean + n_adv]
    cifar_clean, _ = delivered(to_images(to_float(train.images[clean_idx])), seed)
    half = n_clean // 2
    records = [r for r, _image in web]
    web_images_ = [image for _r, image in web]
    fitting = fitting_sources(records)
    # Drawn patterns teach the combiner (fitting sources) but do not set the threshold: that is set on what the
    # service sees, natural images and their benign changes; their own flag rate is reported beside it.
    drawn = torch.tensor([r.kind in web_images.SYNTHETIC_KINDS for r in records], dtype=torch.bool)
    held = ~fitting & ~drawn
    with make_progress(console) as progress:
        x, y = to_float(train.images[adv_idx]), train.labels[adv_idx]
        x_adv, adv_names, _fooled = attack_all(engine, x, y, steps, batch, seed, progress, mix=ATTACK_MIX)
        cifar_adv_images, adv_delivery = delivered(to_images(x_adv), seed + 1)
        cifar_benign, cifar_benign_names = every_benign_version(cifar_clean, seed + 2)
        web_benign, web_benign_names = every_benign_version(web_images_, seed + 3)
        web_benign_fitting = fitting.repeat(len(delivery.BENIGN))
        web_benign_held = held.repeat(len(delivery.BENIGN))
        fitting_web = [image for image, fit in zip(web_images_, fitting.tolist(), strict=True) if fit]
        web_adv, web_adv_names = web_attacked(engine, fitting_web[:n_web_adv], seed + 4, progress)
        cifar_all = score_images(engine, cifar_clean, progress, "scoring CIFAR-10 clean")
        cifar_benign_all = score_images(engine, cifar_benign, progress, "scoring CIFAR-10 benign")
        web_all = score_images(engine, web_images_, progress, "scoring web clean")
        web_benign_all = score_images(engine, web_benign, progress, "scoring web benign")
        cifar_adv = score_images(engine, cifar_adv_images, progress, "scoring CIFAR-10 attacked")
        web_adv_scored = score_images(engine, web_adv, progress, "scoring web attacked")
        held_web = [image for image, keep in zip(web_images_, held.tolist(), strict=True) if keep]
        thumbnails = delivered(thumbnailed(held_web, seed + 5), seed + 6)[0]
        web_small = score_images(engine, thumbnails, progress, "scoring web thumbnails")
    first = torch.arange(n_clean) < half
    first_benign = first.repeat(len(delivery.BENIGN))
    outside = torch.tensor([r.kind != "stamp" for r in records])
    return CalibrationSets(
        cifar_clean_fit=cifar_all.subset(first),
        cifar_clean_held=cifar_all.subset(~first),
        cifar_benign_fit=cifar_benign_all.subset(first_benign),
        cifar_benign_held=cifar_benign_all.subset(~first_benign),
        cifar_benign_names=[n for n, f in zip(cifar_benign_names, first_benign.tolist(), strict=True) if not f],
        cifar_adv=cifar_adv,
        cifar_adv_names=[f"{a}|{d}" for a, d in zip(adv_names, adv_delivery, strict=True)],
        web_clean_fit=web_all.subset(fitting),
        web_clean_held=web_all.subset(held),
        web_outside_fit=outside[fitting],
        web_benign_fit=web_benign_all.subset(web_benign_fitting),
        web_benign_held=web_benign_all.subset(web_benign_held),
        web_benign_names=[n for n, keep in zip(web_benign_names, web_benign_held.tolist(), strict=True) if keep],
        web_adv=web_adv_scored,
        web_adv_names=web_adv_names,
        web_small_held=web_small,
        web_drawn_held=web_all.subset(~fitting & drawn),
    )


def save_sets(sets: CalibrationSets, recorded: dict[str, Any], path: Path) -> None:
    """The sets and their record (seed, steps, bundles, data), for ``load_sets``."""
    torch.save({**asdict(sets), "recorded": recorded}, path)


def load_sets(path: Path) -> tuple[CalibrationSets, dict[str, Any]]:
    """The sets and their record (seed, steps, bundles, data) as ``run_calibration`` saved them."""
    saved = torch.load(path, weights_only=False)
    recorded = saved.pop("recorded", None)
    if recorded is None:
        raise ValueError(f"{path} holds no record of the bundles it was scored with: calibrate again with --scores")
    values = {
        f.name: Scored(**saved[f.name]) if isinstance(saved[f.name], dict) else saved[f.name]
        for f in fields(CalibrationSets)
    }
    return CalibrationSets(**values), recorded
